"""Run one function in this process and write what it returned: the child side of the local
engine (``python .../catalog/engines/call.py FUNCTION PARAMETERS_FILE RESULT_FILE``).

Run as a script, by its path, and importing nothing but the standard library: a job's child
starts in the time Python itself takes (25 ms here), not the catalog's (300 ms).

The function is imported by its dotted name and called as ``function(**parameters)``; a click
command's callback is called with the command's defaults for what the parameters leave out.
Its return value goes to RESULT_FILE as JSON (``{"results", "products", "plots"}``), or
``{"error": ...}`` with exit code 1 when it raised or returned something else.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


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


def load(name: str) -> Callable[..., Any]:
    """The callable named ``pkg.module.function`` (ImportError, AttributeError, TypeError)."""
    module_name, _, attribute = name.rpartition(".")
    if not module_name:
        raise ImportError(f"{name!r} is not a dotted name (package.module.function)")
    target = getattr(importlib.import_module(module_name), attribute)
    callback = getattr(target, "callback", None)
    if callback is not None and hasattr(target, "params"):  # a click command
        defaults = {p.name: p.default for p in target.params if p.name}

        def call_command(**parameters: Any) -> Any:
            return callback(**{**defaults, **parameters})

        return call_command
    if not callable(target):
        raise TypeError(f"{name!r} is not callable")
    return target  # type: ignore[no-any-return]


def main(argv: list[str]) -> int:
    name, parameters_file, result_file = argv
    try:
        with open(parameters_file, encoding="utf-8") as handle:
            parameters = json.load(handle)
        outputs = parse_outputs(load(name)(**parameters))
        document: dict[str, Any] = {"results": outputs.results, "products": outputs.products,
                                    "plots": outputs.plots}
        text = json.dumps(document, allow_nan=False)
    except BaseException as exc:  # the worker reports it; the traceback goes to stderr
        traceback.print_exc()
        message = f"{type(exc).__name__}: {exc}"
        with open(result_file, "w", encoding="utf-8") as handle:
            json.dump({"error": message[:20000]}, handle)
        return 1
    with open(result_file, "w", encoding="utf-8") as handle:
        handle.write(text)
    return 0


if __name__ == "__main__":
    # Run by path, this file's directory heads sys.path: it must not shadow the work's modules.
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]
    sys.exit(main(sys.argv[1:]))
