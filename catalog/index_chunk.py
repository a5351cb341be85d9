"""The records of an index run, a chunk of files at a time (``catalog.indexer`` runs it).

A chunk's files are looked up in the store and those new or changed since their last good check
are handed to the run's ``Hasher`` (``prepare``), which hashes them in worker processes or a
thread while the run finishes the chunk before; then (``finish``) every record is built and
what the hashing found is settled against the recorded checksums (``catalog.versions``): what
the chunk's records are, and which of them differ from the stored ones and must be written.
"""

from __future__ import annotations

import mimetypes
import posixpath
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from catalog.catalog import Catalog
from catalog.errors import CatalogError, UnsafePath
from catalog.fixity import HashResult, hash_many, normalise_algorithms
from catalog.hash_pool import HashPool, results
from catalog.models import ArchiveIndexRequest, Job, format_date, utc_now
from catalog.references import file_uuid
from catalog.selection import Claimed, Request
from catalog.storage import FileInfo
from catalog.storage.base import Storage
from catalog.store.values import Doc
from catalog.versions import settle

# ``progress(path, size)`` once a file is read. A progress object that also has
# ``total(files, size)`` is told what was listed before any file is read, and one with
# ``skip(files, size)`` which files were found unchanged and so not read (the CLI's bar).
Progress = Callable[[str, int], None]
FAST_ONLY = ("xxh3_128",)
NAMED = 100  # changed files a result names (it counts them all)
# Told of the files whose changed content a run accepts, a chunk at a time, before they are
# written: [{"uuid", "path", "version"}] (index_job records them in the job's history).
Accept = Callable[[list[Doc]], None]
POOL_BATCH = 500  # fewer files to hash in a chunk than this stay on the thread (no round trip)


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



def _mtime(info: FileInfo) -> datetime:
    return datetime.fromtimestamp(info.mtime, UTC)



def _why(error: Exception) -> str:
    """Why a file could not be read, in words (FileNotFoundError's text is only the path)."""
    if isinstance(error, FileNotFoundError):
        return "no such file (gone since the archive path was listed)"
    return error.message if isinstance(error, CatalogError) else str(error) or repr(error)



# Tasks hashing a chunk's files, each with whether a worker process runs it (the progress is
# then told of its files when it is collected: a process cannot call it).
Hashing = list[tuple[bool, Future[dict[str, HashResult | Exception]]]]


class Hasher:
    """Where a run's files are hashed: worker processes (``catalog.hash_pool``) or one
    thread, either way beside the run's own thread. Close it (a context manager)."""

    def __init__(self, storage: Storage, progress: Progress | None, pool: HashPool | None
                 ) -> None:
        self._storage, self._progress, self._pool = storage, progress, pool
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="index-hash")

    def submit(self, paths: list[str], algorithms: tuple[str, ...]) -> Hashing:
        if self._pool is not None and len(paths) >= POOL_BATCH and self._pool.ready():
            return [(True, future) for future in self._pool.submit(paths, algorithms)]
        return [(False, self._thread.submit(hash_many, self._storage, paths, algorithms,
                                            on_done=self._progress))]

    def collect(self, hashing: Hashing) -> dict[str, HashResult | Exception]:
        found: dict[str, HashResult | Exception] = {}
        for pooled, future in hashing:
            task = results([future])
            if pooled and self._progress is not None:
                for path, value in task.items():
                    self._progress(path, 0 if isinstance(value, Exception) else value[0])
            found.update(task)
        return found

    def close(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> Hasher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@dataclass
class Prepared:
    """A chunk whose files are being hashed: what ``ChunkRun.finish`` needs of it."""

    claimed: Claimed
    uuids: dict[str, str]  # path -> file uuid
    existing: dict[str, Doc]  # the stored records, by uuid
    refused: dict[str, Exception]  # entries a request matched that must not be read
    hashing: Hashing


@dataclass
class ChunkRun:
    """What every chunk of one indexing run shares."""

    catalog: Catalog
    job: Job
    requests: list[Request]
    links: Callable[[int], Links]  # a request's, by its number
    fixity: bool | None
    rehash: bool
    progress: Progress | None
    accept: Accept | None
    hasher: Hasher

    def prepare(self, claimed: Claimed) -> Prepared:
        """Look ``claimed`` up in the store and start hashing what is new or changed (the
        hasher works on it while the run finishes the chunk before)."""
        system = self.job.archive_system
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
        hashing = [task for wanted, paths in to_hash.items()
                   for task in self.hasher.submit(paths, wanted)]
        return Prepared(claimed, uuids, existing, refused, hashing)

    def finish(self, prepared: Prepared, result: IndexResult,
               unreadable: list[str]) -> tuple[list[Doc], list[Doc]]:
        """The records of a prepared chunk, with what its hashing found (a file that could not
        be read is added to ``unreadable`` instead), and those of them to write: the others
        are stored exactly so already."""
        uuids, existing = prepared.uuids, prepared.existing
        # The date of this chunk's records (created, updated, checked), not of the run: each
        # chunk's new records then take a fresh range of files_created (created, uuid) instead
        # of landing all over one growing range of the run's date (at 200,000 files, 3,250
        # of the 22,000 pages a chunk wrote).
        stamp = format_date(utc_now())
        records = [
            file_record(info, self.requests[number], self.links(number), uuids[info.path],
                        existing.get(uuids[info.path]), self.job, stamp)
            for info, number in prepared.claimed]
        digests: dict[str, HashResult | Exception] = dict(prepared.refused)
        digests.update(self.hasher.collect(prepared.hashing))
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
                outcome = settle(record, old, size, checksums, stamp,
                                 self.job.uuid if self.accept is not None else None)
                record["checked"] = stamp
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


def file_record(info: FileInfo, request: Request, links: Links, uuid: str, old: Doc | None,
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
