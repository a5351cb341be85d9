"""Where a job's work runs, behind one interface (DESIGN §12): local processes first."""

from catalog.engines.base import Engine, Execution, Run
from catalog.engines.call import Outputs, parse_outputs
from catalog.engines.local import LocalEngine

__all__ = ["Engine", "Execution", "LocalEngine", "Outputs", "Run", "parse_outputs"]
