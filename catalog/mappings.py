"""Status mappings: other systems' status vocabularies translated to catalog events.

Each mapping is a TOML file ``<name>.toml`` with a ``[statuses]`` table (status -> event) in the
mappings directory (setting ``mappings_dir``; the project's ``config/mappings`` by default).
Statuses are matched case-insensitively; every target must be a catalog event.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from catalog.errors import ConfigurationError, SchemaViolation
from catalog.states import EVENTS

BUILTIN_MAPPINGS_DIR = Path(__file__).resolve().parent.parent / "config" / "mappings"
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


@dataclass(frozen=True)
class StatusMapping:
    name: str
    description: str
    statuses: dict[str, str]

    def event_for(self, status: str) -> str:
        event = self.statuses.get(status.strip().upper())
        if event is None:
            known = ", ".join(sorted(self.statuses))
            raise SchemaViolation(
                f"status {status!r} has no mapping in {self.name!r}; known statuses: {known}"
            )
        return event


def _load(path: Path) -> StatusMapping:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"mapping {path} is unreadable: {exc}") from None
    statuses = raw.get("statuses")
    if not isinstance(statuses, dict) or not statuses:
        raise ConfigurationError(f"mapping {path} has no [statuses] table")
    table: dict[str, str] = {}
    for status, event in statuses.items():
        if event not in EVENTS:
            raise ConfigurationError(f"mapping {path}: {status} -> {event!r} is not an event")
        table[status.strip().upper()] = event
    return StatusMapping(path.stem, str(raw.get("description", "")), table)


@lru_cache(maxsize=8)
def _load_dir(directory: str) -> dict[str, StatusMapping]:
    root = Path(directory)
    if not root.is_dir():
        raise ConfigurationError(f"mappings directory {root} does not exist")
    return {path.stem: _load(path) for path in sorted(root.glob("*.toml"))
            if _NAME_RE.fullmatch(path.stem)}


def load_mappings(directory: str | Path | None = None) -> dict[str, StatusMapping]:
    """Every mapping in ``directory`` (the built-in ones when empty or None), by name."""
    return _load_dir(str(directory or BUILTIN_MAPPINGS_DIR))


def get_mapping(name: str, directory: str | Path | None = None) -> StatusMapping:
    mappings = load_mappings(directory)
    mapping = mappings.get(name)
    if mapping is None:
        raise SchemaViolation(
            f"unknown status mapping {name!r}; mappings: {', '.join(sorted(mappings)) or 'none'}"
        )
    return mapping
