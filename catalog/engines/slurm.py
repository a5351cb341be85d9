"""The slurm engine (DESIGN §12): a job's work as a Slurm batch job named by the job's UUID,
with the cores, memory and wall time the job asks for, checked against the partition before
``sbatch``; its state read from ``squeue`` (all jobs in one call) and the jobcomp log; killed
with ``scancel``.

The batch script (mode 0700, in the work directory) runs the command, or the function through
``catalog/engines/call.py``, as the local engine does; given a ``report_url`` (the job's
webhook), through ``catalog/engines/node.py``, which reports the start and the outcome there.
Secrets (the job's token) reach the job only through the environment ``sbatch`` exports, never
the command line or the script.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from catalog.engines import call, node
from catalog.engines.base import (
    Execution,
    Resources,
    environment_of,
    inherited_environment,
    read_execution,
)
from catalog.engines.local import command_argv
from catalog.engines.slurm_client import NativeState, SlurmClient, SlurmError, parse_minutes
from catalog.mappings import get_mapping

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_OOM_MARK = "Exceeded job memory limit"
_POLL_S = 0.2


def check_name(name: str) -> str:
    """A job name Slurm keeps as given (ValueError otherwise)."""
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"job name {name!r} is not one Slurm keeps: 1 to 128 letters, digits, "
                         "'.', '_' or '-', starting with a letter or digit")
    return name


class SlurmEngine:
    """Runs work as Slurm batch jobs on the cluster ``client`` reaches."""

    name = "slurm"

    def __init__(self, client: SlurmClient | None = None, partition: str | None = None,
                 python: str | None = None) -> None:
        self.client = client or SlurmClient()
        self.partition = partition
        self.python = python or sys.executable
        self._limits: dict[str, str] | None = None

    def check(self, resources: Resources) -> None:
        """Refuse (ValueError, with Slurm's reason) resources beyond the partition's."""
        if self._limits is None:
            self._limits = self.client.partition(self.partition)
        limits = self._limits
        where = f"partition {limits.get('PartitionName')!r}"
        cpus = int(limits.get("CPUTot", "0"))
        if cpus and resources.cores > cpus:
            raise ValueError(f"Requested node configuration is not available: {resources.cores} "
                             f"cores asked, {where}'s nodes have {cpus}")
        memory = int(limits.get("RealMemory", "0"))
        if memory and resources.memory_mb is not None and resources.memory_mb > memory:
            raise ValueError(f"Requested node configuration is not available: "
                             f"{resources.memory_mb} MB asked, {where}'s nodes have {memory} MB")
        max_minutes = parse_minutes(limits.get("MaxTime", "UNLIMITED"))
        if max_minutes is not None and _minutes(resources.time_s) > max_minutes:
            raise ValueError(f"Requested time limit is invalid (exceeds partition MaxTime): "
                             f"{_minutes(resources.time_s)} min asked, {where} allows "
                             f"{max_minutes} min")

    def start(self, work: dict[str, Any], workdir: Path, timeout: int,
              name: str | None = None, secrets: dict[str, str] | None = None,
              report_url: str | None = None) -> SlurmRun:
        """Submit ``work`` as a batch job named ``name`` (default: the work directory's name)
        in ``workdir``; ValueError when the work, its resources or its name are refused.
        With ``report_url`` the node reports to it (node.py), with the token in ``secrets``."""
        job_name = check_name(name or workdir.name)
        resources = Resources.of(work, timeout)
        self.check(resources)
        environment = environment_of(work)
        workdir.mkdir(parents=True, exist_ok=True)
        argv, result_file = self._argv(work, workdir)
        if report_url:
            argv = [self.python, node.__file__, "--stdout", str(workdir / "stdout.txt"),
                    *(["--result", str(result_file)] if result_file is not None else []),
                    "--", *argv]
        script = workdir / ".slurm.sh"
        script.write_text("#!/bin/sh\nexec " + shlex.join(argv) + "\n", encoding="utf-8")
        script.chmod(0o700)
        options = [f"--job-name={job_name}", f"--chdir={workdir}",
                   f"--output={workdir / 'stdout.txt'}", f"--error={workdir / 'stderr.txt'}",
                   f"--cpus-per-task={resources.cores}", f"--time={_minutes(resources.time_s)}",
                   "--export=ALL", "--no-requeue"]
        if resources.memory_mb is not None:
            options.append(f"--mem={resources.memory_mb}M")
        if self.partition:
            options.append(f"--partition={self.partition}")
        env = {**inherited_environment(self.client.env), **environment, **(secrets or {})}
        if report_url:
            env["CATALOG_REPORT_URL"] = report_url
        if result_file is not None:
            env["PYTHONPATH"] = os.pathsep.join(p for p in [os.getcwd(), *sys.path] if p)
        try:
            native_id = self.client.sbatch(options, script, env)
        except SlurmError as exc:
            raise ValueError(str(exc)) from None
        return SlurmRun(self.client, native_id, job_name, workdir, result_file)

    def _argv(self, work: dict[str, Any], workdir: Path) -> tuple[list[str], Path | None]:
        if work.get("command") is not None:
            return command_argv(work["command"]), None
        function = work.get("function")
        if not isinstance(function, str) or not function:
            raise ValueError("the job's data names no function and no command")
        parameters = work.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ValueError("the job's parameters are not a JSON object")
        parameters_file = workdir / ".parameters.json"
        parameters_file.write_text(json.dumps(parameters), encoding="utf-8")
        result_file = workdir / ".result.json"
        return [self.python, call.__file__, function, str(parameters_file),
                str(result_file)], result_file


def _minutes(seconds: int) -> int:
    return max(1, math.ceil(seconds / 60))


class SlurmRun:
    """One batch job, followed by its id."""

    def __init__(self, client: SlurmClient, native_id: str, name: str, workdir: Path,
                 result_file: Path | None) -> None:
        self.client = client
        self.native_id = native_id
        self.name = name
        self.workdir = workdir
        self.result_file = result_file
        self.state: NativeState | None = None
        self._killed: str | None = None

    def observe(self, states: dict[str, NativeState],
                ended: dict[str, NativeState] | None = None) -> bool:
        """Take this job's state from a batch of states; True once it has ended."""
        seen = states.get(self.native_id) or (ended or {}).get(self.native_id)
        if seen is not None:
            self.state = seen
        return self.state is not None and self.state.ended

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            states = self.client.states()
            ended = None if self.native_id in states else self.client.ended_from_log()
            if self.observe(states, ended):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))

    def kill(self, reason: str) -> None:
        self._killed = self._killed or reason
        self.client.scancel([self.native_id])

    def result(self) -> Execution:
        return execution_of(self.state, self.workdir, self.result_file, self._killed)

    def cancelled_elsewhere(self) -> bool:
        """Whether the job ended in a state the slurm mapping sends ``cancel`` for (scancel)
        without the catalog having killed it: someone stopped it on the cluster."""
        return self._killed is None and self.state is not None and self.state.ended and \
            get_mapping("slurm").event_for(self.state.state) == "cancel"


