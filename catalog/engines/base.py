"""The engine interface: start a job's work, follow it, read its logs, kill it."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from catalog.engines.call import Outputs, parse_outputs


def outputs_of_line(line: str) -> Outputs | None:
    """A command's last line of output read as its results, if it is a Python literal of the
    right shape (never evaluated as code)."""
    try:
        outputs = parse_outputs(ast.literal_eval(line.strip()))
        json.dumps(outputs.results, allow_nan=False)  # a set or bytes is no result to keep
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return outputs


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
