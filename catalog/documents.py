"""Incoming documents: JSON bodies parsed and validated against their models, with errors that
name every offending field (400 for what JSON cannot carry, 422 for a bad shape)."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from catalog.errors import InvalidData, SchemaViolation
from catalog.identifiers import check_json, loads_json
from catalog.models import JSON_CHECKED, Event


def validation_message(exc: ValidationError) -> str:
    """One line naming every offending field of a pydantic error."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}" for err in exc.errors()
    )


_Model = TypeVar("_Model", bound=BaseModel)


def parse_document(model: type[_Model], document: Any, what: str) -> _Model:
    """Validate an incoming document: 400 for values JSON cannot carry, 422 for a bad shape."""
    if isinstance(document, model):
        return document
    if not isinstance(document, dict):
        raise SchemaViolation(f"{what} must be a JSON object")
    check_json(document, what.replace(" ", "_"))
    try:
        return model.model_validate(document, context=JSON_CHECKED)
    except ValidationError as exc:
        raise SchemaViolation(f"invalid {what}: {validation_message(exc)}") from None


def parse_body(body: bytes | str) -> Any:
    """The JSON document of a request body (400 when it is empty or not JSON)."""
    if not body or body.isspace():
        raise InvalidData("request body is empty: a JSON document is required")
    return loads_json(body, "body")


def parse_event(event: Any) -> Event:
    """Validate an incoming event document (``{"name", "data", "event_id"}``)."""
    return parse_document(Event, event, "event")
