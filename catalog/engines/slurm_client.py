"""Slurm's command-line clients, called as little as possible: ``sbatch`` per job, one
``squeue`` for the state of every job on the cluster, the ``jobcomp/filetxt`` log for jobs
``squeue`` no longer shows (older than ``MinJobAge``), ``scancel`` to kill.

The cluster is the one ``SLURM_CONF`` (or Slurm's default configuration) names.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from catalog.engines.base import EngineAway

ENDED = frozenset({"COMPLETED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "CANCELLED", "NODE_FAIL",
                   "BOOT_FAIL", "PREEMPTED", "DEADLINE", "REVOKED", "SPECIAL_EXIT"})
_SQUEUE_FORMAT = "JobID:|,Name:|,State:|,Reason:|,exit_code:|"
_JOBCOMP_FIELD = re.compile(r"(\w+)=(\S*)")
_TIMEOUT_S = 60.0


class SlurmError(EngineAway):
    """A Slurm client refused or failed; its message is Slurm's own."""


@dataclass(frozen=True)
class NativeState:
    """One job as Slurm sees it."""

    native_id: str
    name: str
    state: str  # PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, ...
    reason: str = ""
    exit_code: int | None = None  # the batch script's exit code
    signal: int = 0  # the signal that ended it, if any

    @property
    def ended(self) -> bool:
        return self.state in ENDED


def available() -> str | None:
    """Why Slurm's clients cannot be used here, or None when they can."""
    missing = [name for name in ("sbatch", "squeue", "scontrol", "scancel")
               if shutil.which(name) is None]
    return f"Slurm's clients are not installed ({', '.join(missing)})" if missing else None


class SlurmClient:
    """Calls to one cluster's clients, with ``env`` (default: this process's)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = dict(env) if env is not None else None
        self._jobcomp: Path | None = None
        self._jobcomp_offset = 0
        self._jobcomp_seen: dict[str, NativeState] = {}
        self._config: dict[str, str] | None = None

    def _run(self, argv: list[str], stdin: str | None = None,
             env: dict[str, str] | None = None) -> str:
        try:
            answer = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                                    timeout=_TIMEOUT_S, check=False, env=env or self.env)
        except FileNotFoundError:
            raise SlurmError(f"{argv[0]} is not installed") from None
        except subprocess.TimeoutExpired:
            raise SlurmError(f"{argv[0]} did not answer within {_TIMEOUT_S:.0f} s") from None
        if answer.returncode != 0:
            message = (answer.stderr or answer.stdout).strip().replace("\n", "; ")
            raise SlurmError(f"{argv[0]}: {message or f'exit code {answer.returncode}'}")
        return answer.stdout

    def sbatch(self, options: list[str], script: Path, env: dict[str, str]) -> str:
        """Submit ``script``; the new job's id. ``env`` is the job's whole environment
        (exported to it by sbatch: secrets go there, never on the command line)."""
        out = self._run(["sbatch", "--parsable", *options, str(script)], env=env)
        return out.strip().split(";")[0]

    def scancel(self, native_ids: list[str]) -> None:
        if native_ids:
            self._run(["scancel", *native_ids])

    def states(self) -> dict[str, NativeState]:
        """Every job ``squeue`` shows (pending, running, and ended ones not yet aged out), by
        id: one call, whatever the number of jobs followed."""
        found: dict[str, NativeState] = {}
        for line in self._run(["squeue", "-h", "-t", "all", "-O", _SQUEUE_FORMAT]).splitlines():
            parts = line.split("|")
            if len(parts) < 5 or not parts[0].strip():
                continue
            status = int(parts[4]) if parts[4].strip().isdigit() else None
            found[parts[0].strip()] = NativeState(
                parts[0].strip(), parts[1].strip(), parts[2].strip().split()[0],
                parts[3].strip(), None if status is None else (status >> 8) & 0xFF,
                0 if status is None else status & 0x7F)
        return found

    def ended_from_log(self) -> dict[str, NativeState]:
        """Jobs in the ``jobcomp/filetxt`` log (every ended job, aged out or not), by id; the
        log is read from where the last call stopped."""
        path = self.jobcomp_log()
        if path is None:
            return self._jobcomp_seen
        try:
            with open(path, "rb") as handle:
                handle.seek(self._jobcomp_offset)
                chunk = handle.read()
        except OSError:
            return self._jobcomp_seen
        complete = chunk[:chunk.rfind(b"\n") + 1]
        self._jobcomp_offset += len(complete)
        for line in complete.decode("utf-8", "replace").splitlines():
            fields = dict(_JOBCOMP_FIELD.findall(line))
            if "JobId" not in fields:
                continue
            code, _, sig = fields.get("ExitCode", "").partition(":")
            self._jobcomp_seen[fields["JobId"]] = NativeState(
                fields["JobId"], fields.get("Name", ""), fields.get("JobState", ""), "",
                int(code) if code.isdigit() else None, int(sig) if sig.isdigit() else 0)
        return self._jobcomp_seen

    def config(self) -> dict[str, str]:
        if self._config is None:
            self._config = {}
            for line in self._run(["scontrol", "show", "config"]).splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    self._config[key.strip()] = value.strip()
        return self._config

    def jobcomp_log(self) -> Path | None:
        if self._jobcomp is None:
            config = self.config()
            if config.get("JobCompType") == "jobcomp/filetxt" and config.get("JobCompLoc"):
                self._jobcomp = Path(config["JobCompLoc"])
        return self._jobcomp

    def partition(self, name: str | None) -> dict[str, str]:
        """A partition's settings (the default partition when ``name`` is None), with the
        largest node's ``CPUTot`` and ``RealMemory`` added."""
        partitions = [dict(_JOBCOMP_FIELD.findall(line)) for line in
                      self._run(["scontrol", "show", "partition", "-o"]).splitlines()]
        chosen = [p for p in partitions if (p.get("PartitionName") == name if name else
                                            p.get("Default") == "YES")]
        if not chosen:
            raise SlurmError(f"no partition {name!r} on this cluster" if name else
                             "this cluster has no default partition")
        partition = chosen[0]
        nodes = [dict(_JOBCOMP_FIELD.findall(line)) for line in
                 self._run(["scontrol", "show", "node", "-o"]).splitlines()]
        partition["CPUTot"] = str(max((int(n.get("CPUTot", "0")) for n in nodes), default=0))
        partition["RealMemory"] = str(max((int(n.get("RealMemory", "0")) for n in nodes),
                                          default=0))
        return partition


def parse_minutes(limit: str) -> int | None:
    """Slurm's time limit (``UNLIMITED``, ``MM``, ``HH:MM:SS``, ``D-HH:MM:SS``) in minutes;
    None when unlimited."""
    if limit in ("UNLIMITED", "INFINITE", ""):
        return None
    days, _, rest = limit.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if len(parts) == 1:
        minutes = parts[0]
    else:
        while len(parts) < 3:
            parts.insert(0, 0)
        minutes = parts[0] * 60 + parts[1] + (1 if parts[2] else 0)
    return minutes + (int(days) * 1440 if days else 0)


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment with ``extra``: what sbatch exports to the job."""
    return {**os.environ, **extra}
