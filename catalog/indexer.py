"""Indexing: a job's archived outputs become file records with fixity and lineage links.

``index_job`` sends ``index`` (the job goes INDEXING), selects files under the job's archive
path with its index requests (regular expressions searched in the path relative to the archive
path; the first request that matches a file claims it, archive requests before product
requests), resolves each request's ``derived_from`` / ``derived_using`` references once, then
goes through the files in chunks of thousands: hashes what is new or changed in one pass per
file, upserts the records that differ from the stored ones in one bulk write, and hands the
chunk to a sink (the CLI's and the API's ``JSONSpool``) or keeps it, and sends ``indexed`` (back
to FINISHED). Memory stays that of a chunk, not of the tree. A file that cannot be read is
left out and the others are indexed; the run then fails naming it. A failure is written to the
job's history as an ``update`` carrying the error, and sends ``fail`` only when asked; the job
then stays INDEXING, and indexing again reads only what is not indexed yet. A run that cannot
start (a request refused, the archive path unlistable, a reference that does not resolve) is
refused before ``index`` is sent, and leaves the job as it was.
"""

from __future__ import annotations

import mimetypes
import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from catalog.catalog import Catalog
from catalog.errors import (
    CatalogError,
    EventNotAllowed,
    IndexingError,
    OtherStorageSystem,
    UnsafePath,
)
from catalog.fixity import hash_many, normalise_algorithms
from catalog.gcpause import gc_paused
from catalog.identifiers import UUIDType, parse_uuid
from catalog.models import (
    ArchiveIndexRequest,
    Job,
    ProductIndexRequest,
    format_date,
    utc_now,
)
from catalog.references import Resolver, file_uuid
from catalog.selection import Claimed, Request, claim, requests_of
from catalog.states import next_state
from catalog.storage import FileInfo
from catalog.store.base import Doc
from catalog.versions import settle

# ``progress(path, size)`` once a file is read. A progress object that also has
# ``total(files, size)`` is told what was listed before any file is read, and one with
# ``skip(files, size)`` which files were found unchanged and so not read (the CLI's bar).
Progress = Callable[[str, int], None]
FAST_ONLY = ("xxh3_128",)
UPSERT_CHUNK = 5000  # file records per store write (about 0.3 s of SQLite's write lock)
NAMED = 100  # changed files a result names (it counts them all)


Sink = Callable[[list[Doc]], None]
# Told of the files whose changed content a run accepts, a chunk at a time, before they are
# written: [{"uuid", "path", "version"}] (index_job records them in the job's history).
Accept = Callable[[list[Doc]], None]


