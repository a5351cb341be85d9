"""The docker engine as the dispatcher drives it (``catalog run --engine docker``; the
``Fleet`` of catalog.engines.dispatcher): each job a container named by its UUID and labelled
with it and the dispatcher's name, all followed with one ``docker inspect`` a tick.

- The job's data names the image (or the dispatcher's ``--image`` does) and the command; its
  ``resources`` become ``--cpus`` (cores) and ``--memory`` (MB). Nothing else of the data
  reaches ``docker run``: no mounts, network or privileges a job could ask for itself.
- The job's work directory is bound read-write at ``/work``, where the command starts: a
  product it writes there and names on its last line of output (``({...}, ["out.csv"], [])``,
  relative or under ``/work``) is archived and indexed with fixity like any worker's. (A bind
  mount is a path of the daemon's machine: the dispatcher runs beside its dockerd.)
- The job's timeout is kept from the container's own start time (so a restarted dispatcher
  keeps it too): SIGTERM at the timeout, SIGKILL ``STOP_GRACE_S`` later.
- How a container ended maps to an event through config/mappings/docker.toml: COMPLETED,
  FAILED (exit code), OOMKILLED, TIMEOUT, DEAD, and REMOVED (``docker rm`` outside the
  catalog: cancelled, as the mapping says).
- A container is removed only once its attempt is reported: a dispatcher killed in between
  finds it again by name, sees the lease gone, and removes it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from catalog.engines.base import Execution, last_line, outputs_of_line
from catalog.engines.call import Outputs
from catalog.engines.docker import (
    LABEL,
    DockerEngine,
    DockerUnavailable,
    kernel_logged_oom,
    started_at,
)
from catalog.mappings import get_mapping

DISPATCHER_LABEL = "org.catalog.dispatcher"
MOUNT = "/work"  # the job's work directory, inside its container
STOP_GRACE_S = 10.0
_PASSED = ("image", "command", "environment", "resources", "limits")  # of a job's data
# Told to work on this host, not in a container, which sees only its work directory.
_HOST_PATHS = ("CATALOG_DB", "CATALOG_ARCHIVE_ROOT", "CATALOG_CONFIG", "CATALOG_ARCHIVE_PATH")


class ContainerRun:
    """One job's container, followed by the fleet's inspect of all of them."""

    def __init__(self, engine: DockerEngine, name: str, container: str, workdir: Path,
                 timeout: int) -> None:
        self.engine = engine
        self.name = name
        self.native_id = container
        self.workdir = workdir
        self.timeout = timeout
        self.state: dict[str, Any] = {}
        self.gone = False
        self.timed_out = False
        self._killed: str | None = None
        self._terminated_at: float | None = None

    def observe(self, state: dict[str, Any] | None, now: float) -> bool:
        """Take the container's state (None: there is none); True once it has ended. A
        container past its time is stopped here (SIGTERM, then SIGKILL after the grace)."""
        if state is None:
            self.gone = True
            return True
        self.state = state
        if state.get("Status") in ("exited", "dead"):
            return True
        started = started_at(state)
        if started is not None and now - started >= self.timeout:
            if self._terminated_at is None:
                self.timed_out = True
                self._terminated_at = now
                self.engine.signal(self.name, "TERM")
            elif now - self._terminated_at >= STOP_GRACE_S:
                self.engine.signal(self.name, "KILL")
        return False

    def kill(self, reason: str) -> None:
        self._killed = self._killed or reason
        self.engine.remove(self.name)

    def status(self) -> str:
        """How it ended, in docker.toml's terms."""
        if self.gone:
            return "REMOVED"
        if self.timed_out:
            return "TIMEOUT"
        code = self.state.get("ExitCode")
        if self.state.get("OOMKilled") or (code == 137 and kernel_logged_oom(self.native_id)):
            return "OOMKILLED"
        if self.state.get("Status") == "dead":
            return "DEAD"
        return "COMPLETED" if code == 0 else "FAILED"

    def cancelled_elsewhere(self) -> bool:
        return self._killed is None and \
            get_mapping("docker").event_for(self.status()) == "cancel"

    def result(self) -> Execution:
        stdout, stderr = self.workdir / "stdout.txt", self.workdir / "stderr.txt"
        if not self.gone:
            self.engine.logs_to(self.name, stdout, stderr)
        code = self.state.get("ExitCode")
        execution = Execution(code if isinstance(code, int) else None, stdout=stdout,
                              stderr=stderr, native_id=self.native_id,
                              timed_out=self.timed_out, killed=self._killed is not None)
        status = self.status()
        if self._killed is not None:
            execution.error = self._killed
        elif get_mapping("docker").event_for(status) == "finish":
            outputs = outputs_of_line(last_line(stdout)) or Outputs({"returncode": code})
            outputs.products = [_outside(path) for path in outputs.products]
            outputs.plots = [_outside(path) for path in outputs.plots]
            execution.outputs = outputs
        else:
            execution.error = _REASONS[status].format(code=code, timeout=self.timeout)
        return execution


