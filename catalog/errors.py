"""One exception tree for the whole catalog.

Every error carries an HTTP ``status`` and a stable ``code``; entry points render them with a
single handler (JSON ``{"error": {"code", "message"}}`` over HTTP and with ``--json``, a message
and a non-zero exit code on the command line)::

    CatalogError                       500 internal_error
    ├── InvalidInput                   400 invalid_input
    │   ├── MalformedIdentifier        400 malformed_uuid
    │   ├── WrongIdentifierType        400 wrong_uuid_type
    │   ├── InvalidData                400 invalid_data      (not canonical JSON)
    │   │   └── SchemaViolation        422 schema_violation  (JSON of the wrong shape)
    │   ├── UnsafePath                 400 unsafe_path       (escapes the archive root)
    │   ├── InvalidCondition           400 invalid_condition (a job's condition on others)
    │   ├── ConfirmationRequired       400 confirmation_required (a purge not confirmed)
    │   └── InvalidPattern             400 invalid_pattern
    │       └── PatternTooCostly       400 pattern_too_costly (backtracks without end)
    ├── BodyTooLarge                   413 body_too_large
    ├── RateLimited                    429 rate_limited      (too many refusals from one address)
    ├── UnknownEvent                   422 unknown_event
    ├── IndexingError                  422 indexing_failed   (files could not be read)
    ├── FixityMismatch                 409 fixity_mismatch   (content not as recorded: no bag)
    ├── TokenRequired                  401 token_required
    ├── TokenInvalid                   403 token_invalid
    │   └── AdminRequired              403 admin_required
    ├── NotFound                       404 not_found
    │   ├── JobNotFound                404 job_not_found
    │   ├── PipelineNotFound           404 pipeline_not_found
    │   ├── EntityNotFound             404 entity_not_found  (a reference, product, ...)
    │   ├── FileNotFound               404 file_not_found    (a file record)
    │   ├── RunNotFound                404 run_not_found     (an OpenLineage runId)
    │   └── CatalogNotFound            404 catalog_not_found (no database where one is named)
    ├── JobDeleted                     410 job_deleted       (a tombstone: see purge)
    ├── EventNotAllowed                409 event_not_allowed
    ├── JobActive                      409 job_active        (delete a job still queued/running)
    ├── QueueEventRefused              409 queue_event       (sent by the queue, not as an event)
    ├── LeaseNotHeld                   409 lease_not_held    (a worker acting on a job it lacks)
    ├── AmbiguousPipeline              409 ambiguous_pipeline
    ├── JobNameTaken                   409 job_name_taken    (a Swarm job name in use)
    ├── ConcurrencyConflict            503 concurrency_conflict
    ├── EngineUnavailable              503 engine_unavailable (no docker daemon, say)
    ├── TooManySubscribers             503 too_many_subscribers (the job-state stream is full)
    ├── StoreError                     500 store_error
    └── ConfigurationError             500 configuration_error
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

__all__ = [
    "AdminRequired",
    "AmbiguousPipeline",
    "BodyTooLarge",
    "CatalogError",
    "CatalogNotFound",
    "ConcurrencyConflict",
    "ConfigurationError",
    "ConfirmationRequired",
    "EngineUnavailable",
    "EntityNotFound",
    "EventNotAllowed",
    "FileNotFound",
    "FixityMismatch",
    "IndexingError",
    "InvalidCondition",
    "InvalidData",
    "InvalidInput",
    "InvalidPattern",
    "JobActive",
    "JobDeleted",
    "JobNameTaken",
    "JobNotFound",
    "LeaseNotHeld",
    "MalformedIdentifier",
    "NotFound",
    "PatternTooCostly",
    "PipelineNotFound",
    "RunNotFound",
    "QueueEventRefused",
    "RateLimited",
    "SchemaViolation",
    "StoreError",
    "TokenInvalid",
    "TokenRequired",
    "TooManySubscribers",
    "UnknownEvent",
    "UnsafePath",
    "WrongIdentifierType",
    "storable_text",
]


def storable_text(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (lone surrogates) written as ``\\udxxx`` escapes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class CatalogError(Exception):
    """Root of every error the catalog raises on purpose."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, **details: Any) -> None:
        # A message quotes what the caller sent, which may hold a lone surrogate: escaped here,
        # so that every rendering (JSON, audit row, log line) can encode it.
        message = storable_text(message)
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The one error shape every entry point renders."""
        return {"error": {"code": self.code, "message": self.message}}


class InvalidInput(CatalogError):
    status = 400
    code = "invalid_input"


class MalformedIdentifier(InvalidInput):
    code = "malformed_uuid"


class WrongIdentifierType(InvalidInput):
    code = "wrong_uuid_type"

    def __init__(self, value: str, expected: Iterable[str], actual: str) -> None:
        expected = sorted(expected)
        super().__init__(
            f"{value} is a {actual} UUID, expected {' or '.join(expected)}",
            value=value,
            expected=expected,
            actual=actual,
        )


class InvalidData(InvalidInput):
    code = "invalid_data"


class SchemaViolation(InvalidData):
    status = 422
    code = "schema_violation"


class InvalidCondition(InvalidInput):
    """A condition malformed, too large, naming unknown jobs or waiting on itself."""

    code = "invalid_condition"


class UnsafePath(InvalidInput):
    code = "unsafe_path"


class InvalidPattern(InvalidInput):
    code = "invalid_pattern"


class PatternTooCostly(InvalidPattern):
    """A pattern took longer than ``catalog.patterns.MATCH_TIMEOUT_S`` on one path."""

    code = "pattern_too_costly"


class BodyTooLarge(CatalogError):
    status = 413
    code = "body_too_large"


class RateLimited(CatalogError):
    """An address refused too often without a valid token; ``retry_after`` in whole seconds."""

    status = 429
    code = "rate_limited"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many refused requests from this address: retry after "
                         f"{retry_after} s", retry_after=retry_after)
        self.retry_after = retry_after


class IndexingError(CatalogError):
    status = 422
    code = "indexing_failed"


class FixityMismatch(CatalogError):
    """A file is not as its record says (changed, gone, unreadable) where an export needs it
    to be: the export stops, naming it."""

    status = 409
    code = "fixity_mismatch"


class OtherStorageSystem(CatalogError):
    """A job archives to a storage system this catalog does not read (setting
    ``archive_system``): its files cannot be indexed or verified here."""

    status = 409
    code = "other_storage_system"


class UnknownEvent(CatalogError):
    status = 422
    code = "unknown_event"

    def __init__(self, name: str, known: Iterable[str]) -> None:
        known = sorted(known)
        super().__init__(
            f"unknown event {name!r}; known events: {', '.join(known)}", name=name, known=known
        )


class TokenRequired(CatalogError):
    status = 401
    code = "token_required"


class TokenInvalid(CatalogError):
    status = 403
    code = "token_invalid"


class AdminRequired(TokenInvalid):
    code = "admin_required"


class NotFound(CatalogError):
    status = 404
    code = "not_found"


class RunNotFound(NotFound):
    code = "run_not_found"


class CatalogNotFound(NotFound):
    """A command pointed at a SQLite catalog that does not exist (it is made by ``init``)."""

    code = "catalog_not_found"


class JobNotFound(NotFound):
    code = "job_not_found"

    def __init__(self, uuid: str) -> None:
        super().__init__(f"no job {uuid}", uuid=uuid)


class PipelineNotFound(NotFound):
    code = "pipeline_not_found"

    def __init__(self, name_or_uuid: str) -> None:
        super().__init__(f"no pipeline {name_or_uuid}", pipeline=name_or_uuid)


class EntityNotFound(NotFound):
    code = "entity_not_found"

    def __init__(self, uuid: str) -> None:
        super().__init__(f"no entity {uuid}", uuid=uuid)


class FileNotFound(NotFound):
    code = "file_not_found"

    def __init__(self, uuid: str) -> None:
        super().__init__(f"no file record {uuid}", uuid=uuid)


class ConfirmationRequired(InvalidInput):
    """An irreversible action (purge) without the confirmation that names what it erases."""

    code = "confirmation_required"


class JobDeleted(CatalogError):
    """A job deleted by an administrator: its tombstone stands until it is purged."""

    status = 410
    code = "job_deleted"

    def __init__(self, uuid: str, date: str, source: str, place: str | None = None) -> None:
        # ``place``: where a request named it (a condition's ``when.all[0].job``)
        prefix = "" if place is None else f"{place}: "
        where = {} if place is None else {"place": place}
        super().__init__(f"{prefix}job {uuid} was deleted at {date} (from {source})",
                         uuid=uuid, date=date, source=source, **where)


class JobActive(CatalogError):
    """Deleting a job still waiting, queued or running: it must be cancelled first."""

    status = 409
    code = "job_active"

    def __init__(self, uuid: str, state: str) -> None:
        super().__init__(f"job {uuid} is {state}: cancel it before deleting it (a job never "
                         "keeps running after its deletion)", uuid=uuid, state=state)


class EventNotAllowed(CatalogError):
    status = 409
    code = "event_not_allowed"

    def __init__(self, uuid: str, event: str, state: str, allowed: Iterable[str]) -> None:
        allowed = sorted(allowed)
        super().__init__(
            f"event {event!r} is not allowed for job {uuid} in state {state}; "
            f"allowed events: {', '.join(allowed) or 'none'}",
            uuid=uuid,
            event=event,
            state=state,
            allowed=allowed,
        )


class QueueEventRefused(CatalogError):
    """A queue event (wait, queue, retry, cancel, or run on a QUEUED job) sent as a plain event:
    it would bypass the lease and the attempt count."""

    status = 409
    code = "queue_event"


class LeaseNotHeld(CatalogError):
    """A worker renewing or ending a job it does not hold (or no longer holds)."""

    status = 409
    code = "lease_not_held"

    def __init__(self, uuid: str, worker: str, reason: str) -> None:
        super().__init__(f"worker {worker!r} does not hold job {uuid}: {reason}", uuid=uuid,
                         worker=worker)


class AmbiguousPipeline(CatalogError):
    status = 409
    code = "ambiguous_pipeline"


class JobNameTaken(CatalogError):
    status = 409
    code = "job_name_taken"


class ConcurrencyConflict(CatalogError):
    status = 503
    code = "concurrency_conflict"


class EngineUnavailable(CatalogError):
    status = 503
    code = "engine_unavailable"


class TooManySubscribers(CatalogError):
    """Every place of the job-state stream is taken: try again later."""

    status = 503
    code = "too_many_subscribers"


class StoreError(CatalogError):
    status = 500
    code = "store_error"


class ConfigurationError(CatalogError):
    status = 500
    code = "configuration_error"
