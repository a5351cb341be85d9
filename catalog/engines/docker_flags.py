"""What a piece of work asks of ``docker run`` (catalog.engines.docker): limits (docker's own
terms, or the job's resources), environment variables (named, their values never on a command
line) and bind mounts, each checked before anything runs (ValueError saying what is wrong)."""

from __future__ import annotations

import os
from typing import Any

from catalog.engines.base import Resources

_MIN_MEMORY = 6 * 1024 * 1024  # the least docker accepts for --memory


def limit_flags(work: dict[str, Any]) -> list[str]:
    """``--memory``, ``--memory-reservation`` (bytes) and ``--cpus`` from the work's ``limits``
    (docker's own terms, as Swarm gives them), else from the job's ``resources`` (cores, and
    memory in MB: catalog.engines.base.Resources)."""
    if work.get("limits") is None and work.get("resources") is not None:
        asked = Resources.of(work, 1)  # ValueError, saying which, when they are bad
        memory_mb = asked.memory_mb
        work = {"limits": {"cpus": asked.cores, **(
            {"memory": memory_mb * 1024 * 1024} if memory_mb is not None else {})}}
    resources = work.get("limits") or {}
    if not isinstance(resources, dict):
        raise ValueError("the work's limits are not a JSON object")
    flags: list[str] = []
    memory = resources.get("memory")
    reservation = resources.get("memory_reservation")
    cpus = resources.get("cpus")
    if memory is not None:
        if not isinstance(memory, int) or memory < _MIN_MEMORY:
            raise ValueError(f"a memory limit is at least {_MIN_MEMORY} bytes, not {memory!r}")
        flags += ["--memory", str(memory)]
    if reservation is not None:
        if not isinstance(reservation, int) or reservation < 0 or (
                memory is not None and reservation > memory):
            raise ValueError(f"a memory reservation is 0 to the limit, not {reservation!r}")
        if reservation:
            flags += ["--memory-reservation", str(reservation)]
    if cpus is not None:
        if not isinstance(cpus, int | float) or not 0 < cpus <= (os.cpu_count() or 1):
            raise ValueError(f"a CPU limit is more than 0 and at most this machine's "
                             f"{os.cpu_count() or 1} cores, not {cpus!r}")
        flags += ["--cpus", f"{float(cpus):g}"]
    return flags


def mount_flags(work: dict[str, Any]) -> list[str]:
    """``--mount`` (bind, read-write) for each of the work's ``mounts``, and ``--workdir``."""
    flags: list[str] = []
    for mount in work.get("mounts") or []:
        source, target = str(mount.get("source", "")), str(mount.get("target", ""))
        for path in (source, target):
            if not os.path.isabs(path) or "," in path or "=" in path:
                raise ValueError(f"a mount is between absolute paths without ',' or '=', not "
                                 f"{path!r}")
        if not os.path.isdir(source):
            raise ValueError(f"the directory {source!r} to mount does not exist")
        flags += ["--mount", f"type=bind,source={source},target={target}"]
    cwd = work.get("workdir_in")
    if cwd is not None:
        if not isinstance(cwd, str) or not cwd.startswith("/"):
            raise ValueError(f"a container's working directory is absolute, not {cwd!r}")
        flags += ["--workdir", cwd]
    return flags
