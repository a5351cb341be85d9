"""Indexing: a job's archived outputs become file records with fixity and lineage links.

``index_job`` sends ``index`` (the job goes INDEXING), selects files under the job's archive
path with its index requests (regular expressions searched in the path relative to the archive
path; the first request that matches a file claims it, archive requests before product
requests), resolves each request's ``derived_from`` / ``derived_using`` references once, then
lists the files again and goes through them in chunks of thousands, as they are listed: hashes
what is new or changed in one pass per file (in worker processes for a large local tree,
``catalog.hash_pool``; a chunk is hashed while the one before is written), upserts the records
that differ from the stored ones in one bulk write, and hands the chunk to a sink (the CLI's and
the API's ``JSONSpool``) or keeps it, and sends ``indexed`` (back to FINISHED). Memory stays that
of two chunks, not of the tree: the first listing (which finds what can refuse the run) keeps
counts, not files. A file that cannot be read is
left out and the others are indexed; the run then fails naming it. A failure is written to the
job's history as an ``update`` carrying the error, and sends ``fail`` only when asked; the job
then stays INDEXING, and indexing again reads only what is not indexed yet. A run that cannot
start (a request refused, the archive path unlistable, a reference that does not resolve) is
refused before ``index`` is sent, and leaves the job as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from catalog import hash_pool
from catalog.catalog import Catalog
from catalog.errors import CatalogError, EventNotAllowed, IndexingError, OtherStorageSystem
from catalog.gcpause import gc_paused
from catalog.hash_pool import HashPool
from catalog.identifiers import UUIDType, parse_uuid
from catalog.index_chunk import (  # re-exported: what callers and tests import from here
    FAST_ONLY,
    NAMED,
    Accept,
    ChunkRun,
    Hasher,
    IndexResult,
    Links,
    Prepared,
    Progress,
    _media_type_of_suffix,
    file_record,
    is_plot,
    media_type,
)
from catalog.models import Job, ProductIndexRequest
from catalog.references import Resolver, file_uuid, named_by
from catalog.selection import Claimer, Request, requests_of
from catalog.states import next_state
from catalog.storage import LocalStorage
from catalog.store.values import Doc

__all__ = [
    "FAST_ONLY", "NAMED", "UPSERT_CHUNK", "Accept", "IndexResult", "Progress", "Sink",
    "_media_type_of_suffix", "check_storage_system", "file_record", "file_uuid",
    "index_files", "index_job", "is_plot", "media_type",
]

UPSERT_CHUNK = 5000  # file records per store write (about 0.3 s of SQLite's write lock)
_NO_LINKS: Links = ([], [])


Sink = Callable[[list[Doc]], None]


def _links_of(references: Resolver, request: Request) -> Links:
    """A request's references, resolved once for all the files it claims (one that does not
    resolve raises, naming it)."""
    if not isinstance(request, ProductIndexRequest):
        return _NO_LINKS
    # A product is derived from files; it may be made using reference records too.
    return (sorted({references.resolve(r, allow_references=False) for r in request.derived_from}),
            sorted({references.resolve(r) for r in request.derived_using}))


def index_files(catalog: Catalog, job: Job, requests: Iterable[Any] | None = None,
                fixity: bool | None = None, rehash: bool = False,
                progress: Progress | None = None, sink: Sink | None = None,
                accept: Accept | None = None) -> IndexResult:
    """Index the files of ``job`` (no events): the part of ``index_job`` that touches data.

    Content that differs from its record's checksums stays marked ``changed`` with them as
    the truth (``catalog.versions``), unless ``accept`` is given: it is then the record's next
    version, and ``accept`` is told of each chunk's accepted files before they are written.

    The claimed files go through in chunks of ``UPSERT_CHUNK``: each is hashed, written, then
    handed to ``sink`` (which sees every written record once) or, without one, kept in
    ``IndexResult.files``. With a sink, memory does not grow with the tree.
    A file that cannot be read is left out and the others go on; the run then raises
    IndexingError naming the unreadable files, with every readable one written."""
    with gc_paused():  # thousands of records per chunk (catalog.gcpause)
        return _index_files(catalog, job, requests, fixity, rehash, progress, sink, accept)


@dataclass
class _Plan:
    """What an index run will do, found before any file is read or the job changes state:
    from a first listing of the archive path, of which only counts are kept."""

    chosen: list[Request]
    archive_path: str
    files: int  # claimed by the requests when listed
    size: int
    unmatched: list[str]
    references: Resolver | None = None
    links: dict[int, Links] = field(default_factory=dict)  # by request number

    def links_of(self, number: int) -> Links:
        """Request ``number``'s links (resolved now if it claimed nothing when planned: a
        file that came since)."""
        if number not in self.links:
            assert self.references is not None
            self.links[number] = _links_of(self.references, self.chosen[number])
        return self.links[number]


def _plan(catalog: Catalog, job: Job, requests: Iterable[Any] | None) -> _Plan:
    """List and claim the files and resolve the references: everything that can refuse a run
    before it starts (a request, the storage, a reference that does not resolve). The files
    are counted, not kept: the run lists them again, a chunk at a time."""
    archive_path = check_storage_system(catalog, job)
    chosen = requests_of(job, requests)
    # References to files of this very run resolve to them: the paths and uuids references
    # name are known first, and which of them the listing holds is noted as it goes by.
    named = [reference for request in chosen if isinstance(request, ProductIndexRequest)
             for reference in (*request.derived_from, *request.derived_using)]
    paths, uuids = named_by(catalog, job.archive_system, archive_path, named) if named \
        else (set(), set())
    pending: dict[str, str] = {}
    claimer = Claimer(archive_path, chosen)
    files = size = 0
    for info in catalog.storage.list(archive_path):
        if claimer(info) is None:
            continue
        files += 1
        size += info.size
        if info.path in paths or uuids:
            uuid = file_uuid(catalog, job.archive_system, info.path)
            if info.path in paths or uuid in uuids:
                pending[info.path] = uuid
    plan = _Plan(chosen, archive_path, files, size, claimer.unmatched())
    if files:
        plan.references = Resolver(catalog, job.archive_system, archive_path, pending=pending)
        for number, used in enumerate(claimer.used):
            if used:
                plan.links_of(number)
    return plan


def _index_files(catalog: Catalog, job: Job, requests: Iterable[Any] | None,
                 fixity: bool | None, rehash: bool, progress: Progress | None,
                 sink: Sink | None, accept: Accept | None,
                 plan: _Plan | None = None) -> IndexResult:
    if plan is None:
        plan = _plan(catalog, job, requests)
    references = plan.references
    result = IndexResult(job.uuid, job.state, unmatched_requests=plan.unmatched)
    if not plan.files or references is None:
        return result
    total = getattr(progress, "total", None)
    if callable(total):  # known from the listing: the bar has its end before the first read
        total(plan.files, plan.size)
    if references.new_references:  # before any record names them
        catalog.add_entities(list(references.new_references.values()))
    unreadable: list[str] = []
    storage = catalog.storage
    pool = HashPool(storage) if isinstance(storage, LocalStorage) \
        and plan.files >= hash_pool.POOL_FILES else None
    with Hasher(storage, progress, pool) as hasher:
        run = ChunkRun(catalog, job, plan.chosen, plan.links_of, fixity, rehash, progress,
                       accept, hasher)
        # Chunks of UPSERT_CHUNK records: each write holds the database's write lock a
        # fraction of a second, however large the tree, so webhooks' events wait that long at
        # most. A chunk's files are being hashed while the one before is built and written.
        # Should the run stop, the job stays INDEXING, and indexing again reads only what was
        # not written.
        before: Prepared | None = None
        listing = Claimer(plan.archive_path, plan.chosen).batches(
            storage.list(plan.archive_path), UPSERT_CHUNK)
        for claimed in listing:
            prepared = run.prepare(claimed)
            if before is not None:
                _write_chunk(catalog, job, run, before, result, unreadable, sink)
            before = prepared
        if before is not None:
            _write_chunk(catalog, job, run, before, result, unreadable, sink)
    if unreadable:
        raise IndexingError(
            f"could not read {len(unreadable)} file(s), which were not indexed (the other "
            f"{result.indexed} were): {'; '.join(unreadable[:5])}"
            + ("; ..." if len(unreadable) > 5 else ""))
    return result


def _write_chunk(catalog: Catalog, job: Job, run: ChunkRun, prepared: Prepared,
                 result: IndexResult, unreadable: list[str], sink: Sink | None) -> None:
    """Finish a chunk's records, write those that changed, hand them all on."""
    records, changed = run.finish(prepared, result, unreadable)
    if changed:
        catalog.store.upsert_files(changed)
        _stop_if_reset(catalog, job)
    result.indexed += len(records)
    if sink is None:
        result.files += records
    else:
        sink(records)


