"""Memory cgroups for the local engine's jobs (cgroup v1's memory controller), one per job.

A job's group is ``<this process's memory cgroup>/catalog-<pid>-<start time>/job-<n>``: nested
in the worker's own, so that whatever limits the worker lives under still hold. The child is
put in the group without a wrapper and without giving up ``vfork``: the thread that starts it
moves itself into the group (cgroup v1 takes a single thread in ``tasks``), starts the child,
which inherits the thread's groups, and moves itself back; only then is the limit set, so that
nothing of the worker's can be killed by it. The job and every process it starts stay in the
group whatever process group or session they move to: the kernel's OOM killer acts inside it,
``memory.oom_control`` counts its kills, and at the end whatever is left in it is killed and
the group removed. A worker killed outright: its guard removes its groups
(``Guard.remove_at_death``); a guard killed too: the next worker started under the same parent
removes the groups of workers that have gone (by pid and start time: workers sharing a parent
group are assumed to share a pid namespace, as processes of one machine or container do).

Where groups cannot be made (no cgroup v1 memory controller, cgroup v2 only, not root and no
delegated group), ``MemoryGroups.open`` answers None and the engine falls back to a limit per
process (``local.py``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from catalog.engines.guard import GUARD, remove_cgroup, remove_cgroups

_PREFIX = "catalog-"


def _memory_mount(mounts: str = "/proc/self/mounts") -> Path | None:
    """Where the cgroup v1 memory controller is mounted, if it is."""
    try:
        with open(mounts, encoding="utf-8") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) >= 4 and fields[2] == "cgroup" and \
                        "memory" in fields[3].split(","):
                    return Path(fields[1])
    except OSError:
        pass
    return None


def _own_group(proc: str) -> str | None:
    """The memory cgroup (a path from the hierarchy's root) of ``/proc/<proc>/cgroup``."""
    try:
        with open(f"/proc/{proc}/cgroup", encoding="utf-8") as handle:
            for line in handle:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if "memory" in controllers.split(","):
                    return path
    except (OSError, ValueError):
        pass
    return None


def _start_time(pid: int) -> str | None:
    """A process's start time in clock ticks since boot: with its pid, who it is."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _write(path: Path, value: str) -> None:
    with open(path, "w", encoding="ascii") as handle:
        handle.write(value)


@dataclass
class JobGroup:
    """One job's memory cgroup."""

    path: Path
    limit_mb: int

    def oom_kills(self) -> int:
        """How many processes the kernel killed in the group for going past its limit."""
        try:
            text = (self.path / "memory.oom_control").read_text(encoding="ascii")
        except OSError:
            return 0
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
        return 0

    def remove(self) -> bool:
        """Kill whatever is left in the group and remove it; whether it is gone."""
        return remove_cgroup(str(self.path))


class MemoryGroups:
    """This process's directory of job groups, made on first use."""

    def __init__(self, mount: Path, directory: Path) -> None:
        self.mount = mount
        self.directory = directory
        self._numbers = itertools.count()

    @classmethod
    def open(cls) -> MemoryGroups | None:
        """This process's groups, after removing those of workers that have gone; None where
        this process may not make memory cgroups."""
        mount, own = _memory_mount(), _own_group("self")
        if mount is None or own is None:
            return None
        parent = mount / own.lstrip("/")
        pid = os.getpid()
        directory = parent / f"{_PREFIX}{pid}-{_start_time(pid)}"
        try:
            directory.mkdir(exist_ok=True)
        except OSError:  # read-only, not ours: no groups here
            return None
        sweep(parent, keep=directory)
        GUARD.remove_at_death(str(directory))
        return cls(mount, directory)

    def spawn_in(self, limit_mb: int) -> JobGroup:
        """A new, not yet limited, group (OSError when it cannot be made)."""
        path = self.directory / f"job-{next(self._numbers)}"
        path.mkdir()
        return JobGroup(path, limit_mb)

    def enter(self, group: JobGroup) -> Path:
        """Move the calling thread into ``group``; the group it left, to go ``back`` to."""
        own = _own_group("thread-self")
        if own is None:
            raise OSError("this thread's memory cgroup cannot be read")
        _write(group.path / "tasks", str(threading.get_native_id()))
        return self.mount / own.lstrip("/")

    @staticmethod
    def back(previous: Path) -> None:
        """Move the calling thread back into ``previous``."""
        _write(previous / "tasks", str(threading.get_native_id()))

    @staticmethod
    def limit(group: JobGroup) -> None:
        """Set the group's limit, swap included (OSError EBUSY when it already uses more)."""
        limit = str(group.limit_mb * 1024 * 1024)
        _write(group.path / "memory.limit_in_bytes", limit)
        with contextlib.suppress(FileNotFoundError):  # no swap accounting: no swap to stretch
            _write(group.path / "memory.memsw.limit_in_bytes", limit)


def sweep(parent: Path, keep: Path | None = None) -> list[Path]:
    """Remove the job groups under ``parent`` of workers that have gone (and were not cleaned
    up by their guard); the directories removed."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            if not entry.name.startswith(_PREFIX) or not entry.is_dir(follow_symlinks=False):
                continue
            if keep is not None and entry.path == str(keep):
                continue
            pid, _, started = entry.name.removeprefix(_PREFIX).partition("-")
            if not pid.isdigit() or _start_time(int(pid)) == started:
                continue  # its worker is alive
            remove_cgroups(entry.path)
            removed.append(Path(entry.path))
    return removed
