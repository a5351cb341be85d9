"""The docker engine: each piece of work is a container of an image already on this machine,
named and labelled by its job UUID, with memory and CPU limits; its exit code and whether the
kernel killed it for memory are read from ``docker inspect``, its output from ``docker logs``.

Nothing is ever pulled (``--pull never``, and an image that is not present is refused before
anything runs). The daemon is whichever the ``docker`` client reaches (``DOCKER_HOST``).
Environment values are handed to the client in its own environment and named with ``-e NAME``,
so that no value (a token, say) appears on a command line (docker_flags.py builds the flags).
A container started before a restart is followed again with ``attach``; many containers at once,
for ``catalog run --engine docker``, are docker_fleet.py's.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import time
import uuid as uuid_module
from datetime import datetime
from pathlib import Path
from typing import Any

from catalog.engines.base import (
    EngineAway,
    Execution,
    environment_of,
    last_line,
    outputs_of_line,
)
from catalog.engines.call import Outputs
from catalog.engines.docker_flags import limit_flags, mount_flags
from catalog.engines.local import command_argv

LABEL = "org.catalog.job"  # the job UUID, on every container this engine starts
_CLI_TIMEOUT_S = 60.0  # any one docker client call (a start included)
_KILL_TIMEOUT_S = 10  # docker stop's grace before SIGKILL
_LOG_BYTES = 16 * 1024 * 1024  # of a container's output kept in its work directory
_KMSG = "/dev/kmsg"
_KMSG_RECORDS = 100_000  # at most this many records read (the ring buffer holds far fewer)
_CONTAINER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")


class DockerUnavailable(EngineAway):
    """No docker daemon answers (why, in the message)."""


def started_at(state: dict[str, Any]) -> float | None:
    """A container's start time (epoch seconds) from its ``State.StartedAt``; None before."""
    text = str(state.get("StartedAt") or "")
    if not text or text.startswith("0001-"):
        return None
    head, _, fraction = text.rstrip("Z").partition(".")
    try:
        moment = datetime.fromisoformat(head + "+00:00")
    except ValueError:
        return None
    return moment.timestamp() + (float(f"0.{fraction[:6]}") if fraction.isdigit() else 0.0)


