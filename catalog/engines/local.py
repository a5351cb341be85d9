"""The local engine: each piece of work is a child process in a process group of its own, its
stdout and stderr in files of the work directory, killed as a group on timeout or cancel, and
by the guard (``catalog.engines.guard``) if the worker dies first.

A function runs in a child too (``catalog.engines.call``), so that a runaway function is killed,
not waited for, and nothing it does can take the worker down.

Work that asks for resources (``{"cores", "memory", "time"}``) is held to them, as Slurm holds
a job on its nodes, and told them in ``CATALOG_CORES``, ``CATALOG_MEMORY_MB`` and
``CATALOG_TIME_S``:

- **cores**: refused before anything starts when the job asks for more CPUs than this worker
  may use; otherwise the child starts with an affinity of that many CPUs (the least taken by
  this process's other runs), inherited by everything it starts. It is the child's affinity,
  not a cpuset: work that sets its own affinity can widen it, as it could under Slurm's
  task/affinity.
- **memory**: refused before anything starts when it is more than the machine has. Where this
  process may make cgroup v1 memory groups (root here, or a delegated group), each job gets one
  (``catalog.engines.cgroups``): the job and all its children, whatever group or session they
  move to, share the limit (swap included); the kernel kills inside the group when it goes
  past, ``memory.oom_control`` counts those kills, and the job then fails ``OUT_OF_MEMORY``
  whatever its exit code, as Slurm's task/cgroup marks it. At the end whatever is left in the
  group is killed and the group removed. Elsewhere (cgroup v2 only, no permission) the fallback
  is a per-process address-space limit (``RLIMIT_AS``) set on the child right after it starts:
  it counts address space rather than resident memory, reaches the children it starts after
  that, and makes an allocation past it fail (ENOMEM) instead of killing; only a function's own
  report of a ``MemoryError`` is then known to be out of memory, and a command's failure is
  reported with its exit code and the limit it ran under.
- **time**: the job's wall time and its timeout, the smaller wins; the reason says which.

Work that asks for no resources runs as it always did: on every CPU, with no memory limit.

Both are set without a ``preexec_fn`` or a wrapper, keeping ``vfork``: the starting thread
takes the job's affinity and cgroup for the instant of the start, then its own back.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import resource
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from catalog.engines import call
from catalog.engines.base import (
    Execution,
    Resources,
    environment_of,
    inherited_environment,
    read_execution,
)
from catalog.engines.cgroups import JobGroup, MemoryGroups
from catalog.engines.guard import GUARD
from catalog.resources import parse_resources

_KILL_GRACE_S = 2.0  # SIGTERM, then SIGKILL for a group that has not gone by then
OUT_OF_MEMORY = "OUT_OF_MEMORY"  # the reason's first word, as Slurm's end state names it


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


@dataclass
class Limits:
    """What a run is held to: cores (the CPUs, once taken), memory (MB), wall time (s) and
    why it is that time."""

    time_s: int
    timeout_reason: str
    cores: int = 1
    cpus: frozenset[int] | None = None
    memory_mb: int | None = None
    groups: MemoryGroups | None = None  # where its memory group goes; None: RLIMIT_AS


def spawn_group(argv: list[str], cwd: Path, stdout: IO[bytes], stderr: IO[bytes],
                env: dict[str, str] | None = None, cpus: frozenset[int] | None = None,
                cgroup: tuple[MemoryGroups, JobGroup] | None = None
                ) -> subprocess.Popen[bytes]:
    """Start ``argv`` as the leader of a process group of its own, watched by the guard (it
    dies with the group if this process dies first), on ``cpus`` and in ``cgroup`` if given.
    No ``preexec_fn``: Python then starts it with ``vfork``, several times faster than the
    ``fork`` a ``preexec_fn`` forces; the child inherits this thread's affinity and cgroups,
    which are the job's only while it starts."""
    own_cpus: set[int] | None = None
    own_group: Path | None = None
    try:
        if cpus is not None:
            own_cpus = os.sched_getaffinity(0)
            os.sched_setaffinity(0, cpus)
        if cgroup is not None:
            own_group = cgroup[0].enter(cgroup[1])
        process = subprocess.Popen(argv, cwd=cwd, stdout=stdout, stderr=stderr,
                                   stdin=subprocess.DEVNULL, process_group=0, env=env)
    finally:
        if own_group is not None:
            MemoryGroups.back(own_group)
        if own_cpus is not None:
            os.sched_setaffinity(0, own_cpus)
    GUARD.watch(process.pid)
    return process