def execution_of(state: NativeState | None, workdir: Path, result_file: Path | None,
                 killed: str | None = None) -> Execution:
    """How a batch job ended, from its Slurm state and its files; the error names the Slurm
    state (through the slurm mapping's event) and its reason."""
    stdout, stderr = workdir / "stdout.txt", workdir / "stderr.txt"
    native_id = state.native_id if state else ""
    if state is None or not state.ended:
        return Execution(None, error=killed or "Slurm lost the job", killed=killed is not None,
                         stdout=stdout, stderr=stderr, native_id=native_id)
    event = get_mapping("slurm").event_for(state.state)
    if event == "finish":
        return read_execution(0, stdout, stderr, result_file, native_id)
    execution = Execution(state.exit_code, stdout=stdout, stderr=stderr, native_id=native_id)
    if state.state == "OUT_OF_MEMORY" or _oom(stderr):
        execution.error = "Slurm OUT_OF_MEMORY: the job went past its --mem and was killed"
    elif state.state == "TIMEOUT":
        execution.timed_out = True
        execution.error = "Slurm TIMEOUT: the job ran past its --time and was killed"
    elif state.state == "CANCELLED":
        execution.killed = True
        execution.error = killed or "Slurm CANCELLED the job (scancel outside the catalog)"
    elif state.state == "FAILED":
        if result_file is not None and result_file.exists():
            execution = read_execution(state.exit_code, stdout, stderr, result_file, native_id)
        elif state.signal:
            execution.error = f"Slurm FAILED: the job was killed by signal {state.signal}"
        else:
            execution.error = f"Slurm FAILED: the command exited with code {state.exit_code}"
    else:
        execution.error = f"Slurm {state.state}" + (f": {state.reason}" if state.reason else "")
    return execution


class SlurmFleet:
    """The slurm engine as the dispatcher drives it (catalog.engines.dispatcher.Fleet): jobs
    named by their UUID, all followed with one ``squeue`` a tick (and the jobcomp log for those
    it no longer shows). With ``report_url`` (the catalog's base URL) the nodes report to each
    job's webhook (node.py)."""

    name = "slurm"

    def __init__(self, engine: SlurmEngine | None = None, report_url: str | None = None) -> None:
        self.engine = engine or SlurmEngine()
        self.client = self.engine.client
        self.report_url = report_url

    def start(self, uuid: str, work: dict[str, Any], workdir: Path, timeout: int,
              token: str) -> SlurmRun:
        report = self.report_url
        return self.engine.start(
            work, workdir, timeout, name=uuid,
            secrets={"CATALOG_JOB_TOKEN": token} if token else None,
            report_url=f"{report.rstrip('/')}/jobs/{uuid}/events" if report and token
            else None)

    def find(self, uuids: list[str]) -> dict[str, str]:
        wanted = set(uuids)
        found = [*self.client.ended_from_log().values(), *self.client.states().values()]
        return {state.name: state.native_id for state in found if state.name in wanted}

    def adopt(self, uuid: str, native_id: str, workdir: Path, timeout: int) -> SlurmRun:
        result_file = workdir / ".result.json" if (workdir / ".parameters.json").exists() \
            else None
        return SlurmRun(self.client, native_id, uuid, workdir, result_file)

    def follow(self, runs: list[Any]) -> list[Any]:
        states = self.client.states()
        logged: dict[str, NativeState] | None = None
        ended = []
        for run in runs:
            if run.native_id not in states and logged is None:
                logged = self.client.ended_from_log()
            if run.observe(states, logged):
                ended.append(run)
        return ended

    def discard(self, uuid: str, native_id: str) -> None:
        state = self.client.states().get(native_id)
        if state is not None and not state.ended:
            self.client.scancel([native_id])

    def release(self, run: Any) -> None:
        """Nothing to remove: Slurm forgets ended jobs on its own."""


def _oom(stderr: Path) -> bool:
    try:
        with open(stderr, "rb") as handle:
            return _OOM_MARK.encode() in handle.read(1 << 20)
    except OSError:
        return False
