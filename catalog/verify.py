"""Verify: re-read catalogued files and say which are intact, changed, gone or unreadable.

Each file is read once with the digests it was recorded with; the outcome is written to its
record (a fixity check and its status): ``ok``, ``changed``, ``missing`` or ``unreadable``.
Then each job's archive path is listed: a file with no record that an index request of the job
selects is ``uncatalogued`` (an error), one that no request selects is ``ignored`` (a scratch
file, a log: listed, not an error). Records and listings both go a page at a time, so memory
does not grow with the catalog.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from catalog.catalog import Catalog
from catalog.errors import CatalogError
from catalog.fixity import check, compare, hash_many
from catalog.gcpause import gc_paused
from catalog.identifiers import UUIDType, parse_uuid
from catalog.indexer import Progress, check_storage_system
from catalog.models import Job, utc_now
from catalog.references import file_uuid
from catalog.selection import Selector, requests_of
from catalog.storage import FileInfo
from catalog.store.records import FixityUpdate
from catalog.store.values import Doc

PAGE = 1000  # records read, re-hashed and recorded at a time


@dataclass(frozen=True)
class FileVerdict:
    uuid: str
    path: str
    outcome: str
    changed: list[str]


VerdictSink = Callable[[list[FileVerdict]], None]


@dataclass
class VerifyReport:
    files: list[FileVerdict] = field(default_factory=list)  # the verdicts, when no sink took them
    # files without a record that an index request of their job selects (an error) ...
    uncatalogued: list[str] = field(default_factory=list)
    # ... and those no request selects (not an error)
    ignored: list[str] = field(default_factory=list)
    # "system:path" of records on another storage system than this catalog's: not read here
    other_storage: list[str] = field(default_factory=list)
    # "path: error" of files that could not be read: catalogued ones (their records say
    # unreadable) and listed ones that must not be read (a symlink out of the archive root)
    unreadable: list[str] = field(default_factory=list)
    # verdicts by outcome, however many were kept
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("ok", "changed", "missing", "unreadable"), 0))

    @property
    def ok(self) -> bool:
        return not self.uncatalogued and not self.unreadable and all(
            count == 0 for outcome, count in self.outcomes.items() if outcome != "ok")

    def counts(self) -> dict[str, int]:
        return {"ok": self.outcomes["ok"], "changed": self.outcomes["changed"],
                "missing": self.outcomes["missing"], "unreadable": len(self.unreadable),
                "uncatalogued": len(self.uncatalogued), "ignored": len(self.ignored),
                "other_storage": len(self.other_storage)}

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (with a ``JSONSpool`` as the sink of its verdicts, its
        ``document``)."""
        return {
            "ok": self.ok, "counts": self.counts(),
            "files": [vars(f) for f in self.files], "uncatalogued": self.uncatalogued,
            "ignored": self.ignored, "other_storage": self.other_storage,
            "unreadable": self.unreadable,
        }


def _pages(catalog: Catalog, job_uuid: str | None) -> Iterator[list[Doc]]:
    cursor = None
    while True:
        page = catalog.store.find_files(child_of=job_uuid, limit=PAGE, cursor=cursor)
        if page.items:
            yield page.items
        if page.next is None:
            return
        cursor = page.next


def verify(catalog: Catalog, job_uuid: str | None = None,
           progress: Progress | None = None, sink: VerdictSink | None = None) -> VerifyReport:
    """Verify the files of one job, or of the whole catalog when ``job_uuid`` is None.

    Records are taken PAGE at a time (by path): read, compared and recorded before the next
    page is read. So memory stays bounded however large the catalog, and an interrupted verify
    keeps the checks of every page it finished (one write each, not one per file).

    Only files of this catalog's storage system (setting ``archive_system``) are read: a job of
    another is refused (OtherStorageSystem), and with the whole catalog, records of another are
    listed in ``other_storage`` with nothing recorded on them (reading them from this storage
    would record them missing).

    Each page's verdicts go to ``sink`` if one is given (the CLI's ``JSONSpool``, say), else
    they are kept in ``VerifyReport.files``; ``VerifyReport.outcomes`` counts them either way.
    """
    with gc_paused():  # thousands of records a page (catalog.gcpause)
        return _verify(catalog, job_uuid, progress, sink)