class _CpuUse:
    """How many of this process's runs hold each CPU: a new run takes the least held."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[int, int] = {}

    def take(self, available: set[int], cores: int) -> frozenset[int]:
        with self._lock:
            chosen = sorted(available, key=lambda cpu: (self._held.get(cpu, 0), cpu))[:cores]
            for cpu in chosen:
                self._held[cpu] = self._held.get(cpu, 0) + 1
            return frozenset(chosen)

    def give(self, cpus: frozenset[int]) -> None:
        with self._lock:
            for cpu in cpus:
                self._held[cpu] -= 1

    def held(self) -> dict[int, int]:
        """How many runs hold each CPU (those held by none left out)."""
        with self._lock:
            return {cpu: count for cpu, count in self._held.items() if count}


CPU_USE = _CpuUse()
_GROUPS_LOCK = threading.Lock()
_GROUPS: dict[int, MemoryGroups | None] = {}  # pid -> its groups (a forked child: its own)


def memory_groups() -> MemoryGroups | None:
    """This process's memory groups, None where it may make none (opened on first use)."""
    with _GROUPS_LOCK:
        pid = os.getpid()
        if pid not in _GROUPS:
            _GROUPS.clear()
            _GROUPS[pid] = MemoryGroups.open()
        return _GROUPS[pid]


