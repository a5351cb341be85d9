"""The Catalog: the facade every entry point uses (store + settings + keys)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from catalog.catalog_access import CatalogAccess
from catalog.catalog_events import CatalogEvents
from catalog.config import Settings, load_settings
from catalog.deletion import missing
from catalog.documents import parse_body, parse_document, parse_event, validation_message
from catalog.errors import (
    AmbiguousPipeline,
    EntityNotFound,
    FileNotFound,
    InvalidData,
    InvalidInput,
    PipelineNotFound,
)
from catalog.identifiers import (
    UUIDType,
    looks_like_uuid,
    parse_uuid,
    pipeline_uuid,
    typed_uuid,
    upstream_uuids,
)
from catalog.messages import EventOutcome
from catalog.models import AuditEntry, Entity, FileRecord, Job, Level, Pipeline, utc_now
from catalog.states import STATES
from catalog.storage import Storage, check_storage_path, open_storage
from catalog.store import JobQuery, Page, Store, open_store
from catalog.store.values import FILE_SORTS, Applied, Doc, check_limit, check_sort
from catalog.tokens import Keys, create_secret_file

HISTORY_PAGE = 1000  # history entries read at a time when a job's history is streamed
FILE_STATUSES = ("ok", "changed", "missing", "unreadable", "unchecked")
FILE_KINDS = ("archive", "product", "plot")
LEVELS: tuple[str, ...] = get_args(Level)

# Imported from here by the entry points and the queue, as they were before these moved.
__all__ = ["FILE_KINDS", "FILE_STATUSES", "HISTORY_PAGE", "LEVELS", "Catalog", "parse_body",
           "parse_document", "parse_event", "validation_message"]


class Catalog(CatalogAccess, CatalogEvents):
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