def _stop_if_reset(catalog: Catalog, job: Job) -> None:
    """Raise IndexingError if ``job`` (as this run read it) was reset since, unlinking its
    records first. Called after each chunk is written: a reset applies its event before it
    erases the archive path and unlinks the records, so a chunk written after the reset began
    is found here, and one written before is unlinked by the reset itself. Nothing else stops
    a run: the final ``indexed`` is refused if the job has moved on."""
    head = catalog.store.get_job(job.uuid, history=False)
    after = job.version
    while head is not None and after < head["version"]:
        entries = catalog.store.history_page(head, after, 1000)
        if any(entry["name"] == "reset" for entry in entries):
            catalog.store.unlink_job_files(job.uuid)
            raise IndexingError(
                f"job {job.uuid} was reset while it was being indexed: indexing stopped, and "
                "the file records it wrote are unlinked from the job (they keep their fixity "
                "history)", uuid=job.uuid)
        if not entries:
            return
        after += len(entries)


def check_storage_system(catalog: Catalog, job: Job) -> str:
    """The job's archive path, if its files are on this catalog's storage system; else raise
    OtherStorageSystem (its files would be looked for in the wrong place)."""
    if job.archive_system != catalog.settings.archive_system:
        raise OtherStorageSystem(
            f"job {job.uuid} archives to storage system {job.archive_system!r}, and this "
            f"catalog reads {catalog.settings.archive_system!r} (setting archive_system): its "
            "files are indexed and verified by a catalog on that system", uuid=job.uuid,
            archive_system=job.archive_system)
    return job.archive_path


