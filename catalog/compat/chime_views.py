"""CHIME/FRB's views of the queue (catalog.compat.chime): the Works of Buckets and Results that
meet a query, counts, this surface's marks on a job (hidden, transferred, results deleted or
updated: audit entries, nothing copied or erased) and the Buckets' audits (failed work retried,
expired leases swept, stale work cancelled)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from catalog.catalog import Catalog, parse_document
from catalog.compat.chime import (
    HIDDEN,
    MARKS_SOURCE,
    PAGE,
    RESULTS_DELETED,
    RESULTS_UPDATED,
    SOURCE,
    STATES_OF_STATUS,
    STATUS_OF_STATE,
    TRANSFERRED,
    Renderer,
    ViewRequest,
    audit_mark,
    works_of,
)
from catalog.compat.chime_query import check_query, eq_values, matches, project
from catalog.errors import CatalogError, InvalidInput, JobNotFound, SchemaViolation
from catalog.identifiers import UUIDType, looks_like_uuid, parse_uuid
from catalog.models import Job, format_date
from catalog.queue import cancel, retry, sweep
from catalog.queue.core import pipeline_uuids
from catalog.store.values import JobQuery


# marks, views and counts --------------------------------------------------------------------
def _marks(catalog: Catalog, job: Job) -> list[str]:
    """This surface's marks on ``job`` since it last entered the queue, newest first."""
    queued = job.queue.queued if job.queue is not None else None
    since = format_date(queued) if queued is not None else ""
    return [str(entry["code"]) for entry in catalog.store.find_audit(job.uuid, 100)
            if entry.get("source") == MARKS_SOURCE and str(entry.get("date", "")) >= since]


def in_results(marks: list[str]) -> bool:
    latest = next((m for m in marks if m in (TRANSFERRED, RESULTS_DELETED)), None)
    return latest == TRANSFERRED


def _jobs(catalog: Catalog, query: dict[str, Any]) -> Iterator[Job]:
    """The submitted jobs a query may match: by id, else by pipeline and status as catalog
    queries, read a page at a time."""
    ids = eq_values(query, "id")
    if ids is not None:
        for value in dict.fromkeys(v for v in ids if isinstance(v, str)):
            if looks_like_uuid(value) and value.startswith(UUIDType.pipelinejob.prefix):
                doc = catalog.store.get_job(value, history=False)
                if doc is not None and doc.get("queue") is not None:
                    yield Job.model_validate(doc)
        return
    names = eq_values(query, "pipeline")
    pipelines: list[str | None] = [None]
    if names is not None:
        pipelines = list(pipeline_uuids(catalog, [n for n in names if isinstance(n, str)]))
    statuses = eq_values(query, "status")
    states: list[str | None] = [None]
    if statuses is not None:
        states = [s for status in statuses for s in STATES_OF_STATUS.get(str(status), ())]
    for pipeline in pipelines:
        for state in states:
            cursor: str | None = None
            while True:
                page = catalog.store.find_jobs(JobQuery(state=state, pipeline_uuid=pipeline,
                                                        limit=PAGE, cursor=cursor))
                for doc in page.items:
                    if doc.get("queue") is not None:
                        yield Job.model_validate(doc)
                cursor = page.next
                if cursor is None:
                    break


def _wants_files(projection: dict[str, Any]) -> bool:
    fields = {k: bool(v) for k, v in projection.items() if k != "_id"}
    if not fields or not any(fields.values()):
        return fields.get("products", True) or fields.get("plots", True)
    return any(k.split(".")[0] in ("products", "plots") for k, v in fields.items() if v)


def view(catalog: Catalog, document: Any, results: bool = False,
         count: bool = False) -> list[dict[str, Any]] | int:
    """The Works of Buckets (or, with ``results``, of Results) that meet the query: skipped,
    limited (0: all) and projected, or (``count``) how many there are."""
    if not isinstance(document, dict):
        raise SchemaViolation("a view takes a JSON object")
    request = parse_document(ViewRequest, document, "view")
    check_query(request.query)
    project({}, request.projection)  # refuse a mixed projection before reading
    renderer = Renderer(catalog, files=not count and _wants_files(request.projection))
    found: list[dict[str, Any]] = []
    seen = 0
    for job in _jobs(catalog, request.query):
        work = renderer.work(job)
        if not matches(work, request.query):
            continue
        marks = _marks(catalog, job)
        if results and not in_results(marks) or not results and HIDDEN in marks:
            continue
        seen += 1
        if count or seen <= request.skip:
            continue
        found.append(project(work, request.projection))
        if request.limit and len(found) >= request.limit:
            break
    return seen if count else found


def counts(catalog: Catalog, pipeline: str | None = None) -> dict[str, int]:
    """Buckets' ``/status``: jobs by Work status (every submitted one, hidden ones too)."""
    uuids = None if pipeline is None else list(pipeline_uuids(catalog, [pipeline]))
    totals = {"total": 0, "queued": 0, "running": 0, "success": 0, "failure": 0}
    if uuids == []:
        return totals
    for _, state, number in catalog.store.queue_counts(uuids):
        status = STATUS_OF_STATE.get(state, "failure")
        totals["total"] += number
        if status in totals:
            totals[status] += number
    return totals


def pipelines(catalog: Catalog) -> list[str]:
    """The names of the pipelines that have jobs."""
    renderer = Renderer(catalog, files=False)
    uuids = dict.fromkeys(p for p, _, _ in catalog.store.queue_counts(None))
    return sorted(dict.fromkeys(renderer.name(uuid) for uuid in uuids))