_REASONS = {
    "FAILED": "docker FAILED: the command exited with code {code}",
    "OOMKILLED": "docker OOMKILLED: the container went past its memory limit and was killed "
                 "(exit code {code})",
    "TIMEOUT": "docker TIMEOUT: the container ran past the job's {timeout} s and was stopped",
    "DEAD": "docker DEAD: the daemon could not stop or remove the container",
    "REMOVED": "docker REMOVED: the container was removed outside the catalog",
}


def _outside(path: str) -> str:
    """A path the command named inside its container, relative to its work directory."""
    return path[len(MOUNT) + 1:] if path.startswith(MOUNT + "/") else path


class DockerFleet:
    """Runs jobs as containers of ``engine``'s daemon for the dispatcher named ``dispatcher``;
    ``image``: the image of jobs whose data names none."""

    name = "docker"

    def __init__(self, engine: DockerEngine | None = None, dispatcher: str = "docker",
                 image: str | None = None) -> None:
        self.engine = engine or DockerEngine()
        self.dispatcher = dispatcher
        self.image = image

    def start(self, uuid: str, work: dict[str, Any], workdir: Path, timeout: int,
              token: str) -> ContainerRun:
        if work.get("command") is None:
            raise ValueError("the docker engine runs a command in an image: the job's data "
                             "names no command" + (" (a function runs with --engine local "
                                                   "or slurm)" if "function" in work else ""))
        passed = {key: work[key] for key in _PASSED if work.get(key) is not None}
        if isinstance(passed.get("environment"), dict):  # this host's paths mean nothing there
            passed["environment"] = {name: value for name, value in passed["environment"].items()
                                     if name not in _HOST_PATHS}
        passed.setdefault("image", self.image)
        if passed["image"] is None:
            raise ValueError("the job's data names no image, and the dispatcher has no "
                             "default (--image)")
        passed.update(job_uuid=uuid, mounts=[{"source": str(workdir), "target": MOUNT}],
                      workdir_in=MOUNT)
        name, container, _ = self.engine.run_container(
            passed, workdir, labels={DISPATCHER_LABEL: self.dispatcher}, replace=True)
        return ContainerRun(self.engine, name, container, workdir, timeout)

    def find(self, uuids: list[str]) -> dict[str, str]:
        done = self.engine.call("ps", "--all", "--no-trunc", "--filter", f"label={LABEL}",
                                "--format", "{{.Names}}\t{{.ID}}")
        if done.returncode != 0:
            raise DockerUnavailable(f"docker ps failed: {done.stderr.strip()}")
        wanted = set(uuids)
        found = dict(line.split("\t", 1) for line in done.stdout.splitlines() if "\t" in line)
        return {name: container for name, container in found.items() if name in wanted}

    def adopt(self, uuid: str, native_id: str, workdir: Path, timeout: int) -> ContainerRun:
        if self.engine.state(uuid).get("Status") == "created":  # run, but never started
            self.engine.call("start", "--", uuid)
        return ContainerRun(self.engine, uuid, native_id, workdir, timeout)

    def follow(self, runs: list[Any]) -> list[Any]:
        states = self.engine.states([run.name for run in runs])
        now = time.time()
        return [run for run in runs if run.observe(states.get(run.name), now)]

    def discard(self, uuid: str, native_id: str) -> None:
        self.engine.remove(uuid)

    def release(self, run: Any) -> None:
        self.engine.remove(run.name)