class LocalRun:
    """A child process group running one piece of work."""

    process: subprocess.Popen[bytes]
    _limits: Limits | None = None
    _group: JobGroup | None = None
    _oom: str | None = None  # why the run is out of memory, once known
    _finished = False

    def __init__(self, argv: list[str], workdir: Path, timeout: int,
                 result_file: Path | None, env: dict[str, str] | None = None,
                 limits: Limits | None = None) -> None:
        self.workdir = workdir
        self.timeout = timeout if limits is None else limits.time_s
        self.result_file = result_file
        self.stdout = workdir / "stdout.txt"
        self.stderr = workdir / "stderr.txt"
        self._deadline = time.monotonic() + self.timeout
        self._killed: str | None = None
        self._timed_out = False
        self._limits = limits
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            if limits is None:
                self.process = spawn_group(argv, workdir, out, err, env)
            else:
                self._spawn_limited(argv, out, err, env, limits)
        self.native_id = str(self.process.pid)

    def _spawn_limited(self, argv: list[str], out: IO[bytes], err: IO[bytes],
                       env: dict[str, str] | None, limits: Limits) -> None:
        groups, memory = limits.groups, limits.memory_mb
        cgroup: tuple[MemoryGroups, JobGroup] | None = None
        try:
            if groups is not None and memory is not None:
                self._group = groups.spawn_in(memory)
                cgroup = (groups, self._group)
            self.process = spawn_group(argv, self.workdir, out, err, env, limits.cpus, cgroup)
        except BaseException:
            self._finish()
            raise
        if memory is None:
            return
        if self._group is None:
            with contextlib.suppress(ProcessLookupError):  # ended already: nothing to hold
                limit = memory * 1024 * 1024
                resource.prlimit(self.process.pid, resource.RLIMIT_AS, (limit, limit))
            return
        try:  # set only now, so that nothing of this process's is ever killed by it
            MemoryGroups.limit(self._group)
        except OSError as exc:
            if exc.errno != errno.EBUSY:  # no limit: the job does not run without one
                self.kill(f"its memory limit could not be set: {exc}")
                raise
            self._oom = (f"{OUT_OF_MEMORY}: the job used more than its memory ({memory} MB) "
                         "as it started and was killed")
            self.kill(self._oom)

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
        self._finish()
        return True

    def _finish(self) -> None:
        """Once the leader is gone: whether the kernel killed for want of memory, then what
        is left in the job's memory group killed and the group removed; its CPUs given back."""
        if self._finished or self._limits is None:
            return
        self._finished = True
        group, limits = self._group, self._limits
        if group is not None:
            kills = group.oom_kills()
            if kills and self._oom is None:
                self._oom = (f"{OUT_OF_MEMORY}: the job went past its memory "
                             f"({group.limit_mb} MB) and was killed (the kernel killed {kills} "
                             "of its processes in its memory cgroup)")
            group.remove()
        if limits.cpus is not None:
            CPU_USE.give(limits.cpus)
            limits.cpus = None  # given back once

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s (less if the work's own time runs out first)."""
        if self._ended(max(0.0, min(timeout, self._deadline - time.monotonic()))):
            return True
        if time.monotonic() >= self._deadline:
            self._timed_out = True
            self.kill(self._limits.timeout_reason if self._limits is not None
                      else f"timed out after {self.timeout} s")
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
        self._finish()

    def result(self) -> Execution:
        if self._oom is not None:
            return Execution(self.process.poll(), stdout=self.stdout, stderr=self.stderr,
                             native_id=self.native_id, timed_out=self._timed_out,
                             killed=self._killed is not None, error=self._oom)
        if self._killed is not None:
            return Execution(self.process.poll(), stdout=self.stdout, stderr=self.stderr,
                             native_id=self.native_id, timed_out=self._timed_out, killed=True,
                             error=self._killed)
        execution = read_execution(self.process.poll(), self.stdout, self.stderr,
                                   self.result_file, self.native_id)
        limits = self._limits
        if limits is not None and limits.memory_mb is not None and self._group is None and \
                execution.error is not None:  # under RLIMIT_AS: only its own word tells
            if self.result_file is not None and execution.error.startswith("MemoryError"):
                execution.error = (f"{OUT_OF_MEMORY}: the job went past its memory "
                                   f"({limits.memory_mb} MB): an allocation failed under its "
                                   f"address-space limit ({execution.error})")
            elif self.result_file is None:
                execution.error += (f" (under an address-space limit of {limits.memory_mb} "
                                    "MB: an allocation it could not make may be why)")
        return execution


class LocalEngine:
    """Runs work as child processes of this one; ``cgroups=False`` holds memory with a
    per-process limit even where memory cgroups could be made."""

    name = "local"

    def __init__(self, python: str | None = None, cgroups: bool = True) -> None:
        self.python = python or sys.executable
        self.cgroups = cgroups

    def start(self, work: dict[str, Any], workdir: Path, timeout: int) -> LocalRun:
        """Start a function or a command (ValueError when ``work`` names neither, or asks
        for malformed resources or more than this machine has: then nothing starts)."""
        limits = self.limits(work, timeout)
        if limits is not None:
            limits.cpus = CPU_USE.take(os.sched_getaffinity(0), limits.cores)
        resources = None if limits is None else _resources_env(limits)
        try:
            return self._start(work, workdir, timeout, limits, resources)
        except BaseException:
            if limits is not None and limits.cpus is not None:
                CPU_USE.give(limits.cpus)
            raise

    def _start(self, work: dict[str, Any], workdir: Path, timeout: int,
               limits: Limits | None, resources: dict[str, str] | None) -> LocalRun:
        env = {**inherited_environment(), **environment_of(work), **(resources or {})}
        workdir.mkdir(parents=True, exist_ok=True)
        if work.get("command") is not None:
            return LocalRun(command_argv(work["command"]), workdir, timeout, None, env,
                            limits)
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
        env["PYTHONPATH"] = os.pathsep.join(p for p in [os.getcwd(), *sys.path] if p)
        return LocalRun([self.python, call.__file__, function, str(parameters_file),
                         str(result_file)], workdir, timeout, result_file, env, limits)

    def limits(self, work: dict[str, Any], timeout: int) -> Limits | None:
        """What the work is held to, None when it asks for no resources; ValueError, naming
        both numbers, when it asks for more than this machine has."""
        if work.get("resources") is None:
            return None
        resources = Resources.of(work, timeout)
        asked_time = parse_resources(work["resources"]).time
        available = os.sched_getaffinity(0)
        if resources.cores > len(available):
            raise ValueError(f"the job asks for {resources.cores} cores; this machine has "
                             f"{len(available)} (the CPUs this worker may use)")
        memory = resources.memory_mb
        machine_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        if memory is not None and memory > machine_mb:
            raise ValueError(f"the job asks for {memory} MB of memory; this machine has "
                             f"{machine_mb} MB")
        if asked_time is not None and asked_time < timeout:
            time_s, why = asked_time, (f"timed out after {asked_time} s (its wall time, "
                                       f"resources.time; its timeout is {timeout} s)")
        elif asked_time is not None and asked_time > timeout:
            time_s, why = timeout, (f"timed out after {timeout} s (its timeout; its wall "
                                    f"time, resources.time, is {asked_time} s)")
        else:
            time_s, why = timeout, f"timed out after {timeout} s"
        groups = memory_groups() if memory is not None and self.cgroups else None
        return Limits(time_s, why, resources.cores, None, memory, groups)


def _resources_env(limits: Limits) -> dict[str, str]:
    """The job's resources told to its work in its environment, as Slurm tells its own
    (``SLURM_CPUS_PER_TASK``...), so that it can size its thread pools."""
    env = {"CATALOG_CORES": str(len(limits.cpus or ())), "CATALOG_TIME_S": str(limits.time_s)}
    if limits.memory_mb is not None:
        env["CATALOG_MEMORY_MB"] = str(limits.memory_mb)
    return env
