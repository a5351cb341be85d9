"""The local engine: each piece of work is a child process in a process group of its own, its
stdout and stderr in files of the work directory, killed as a group on timeout or cancel, and
by the guard (``catalog.engines.guard``) if the worker dies first.

A function runs in a child too (``catalog.engines.call``), so that a runaway function is killed,
not waited for, and nothing it does can take the worker down.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from catalog.engines import call
from catalog.engines.base import Execution, Resources, read_execution
from catalog.engines.guard import GUARD

_KILL_GRACE_S = 2.0  # SIGTERM, then SIGKILL for a group that has not gone by then


def command_argv(command: Any) -> list[str]:
    """A command given as a list of arguments, or as one string split as a shell would."""
    if isinstance(command, str):
        argv = shlex.split(command)
    elif isinstance(command, list) and all(isinstance(part, str) for part in command):
        argv = list(command)
        if len(argv) == 1 and " " in argv[0]:
            argv = shlex.split(argv[0])  # workflow-core's one-string form
    else:
        raise ValueError("a command is a list of strings or one string")
    if not argv:
        raise ValueError("the command is empty")
    return argv


def spawn_group(argv: list[str], cwd: Path, stdout: IO[bytes], stderr: IO[bytes],
                env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` as the leader of a process group of its own, watched by the guard (it
    dies with the group if this process dies first). No ``preexec_fn``: Python then starts it
    with ``vfork``, several times faster than the ``fork`` a ``preexec_fn`` forces."""
    process = subprocess.Popen(argv, cwd=cwd, stdout=stdout, stderr=stderr,
                               stdin=subprocess.DEVNULL, process_group=0, env=env)
    GUARD.watch(process.pid)
    return process


class LocalRun:
    """A child process group running one piece of work."""

    process: subprocess.Popen[bytes]

    def __init__(self, argv: list[str], workdir: Path, timeout: int,
                 result_file: Path | None, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.timeout = timeout
        self.result_file = result_file
        self.stdout = workdir / "stdout.txt"
        self.stderr = workdir / "stderr.txt"
        self._deadline = time.monotonic() + timeout
        self._killed: str | None = None
        self._timed_out = False
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self.process = spawn_group(argv, workdir, out, err, env)
        self.native_id = str(self.process.pid)

    def _ended(self, timeout: float) -> bool:
        """Whether the leader has ended (reaped, and released from the guard), waiting up to
        ``timeout`` s for it: on its pidfd where there is one, woken the moment it exits,
        rather than ``Popen.wait``'s polling with sleeps that add latency to every job."""
        if self.process.poll() is None and timeout > 0:
            pidfd = -1
            with contextlib.suppress(OSError, AttributeError):
                pidfd = os.pidfd_open(self.process.pid)
            if pidfd < 0:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=timeout)
            else:
                try:
                    poller = select.poll()
                    poller.register(pidfd, select.POLLIN)
                    poller.poll(math.ceil(timeout * 1000))
                finally:
                    os.close(pidfd)
        if self.process.poll() is None:
            return False
        GUARD.release(self.process.pid)
        return True

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s (less if the work's own time runs out first)."""
        if self._ended(max(0.0, min(timeout, self._deadline - time.monotonic()))):
            return True
        if time.monotonic() >= self._deadline:
            self._timed_out = True
            self.kill(f"timed out after {self.timeout} s")
            return True
        return False

    def kill(self, reason: str) -> None:
        """SIGTERM to the group, SIGKILL to whatever of it is left after a grace period."""
        self._killed = self._killed or reason
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=_KILL_GRACE_S)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # children the leader left behind
        self.process.wait()
        GUARD.release(self.process.pid)

    def result(self) -> Execution:
        if self._killed is not None:
            return Execution(self.process.poll(), stdout=self.stdout, stderr=self.stderr,
                             native_id=self.native_id, timed_out=self._timed_out, killed=True,
                             error=self._killed)
        return read_execution(self.process.poll(), self.stdout, self.stderr, self.result_file,
                              self.native_id)


class LocalEngine:
    """Runs work as child processes of this one."""

    name = "local"

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable

    def start(self, work: dict[str, Any], workdir: Path, timeout: int) -> LocalRun:
        """Start a function or a command (ValueError when ``work`` names neither, or asks
        for malformed resources)."""
        resources = _resources_env(work, timeout)
        workdir.mkdir(parents=True, exist_ok=True)
        if work.get("command") is not None:
            env = None if resources is None else {**os.environ, **resources}
            return LocalRun(command_argv(work["command"]), workdir, timeout, None, env)
        function = work.get("function")
        if not isinstance(function, str) or not function:
            raise ValueError("the job's data names no function and no command")
        parameters = work.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ValueError("the job's parameters are not a JSON object")
        parameters_file = workdir / ".parameters.json"
        parameters_file.write_text(json.dumps(parameters), encoding="utf-8")
        result_file = workdir / ".result.json"
        # The worker's import path, so that functions importable here are importable there.
        env = {**os.environ, **(resources or {})}
        env["PYTHONPATH"] = os.pathsep.join(p for p in [os.getcwd(), *sys.path] if p)
        return LocalRun([self.python, call.__file__, function, str(parameters_file),
                         str(result_file)], workdir, timeout, result_file, env)


def _resources_env(work: dict[str, Any], timeout: int) -> dict[str, str] | None:
    """The job's resources told to its work in its environment, as Slurm tells its own
    (``SLURM_CPUS_PER_TASK``...), so that it can size its thread pools: this engine runs on
    the worker's machine and does not enforce them. None when the work asks for none."""
    if work.get("resources") is None:
        return None
    resources = Resources.of(work, timeout)
    env = {"CATALOG_CORES": str(resources.cores), "CATALOG_TIME_S": str(resources.time_s)}
    if resources.memory_mb is not None:
        env["CATALOG_MEMORY_MB"] = str(resources.memory_mb)
    return env
