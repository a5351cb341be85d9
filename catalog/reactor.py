"""Message handling for event-driven consumers (queues, actors, log shippers).

A message is one JSON object, of one of three shapes:

* an event: ``{"uuid", "token", "name", "data"?, "event_id"?}``;
* a status callback: ``{"uuid", "token", "status", "mapping"?, "data"?, "event_id"?}``;
* an OpenLineage RunEvent, bare (``{"eventType", "run", "job", ...}`` plus an optional
  ``"token"``) or wrapped as ``{"openlineage": <RunEvent>, "token"?}``.

``handle_message`` returns the outcome or raises the catalog's error; ``process_lines`` turns a
stream of JSON lines into one result line each, so one bad message never stops the rest.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from catalog.catalog import Catalog
from catalog.errors import CatalogError, SchemaViolation
from catalog.identifiers import loads_json

log = logging.getLogger("catalog.reactor")
_EVENT_KEYS = {"uuid", "token", "name", "data", "event_id"}
_STATUS_KEYS = {"uuid", "token", "status", "mapping", "data", "event_id"}


def _is_run_event(message: dict[str, Any]) -> bool:
    return "openlineage" in message or ("run" in message and "job" in message)


def handle_message(catalog: Catalog, message: Any, token: str | None = None) -> dict[str, Any]:
    """Apply one message; ``token`` is used when the message carries none."""
    if not isinstance(message, dict):
        raise SchemaViolation("a message must be a JSON object")
    given = message.get("token")
    if given is not None and not isinstance(given, str):
        raise SchemaViolation("token must be a string")
    token = given or token
    if _is_run_event(message):
        from catalog.openlineage import ingest

        run_event = message.get("openlineage")
        if run_event is None:
            run_event = {k: v for k, v in message.items() if k != "token"}
        return ingest(catalog, run_event, token, source="reactor")
    uuid = message.get("uuid")
    if not isinstance(uuid, str):
        raise SchemaViolation(
            "a message needs the job's 'uuid' (or must be an OpenLineage RunEvent)"
        )
    if "status" in message:
        unknown = set(message) - _STATUS_KEYS
        if unknown:
            raise SchemaViolation(f"unknown fields in status message: {sorted(unknown)}")
        status = message["status"]
        if not isinstance(status, str) or not status:
            raise SchemaViolation("status must be a non-empty string")
        mapping = message.get("mapping")
        if mapping is not None and not isinstance(mapping, str):
            raise SchemaViolation("mapping must be a string")
        outcome = catalog.handle_status(uuid, status, token, mapping, message.get("data"),
                                        message.get("event_id"), source="reactor")
    else:
        event = {k: v for k, v in message.items() if k not in ("uuid", "token")}
        unknown = set(message) - _EVENT_KEYS
        if unknown:
            raise SchemaViolation(f"unknown fields in event message: {sorted(unknown)}")
        outcome = catalog.handle_event(uuid, event, token, source="reactor")
    return outcome.model_dump(mode="json")


def process_lines(catalog: Catalog, lines: Iterable[str],
                  token: str | None = None) -> Iterator[dict[str, Any]]:
    """One result per non-blank line: the outcome, or ``{"error": {...}, "line": n}``."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield {"line": number, **handle_message(catalog, loads_json(line, "message"), token)}
        except CatalogError as exc:
            yield {"line": number, **exc.to_dict()}
        except Exception as exc:  # one broken message must not stop a long-running consumer
            log.exception("reactor: line %d failed unexpectedly", number)
            yield {"line": number,
                   "error": {"code": "internal_error", "message": type(exc).__name__}}


def dumps(result: dict[str, Any]) -> str:
    return json.dumps(result, ensure_ascii=False)
