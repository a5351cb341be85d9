"""The engine interface: start a job's work, follow it, read its logs, kill it."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass
class Outputs:
    """What a piece of work reported: results, and the products and plots it made."""

    results: dict[str, Any] = field(default_factory=dict)
    products: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)


def parse_outputs(value: Any) -> Outputs:
    """A function's return value (or a command's last line, evaluated): a dict of results, or
    ``(results, products, plots)``; None is no results. Anything else raises ValueError."""
    if value is None:
        return Outputs()
    if isinstance(value, dict):
        return Outputs(dict(value))
    if isinstance(value, tuple | list) and len(value) == 3 and isinstance(value[0], dict) \
            and all(isinstance(part, list) and all(isinstance(p, str) for p in part)
                    for part in value[1:]):
        return Outputs(dict(value[0]), list(value[1]), list(value[2]))
    raise ValueError(f"returned a {type(value).__name__}: expected a dict of results or "
                     "(results, products, plots)")


def outputs_of_line(line: str) -> Outputs | None:
    """A command's last line of output read as its results, if it is a Python literal of the
    right shape (never evaluated as code)."""
    try:
        return parse_outputs(ast.literal_eval(line.strip()))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


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