def _verify(catalog: Catalog, job_uuid: str | None, progress: Progress | None,
            sink: VerdictSink | None) -> VerifyReport:
    system = catalog.settings.archive_system
    job: Job | None = None
    if job_uuid is not None:
        job_uuid = parse_uuid(job_uuid, UUIDType.pipelinejob)
        job = catalog.get_job(job_uuid, history=False)
        check_storage_system(catalog, job)
    report = VerifyReport()
    jobs: set[str] = set()  # with the whole catalog: the jobs whose archive paths to list
    for page in _pages(catalog, job_uuid):
        records = [record for record in page if record["storage_system"] == system]
        report.other_storage += [f"{record['storage_system']}:{record['path']}"
                                 for record in page if record["storage_system"] != system]
        if records:
            verify_records(catalog, records, progress, report, sink)
        if job_uuid is None:
            jobs.update(uuid for record in records for uuid in record.get("child_of", [])
                        if uuid.startswith(UUIDType.pipelinejob.prefix))
    if job is not None:
        _list_archive_path(catalog, job, job.uuid, report)
        return report
    for uuid in sorted(jobs):
        doc = catalog.store.get_job(uuid, history=False)
        if doc is not None and doc.get("archive_system", system) == system:
            _list_archive_path(catalog, Job.model_validate(doc), None, report)
    return report


def verify_records(catalog: Catalog, records: list[Doc], progress: Progress | None,
                   report: VerifyReport, sink: VerdictSink | None) -> None:
    """Verify ``records`` (of this catalog's storage system), recording a check on each, and
    hand their verdicts to ``sink`` (else keep them in ``report.files``)."""
    verdicts = _verify_page(catalog, records, progress, report)
    for verdict in verdicts:
        report.outcomes[verdict.outcome] += 1
    if sink is None:
        report.files += verdicts
    else:
        sink(verdicts)


def _list_archive_path(catalog: Catalog, job: Job, linked_to: str | None,
                       report: VerifyReport) -> None:
    """Files under ``job``'s archive path that have no record (linked to ``linked_to``, if
    given): ``uncatalogued`` where a request of the job selects them, else ``ignored``.
    Looked up a page at a time: no set of the catalogued paths is held."""
    try:
        selected = Selector(job.archive_path, requests_of(job, None))
        batch: list[FileInfo] = []
        for info in catalog.storage.list(job.archive_path):
            batch.append(info)
            if len(batch) == PAGE:
                _sort_listed(catalog, batch, linked_to, selected, report)
                batch = []
        _sort_listed(catalog, batch, linked_to, selected, report)
    except CatalogError as exc:  # the archive path itself unsafe (through a symlink out)
        report.unreadable.append(f"{job.archive_path}: listing stopped: {exc.message}")


def _sort_listed(catalog: Catalog, listed: list[FileInfo], linked_to: str | None,
                 selected: Selector, report: VerifyReport) -> None:
    system = catalog.settings.archive_system
    uuids = {info.path: file_uuid(catalog, system, info.path) for info in listed}
    found = catalog.store.get_files(list(uuids.values()))
    for info in listed:
        record = found.get(uuids[info.path])
        if record is not None and (linked_to is None or linked_to in record.get("child_of", [])):
            continue  # verified above (a catalogued file become unsafe is reported there)
        if info.refused is not None:  # a symlink out of the root: not read, reported
            report.unreadable.append(f"{info.path}: {info.refused}")
        elif selected(info.path):
            report.uncatalogued.append(info.path)
        else:
            report.ignored.append(info.path)


def _verify_page(catalog: Catalog, records: list[Doc], progress: Progress | None,
                 report: VerifyReport) -> list[FileVerdict]:
    """Re-read the files of ``records`` and record a check on each (one write); their
    verdicts. A file that cannot be read (other than gone: refused as unsafe, a permission or
    S3 error) is reported, and recorded, unreadable."""
    by_algorithms: dict[tuple[str, ...], list[str]] = {}
    for record in records:
        by_algorithms.setdefault(tuple(sorted(record["checksums"])), []).append(record["path"])
    found: dict[str, Any] = {}
    for algorithms, paths in by_algorithms.items():
        found.update(hash_many(catalog.storage, paths, algorithms, on_done=progress))
    now = utc_now()
    checks: list[FixityUpdate] = []
    verdicts: list[FileVerdict] = []
    for record in records:
        value = found.get(record["path"])
        if isinstance(value, FileNotFoundError) or value is None:
            size, digests = None, None
        elif isinstance(value, Exception):
            # Recorded (nothing was read): a scheduled check moves on to older checks.
            why = value.message if isinstance(value, CatalogError) else \
                f"{type(value).__name__}: {value}"
            report.unreadable.append(f"{record['path']}: {why}")
            checks.append((record["uuid"], check(now, "unreadable", None, {}, []), "unreadable"))
            verdicts.append(FileVerdict(record["uuid"], record["path"], "unreadable", []))
            continue
        else:
            size, digests = value
        outcome, changed = compare(record["checksums"], record["size"], size, digests)
        checks.append((record["uuid"], check(now, outcome, size, digests or {}, changed),
                       outcome))
        verdicts.append(FileVerdict(record["uuid"], record["path"], outcome, changed))
    catalog.store.record_fixity(checks)
    return verdicts
