"""The Catalog: the facade every entry point uses (store + settings + keys)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar, get_args
from urllib.parse import quote

from pydantic import BaseModel, ValidationError

from catalog.config import Settings, load_settings
from catalog.deletion import gone_or, missing
from catalog.errors import (
    AdminRequired,
    AmbiguousPipeline,
    CatalogError,
    EntityNotFound,
    FileNotFound,
    InvalidData,
    InvalidInput,
    PipelineNotFound,
    QueueEventRefused,
    SchemaViolation,
    UnknownEvent,
    storable_text,
)
from catalog.identifiers import (
    UUIDType,
    check_json,
    loads_json,
    looks_like_uuid,
    parse_uuid,
    pipeline_uuid,
    random_typed_uuid,
    typed_uuid,
    upstream_uuids,
)
from catalog.mappings import get_mapping
from catalog.models import (
    JSON_CHECKED,
    AuditEntry,
    Entity,
    Event,
    EventOutcome,
    FileRecord,
    Job,
    Level,
    Pipeline,
    utc_now,
    utc_now_text,
)
from catalog.refusals import AnonymousRefusals
from catalog.states import ADMIN_EVENTS, ENDED_STATES, EVENTS, QUEUE_EVENTS, STATES, next_state
from catalog.storage import Storage, check_storage_path, open_storage
from catalog.store import JobQuery, Page, Store, open_store
from catalog.store.base import (
    FILE_SORTS,
    Applied,
    Decide,
    Doc,
    check_limit,
    check_sort,
)
from catalog.tokens import Keys, create_secret_file, keys_from_env_or_file

_SIDE_EFFECTS = frozenset({"reset"})
HISTORY_PAGE = 1000  # history entries read at a time when a job's history is streamed
FILE_STATUSES = ("ok", "changed", "missing", "unreadable", "unchecked")
FILE_KINDS = ("archive", "product", "plot")
LEVELS: tuple[str, ...] = get_args(Level)
SOURCES = frozenset({"python", "cli", "api", "webhook", "reactor"})


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


class Catalog:
    """A catalog: where jobs and pipelines are kept, and the keys that guard them."""

    def __init__(self, store: Store, settings: Settings, keys: Keys | None = None) -> None:
        self.store = store
        self.settings = settings
        self._keys = keys

    @classmethod
    def open(cls, url: str | None = None, *, settings: Settings | None = None,
             keys: Keys | None = None, **overrides: Any) -> Catalog:
        """Open the catalog at ``url`` (or the configured ``db``)."""
        settings = settings or load_settings(db=url, **overrides)
        if url is not None and settings.db != url:
            settings = settings.model_copy(update={"db": url})
        return cls(open_store(settings.db, settings), settings, keys)

    @classmethod
    def init(cls, url: str | None = None, **overrides: Any) -> tuple[Catalog, bool]:
        """Create the database schema, the secret (if absent) and the archive root.

        The database first: a URL it refuses leaves no secret or archive root behind."""
        settings = load_settings(db=url, **overrides)
        catalog = cls.open(settings=settings)
        try:
            created = create_secret_file(Path(settings.secret_file))
            Path(settings.archive_root).mkdir(parents=True, exist_ok=True)
        except BaseException:
            catalog.close()
            raise
        return catalog, created

    def close(self) -> None:
        try:
            if "refusals" in self.__dict__:
                self.flush_refusals()
        finally:
            self.store.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def keys(self) -> Keys:
        if self._keys is None:
            self._keys = keys_from_env_or_file(Path(self.settings.secret_file))
        return self._keys

    @cached_property
    def refusals(self) -> AnonymousRefusals:
        """Refusals of requests without a valid token, counted (``catalog.refusals``)."""
        return AnonymousRefusals.from_settings(self.settings)

    def flush_refusals(self) -> int:
        """Write the refusal counts held to the audit log; how many entries were written."""
        entries = self.refusals.take()
        for entry in entries:
            self.store.append_audit(entry.model_dump(mode="json"))
        return len(entries)

    def check_admin(self, token: str | None, action: str, source: str = "python",
                    client: str | None = None) -> None:
        """Refuse a token that is not the admin token; from a ``client`` address, the refusal
        is counted (``catalog.refusals``) and may be ``RateLimited``."""
        try:
            self.keys.check_admin(token, action)
        except CatalogError as exc:
            if client is None:
                raise
            raise self._refused_anonymously(client, source, exc) from None

    def check_job_token(self, uuid: str, token: str | None, source: str = "python",
                        client: str | None = None) -> bool:
        """``Keys.check_job`` for a request from ``client``: a refusal is counted and may be
        ``RateLimited``; True for the admin token."""
        uuid = parse_uuid(uuid, UUIDType.pipelinejob)
        try:
            return self.keys.check_job(uuid, token)
        except CatalogError as exc:
            if client is None:
                raise
            raise self._refused_anonymously(client, source, exc) from None

    def _refused_anonymously(self, client: str, source: str,
                             error: CatalogError) -> CatalogError:
        """Count a refusal of a sender without a valid token; the error to raise."""
        error = self.refusals.refuse(client, source, error)
        if self.refusals.due():
            self.flush_refusals()
        return error

    @cached_property
    def archive_root(self) -> Path:
        return Path(self.settings.archive_root)

    @cached_property
    def storage(self) -> Storage:
        """Where the archive's bytes are (a local directory or an S3 bucket/prefix)."""
        return open_storage(self.settings.archive_root, self.settings.s3_endpoint_url or None)

    # identifiers ----------------------------------------------------------------------------
    def typed_uuid(self, kind: UUIDType, name: str) -> str:
        return typed_uuid(kind, name, self.settings.namespace)

    def entry_uuid(self, job_uuid: str, event_id: str) -> str:
        """The history entry UUID of a sender's event_id: unique as event_ids are per job."""
        return self.typed_uuid(UUIDType.pipelinejob_event, f"{job_uuid}:{event_id}")

    def upstream(self, kind: UUIDType, values: Any) -> list[str]:
        return upstream_uuids(kind, values, self.settings.namespace)

    # pipelines -------------------------------------------------------------------------------
    def add_pipeline(self, name: str, version: str | None = None,
                     components: list[Any] | None = None,
                     description: str | None = None) -> tuple[Pipeline, bool]:
        """Register a pipeline; adding the same identity again returns the stored one."""
        components = list(components or [])
        try:
            pipeline = Pipeline(
                uuid=pipeline_uuid(name, version, components, self.settings.namespace),
                name=name, version=version, components=components, description=description,
                created=utc_now(),
            )
        except ValidationError as exc:
            raise InvalidData(f"invalid pipeline: {validation_message(exc)}") from None
        doc, created = self.store.insert_pipeline(pipeline.model_dump(mode="json"))
        return Pipeline.model_validate(doc), created

    def get_pipeline(self, name_or_uuid: str) -> Pipeline:
        """A pipeline by UUID, or by name when exactly one version has that name."""
        if looks_like_uuid(name_or_uuid):
            uuid = parse_uuid(name_or_uuid, UUIDType.pipeline)
            doc = self.store.get_pipeline(uuid)
            if doc is None:
                raise PipelineNotFound(uuid)
            return Pipeline.model_validate(doc)
        found = self.store.find_pipelines(name=name_or_uuid, limit=20).items
        if not found:
            raise PipelineNotFound(name_or_uuid)
        if len(found) > 1:
            versions = ", ".join(f"{d.get('version')} ({d['uuid']})" for d in found)
            raise AmbiguousPipeline(
                f"pipeline name {name_or_uuid!r} has several versions: {versions}; use a UUID"
            )
        return Pipeline.model_validate(found[0])

    def list_pipelines(self, name: str | None = None, limit: int = 100,
                       cursor: str | None = None) -> Page:
        if not 1 <= limit <= 1000:
            raise InvalidInput(f"limit must be between 1 and 1000, got {limit}")
        return self.store.find_pipelines(name=name, limit=limit, cursor=cursor)

    # entities and links -------------------------------------------------------------------
    def get_entity(self, uuid: str) -> Entity:
        """A reference or product by UUID, with its links."""
        uuid = parse_uuid(uuid, UUIDType.reference, UUIDType.product)
        doc = self.store.get_entity(uuid)
        if doc is None:
            raise EntityNotFound(uuid)
        return Entity.model_validate(doc)

    def add_entities(self, entities: list[Entity]) -> None:
        """Store entities not stored yet; existing ones stay as they are."""
        self.store.upsert_entities([entity.model_dump(mode="json") for entity in entities])

    def add_links(self, src: str, relation: str, targets: list[str]) -> None:
        """Link a job, file or entity to ``targets`` by ``relation`` (idempotent; not an event)."""
        src = parse_uuid(src, UUIDType.pipelinejob, UUIDType.file, UUIDType.reference,
                         UUIDType.product)
        self.store.add_links(src, relation, [parse_uuid(target) for target in targets])

    # files -------------------------------------------------------------------------------
    def get_file(self, uuid: str) -> FileRecord:
        """A file record by UUID, with its last fixity check and links (its whole history:
        ``fixity_checks``)."""
        uuid = parse_uuid(uuid, UUIDType.file)
        doc = self.store.get_file(uuid)
        if doc is None:
            raise FileNotFound(uuid)
        return FileRecord.model_validate(doc)

    def fixity_checks(self, uuid: str, limit: int = 100, cursor: str | None = None) -> Page:
        """A file record's fixity history, oldest first, a page at a time (the record itself
        keeps only its last check, in ``fixity``). FileNotFound for an unknown record."""
        uuid = parse_uuid(uuid, UUIDType.file)
        if self.store.get_file(uuid) is None:
            raise FileNotFound(uuid)
        return self.store.fixity_checks(uuid, limit, cursor)

    def find_files(self, job: str | None = None, path_prefix: str | None = None,
                   status: str | None = None, checksum: str | None = None, limit: int = 100,
                   cursor: str | None = None, *, path_glob: str | None = None,
                   kind: str | None = None, level: str | None = None,
                   media_type: str | None = None, sort: str = "path") -> Page:
        """File records by job, path (prefix or glob), fixity status, kind, level, media type
        or ``algorithm:digest``, sorted by ``path`` or ``created`` (``-`` for descending).

        Every filter is paged alike (a digest may be shared by thousands: every empty file has
        the same); a glob is tested on each record below its literal start
        (``catalog.queries``).
        """
        from catalog.queries import glob_prefix, glob_regex, scan

        job_uuid = parse_uuid(job, UUIDType.pipelinejob) if job is not None else None
        check_limit(limit)
        check_sort(sort, FILE_SORTS)
        if status is not None and status not in FILE_STATUSES:
            raise InvalidInput(f"unknown status {status!r}; statuses: {', '.join(FILE_STATUSES)}")
        if kind is not None and kind not in FILE_KINDS:
            raise InvalidInput(f"unknown kind {kind!r}; kinds: {', '.join(FILE_KINDS)}")
        if level is not None and level not in LEVELS:
            raise InvalidInput(f"unknown level {level!r}; levels: {', '.join(LEVELS)}")
        if path_prefix is not None:
            check_storage_path(path_prefix, allow_root=True)
        matcher = glob_regex(path_glob).fullmatch if path_glob is not None else None
        by_checksum: tuple[str, str] | None = None
        if checksum is not None:
            algorithm, _, digest = checksum.partition(":")
            if not digest:
                raise InvalidInput(f"checksum {checksum!r} must be algorithm:hexdigest")
            by_checksum = (algorithm, digest.lower())
        if matcher is not None:
            literal = glob_prefix(path_glob or "")
            if path_prefix is None or literal.startswith(path_prefix):
                path_prefix = literal or path_prefix
            elif not path_prefix.startswith(literal):
                return Page([], None)  # no path starts with both

        def fetch(after: str | None, size: int) -> Page:
            return self.store.find_files(job_uuid, path_prefix, status, size, after, kind=kind,
                                         level=level, media_type=media_type, sort=sort,
                                         checksum=by_checksum)

        if matcher is None:
            return fetch(cursor, limit)
        return scan(fetch, lambda doc: matcher(doc["path"]), limit, cursor, sort)

    def lineage(self, uuid: str, direction: str = "up", depth: int = 5,
                limit: int | None = None) -> dict[str, Any]:
        """Where a record came from (``up``), what came from it (``down``), or ``both``; at
        most ``limit`` edges (``catalog.lineage.DEFAULT_LIMIT`` if None), else truncated."""
        from catalog.lineage import DEFAULT_LIMIT, lineage

        return lineage(self, uuid, direction, depth, DEFAULT_LIMIT if limit is None else limit)

    # jobs --------------------------------------------------------------------------------
    def get_job(self, uuid: str, history: bool = True) -> Job:
        uuid = parse_uuid(uuid, UUIDType.pipelinejob)
        doc = self.store.get_job(uuid, history=history)
        if doc is None:
            raise missing(self, uuid)
        return Job.model_validate(doc)

    def job_and_history_pages(self, uuid: str, page: int | None = None
                              ) -> tuple[Job, Iterator[list[Doc]]]:
        """The job without its history, and its history (as far as that job's version) read
        ``page`` (default ``HISTORY_PAGE``) entries at a time as the iterator is consumed: a
        job of a million events is answered without holding them all."""
        if page is None:
            page = HISTORY_PAGE
        check_limit(page)
        uuid = parse_uuid(uuid, UUIDType.pipelinejob)
        head = self.store.get_job(uuid, history=False)
        if head is None:
            raise missing(self, uuid)

        def pages() -> Iterator[list[Doc]]:
            after = 0
            while True:
                entries = self.store.history_page(head, after, page)
                if entries:
                    yield entries
                if len(entries) < page:
                    return
                after += len(entries)

        return Job.model_validate(head), pages()

    def find_jobs(self, state: str | None = None, pipeline: str | None = None,
                  child_of: str | None = None, limit: int = 100,
                  cursor: str | None = None, *, agent: str | None = None,
                  created_after: str | None = None, created_before: str | None = None,
                  text: str | None = None, sort: str = "created") -> Page:
        """Jobs (without history) by state, pipeline (name or UUID), upstream entity, agent,
        creation time (``created_after`` inclusive, ``created_before`` exclusive; ISO 8601)
        and ``text`` found in a key or string value of their data (case-insensitive, by a
        scan: see ``catalog.queries``), sorted by ``created`` or ``-created``."""
        from catalog.queries import check_text, data_contains, parse_date, scan

        if state is not None and state.upper() not in STATES:
            raise InvalidInput(f"unknown state {state!r}; states: {', '.join(STATES)}")
        pipeline_id = self.get_pipeline(pipeline).uuid if pipeline is not None else None
        upstream = self.parse_upstream(child_of) if child_of is not None else None
        after = parse_date(created_after, "created_after") if created_after else None
        before = parse_date(created_before, "created_before") if created_before else None
        needle = check_text(text) if text is not None else None
        query = JobQuery(state=state.upper() if state else None, pipeline_uuid=pipeline_id,
                         child_of=upstream, agent=agent, created_after=after,
                         created_before=before, sort=sort, limit=limit, cursor=cursor)
        if needle is None:
            return self.store.find_jobs(query)

        def fetch(position: str | None, size: int) -> Page:
            return self.store.find_jobs(replace(query, limit=size, cursor=position))

        return scan(fetch, lambda job: data_contains(job.get("data"), needle), limit, cursor,
                    sort)

    def parse_upstream(self, value: str) -> str:
        """An upstream entity given as a typed UUID or an id string like ``sample.lab.7``."""
        if looks_like_uuid(value):
            return parse_uuid(value, UUIDType.experiment, UUIDType.sample,
                              UUIDType.measurement, UUIDType.observation)
        kind = next((k for k in (UUIDType.experiment, UUIDType.sample, UUIDType.measurement,
                                 UUIDType.observation) if value.startswith(k.name + ".")), None)
        if kind is None:
            raise InvalidInput(
                f"{value!r} is neither a typed UUID nor an id starting with experiment., "
                "sample., measurement. or observation."
            )
        return self.upstream(kind, value)[0]

    def job_token(self, uuid: str) -> str:
        return self.keys.job_token(parse_uuid(uuid, UUIDType.pipelinejob))

    def admin_token(self) -> str:
        return self.keys.admin_token()

    def webhook_url(self, uuid: str, base_url: str | None = None) -> str:
        base = (base_url or self.settings.base_url).rstrip("/")
        return f"{base}/jobs/{uuid}/events?token={quote(self.job_token(uuid))}"

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
                prepared.error = gone_or(self, exc)
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
                prepared.error = await asyncio.to_thread(gone_or, self, exc)
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

            after_event(self, uuid, applied)
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
                    raise missing(self, uuid)
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

    def check_worker(self, token: str | None, action: str, source: str = "python",
                     client: str | None = None) -> None:
        """Refuse a token that is neither the worker key nor the admin token; from a
        ``client`` address, the refusal is counted and may be ``RateLimited``."""
        try:
            self.keys.check_worker(token, action)
        except CatalogError as exc:
            if client is None:
                raise
            raise self._refused_anonymously(client, source, exc) from None

    def authorize(self, uuid: str, token: str | None, action: str, source: str,
                  worker: bool = False, client: str | None = None) -> None:
        """Check the job's token (or, with ``worker``, the worker key) for ``action`` on job
        ``uuid`` (the admin token passes both). A refusal from a ``client`` address is counted
        (``catalog.refusals``), any other audited against the job; then raised."""
        try:
            if worker:
                self.keys.check_worker(token, f"{action} job {uuid}")
            else:
                self.keys.check_job(uuid, token)
        except CatalogError as exc:
            if client is not None:
                raise self._refused_anonymously(client, source, exc) from None
            self._audit(uuid, {"name": action}, source, exc, keep_data=False)
            raise

    def delete_job(self, uuid: str, token: str | None, source: str = "python") -> None:
        """Delete a job (admin only), leaving a tombstone (``catalog.deletion``); audited."""
        from catalog.deletion import delete

        delete(self, uuid, token, source)

    def purge_job(self, uuid: str, token: str | None, confirm: str | None,
                  files: bool = False, source: str = "python") -> dict[str, Any]:
        """Erase a job for good (admin only, ``confirm`` naming it; ``files``: its archive
        directory too), deleting it first if need be (``catalog.deletion``); audited."""
        from catalog.deletion import purge

        return purge(self, uuid, token, confirm, files, source)

    # the queue (catalog.queue) ----------------------------------------------------------------
    def submit(self, pipeline: str, data: dict[str, Any] | None = None,
               source: str = "python", when: Any = None, **queue: Any) -> Any:
        """Have a job run: create it (or find it) and queue it; ``queue`` holds the
        submission's other fields (priority, timeout, retries, site, tags, user, upstream
        ids...). ``when`` is a condition on other jobs (``a.finished & ~b.failed`` or its
        JSON form): the job waits until it holds. Returns a ``SubmitOutcome`` (memoised when
        it had finished already), itself usable in another's condition."""
        from catalog.queue import submit
        from catalog.queue.conditions import as_json

        if when is not None:
            queue["when"] = as_json(when)
        return submit(self, {"pipeline": pipeline, "data": data or {}, **queue}, source)

    def submit_many(self, items: list[dict[str, Any]], source: str = "python") -> list[Any]:
        """Submit a whole graph: each item is what ``submit`` takes, plus an optional local
        ``key`` that later items' conditions may name. The batch is checked before anything
        is stored; a bad item refuses it all. The ``SubmitOutcome``s, in order."""
        from catalog.queue.batch import submit_many

        return submit_many(self, items, source)

    def wait(self, uuids: list[str], any: bool = False, timeout: float | None = None) -> Any:
        """Wait until the jobs have ended (the first of them with ``any``) or ``timeout``
        seconds passed, woken by the ending event whichever process applied it: a
        ``WaitOutcome`` (``jobs``: their states; ``timed_out``)."""
        from catalog.queue.waits import wait

        return wait(self, uuids, any, timeout)

    def cancel(self, uuid: str, reason: str = "cancelled by a user",
               source: str = "python") -> EventOutcome:
        """Cancel a job that has not ended; a running one's worker stops its work."""
        from catalog.queue import cancel

        uuid = parse_uuid(uuid, UUIDType.pipelinejob)
        return self._outcome_of(uuid, cancel(self, uuid, reason, source))

    def retry(self, uuid: str, source: str = "python") -> EventOutcome:
        """Queue a failed job again, with a fresh count of attempts."""
        from catalog.queue import retry

        uuid = parse_uuid(uuid, UUIDType.pipelinejob)
        return self._outcome_of(uuid, retry(self, uuid, source))

    @staticmethod
    def _outcome_of(uuid: str, applied: Applied) -> EventOutcome:
        entry = applied.entry
        return EventOutcome.model_construct(
            uuid=uuid, state=entry["state"], last_event=entry["name"],
            event_id=entry["event_id"], duplicate=applied.duplicate)

    def audit_log(self, uuid: str | None = None, limit: int = 100) -> list[AuditEntry]:
        job = parse_uuid(uuid, UUIDType.pipelinejob) if uuid is not None else None
        return [AuditEntry.model_validate(d) for d in self.store.find_audit(job, limit)]

    def anonymous_refusals(self, limit: int = 100) -> list[AuditEntry]:
        """The counts of refusals of senders without a valid token, newest first (the counts
        held in memory are written first, so that they are included)."""
        from catalog.refusals import ANONYMOUS

        check_limit(limit)
        self.flush_refusals()
        return [AuditEntry.model_validate(d) for d in self.store.find_audit(ANONYMOUS, limit)]
