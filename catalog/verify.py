"""Verify: re-read catalogued files and say which are intact, changed or gone.

Each file is read once with the digests it was recorded with; the outcome is written to its
record (a fixity check and its status). Files present under a job's archive path that no
record names are reported as uncatalogued.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from catalog.catalog import Catalog
from catalog.fixity import check, compare, hash_many
from catalog.gcpause import gc_paused
from catalog.identifiers import UUIDType, parse_uuid
from catalog.indexer import Progress
from catalog.models import utc_now
from catalog.store.base import Doc, FixityUpdate

RECORD_CHUNK = 1000  # fixity checks per store write


@dataclass(frozen=True)
class FileVerdict:
    uuid: str
    path: str
    outcome: str
    changed: list[str]


@dataclass
class VerifyReport:
    files: list[FileVerdict] = field(default_factory=list)
    uncatalogued: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.uncatalogued and all(f.outcome == "ok" for f in self.files)

    def counts(self) -> dict[str, int]:
        counts = {"ok": 0, "changed": 0, "missing": 0}
        for verdict in self.files:
            counts[verdict.outcome] = counts.get(verdict.outcome, 0) + 1
        return {**counts, "uncatalogued": len(self.uncatalogued)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "counts": self.counts(),
            "files": [vars(f) for f in self.files], "uncatalogued": self.uncatalogued,
        }


def _records(catalog: Catalog, job_uuid: str | None) -> Iterator[Doc]:
    cursor = None
    while True:
        page = catalog.store.find_files(child_of=job_uuid, limit=1000, cursor=cursor)
        yield from page.items
        if page.next is None:
            return
        cursor = page.next


def verify(catalog: Catalog, job_uuid: str | None = None,
           progress: Progress | None = None) -> VerifyReport:
    """Verify the files of one job, or of the whole catalog when ``job_uuid`` is None."""
    with gc_paused():  # thousands of records, all kept to the end (catalog.gcpause)
        return _verify(catalog, job_uuid, progress)


def _verify(catalog: Catalog, job_uuid: str | None, progress: Progress | None) -> VerifyReport:
    prefixes: set[str] = set()
    if job_uuid is not None:
        job_uuid = parse_uuid(job_uuid, UUIDType.pipelinejob)
        prefixes.add(catalog.get_job(job_uuid, history=False).archive_path)
    records = list(_records(catalog, job_uuid))
    if job_uuid is None:
        jobs = {uuid for record in records for uuid in record.get("child_of", [])
                if uuid.startswith(UUIDType.pipelinejob.prefix)}
        for uuid in sorted(jobs):
            job = catalog.store.get_job(uuid, history=False)
            if job is not None:
                prefixes.add(job["archive_path"])
    by_algorithms: dict[tuple[str, ...], list[str]] = {}
    for record in records:
        by_algorithms.setdefault(tuple(sorted(record["checksums"])), []).append(record["path"])
    found: dict[str, Any] = {}
    for algorithms, paths in by_algorithms.items():
        found.update(hash_many(catalog.storage, paths, algorithms, on_done=progress))
    report = VerifyReport()
    now = utc_now()
    checks: list[FixityUpdate] = []
    for record in records:
        value = found.get(record["path"])
        if isinstance(value, FileNotFoundError) or value is None:
            size, digests = None, None
        elif isinstance(value, Exception):
            raise value
        else:
            size, digests = value
        outcome, changed = compare(record["checksums"], record["size"], size, digests)
        checks.append((record["uuid"], check(now, outcome, size, digests or {}, changed),
                       outcome))
        report.files.append(FileVerdict(record["uuid"], record["path"], outcome, changed))
    # Recorded in writes of RECORD_CHUNK checks: not one commit per file, and not one write
    # lock held (webhooks waiting) for the whole catalog.
    for start in range(0, len(checks), RECORD_CHUNK):
        catalog.store.record_fixity(checks[start:start + RECORD_CHUNK])
    catalogued = {record["path"] for record in records}
    for prefix in sorted(prefixes):
        report.uncatalogued += [info.path for info in catalog.storage.list(prefix)
                                if info.path not in catalogued]
    return report
