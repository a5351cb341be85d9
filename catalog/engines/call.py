"""Run one function in this process and write what it returned: the child side of the local
engine (``python -m catalog.engines.call FUNCTION PARAMETERS_FILE RESULT_FILE``).

The function is imported by its dotted name and called as ``function(**parameters)``; a click
command's callback is called with the command's defaults for what the parameters leave out.
Its return value goes to RESULT_FILE as JSON (``{"results", "products", "plots"}``), or
``{"error": ...}`` with exit code 1 when it raised or returned something else.
"""

from __future__ import annotations

import importlib
import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

from catalog.engines.base import parse_outputs


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
    sys.exit(main(sys.argv[1:]))
