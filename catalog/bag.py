"""BagIt export (RFC 8493): a job's files as a bag whose manifest is the recorded checksums.

Each file of the job's records is copied into ``data/`` (its path relative to the job's
archive path), read once: every recorded digest is computed as it is copied and compared with
the record, so a file that no longer matches (changed, truncated, gone, unreadable) stops the
export, naming it, and nothing is left behind. ``manifest-sha256.txt`` holds the recorded
sha256 (a record without one, indexed with fixity off, gets the sha256 of the copy, which its
recorded ``xxh3_128`` vouched for). ``bag-info.txt`` names the job, its pipeline and the
catalog's URL for it. The bag is written beside the destination and renamed into place whole.

With ``link`` a payload file is a hard link to the archive's file where the filesystem allows
one (else a copy), read once through the link to verify it: the export then writes no file's
bytes. Such a bag shares its files' storage with the archive, so anything that writes to one
writes to the other (which ``verify`` would then report): it suits a bag that is sent on, as
the tar of ``POST /jobs/{uuid}/bag`` is (its scratch bag is linked, tarred and removed).
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
import tarfile
import uuid as uuid_module
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from catalog import __version__
from catalog.catalog import Catalog
from catalog.errors import CatalogError, FixityMismatch, InvalidInput
from catalog.fixity import compare, constructors, hashers
from catalog.identifiers import UUIDType, parse_uuid
from catalog.indexer import check_storage_system
from catalog.models import Job
from catalog.storage import LocalStorage
from catalog.storage.base import Storage
from catalog.store.values import Doc

__all__ = ["BagResult", "export_bag", "export_bag_tar"]

BLOCK = 1024 * 1024
PAGE = 1000  # records read at a time
# Threads copying files: from S3 each mostly waits on the network, and several overlap those
# waits. From a local archive a file is a few system calls and two digests, short enough that
# more threads mostly contend for the GIL: with --link, one thread exported 20,000 files of
# 4 KiB at 15,100-17,200 files/s and 63-72 us of CPU a file, four at 8,700-11,600 and 118-159
# (bench/fixity.py's tree, alternating rounds); copying, one used half the CPU of four, as fast.
COPIERS = 4
LOCAL_COPIERS = 1
WINDOW = 256  # copies pending at most, beyond those being written to the manifest
BATCH = 32  # files handed to a copying thread at once


@dataclass
class BagResult:
    """Where the bag is, and its payload (``Payload-Oxum``)."""

    uuid: str
    path: str
    files: int
    bytes: int
    linked: int = 0  # of the files, those that are hard links to the archive's

    def to_dict(self) -> dict[str, object]:
        return {"uuid": self.uuid, "path": self.path, "files": self.files, "bytes": self.bytes,
                "linked": self.linked}


def export_bag(catalog: Catalog, uuid: str, destination: str | Path, token: str | None,
               source: str = "python", link: bool = False) -> BagResult:
    """Write job ``uuid``'s files as a BagIt bag at ``destination`` (a new directory; its
    parent must exist), its files hard links to the archive's with ``link`` where they can
    be. The job's token or the admin token is required (a refusal is audited). Raises
    FixityMismatch naming the first file that is not as recorded."""
    job = _job(catalog, uuid, token, source)
    target = Path(destination)
    if target.exists() or target.is_symlink():
        raise InvalidInput(f"{target} exists: a bag is written to a new directory")
    if not target.parent.is_dir():
        raise InvalidInput(f"{target.parent} is not a directory: the bag's parent must exist")
    partial = target.parent / f".{target.name}.{uuid_module.uuid4().hex}.partial"
    partial.mkdir()
    try:
        files, size, linked = _write_bag(catalog, job, partial, link)
        os.rename(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return BagResult(job.uuid, str(target), files, size, linked)


def export_bag_tar(catalog: Catalog, uuid: str, token: str | None, directory: str | Path,
                   source: str = "api") -> Path:
    """``export_bag`` into ``directory`` (a scratch directory the caller removes), then the
    bag as one uncompressed tar file there (``<uuid>.tar``, the bag as its top directory).
    The scratch bag's files are links where they can be: it is only read, then removed."""
    bag = export_bag(catalog, uuid, Path(directory) / parse_uuid(uuid), token, source,
                     link=True)
    archive = Path(directory) / f"{bag.uuid}.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(bag.path, arcname=bag.uuid)
    shutil.rmtree(bag.path)
    return archive