def kernel_logged_oom(container_id: str, kmsg: str = _KMSG) -> bool:
    """Whether the kernel's log holds a memory-cgroup OOM kill in ``container_id``'s cgroup
    (``oom_memcg=/docker/<id>``, the line every OOM kill writes); False when the log cannot be
    read (``/dev/kmsg`` needs privileges dockerd has and the catalog may not)."""
    if not container_id or not re.fullmatch(r"[0-9a-f]{12,64}", container_id):
        return False
    needle = f"oom_memcg=/docker/{container_id}".encode()
    try:
        fd = os.open(kmsg, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        for _ in range(_KMSG_RECORDS):
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                return False  # the end of the log
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # a record overwritten while read: go on
                    continue
                return False
            if not record:
                return False
            if needle in record:
                return True
        return False
    finally:
        os.close(fd)


class DockerRun:
    """One container, followed with ``docker wait``."""

    def __init__(self, engine: DockerEngine, name: str, container: str, workdir: Path,
                 timeout: int, memory_limited: bool = False, remaining: float | None = None,
                 keep: bool = False) -> None:
        self.engine = engine
        self.memory_limited = memory_limited
        self.name = name
        self.native_id = container
        self.workdir = workdir
        self.timeout = timeout
        self.stdout = workdir / "stdout.txt"
        self.stderr = workdir / "stderr.txt"
        # ``remaining``: of a container started before (adopted), what is left of its time
        self._deadline = time.monotonic() + (timeout if remaining is None else remaining)
        self.keep = keep  # left for the caller to remove once the attempt is reported
        self._killed: str | None = None
        self._timed_out = False
        self._result: Execution | None = None
        self._waiter = subprocess.Popen(
            [engine.docker, "wait", container], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s (less if the work's own time runs out first)."""
        left = self._deadline - time.monotonic()
        try:
            self._waiter.wait(timeout=max(0.0, min(timeout, left)))
            return True
        except subprocess.TimeoutExpired:
            if time.monotonic() >= self._deadline:
                self._timed_out = True
                self.kill(f"timed out after {self.timeout} s")
                return True
            return False

    def kill(self, reason: str) -> None:
        """Stop the container (SIGTERM, SIGKILL after a grace period), noting why."""
        self._killed = self._killed or reason
        self.engine.stop(self.name)
        try:
            self._waiter.wait(timeout=_CLI_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._waiter.kill()
            self._waiter.wait()

    def _oom_killed(self, state: dict[str, Any]) -> bool:
        """Whether the kernel killed the container for want of memory. Docker's ``OOMKilled``
        misses some (measured here: 3 of 6 containers under an 8 MiB limit, still false
        seconds after the exit), so a container under a memory limit that died of SIGKILL
        (137), not by our hand, is looked up in the kernel's log as well."""
        if state.get("OOMKilled"):
            return True
        if not (self.memory_limited and self._killed is None and state.get("ExitCode") == 137):
            return False
        return kernel_logged_oom(self.native_id)

    def result(self) -> Execution:
        """How the container ended, its logs in the work directory; then it is removed."""
        if self._result is not None:
            return self._result
        state = self.engine.state(self.name)
        self.engine.logs_to(self.name, self.stdout, self.stderr)
        if not self.keep:
            self.engine.remove(self.name)
        code = state.get("ExitCode")
        execution = Execution(code if isinstance(code, int) else None, stdout=self.stdout,
                              stderr=self.stderr, native_id=self.native_id,
                              timed_out=self._timed_out, killed=self._killed is not None)
        if self._killed is not None:
            execution.error = self._killed
        elif self._oom_killed(state):
            execution.error = (f"the container was killed for want of memory (OOMKilled, exit "
                               f"code {code})")
        elif code != 0:
            execution.error = f"the container exited with code {code}"
        else:
            execution.outputs = outputs_of_line(last_line(self.stdout)) or Outputs(
                {"returncode": code})
        self._result = execution
        return execution


class DockerEngine:
    """Runs work as containers through the ``docker`` client."""

    name = "docker"

    def __init__(self, docker: str = "docker") -> None:
        self.docker = shutil.which(docker) or docker

    def _call(self, *args: str, env: dict[str, str] | None = None,
              timeout: float = _CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run([self.docker, *args], capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, timeout=timeout, env=env)
        except FileNotFoundError:
            raise DockerUnavailable(f"no docker client ({self.docker!r} is not found)") from None
        except subprocess.TimeoutExpired:
            raise DockerUnavailable(f"docker {args[0]} did not answer within {timeout:g} s") \
                from None

    def call(self, *args: str) -> subprocess.CompletedProcess[str]:
        """One docker client call (DockerUnavailable when there is no client or no answer)."""
        return self._call(*args)

    def unavailable(self) -> str | None:
        """Why no container can run here (no client, no daemon), or None when one can."""
        try:
            done = self._call("version", "--format", "{{.Server.Version}}", timeout=10)
        except DockerUnavailable as exc:
            return str(exc)
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or ["no answer"])[-1]
            return f"the docker daemon does not answer: {why}"
        return None

    def has_image(self, image: str) -> bool:
        """Whether ``image`` is on this machine (nothing is ever pulled)."""
        done = self._call("image", "inspect", "--format", "{{.Id}}", "--", image)
        return done.returncode == 0

    def start(self, work: dict[str, Any], workdir: Path, timeout: int) -> DockerRun:
        """Start ``work`` (``image``, ``command``, optional ``environment``, ``limits`` or
        ``resources``, ``network`` (a docker network that must exist), ``mounts`` and
        ``job_uuid``, the container's name) detached; ValueError for work that cannot run
        here (no image, an image not present, bad limits), DockerUnavailable without a
        daemon."""
        name, container, memory_limited = self.run_container(work, workdir)
        return DockerRun(self, name, container, workdir, timeout, memory_limited=memory_limited)

    def run_container(self, work: dict[str, Any], workdir: Path,
                      labels: dict[str, str] | None = None,
                      replace: bool = False) -> tuple[str, str, bool]:
        """``docker run --detach`` of ``work`` (as ``start`` takes it): its name, container id
        and whether it has a memory limit. ``mounts`` (``[{"source": host directory, "target":
        path in the container}]``) are bound read-write; ``workdir_in`` is the directory the
        command starts in. With ``replace`` a container of the same name (a previous attempt's)
        is removed first."""
        image = work.get("image")
        if not isinstance(image, str) or not image or image.startswith("-"):
            raise ValueError("the work names no container image")
        argv = command_argv(work.get("command")) if work.get("command") is not None else []
        environment = environment_of(work)
        flags = [*limit_flags(work), *mount_flags(work)]
        name = str(work.get("job_uuid") or f"catalog-{uuid_module.uuid4()}")
        if not _CONTAINER_NAME.match(name):
            raise ValueError(f"{name!r} cannot name a container")
        if not self.has_image(image):
            raise ValueError(f"image {image!r} is not on this machine, and nothing is pulled "
                             "here: load or build it first")
        network = work.get("network")
        if network is not None:
            if not isinstance(network, str) or not _CONTAINER_NAME.match(network):
                raise ValueError(f"{network!r} cannot name a docker network")
            if self._call("network", "inspect", "--", network).returncode != 0:
                raise ValueError(f"docker network {network!r} does not exist here: create it "
                                 "first (nothing is created for a job)")
            flags = [*flags, "--network", network]
        workdir.mkdir(parents=True, exist_ok=True)
        client_env = {**os.environ, **environment}
        labelled = {LABEL: name, **(labels or {})}
        argv_run = [
            "run", "--detach", "--pull", "never", "--name", name,
            *[part for key, value in labelled.items() for part in ("--label", f"{key}={value}")],
            *flags, *[part for key in environment for part in ("--env", key)],
            "--", image, *argv]
        done = self._call(*argv_run, env=client_env)
        if done.returncode != 0 and replace and "already in use" in done.stderr:
            self.remove(name)
            done = self._call(*argv_run, env=client_env)
        if done.returncode != 0:
            if "already in use" not in done.stderr:
                self.remove(name)  # created but not started (a command not in the image)
            raise ValueError(f"docker could not start the container: {done.stderr.strip()}")
        return name, done.stdout.strip(), "--memory" in flags

    def attach(self, name: str, workdir: Path, timeout: int) -> DockerRun | None:
        """Follow again the container ``name``, started before a restart (started now if it
        was only created), with what is left of its ``timeout``; it is left for the caller
        to remove. None when there is no such container."""
        done = self._call("inspect", "--type", "container", "--format",
                          "{{.Id}}\t{{.HostConfig.Memory}}\t{{json .State}}", "--", name)
        if done.returncode != 0:
            if "no such" in done.stderr.lower():
                return None
            raise DockerUnavailable(f"docker inspect failed: {done.stderr.strip()}")
        container, memory, text = done.stdout.strip().split("\t", 2)
        state = json.loads(text)
        if state.get("Status") == "created":
            self._call("start", "--", name)
            state = {}  # all its time left
        started = started_at(state)
        workdir.mkdir(parents=True, exist_ok=True)
        return DockerRun(self, name, container, workdir, timeout, memory_limited=memory != "0",
                         remaining=None if started is None else timeout - (time.time() - started),
                         keep=True)

    def state(self, name: str) -> dict[str, Any]:
        """The container's ``State`` from ``docker inspect`` ({} once it is gone)."""
        done = self._call("inspect", "--type", "container", "--format", "{{json .State}}",
                          "--", name)
        if done.returncode != 0:
            return {}
        state = json.loads(done.stdout)
        return state if isinstance(state, dict) else {}

    def states(self, names: list[str]) -> dict[str, dict[str, Any]]:
        """The ``State`` of each of the containers ``names`` that exists, in one call."""
        if not names:
            return {}
        done = self._call("inspect", "--type", "container", "--format",
                          "{{.Name}}\t{{json .State}}", "--", *names)
        found: dict[str, dict[str, Any]] = {}
        for line in done.stdout.splitlines():
            name, _, state = line.partition("\t")
            if state:
                found[name.lstrip("/")] = json.loads(state)
        if done.returncode != 0 and len(found) < len(names) and \
                "no such" not in done.stderr.lower():
            raise DockerUnavailable(f"docker inspect failed: {done.stderr.strip()}")
        return found

    def signal(self, name: str, signal_name: str) -> bool:
        """Send the container's command ``signal_name`` (TERM, KILL); False when it runs
        no more."""
        return self._call("kill", "--signal", signal_name, "--", name).returncode == 0

    def logs(self, name: str, limit: int = _LOG_BYTES) -> str | None:
        """The container's output so far (both streams), or None once it is gone."""
        done = self._call("logs", "--", name)
        if done.returncode != 0:
            return None
        return (done.stdout + done.stderr)[-limit:]

    def logs_to(self, name: str, stdout: Path, stderr: Path) -> None:
        with open(stdout, "wb") as out, open(stderr, "wb") as err:
            try:
                subprocess.run([self.docker, "logs", "--", name], stdout=out, stderr=err,
                               stdin=subprocess.DEVNULL, timeout=_CLI_TIMEOUT_S, check=False)
            except subprocess.TimeoutExpired:
                err.write(b"\n[docker logs did not answer in time]\n")
        for path in (stdout, stderr):
            if path.stat().st_size > _LOG_BYTES:  # the end is what tells how it ended
                data = path.read_bytes()[-_LOG_BYTES:]
                path.write_bytes(data)

    def stop(self, name: str) -> bool:
        """Stop the container ``name``; False when there was none."""
        done = self._call("stop", "--time", str(_KILL_TIMEOUT_S), "--", name,
                          timeout=_CLI_TIMEOUT_S + _KILL_TIMEOUT_S)
        return done.returncode == 0

    def remove(self, name: str) -> bool:
        """Remove the container ``name`` (stopped first if it runs); False when there was
        none."""
        done = self._call("rm", "--force", "--", name)
        return done.returncode == 0