def _may_index(job: Job) -> bool:
    try:
        next_state(job.uuid, job.state, "index")
    except EventNotAllowed:
        return False
    return True


def index_job(catalog: Catalog, uuid: str, token: str | None,
              requests: Iterable[Any] | None = None, fixity: bool | None = None,
              rehash: bool = False, fail_on_error: bool = False, source: str = "python",
              progress: Progress | None = None, sink: Sink | None = None, *,
              accept_changes: bool = False) -> IndexResult:
    """Send ``index``, index the job's files, send ``indexed``; see the module docstring.
    ``sink`` receives the written records chunk by chunk (``index_files``). With
    ``accept_changes``, changed content becomes its record's next version, each chunk of
    them named in an ``update`` event (``{"accepted_changes": [{"uuid", "path",
    "version"}]}``) before it is written.

    What can refuse the run before a file is read (the requests, the storage system, listing
    the archive path, a reference that does not resolve) is found before ``index`` is sent: a
    run that cannot start leaves the job as it was."""
    plan: _Plan | None = None
    try:
        catalog.keys.check_job(parse_uuid(uuid, UUIDType.pipelinejob), token)
    except CatalogError:
        pass  # handle_event refuses it below, and writes the refusal to the audit log
    else:  # refused before the job changes state, as requests that are no index requests
        job = catalog.get_job(uuid, history=False)
        check_storage_system(catalog, job)
        if requests is not None:
            requests = requests_of(job, requests)
        if _may_index(job):  # else handle_event refuses it below, and audits the refusal
            with gc_paused():
                plan = _plan(catalog, job, requests)
    catalog.handle_event(uuid, {"name": "index", "data": {
        "rehash": rehash, **({"accept_changes": True} if accept_changes else {})}},
        token, source)
    job = catalog.get_job(uuid, history=False)

    def accept(files: list[Doc]) -> None:
        catalog.handle_event(uuid, {"name": "update", "data": {"accepted_changes": files}},
                             token, source)

    try:
        with gc_paused():
            result = _index_files(catalog, job, requests, fixity, rehash, progress, sink,
                                  accept if accept_changes else None, plan)
    except (CatalogError, OSError) as exc:
        message = exc.message if isinstance(exc, CatalogError) else f"{type(exc).__name__}: {exc}"
        try:
            catalog.handle_event(uuid, {"name": "update", "data": {"error": message[:2000]}},
                                 token, source)
            if fail_on_error:
                catalog.handle_event(uuid, {"name": "fail", "data": {"error": message[:2000]}},
                                     token, source)
        except EventNotAllowed:
            pass  # the job has moved on (reset during the run): the refusal is in the audit log
        if isinstance(exc, CatalogError):
            raise
        raise IndexingError(message) from exc
    outcome = catalog.handle_event(
        uuid, {"name": "indexed", "data": {"files": result.indexed, "hashed": result.hashed,
                                           "unchanged": result.unchanged,
                                           "changed": result.changed,
                                           "accepted": result.accepted}}, token, source)
    result.state = outcome.state
    return result