def _job(catalog: Catalog, uuid: str, token: str | None, source: str) -> Job:
    job_uuid = parse_uuid(uuid, UUIDType.pipelinejob)
    catalog.authorize(job_uuid, token, "bag", source)
    job = catalog.get_job(job_uuid, history=False)
    check_storage_system(catalog, job)
    return job


def _records(catalog: Catalog, job: Job) -> Iterator[Doc]:
    cursor = None
    while True:
        page = catalog.store.find_files(child_of=job.uuid, limit=PAGE, cursor=cursor,
                                         links=False)  # the files alone
        yield from page.items
        if page.next is None:
            return
        cursor = page.next


def _write_bag(catalog: Catalog, job: Job, bag: Path, link: bool) -> tuple[int, int, int]:
    """The payload, manifest and tag files of ``job``'s bag in ``bag``: (files, bytes,
    files linked)."""
    files = size = linked = 0
    prefix = job.archive_path.rstrip("/") + "/"
    copier = _Copier(catalog.storage, os.path.join(bag, "data"), link)
    # Files are copied on other threads (see COPIERS) while this one reads the records and
    # writes the manifest, in the records' order, as each copy is done; at most WINDOW copies
    # are pending, so memory does not grow with the job.
    # Records go to the threads a batch at a time: one hand-over per file cost more in lock
    # traffic (strace: ~18 futex calls a file) than the file's own system calls.
    pending: deque[tuple[list[str], Future[list[tuple[str, int, bool]]]]] = deque()
    batch: list[tuple[Doc, str]] = []

    def drain(limit: int) -> None:
        nonlocal files, size, linked
        while len(pending) > limit or (pending and pending[0][1].done()):
            relatives, copying = pending.popleft()
            # the first file not as recorded stops it
            for relative, (sha256, copied, was_linked) in zip(relatives, copying.result(),
                                                             strict=True):
                manifest.write(f"{sha256}  data/{_encode(relative)}\n")
                files += 1
                size += copied
                linked += was_linked

    def submit() -> None:
        pending.append(([relative for _, relative in batch],
                        threads.submit(copier.copy_batch, list(batch))))
        batch.clear()

    with open(bag / "manifest-sha256.txt", "w", encoding="utf-8", newline="\n") as manifest, \
            ThreadPoolExecutor(LOCAL_COPIERS if isinstance(catalog.storage, LocalStorage)
                               else COPIERS, thread_name_prefix="bag-copy") as threads:
        try:
            for record in _records(catalog, job):
                path = record["path"]
                # A record of the job is under its archive path; one that is not keeps its path.
                relative = path[len(prefix):] if path.startswith(prefix) else path.lstrip("/")
                batch.append((record, relative))
                if len(batch) == BATCH:
                    submit()
                    drain(WINDOW // BATCH)
            if batch:
                submit()
            drain(0)
        except BaseException:
            for _, copying in pending:
                copying.cancel()  # those not started; leaving waits for those running
            raise
    _write_text(bag / "bagit.txt", "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n")
    pipeline = catalog.store.get_pipeline(job.pipeline_uuid) or {}
    name = " ".join(str(part) for part in (pipeline.get("name"), pipeline.get("version"))
                    if part)
    info = {
        "Bag-Software-Agent": f"catalog {__version__}",
        "Bagging-Date": datetime.now(UTC).date().isoformat(),
        "External-Identifier": job.uuid,
        "Catalog-Job-UUID": job.uuid,
        "Catalog-Pipeline": f"{name} ({job.pipeline_uuid})".lstrip(),
        "Catalog-URL": f"{catalog.settings.base_url.rstrip('/')}/jobs/{job.uuid}",
        "Catalog-Archive-Path": job.archive_path,
        "Payload-Oxum": f"{size}.{files}",
    }
    _write_text(bag / "bag-info.txt",
                "".join(f"{label}: {_one_line(value)}\n" for label, value in info.items()))
    tags = []
    for name in ("bagit.txt", "bag-info.txt", "manifest-sha256.txt"):
        digest = hashers(["sha256"])["sha256"]
        digest.update((bag / name).read_bytes())
        tags.append(f"{digest.hexdigest()}  {name}\n")
    _write_text(bag / "tagmanifest-sha256.txt", "".join(tags))
    return files, size, linked


@functools.lru_cache(maxsize=64)
def _algorithms(recorded: tuple[str, ...]) -> tuple[tuple[str, Any], ...]:
    """The digests to compute for a record with these checksums: them and sha256 (the same
    few sets for every file of a job: worked out once each)."""
    return constructors([*recorded, "sha256"])


class _Copier:
    """Copies records' files into a bag's payload directory, each read once: every digest is
    updated from the block just read, which is then written (no second read of either file).
    Per file, only what must be done for it: directories made once each, the copy written
    through its descriptor (no buffered file object), small files read in one call."""

    def __init__(self, storage: Storage, payload: str, link: bool = False) -> None:
        self._storage, self._payload, self._link = storage, payload, link
        self._made: set[str] = set()

    def copy_batch(self, batch: list[tuple[Doc, str]]) -> list[tuple[str, int, bool]]:
        """``copy_verified`` of each (record, relative path) in turn; the first that fails
        raises."""
        return [self.copy_verified(record, relative) for record, relative in batch]

    def copy_verified(self, record: Doc, relative: str) -> tuple[str, int, bool]:
        """Copy (or link) ``record``'s file to ``relative`` in the payload, computing every
        recorded digest (and sha256) on the way; its sha256, size and whether it was linked,
        or FixityMismatch if what the bag holds is not what was recorded."""
        recorded: dict[str, str] = record.get("checksums") or {}
        if not recorded:
            raise FixityMismatch(f"{record['path']} has no recorded checksum to export it by "
                                 "(index the job first)", path=record["path"])
        algorithms = _algorithms(tuple(recorded))
        digests = [make() for _, make in algorithms]
        target = os.path.join(self._payload, relative)
        parent = os.path.dirname(target)
        if parent not in self._made:
            os.makedirs(parent, exist_ok=True)
            self._made.add(parent)
        linked = False
        try:
            if self._link and self._storage.link(record["path"], target):
                linked = True
                size = _read_linked(target, digests)  # what the bag holds is what is checked
            else:
                with self._storage.open(record["path"]) as stream:
                    out = os.open(target, _CREATE, 0o666)
                    try:
                        size = _copy(stream, out, digests)
                    finally:
                        os.close(out)
        except FileNotFoundError:
            raise FixityMismatch(f"{record['path']} is missing: the bag was not written",
                                 path=record["path"]) from None
        except (OSError, CatalogError) as exc:
            why = exc.message if isinstance(exc, CatalogError) else f"{type(exc).__name__}: {exc}"
            raise FixityMismatch(f"{record['path']} could not be read ({why}): the bag was "
                                 "not written", path=record["path"]) from None
        found = {name: digest.hexdigest()
                 for (name, _), digest in zip(algorithms, digests, strict=True)}
        outcome, changed = compare(recorded, record["size"], size, found)
        if outcome != "ok":
            raise FixityMismatch(
                f"{record['path']} does not match its record ({', '.join(changed)} differ): "
                "the bag was not written", path=record["path"], changed=changed)
        return recorded.get("sha256", found["sha256"]), size, linked


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
_FIRST_READ = 64 * 1024  # most archived files are small: read whole, no large buffer made


def _copy(stream: IO[bytes], out: int, digests: list[Any]) -> int:
    """Read ``stream`` to its end once, updating ``digests`` and writing each block to the
    descriptor ``out``; the bytes copied."""
    size = 0
    block = _FIRST_READ
    while chunk := stream.read(block):
        size += len(chunk)
        for digest in digests:
            digest.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(out, view):]
        if len(chunk) == block:
            block = min(block * 8, BLOCK)  # a large file, likely: read more at a time
    return size


def _read_linked(target: str, digests: list[Any]) -> int:
    """Read the bag's link ``target`` to its end once, updating ``digests``; its size. A name
    that is not a plain file (swapped for a symlink since it was linked) is refused."""
    descriptor = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(f"{target} is not a plain file")
        size = 0
        block = _FIRST_READ
        while chunk := os.read(descriptor, block):
            size += len(chunk)
            for digest in digests:
                digest.update(chunk)
            if len(chunk) == block:
                block = min(block * 8, BLOCK)
        return size
    finally:
        os.close(descriptor)


def _encode(path: str) -> str:
    """A payload path as RFC 8493 writes it in a manifest: %, CR and LF percent-encoded."""
    return path.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _one_line(value: str) -> str:
    return " ".join(str(value).splitlines())


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)