def _jobs_by_id(catalog: Catalog, ids: list[str]) -> list[Job]:
    """The jobs named (every id checked before anything changes)."""
    return [catalog.get_job(parse_uuid(value, UUIDType.pipelinejob), history=False)
            for value in dict.fromkeys(ids)]


def hide(catalog: Catalog, ids: list[str]) -> int:
    """``DELETE /work``: the jobs leave Buckets' views; their provenance stays whole."""
    jobs = _jobs_by_id(catalog, ids)
    for job in jobs:
        audit_mark(catalog, job.uuid, HIDDEN, "deleted from the CHIME Buckets surface")
    return len(jobs)


def transfer(catalog: Catalog, document: Any) -> dict[str, int]:
    """Results' ``POST /results``: each ended Work's job is marked as in Results (nothing is
    copied); ``{pipeline: n}``."""
    works = works_of(document, need_id=True)
    jobs = _jobs_by_id(catalog, [str(work.id) for work in works])
    renderer = Renderer(catalog, files=False)
    for job in jobs:
        status = STATUS_OF_STATE.get(job.state, "failure")
        if job.queue is None or status not in ("success", "failure"):
            raise InvalidInput(f"work {job.uuid} is {status}: only success or failure "
                               "enter Results")
    done: dict[str, int] = {}
    for job in jobs:
        if not in_results(_marks(catalog, job)):
            audit_mark(catalog, job.uuid, TRANSFERRED, "transferred to the CHIME Results surface")
        name = renderer.name(job.pipeline_uuid)
        done[name] = done.get(name, 0) + 1
    return done


def update_results(catalog: Catalog, document: Any) -> dict[str, int]:
    """Results' ``PUT /results``: a job's results are its provenance and stay as they are;
    the update is kept beside it in the audit log. ``{pipeline: n}``."""
    works = works_of(document, need_id=True)
    jobs = _jobs_by_id(catalog, [str(work.id) for work in works])
    renderer = Renderer(catalog, files=False)
    for job in jobs:
        if not in_results(_marks(catalog, job)):
            raise JobNotFound(job.uuid)
    done: dict[str, int] = {}
    for work, job in zip(works, jobs, strict=True):
        audit_mark(catalog, job.uuid, RESULTS_UPDATED, "an update through the CHIME Results "
               "surface, kept beside the job", work.model_dump(
                   include={"results", "products", "plots", "status"}, exclude_none=True))
        name = renderer.name(job.pipeline_uuid)
        done[name] = done.get(name, 0) + 1
    return done


def remove_results(catalog: Catalog, by_pipeline: list[tuple[str, str]]) -> dict[str, int]:
    """Results' ``DELETE /results?<pipeline>=id``: the jobs leave Results' views."""
    jobs = _jobs_by_id(catalog, [uuid for _, uuid in by_pipeline])
    renderer = Renderer(catalog, files=False)
    done: dict[str, int] = {name: 0 for name, _ in by_pipeline}
    for job in jobs:
        name = renderer.name(job.pipeline_uuid)
        if name in done and in_results(_marks(catalog, job)):
            audit_mark(catalog, job.uuid, RESULTS_DELETED, "deleted from the CHIME Results surface")
            done[name] += 1
    return done


def results_status(catalog: Catalog) -> dict[str, int]:
    """Results' ``/status``: Works in Results by pipeline."""
    done: dict[str, int] = {}
    works = view(catalog, {"query": {"status": {"$in": ["success", "failure"]}},
                           "projection": {"pipeline": True}}, results=True)
    assert isinstance(works, list)
    for work in works:
        done[work["pipeline"]] = done.get(work["pipeline"], 0) + 1
    return done


# the audits ---------------------------------------------------------------------------------
def _submitted_in(catalog: Catalog, state: str) -> Iterator[Job]:
    cursor: str | None = None
    while True:
        page = catalog.store.find_jobs(JobQuery(state=state, limit=PAGE, cursor=cursor))
        for doc in page.items:
            if doc.get("queue") is not None:
                yield Job.model_validate(doc)
        cursor = page.next
        if cursor is None:
            return


def audit_failed(catalog: Catalog) -> int:
    """Queue again the failed Works that have attempts left (``catalog.queue.retry``)."""
    retried = 0
    for job in list(_submitted_in(catalog, "FAILED")):
        assert job.queue is not None
        if job.queue.attempt < job.queue.retries:
            try:
                retry(catalog, job.uuid, SOURCE)
                retried += 1
            except CatalogError:
                continue  # acted on meanwhile
    return retried


def audit_expired(catalog: Catalog) -> int:
    """Fail the attempts past their lease (the job's timeout), retried while attempts
    remain (``catalog.queue.sweep``)."""
    return sweep(catalog)["failed"]


def audit_stale(catalog: Catalog, days: float) -> int:
    """Cancel the Works queued for more than ``days`` days (a ``cancel`` in their history)."""
    if not math.isfinite(days) or days < 0:
        raise InvalidInput(f"days must be a number of days, not {days}")
    cutoff = datetime.now(UTC) - timedelta(days=min(days, 36500))
    cancelled = 0
    for job in list(_submitted_in(catalog, "QUEUED")):
        assert job.queue is not None
        if job.queue.queued is not None and job.queue.queued < cutoff:
            try:
                cancel(catalog, job.uuid, f"stale: queued for more than {days:g} days", SOURCE)
                cancelled += 1
            except CatalogError:
                continue
    return cancelled
