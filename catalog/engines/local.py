"""The local engine: each piece of work is a child process in a process group of its own, its
stdout and stderr in files of the work directory, killed as a group on timeout or cancel.

A function runs in a child too (``catalog.engines.call``), so that a runaway function is killed,
not waited for, and nothing it does can take the worker down.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from catalog.engines import call
from catalog.engines.base import Execution, read_execution

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


class LocalRun:
    """A child process group running one piece of work."""

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
            self.process = subprocess.Popen(
                argv, cwd=workdir, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                start_new_session=True, env=env, preexec_fn=_die_with_parent)
        self.native_id = str(self.process.pid)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s (less if the work's own time runs out first)."""
        left = self._deadline - time.monotonic()
        try:
            self.process.wait(timeout=max(0.0, min(timeout, left)))
            return True
        except subprocess.TimeoutExpired:
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

    def result(self) -> Execution:
        if self._killed is not None:
            return Execution(self.process.poll(), stdout=self.stdout, stderr=self.stderr,
                             native_id=self.native_id, timed_out=self._timed_out, killed=True,
                             error=self._killed)
        return read_execution(self.process.poll(), self.stdout, self.stderr, self.result_file,
                              self.native_id)


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before it runs the work: on Linux, be killed when the worker dies (a
    worker killed with SIGKILL must not leave its work running, unheld, while the job is
    retried elsewhere). Elsewhere, the lease's expiry still fails the attempt."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class LocalEngine:
    """Runs work as child processes of this one."""

    name = "local"

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable

    def start(self, work: dict[str, Any], workdir: Path, timeout: int) -> LocalRun:
        """Start a function or a command (ValueError when ``work`` names neither)."""
        workdir.mkdir(parents=True, exist_ok=True)
        if work.get("command") is not None:
            return LocalRun(command_argv(work["command"]), workdir, timeout, None)
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
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in [os.getcwd(), *sys.path] if p)
        return LocalRun([self.python, call.__file__, function, str(parameters_file),
                         str(result_file)], workdir, timeout, result_file, env)
