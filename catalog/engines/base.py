"""The engine interface: start a job's work, follow it, read its logs, kill it."""

from __future__ import annotations

import ast
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from catalog.engines.call import Outputs, parse_outputs
from catalog.errors import InvalidInput
from catalog.resources import parse_resources


def outputs_of_line(line: str) -> Outputs | None:
    """A command's last line of output read as its results, if it is a Python literal of the
    right shape (never evaluated as code)."""
    try:
        outputs = parse_outputs(ast.literal_eval(line.strip()))
        json.dumps(outputs.results, allow_nan=False)  # a set or bytes is no result to keep
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return outputs


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")

# Credentials of the worker, or of whoever started it: never handed on to the work it runs.
WITHHELD_ENV = frozenset({"CATALOG_WORKER_KEY", "CATALOG_TOKEN", "CATALOG_TOKEN_FILE",
                          "CATALOG_OPENLINEAGE_KEY"})


def inherited_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment work inherits from its worker (``base``, default this process's),
    without the worker's credentials."""
    return {name: value for name, value in (base or os.environ).items()
            if name not in WITHHELD_ENV}


def environment_of(work: dict[str, Any]) -> dict[str, str]:
    """The variables ``work`` asks for under ``environment`` (ValueError, naming the first
    malformed one)."""
    environment = work.get("environment") or {}
    if not isinstance(environment, dict):
        raise ValueError("the work's environment is not a JSON object")
    for name, value in environment.items():
        if not _ENV_NAME.match(str(name)) or not isinstance(value, str):
            raise ValueError(f"environment variable {name!r}: a name of letters, digits and "
                             "_ with a string value")
    return {str(name): str(value) for name, value in environment.items()}


class EngineAway(RuntimeError):
    """An engine's client failed or its daemon or controller did not answer (why, in the
    message): the dispatcher tries again on its next tick."""


@dataclass
class Execution:
    """How a run ended."""

    returncode: int | None
    outputs: Outputs | None = None
    error: str | None = None
    timed_out: bool = False
    killed: bool = False
    stdout: Path | None = None
    stderr: Path | None = None
    native_id: str = ""
    result_missing: bool = False  # a function's report file was not there to read


class Run(Protocol):
    """One started piece of work."""

    native_id: str

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True once the work has ended."""
        ...

    def kill(self, reason: str) -> None:
        """End the work now (its whole process group), noting why."""
        ...

    def result(self) -> Execution:
        """How it ended (after ``wait`` said so, or ``kill``)."""
        ...


class Engine(Protocol):
    name: str

    def start(self, work: dict[str, Any], workdir: Path, timeout: int) -> Run:
        """Start ``work`` (``{"function": "pkg.mod.f", "parameters": {...}}`` or
        ``{"command": [...]}``) with ``workdir`` as its working directory and for its logs."""
        ...


@dataclass(frozen=True)
class Resources:
    """What a job asks of a cluster: cores, memory (MB) and wall time (s), from the work an
    engine is handed (``Withdrawn.work()``: the job's queue attribute ``resources`` under
    ``"resources"``), the time defaulting to the job's timeout."""

    cores: int = 1
    memory_mb: int | None = None
    time_s: int = 3600

    @classmethod
    def of(cls, work: dict[str, Any], timeout: int) -> Resources:
        """The resources ``work`` asks for (ValueError, saying which, when they are bad)."""
        asked = work.get("resources")
        try:
            parsed = parse_resources({} if asked is None else asked)
        except InvalidInput as exc:
            raise ValueError(exc.message) from None
        return cls(parsed.cores, parsed.memory, parsed.time or timeout)


def read_execution(code: int | None, stdout: Path, stderr: Path, result_file: Path | None,
                   native_id: str) -> Execution:
    """How a finished piece of work ended, read from its files: a function's own report in
    ``result_file``, else a command's exit code and last line of output."""
    execution = Execution(code, stdout=stdout, stderr=stderr, native_id=native_id)
    if result_file is not None:  # a function: its own report
        try:
            document = json.loads(result_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            execution.error = f"the function's process ended with code {code} and no " \
                              "result (see its stderr)"
            execution.result_missing = True
            return execution
        if "error" in document:
            execution.error = str(document["error"])
        else:
            execution.outputs = Outputs(document["results"], document["products"],
                                        document["plots"])
        return execution
    if code != 0:
        execution.error = f"the command exited with code {code}"
        return execution
    execution.outputs = outputs_of_line(last_line(stdout)) or Outputs({"returncode": code})
    return execution


_LAST_LINE_BYTES = 64 * 1024


def last_line(path: Path) -> str:
    """The last line of a (possibly large) output file; empty when there is none."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - _LAST_LINE_BYTES))
            lines = handle.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""
