"""A catalog's events: authenticated, checked against the state machine (``catalog.states``),
applied by its store in one compare-and-set with their history entry, refusals audited, and
what an applied event does beyond the state."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from catalog.config import Settings
from catalog.deletion import gone_or, missing
from catalog.documents import parse_body, parse_event
from catalog.errors import (
    AdminRequired,
    CatalogError,
    InvalidInput,
    QueueEventRefused,
    SchemaViolation,
    UnknownEvent,
    storable_text,
)
from catalog.identifiers import UUIDType, check_json, parse_uuid, random_typed_uuid
from catalog.mappings import get_mapping
from catalog.messages import EventOutcome
from catalog.models import AuditEntry, Event, utc_now, utc_now_text
from catalog.states import ADMIN_EVENTS, ENDED_STATES, EVENTS, QUEUE_EVENTS, next_state
from catalog.store import Store
from catalog.store.values import Applied, Decide, Doc
from catalog.tokens import Keys

if TYPE_CHECKING:
    from catalog.catalog import Catalog
    from catalog.refusals import AnonymousRefusals
    from catalog.storage import Storage

SOURCES = frozenset({"python", "cli", "api", "webhook", "reactor"})
_SIDE_EFFECTS = frozenset({"reset"})


@dataclass
class _PreparedEvent:
    """An event between validation and the write (or its refusal)."""

    uuid: str
    document: Any
    authenticated: bool = False
    event_id: str | None = None
    decide: Decide | None = None
    error: CatalogError | None = None

    def arguments(self) -> tuple[str, str | None, Decide]:
        assert self.decide is not None
        return self.uuid, self.event_id, self.decide


class CatalogEvents:
    """The events part of ``Catalog`` (which sets the attributes below)."""

    store: Store
    settings: Settings

    @property
    def _whole(self) -> Catalog:
        """The catalog this is part of, as the modules it calls take it."""
        return cast("Catalog", self)

    if TYPE_CHECKING:  # Catalog's and CatalogAccess'
        @property
        def keys(self) -> Keys: ...

        @property
        def refusals(self) -> AnonymousRefusals: ...

        @property
        def storage(self) -> Storage: ...

        def flush_refusals(self) -> int: ...

        def entry_uuid(self, job_uuid: str, event_id: str) -> str: ...

        def _refused_anonymously(self, client: str, source: str,
                                 error: CatalogError) -> CatalogError: ...

    def handle_event(self, uuid: str, event: Any, token: str | None,
                     source: str = "python", idempotency_key: str | None = None,
                     client: str | None = None) -> EventOutcome:
        """Authenticate, check against the state machine and apply one event.

        ``event`` is an event document, or its raw JSON text as a webhook received it (parsed
        here, so that malformed bodies are audited like every other refusal). An
        ``idempotency_key`` stands in for a missing ``event_id``. Refused events change
        nothing and are written to the audit log with the reason; their data is kept only when
        the sender authenticated. Refusals of a request from a ``client`` address without a
        valid token are counted per address instead (``catalog.refusals``), and may be
        answered ``RateLimited``.
        """
        prepared = self._prepare_event(uuid, event, token, source, idempotency_key, client)
        if prepared.error is None:
            try:
                applied = self.store.apply_event(*prepared.arguments())
            except CatalogError as exc:
                prepared.error = gone_or(self._whole, exc)
            else:
                # The event stands even if its side effect fails; resending it redoes that.
                failure = self._after_event(prepared.uuid, applied, source)
                return self._outcome(prepared, applied, failure)
        if not prepared.authenticated and client is not None:
            raise self._refused_anonymously(client, source, prepared.error)
        self._audit(prepared.uuid, prepared.document, source, prepared.error,
                    prepared.authenticated)
        raise prepared.error

    async def handle_event_async(self, uuid: str, event: Any, token: str | None,
                                 source: str = "webhook", idempotency_key: str | None = None,
                                 client: str | None = None) -> EventOutcome:
        """``handle_event`` for an event loop: validation runs inline, the write is awaited
        (the store commits it with whatever else is queued), nothing blocks the loop."""
        prepared = self._prepare_event(uuid, event, token, source, idempotency_key, client)
        if prepared.error is None:
            try:
                applied = await self.store.apply_event_async(*prepared.arguments())
            except CatalogError as exc:
                prepared.error = await asyncio.to_thread(gone_or, self._whole, exc)
            else:
                failure = await self.after_event_async(prepared.uuid, applied, source)
                return self._outcome(prepared, applied, failure)
        if not prepared.authenticated and client is not None:  # counted: no write, no thread
            error = self.refusals.refuse(client, source, prepared.error)
            if self.refusals.due():
                await asyncio.to_thread(self.flush_refusals)
            raise error
        await asyncio.to_thread(self._audit, prepared.uuid, prepared.document, source,
                                prepared.error, prepared.authenticated)
        raise prepared.error

    def _prepare_event(self, uuid: str, event: Any, token: str | None, source: str,
                       idempotency_key: str | None, client: str | None) -> _PreparedEvent:
        """Everything before the write: authenticate, parse, check the event is known."""
        if source not in SOURCES:
            raise InvalidInput(f"unknown event source {source!r}")
        try:
            job_uuid = parse_uuid(uuid, UUIDType.pipelinejob)
        except CatalogError as exc:  # no job to audit it against: counted, as anonymous
            if client is None:
                raise
            raise self._refused_anonymously(client, source, exc) from None
        prepared = _PreparedEvent(job_uuid, event)
        try:
            is_admin = self.keys.check_job(prepared.uuid, token)
            prepared.authenticated = True
            if isinstance(event, bytes | str):
                prepared.document = parse_body(event)
            # A token sent in the body or as the key (by mistake) is never stored, nor shown
            # by GET /jobs.
            prepared.document = self.keys.withhold(
                prepared.uuid, prepared.document, event if isinstance(event, bytes | str) else None)
            document = prepared.document
            if idempotency_key and isinstance(document, dict) and not document.get("event_id"):
                prepared.document = {**document, "event_id": self.keys.withhold(
                    prepared.uuid, idempotency_key, idempotency_key)}
            parsed = parse_event(prepared.document)
            if parsed.name not in EVENTS:
                raise UnknownEvent(parsed.name, EVENTS)
            if parsed.name in ADMIN_EVENTS and not is_admin:
                raise AdminRequired(f"the admin token is required to send {parsed.name!r}")
            if parsed.name in QUEUE_EVENTS:
                raise QueueEventRefused(
                    f"{parsed.name!r} is sent by the queue, not as an event: use "
                    f"{QUEUE_EVENTS[parsed.name]}")
            prepared.decide = self._decider(prepared.uuid, parsed, source)
            prepared.event_id = parsed.event_id
        except CatalogError as exc:
            prepared.error = exc
        return prepared

    def _after_event(self, uuid: str, applied: Applied, source: str) -> str | None:
        """What an accepted event does beyond the state: ``reset`` empties the job's archive
        path (inside the archive root only) and unlinks its file records, which keep their
        fixity history. Replays run it again, so a retry completes an interrupted reset.
        An event that ends the job decides the jobs waiting on it (DESIGN §11).

        The event stands whatever happens here: a failure is recorded in the audit log
        (code ``cleanup_failed``) and returned, to be answered with the applied event."""
        if applied.entry["state"] in ENDED_STATES:
            from catalog.queue.release import after_event

            after_event(self._whole, uuid, applied)
        if applied.entry["name"] != "reset":
            return None
        try:
            job = self.store.get_job(uuid, history=False)
            if job is None:
                return None
            self.storage.delete_prefix(job["archive_path"])
            self.store.unlink_job_files(uuid)
        except (CatalogError, OSError) as exc:
            message = storable_text(exc.message if isinstance(exc, CatalogError)
                                    else f"{type(exc).__name__}: {exc}")
            failure = f"{applied.entry['name']} was applied but its clean-up failed: {message}"
            entry = AuditEntry(job_uuid=uuid, name=applied.entry["name"], date=utc_now(),
                               source=source, event_id=applied.entry["event_id"],
                               code="cleanup_failed", reason=failure)
            self.store.append_audit(entry.model_dump(mode="json"))
            return failure
        return None

    @staticmethod
    def _outcome(prepared: _PreparedEvent, applied: Applied,
                 cleanup_error: str | None = None) -> EventOutcome:
        entry = applied.entry
        return EventOutcome.model_construct(
            uuid=prepared.uuid, state=entry["state"], last_event=entry["name"],
            event_id=entry["event_id"], duplicate=applied.duplicate, cleanup_error=cleanup_error,
        )

    def handle_status(self, uuid: str, status: str, token: str | None,
                      mapping: str | None = None, data: Any = None,
                      event_id: str | None = None, source: str = "webhook",
                      body: bytes | str | None = None,
                      client: str | None = None) -> EventOutcome:
        """Apply another system's status through a mapping (the job's default if none given).

        ``body`` (raw JSON, optional) may hold ``{"data": {...}, "event_id": ...}``. An unknown
        mapping or an unmapped status is refused (422) and audited.
        """
        uuid = parse_uuid(uuid, UUIDType.pipelinejob)
        event: dict[str, Any] = {"name": f"status:{status}"[:64],
                                 "data": {} if data is None else data, "event_id": event_id}
        authenticated = False
        try:
            self.keys.check_job(uuid, token)
            authenticated = True
            if body is not None and body.strip():
                document = parse_body(body)
                if not isinstance(document, dict) or set(document) - {"data", "event_id"}:
                    raise SchemaViolation(
                        "a status callback body must be an object with only 'data' and "
                        "'event_id'"
                    )
                event["data"] = document.get("data", event["data"])
                event["event_id"] = document.get("event_id") or event_id
            name = mapping
            if name is None:
                job = self.store.get_job(uuid, history=False)
                if job is None:
                    raise missing(self._whole, uuid)
                name = job.get("status_mapping")
                if name is None:
                    raise SchemaViolation(
                        f"job {uuid} has no default status mapping: add &mapping=<name>"
                    )
            event["name"] = get_mapping(name, self.settings.mappings_dir).event_for(status)
        except CatalogError as exc:
            if not authenticated and client is not None:
                raise self._refused_anonymously(client, source, exc) from None
            self._audit(uuid, event, source, exc, keep_data=authenticated)
            raise
        if isinstance(event["data"], dict):
            event["data"] = {**event["data"], "status": status, "mapping": name}
        return self.handle_event(uuid, event, token, source=source, client=client)

    def history_entry(self, uuid: str, name: str, data: Doc, source: str, state: str,
                      event_id: str | None = None, *, entry_uuid: str | None = None,
                      date: str | None = None) -> Doc:
        """A history entry in its serialised form, from parts already validated (the event
        by its model, the rest made here): this is the hot path. A bulk writer (the sweep)
        passes the entry's random uuid and date, made for all of its entries at once."""
        if entry_uuid is None:
            entry_uuid = (
                self.entry_uuid(uuid, event_id) if event_id is not None
                else random_typed_uuid(UUIDType.pipelinejob_event, self.settings.namespace)
            )
        return {"uuid": entry_uuid, "name": name, "date": date or utc_now_text(), "data": data,
                "source": source, "event_id": event_id or entry_uuid, "state": state}

    def decider(self, uuid: str, event: Event, source: str) -> Decide:
        """The state machine's decision on ``event`` for job ``uuid``, for a store to take
        in its atomic section (``handle_event``'s, for a caller that writes more with it)."""
        return self._decider(uuid, event, source)

    def after_event(self, uuid: str, applied: Applied, source: str) -> str | None:
        """What an event applied by ``decider`` does beyond the state (``handle_event``'s)."""
        return self._after_event(uuid, applied, source)

    async def after_event_async(self, uuid: str, applied: Applied, source: str) -> str | None:
        """``after_event`` from an event loop: in a thread, when it has something to do."""
        if applied.entry["name"] in _SIDE_EFFECTS or (
                applied.entry["state"] in ENDED_STATES and not applied.duplicate):
            return await asyncio.to_thread(self._after_event, uuid, applied, source)
        return None

    def _decider(self, uuid: str, event: Event, source: str) -> Decide:
        def decide(head: Doc) -> tuple[str, Doc] | tuple[str, Doc, Doc]:
            state = next_state(uuid, head["state"], event.name)
            if event.name == "run" and head["state"] == "QUEUED":
                raise QueueEventRefused(
                    f"job {uuid} is QUEUED: a worker's withdraw runs it, not a 'run' event "
                    "(cancel it first to run it elsewhere)")
            entry = self.history_entry(uuid, event.name, event.data, source, state,
                                       event.event_id)
            queue = head.get("queue")
            if state != "RUNNING" and queue is not None and queue.get("lease") is not None:
                # A job that leaves RUNNING by another way than its worker's report (a webhook's
                # finish, say) is held by nobody: its lease must not expire into a retry.
                return state, entry, {"queue": {**queue, "lease": None,
                                                "stop": entry["date"]}}
            return state, entry

        return decide

    def _audit(self, uuid: str, event: Any, source: str, exc: CatalogError,
               keep_data: bool) -> None:
        """Record a refused event: its name, event_id and, for authenticated senders, data."""
        self.store.append_audit(self.audit_entry(uuid, event, source, exc, keep_data))

    def audit_entry(self, uuid: str, event: Any, source: str, exc: CatalogError,
                    keep_data: bool) -> Doc:
        """The audit entry ``handle_event`` records for a refused event (not stored here)."""
        document = event if isinstance(event, dict) else {}
        name, event_id, data = (document.get(k) for k in ("name", "event_id", "data"))
        if not keep_data or not isinstance(data, dict):
            data = {}
        try:
            check_json(data)
        except CatalogError:
            data = {}  # keep what cannot be stored out of the log, not the refusal itself
        # A name or event_id that cannot be stored as sent (a lone surrogate) is kept escaped:
        # the refusal is recorded whatever the sender put in it.
        entry = AuditEntry(
            job_uuid=uuid, name=storable_text(name[:64]) if isinstance(name, str) else "",
            date=utc_now(), source=source,
            event_id=storable_text(str(event_id)[:256]) if event_id is not None else None,
            code=exc.code, reason=exc.message, data=data,
        )
        return entry.model_dump(mode="json")