@dataclass
class IndexResult:
    """What one indexing run did."""

    uuid: str
    state: str
    files: list[Doc] = field(default_factory=list)  # the records, when no sink took them
    hashed: int = 0
    unchanged: int = 0
    unmatched_requests: list[str] = field(default_factory=list)
    indexed: int = 0  # records indexed: hashed + unchanged
    # content that differs from its record's checksums, kept marked changed (the first NAMED
    # of them named), and changes accepted as new versions
    changed: int = 0
    changed_files: list[str] = field(default_factory=list)
    accepted: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The run's JSON document: ``{"uuid", "state", "files", "hashed", "unchanged",
        "changed", "changed_files", "accepted", "unmatched_requests"}`` (with a ``JSONSpool``
        as the sink, its ``document``)."""
        return {
            "uuid": self.uuid, "state": self.state,
            "files": self.files,
            "hashed": self.hashed, "unchanged": self.unchanged,
            "changed": self.changed, "changed_files": self.changed_files,
            "accepted": self.accepted,
            "unmatched_requests": self.unmatched_requests,
        }


def media_type(name: str) -> str:
    # Cached on the last two suffixes ("x.tar.gz" is a tar): guess_type is slow per file.
    # The suffixes as PurePosixPath(name).suffixes finds them, without building a path.
    base = name.rpartition("/")[2]
    if base.endswith("."):
        return _media_type_of_suffix("")
    suffixes = base.lstrip(".").split(".")[1:]
    return _media_type_of_suffix("".join("." + s for s in suffixes[-2:]).lower())


@lru_cache(maxsize=1024)
def _media_type_of_suffix(suffix: str) -> str:
    return mimetypes.guess_type(f"file{suffix}", strict=False)[0] or "application/octet-stream"


# FITS registers as image/fits but is data (images of the sky), not a plot.
_NOT_PLOTS = frozenset({"image/fits"})
_PLOTS = frozenset({"application/pdf", "application/postscript"})


def is_plot(kind_of_media: str) -> bool:
    """Images and PDFs are plots, whichever request matched them."""
    return kind_of_media in _PLOTS or (
        kind_of_media.startswith("image/") and kind_of_media not in _NOT_PLOTS)


Links = tuple[list[str], list[str]]  # a request's derived_from and derived_using, resolved
_NO_LINKS: Links = ([], [])


def _resolve_links(references: Resolver, requests: list[Request],
                   claimed: Claimed) -> list[Links]:
    """Each request's references, resolved once for all the files it claimed (an unresolvable
    one raises, naming it, before anything is read or written)."""
    numbers = {number for _, number in claimed}
    links: list[Links] = []
    for number, request in enumerate(requests):
        if number not in numbers or not isinstance(request, ProductIndexRequest):
            links.append(_NO_LINKS)
            continue
        # A product is derived from files; it may be made using reference records too.
        links.append((sorted({references.resolve(r, allow_references=False)
                              for r in request.derived_from}),
                      sorted({references.resolve(r) for r in request.derived_using})))
    return links


def _mtime(info: FileInfo) -> datetime:
    return datetime.fromtimestamp(info.mtime, UTC)


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
    """What an index run will do, found before any file is read or the job changes state."""

    chosen: list[Request]
    claimed: Claimed
    unmatched: list[str]
    references: Resolver | None = None
    links: list[Links] = field(default_factory=list)


def _plan(catalog: Catalog, job: Job, requests: Iterable[Any] | None) -> _Plan:
    """List and claim the files and resolve the references: everything that can refuse a run
    before it starts (a request, the storage, a reference that does not resolve)."""
    archive_path = check_storage_system(catalog, job)
    chosen = requests_of(job, requests)
    claimed, unmatched = claim(catalog.storage.list(archive_path), archive_path, chosen)
    plan = _Plan(chosen, claimed, unmatched)
    if claimed:
        # References to files of this very run resolve to them (each file's uuid made on
        # demand: a million of them need not be held for the few references there are).
        plan.references = Resolver(catalog, job.archive_system, archive_path,
                                   pending=_ClaimedFiles(catalog, job.archive_system, claimed))
        plan.links = _resolve_links(plan.references, chosen, claimed)
    return plan


def _index_files(catalog: Catalog, job: Job, requests: Iterable[Any] | None,
                 fixity: bool | None, rehash: bool, progress: Progress | None,
                 sink: Sink | None, accept: Accept | None,
                 plan: _Plan | None = None) -> IndexResult:
    if plan is None:
        plan = _plan(catalog, job, requests)
    claimed, references = plan.claimed, plan.references
    result = IndexResult(job.uuid, job.state, unmatched_requests=plan.unmatched)
    if not claimed or references is None:
        return result
    run = _Run(catalog, job, plan.chosen, plan.links, fixity, rehash, progress,
               format_date(utc_now()), accept)
    total = getattr(progress, "total", None)
    if callable(total):  # known from the listing: the bar has its end before the first read
        total(len(claimed), sum(info.size for info, _ in claimed))
    if references.new_references:  # before any record names them
        catalog.add_entities(list(references.new_references.values()))
    unreadable: list[str] = []
    # Chunks of UPSERT_CHUNK records: each write holds the database's write lock a fraction
    # of a second, however large the tree, so webhooks' events wait that long at most. Should
    # the run stop, the job stays INDEXING, and indexing again reads only what was not written.
    for start in range(0, len(claimed), UPSERT_CHUNK):
        records, changed = run.chunk(claimed[start:start + UPSERT_CHUNK], result, unreadable)
        if changed:
            catalog.store.upsert_files(changed)
            _stop_if_reset(catalog, job)
        result.indexed += len(records)
        if sink is None:
            result.files += records
        else:
            sink(records)
    if unreadable:
        raise IndexingError(
            f"could not read {len(unreadable)} file(s), which were not indexed (the other "
            f"{result.indexed} were): {'; '.join(unreadable[:5])}"
            + ("; ..." if len(unreadable) > 5 else ""))
    return result


def _why(error: Exception) -> str:
    """Why a file could not be read, in words (FileNotFoundError's text is only the path)."""
    if isinstance(error, FileNotFoundError):
        return "no such file (gone since the archive path was listed)"
    return error.message if isinstance(error, CatalogError) else str(error) or repr(error)


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


class _ClaimedFiles(Mapping[str, str]):
    """Storage path -> file uuid of the files an index run claimed, each uuid made on demand."""

    def __init__(self, catalog: Catalog, system: str, claimed: Claimed) -> None:
        self._catalog, self._system = catalog, system
        self._paths = {info.path for info, _ in claimed}

    def __getitem__(self, path: str) -> str:
        if path not in self._paths:
            raise KeyError(path)
        return file_uuid(self._catalog, self._system, path)

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


@dataclass
class _Run:
    """What every chunk of one indexing run shares."""

    catalog: Catalog
    job: Job
    requests: list[Request]
    links: list[Links]  # per request
    fixity: bool | None
    rehash: bool
    progress: Progress | None
    stamp: str  # the run's date, formatted once
    accept: Accept | None

    def chunk(self, claimed: Claimed, result: IndexResult,
              unreadable: list[str]) -> tuple[list[Doc], list[Doc]]:
        """The records of ``claimed``, hashed where new or changed (a file that could not be
        read is added to ``unreadable`` instead), and those of them to write: the others are
        stored exactly so already."""
        storage, system = self.catalog.storage, self.job.archive_system
        uuids = {info.path: file_uuid(self.catalog, system, info.path) for info, _ in claimed}
        existing = self.catalog.store.get_files(list(uuids.values()))
        to_hash: dict[tuple[str, ...], list[str]] = {}
        full = normalise_algorithms(None)
        # A request matched an entry that must not be read: reported with the unreadable.
        refused: dict[str, Exception] = {info.path: UnsafePath(info.refused)
                                         for info, _ in claimed if info.refused is not None}
        skipped: list[int] = []  # sizes of the files found unchanged, left unread
        for info, number in claimed:
            if info.refused is not None:
                skipped.append(info.size)
                continue
            request = self.requests[number]
            wanted = full if (request.fixity if self.fixity is None else self.fixity) \
                else FAST_ONLY
            old = existing.get(uuids[info.path])
            # A record found changed, missing or unreadable is read again whatever its file's
            # listing says (bit rot keeps the size and date): only content that matches its
            # checksums makes it ok again.
            unchanged = (
                old is not None and not self.rehash and old.get("status") == "ok"
                and old["size"] == info.size
                and old["mtime"] == format_date(_mtime(info)) and old.get("etag") == info.etag
                and all(a in old.get("checksums", {}) for a in wanted)
            )
            if unchanged:
                skipped.append(info.size)
            else:
                if old is not None and old.get("checksums"):  # compared on every one of them
                    wanted = normalise_algorithms([*wanted, *old["checksums"]])
                to_hash.setdefault(wanted, []).append(info.path)
        skip = getattr(self.progress, "skip", None)
        if skipped and callable(skip):
            skip(len(skipped), sum(skipped))
        # Hashing (threads reading files, the digests without the GIL) runs beside the
        # building of the records' other parts here: on small files each is a third of the time.
        with ThreadPoolExecutor(1, thread_name_prefix="index-hash") as background:
            hashing = [background.submit(hash_many, storage, paths, wanted,
                                         on_done=self.progress)
                       for wanted, paths in to_hash.items()]
            try:
                records = [
                    _record(info, self.requests[number], self.links[number], uuids[info.path],
                            existing.get(uuids[info.path]), self.job, self.stamp)
                    for info, number in claimed]
            except BaseException:
                for future in hashing:
                    future.cancel()  # those not started; leaving waits for the one running
                raise
            digests: dict[str, tuple[int, dict[str, str]] | Exception] = dict(refused)
            for future in hashing:
                digests.update(future.result())
        indexed: list[Doc] = []
        changed: list[Doc] = []
        accepted: list[Doc] = []
        for record in records:
            found = digests.get(record["path"])
            old = existing.get(record["uuid"])
            if isinstance(found, Exception):
                unreadable.append(f"{record['path']}: {_why(found)}")
                continue
            if found is not None:
                size, checksums = found
                outcome = settle(record, old, size, checksums, self.stamp,
                                 self.job.uuid if self.accept is not None else None)
                record["checked"] = self.stamp
                result.hashed += 1
                if outcome == "changed":
                    result.changed += 1
                    if len(result.changed_files) < NAMED:
                        result.changed_files.append(record["path"])
                elif outcome == "accepted":
                    accepted.append({"uuid": record["uuid"], "path": record["path"],
                                     "version": record["version"]})
            else:
                assert old is not None
                record["checksums"], record["fixity"] = old["checksums"], old.get("fixity", [])
                result.unchanged += 1
                if record == {**old, "updated": record["updated"]}:
                    # Nothing to write: the stored record says it all, its date included.
                    indexed.append(old)
                    continue
            indexed.append(record)
            changed.append(record)
        if accepted:
            assert self.accept is not None
            # Said in the job's history before the new versions are written: an acceptance
            # is never written unsaid (a run stopped between the two says it again).
            self.accept(accepted)
            result.accepted += len(accepted)
        return indexed, changed


def _record(info: FileInfo, request: Request, links: Links, uuid: str, old: Doc | None,
            job: Job, stamp: str) -> Doc:
    """A file's FileRecord in its JSON form, all but its checksums and fixity log.

    Built directly, not through the model: this runs once per file of trees of many thousands
    (tests hold every document to the FileRecord schema)."""
    kind_of_media = media_type(info.path)
    kind = "plot" if is_plot(kind_of_media) else (
        "archive" if isinstance(request, ArchiveIndexRequest) else "product")
    if old is None:
        child_of, generated_by = [job.uuid], [job.uuid]
    else:
        child_of, generated_by = (sorted({*old.get(name, []), job.uuid})
                                  for name in ("child_of", "generated_by"))
    return {
        "uuid": uuid, "storage_system": job.archive_system, "path": info.path,
        "name": posixpath.basename(info.path), "size": info.size,
        "mtime": format_date(_mtime(info)), "etag": info.etag,
        "media_type": kind_of_media, "kind": kind,
        "level": request.level if isinstance(request, ArchiveIndexRequest) else None,
        "checksums": {}, "status": "ok", "fixity": [],
        "checked": (old or {}).get("checked"), "version": (old or {}).get("version", 1),
        "versions": (old or {}).get("versions", []),
        "child_of": child_of, "generated_by": generated_by,
        "derived_from": list(links[0]), "derived_using": list(links[1]),
        "note": request.note, "created": (old or {}).get("created", stamp),
        "updated": stamp,
    }


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
