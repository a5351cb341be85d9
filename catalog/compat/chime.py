"""CHIME/FRB workflow's Buckets and Results (chime-frb-api 3.4, workflow-core 1.x) over the
catalog's queue (DESIGN §13): a Work is a job, never a second record of it.

- ``id`` is the job UUID; ``function``/``command`` and ``parameters`` are the job's data (its
  identity); ``event`` numbers are ``child_of`` links to observation events
  (``observation.chime.N``); priority, timeout, retries, site, tags, user and config are the
  job's queue attributes; ``status``, ``attempt``, ``start``, ``stop`` and ``results`` are read
  from the job (timestamps as float epoch seconds: chime-frb-api 3.4 refuses ints).
- Deposit is ``catalog.queue.submit``, withdraw is ``withdraw``, the runner's ``PUT /work`` is
  ``complete`` for the job's holder (a report for an attempt that is no longer held is kept in
  the audit log, never dropped), the audits are ``retry``, ``sweep`` and ``cancel``.
- ``DELETE /work`` and ``DELETE /results`` hide a job from that surface, and Results' transfer
  marks it: an audit entry of this surface, newer than the job's last queueing. Nothing is
  copied or erased.
- Views translate ``pipeline``, ``status`` and ``id`` into catalog queries and test the rest of
  the Mongo-style query on each Work, a page of jobs at a time.

Routes are added to the app itself (``add_chime_routes``), the Buckets under ``/buckets`` and
Results under ``/results``, as each client's base URL.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from catalog import __version__
from catalog.catalog import Catalog, parse_body, parse_document
from catalog.errors import CatalogError, InvalidInput, JobNotFound, LeaseNotHeld, SchemaViolation
from catalog.identifiers import UUIDType, looks_like_uuid, parse_uuid, pipeline_uuid
from catalog.models import MAX_TIMEOUT_S, AuditEntry, Job, format_date, utc_now
from catalog.queue import cancel, retry, submit, sweep, withdraw
from catalog.queue.archive import complete
from catalog.queue.core import pipeline_uuids
from catalog.queue.models import Completion, SubmitRequest, WorkFilter
from catalog.store.base import JobQuery

SOURCE = "api"  # of the job's history entries (an event source the catalog knows)
MARKS_SOURCE = "chime"  # of this surface's marks in the audit log
# A Work's status, read from its job's state.
STATUS_OF_STATE = {
    "CREATED": "created", "WAITING": "created", "RESET": "created",
    "QUEUED": "queued",
    "RUNNING": "running",
    "FINISHED": "success", "INDEXING": "success", "VALIDATING": "success",
    "VALIDATED": "success", "FINALIZED": "success",
    "FAILED": "failure", "CANCELLED": "failure", "REJECTED": "failure", "RETIRED": "failure",
}
STATES_OF_STATUS: dict[str, tuple[str, ...]] = {
    status: tuple(state for state, of in STATUS_OF_STATE.items() if of == status)
    for status in dict.fromkeys(STATUS_OF_STATE.values())
}
# How a Work's config.archive.{products,plots} brings files into the job's archive path.
ARCHIVE_MODES = {"copy": "copy", "upload": "copy", "move": "move", "delete": "move",
                 "pass": "leave", "bypass": "leave"}
# The withdraw filter's keys, as the worker's filter (catalog.queue.WorkFilter) names them.
WITHDRAW_FIELDS = {"pipeline": "pipelines", "site": "site", "tags": "tags", "user": "users",
                   "priority": "priorities", "event": "events", "config.parent": "parent"}
# Query operators of views (and the one ``$expr`` form, ``{"$gte": ["$attempt", "$retries"]}``).
COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": lambda a, b: bool(a == b), "$ne": lambda a, b: bool(a != b),
    "$gt": lambda a, b: bool(a > b), "$gte": lambda a, b: bool(a >= b),
    "$lt": lambda a, b: bool(a < b), "$lte": lambda a, b: bool(a <= b),
}
SET_OPERATORS = ("$in", "$nin")
# The audit codes that mark a job on these surfaces (see the module docstring).
HIDDEN = "chime_hidden"
TRANSFERRED = "chime_transferred"
RESULTS_DELETED = "chime_results_deleted"
RESULTS_UPDATED = "chime_results_updated"
REPORT_KEPT = "chime_report_kept"
# Where the Work's notify settings are kept in the job's queue config (not a config key).
NOTIFY_KEY = "chime_notify"
DEFAULT_CONFIG: dict[str, Any] = {
    "archive": {"results": True, "products": "copy", "plots": "copy", "logs": "move"},
    "metrics": False, "parent": None, "orgs": ["chimefrb"], "teams": None,
}
DEFAULT_NOTIFY: dict[str, Any] = {"slack": {
    "channel_id": None, "member_ids": None, "message": None, "results": None, "products": None,
    "plots": None, "blocks": None, "reply": None}}
PAGE = 200  # jobs read at a time by views and audits
WORK_LIST_MAX = 10_000
Status = Literal["created", "queued", "running", "success", "failure", "cancelled"]


class WorkIn(BaseModel):
    """A Work as the clients send it (every field, nulls included); the rest is ignored."""

    model_config = ConfigDict(extra="ignore")

    pipeline: str = Field(min_length=1, max_length=256)
    site: str = Field("local", min_length=1, max_length=64)
    user: str | None = Field(None, min_length=1, max_length=256)
    function: str | None = Field(None, min_length=1, max_length=1024)
    command: list[str] | None = Field(None, min_length=1, max_length=1000)
    parameters: dict[str, Any] | None = None
    results: dict[str, Any] | None = None
    products: list[str] | None = None
    plots: list[str] | None = None
    event: list[int] | None = Field(None, max_length=1000)
    tags: list[str] | None = None
    timeout: int = Field(3600, ge=1, le=MAX_TIMEOUT_S)
    retries: int = Field(2, ge=0, le=5)
    priority: int = Field(3, ge=1, le=5)
    config: dict[str, Any] | None = None
    notify: dict[str, Any] | None = None
    id: str | None = None
    status: Status | None = None
    attempt: int | None = Field(None, ge=0)
    start: float | None = None
    stop: float | None = None

    @model_validator(mode="after")
    def _one_way_to_run(self) -> WorkIn:
        if self.function is not None and self.command is not None:
            raise ValueError("a Work has a function or a command, not both")
        return self


class ViewRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    query: dict[str, Any] = Field(default_factory=dict)
    projection: dict[str, Any] = Field(default_factory=dict)
    skip: Annotated[int, Field(ge=0)] = 0
    limit: Annotated[int, Field(ge=0)] = 0


# Works in and out ---------------------------------------------------------------------------
def _works(document: Any, need_id: bool = False) -> list[WorkIn]:
    if not isinstance(document, list):
        raise SchemaViolation("the body must be a JSON list of Work")
    if len(document) > WORK_LIST_MAX:
        raise InvalidInput(f"at most {WORK_LIST_MAX} Work in one request")
    works = [parse_document(WorkIn, item, f"Work {n}") for n, item in enumerate(document)]
    if need_id:
        for n, work in enumerate(works):
            if work.id is None:
                raise SchemaViolation(f"Work {n} has no id")
    return works


def _submission(catalog: Catalog, work: WorkIn) -> SubmitRequest:
    data: dict[str, Any] = ({"function": work.function} if work.function is not None else
                            {"command": work.command} if work.command is not None else {})
    data["parameters"] = work.parameters or {}
    config = dict(work.config or {})
    if work.notify:
        config[NOTIFY_KEY] = work.notify
    archive = config.get("archive")
    if not isinstance(archive, dict):
        archive = {}
    modes = {kind: ARCHIVE_MODES.get(str(archive.get(kind, "copy")), "copy")
             for kind in ("products", "plots")}
    return parse_document(SubmitRequest, {
        "pipeline": pipeline_uuid(work.pipeline, None, [], catalog.settings.namespace),
        "data": data,
        "observation_id": [f"observation.chime.{n}" for n in work.event or []] or None,
        "priority": work.priority, "timeout": work.timeout, "retries": work.retries,
        "site": work.site, "tags": list(dict.fromkeys(work.tags or [])), "user": work.user,
        "events": work.event or [], "config": config, "agent": work.user, **modes,
    }, "Work")


def deposit(catalog: Catalog, document: Any) -> list[str]:
    """Submit each Work (all checked before any is stored); their job UUIDs, in order. An
    identical Work is the same job: answered, never run twice while it is queued, running or
    done."""
    works = _works(document)
    requests = [_submission(catalog, work) for work in works]
    for name in dict.fromkeys(work.pipeline for work in works):
        catalog.add_pipeline(name)
    return [submit(catalog, request, SOURCE).uuid for request in requests]


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else float(value.timestamp())


def _merged(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    merged = dict(defaults)
    for key, value in given.items():
        base = merged.get(key)
        merged[key] = (_merged(base, value) if isinstance(base, dict) and isinstance(value, dict)
                       else value)
    return merged


class _Renderer:
    """Jobs as Works, with pipeline names and file lists fetched once per request."""

    def __init__(self, catalog: Catalog, files: bool = True) -> None:
        self.catalog = catalog
        self.files = files
        self.names: dict[str, str] = {}

    def name(self, uuid: str) -> str:
        if uuid not in self.names:
            doc = self.catalog.store.get_pipeline(uuid) or {}
            self.names[uuid] = str(doc.get("name", uuid))
        return self.names[uuid]

    def paths(self, job: Job, folder: str) -> list[str]:
        page = self.catalog.find_files(job=job.uuid, limit=1000,
                                       path_prefix=f"{job.archive_path}/{folder}/")
        return [str(doc["path"]) for doc in page.items]

    def work(self, job: Job) -> dict[str, Any]:
        queue = job.queue
        assert queue is not None
        config = {k: v for k, v in queue.config.items() if k != NOTIFY_KEY}
        notify = queue.config.get(NOTIFY_KEY)
        data = job.data
        products = self.paths(job, "products") if self.files else None
        plots = self.paths(job, "plots") if self.files else None
        return {
            "id": job.uuid, "pipeline": self.name(job.pipeline_uuid),
            "site": queue.site or "local", "user": queue.user or job.agent or "catalog",
            "function": data.get("function"), "command": data.get("command"),
            "parameters": data.get("parameters"), "results": job.results,
            "products": products or None, "plots": plots or None,
            "event": list(queue.events) or None, "tags": list(queue.tags) or None,
            "timeout": queue.timeout, "retries": queue.retries, "priority": queue.priority,
            "config": _merged(DEFAULT_CONFIG, config),
            "notify": _merged(DEFAULT_NOTIFY, notify if isinstance(notify, dict) else {}),
            "creation": _epoch(job.created), "start": _epoch(queue.start),
            "stop": _epoch(queue.stop), "attempt": queue.attempt,
            "status": STATUS_OF_STATE.get(job.state, "failure"),
        }


# withdraw and the runner's report -----------------------------------------------------------
def _values(condition: Any, what: str, allowed: tuple[str, ...] = ("$in",)) -> list[Any]:
    if isinstance(condition, dict):
        unknown = set(condition) - set(allowed)
        if unknown or len(condition) != 1:
            raise InvalidInput(f"{what}: a value or {{{'|'.join(allowed)}: [...]}} only, "
                               f"not operators {sorted(map(str, condition))}")
        values = next(iter(condition.values()))
        if not isinstance(values, list):
            raise InvalidInput(f"{what}: $in takes a list")
        return values
    return [condition]


def work_filter(query: Any) -> WorkFilter:
    """The worker's filter of a withdraw body (400 naming an unknown key or operator)."""
    if not isinstance(query, dict):
        raise SchemaViolation("a withdraw filter must be a JSON object")
    fields: dict[str, Any] = {}
    for key, condition in query.items():
        if key not in WITHDRAW_FIELDS:
            raise InvalidInput(f"withdraw filter: unknown key {key!r}; keys: "
                               f"{', '.join(WITHDRAW_FIELDS)}")
        if condition is None:
            continue
        values = _values(condition, f"withdraw filter {key!r}")
        if key == "site":
            if len(values) != 1:
                raise InvalidInput("withdraw filter 'site' names one site")
            fields["site"] = values[0]
        else:
            fields[WITHDRAW_FIELDS[key]] = values
    return parse_document(WorkFilter, fields, "withdraw filter")


def withdraw_work(catalog: Catalog, query: Any, worker: str) -> dict[str, Any] | None:
    """The highest-priority, oldest queued Work matching ``query``, now running for ``worker``
    (its attempt counted, ``start`` now), or None."""
    withdrawn = withdraw(catalog, work_filter(query), worker, None, SOURCE)
    if withdrawn is None:
        return None
    return _Renderer(catalog).work(catalog.get_job(withdrawn.uuid, history=False))


def _reason(work: WorkIn) -> str:
    error = (work.results or {}).get("error")
    if isinstance(error, str) and error:
        return error[:20000]
    if work.start is not None and work.stop is not None and \
            work.stop - work.start > work.timeout:
        return f"the work ran {work.stop - work.start:.1f} s, over its timeout of " \
               f"{work.timeout} s"
    return "the work reported failure"


def _audit(catalog: Catalog, uuid: str, code: str, reason: str,
           data: dict[str, Any] | None = None) -> None:
    entry = AuditEntry(job_uuid=uuid, name=code, date=utc_now(), source=MARKS_SOURCE,
                       code=code, reason=reason, data=data or {})
    catalog.store.append_audit(entry.model_dump(mode="json"))


def _keep(catalog: Catalog, job: Job, work: WorkIn, why: str) -> None:
    """A report that cannot be applied to the job: kept beside it in the audit log."""
    data = {key: value for key, value in work.model_dump(
        include={"status", "attempt", "results", "products", "plots", "start", "stop"}).items()
        if value is not None}
    _audit(catalog, job.uuid, REPORT_KEPT, why, data)


def report(catalog: Catalog, document: Any) -> None:
    """The runner's ``PUT /work``: a success or failure of the attempt its job's holder runs
    is that attempt's end (``complete``); anything else is kept in the audit log."""
    works = _works(document, need_id=True)
    jobs = [catalog.get_job(str(work.id), history=False) for work in works]
    for work, job in zip(works, jobs, strict=True):
        lease = job.queue.lease if job.queue is not None else None
        if work.status not in ("success", "failure"):
            if work.results or work.products or work.plots:
                _keep(catalog, job, work, f"an update while {job.state}, with status "
                      f"{work.status!r}: not applied")
            continue
        if job.state != "RUNNING" or lease is None or \
                (work.attempt is not None and work.attempt != lease.attempt):
            _keep(catalog, job, work, f"a report for attempt {work.attempt} while the job is "
                  f"{job.state}: not applied")
            continue
        completion = Completion(
            worker=lease.worker, results=work.results or {}, products=work.products or [],
            plots=work.plots or [], error=None if work.status == "success" else _reason(work))
        try:
            complete(catalog, job.uuid, completion, SOURCE)
        except LeaseNotHeld as exc:
            _keep(catalog, job, work, f"not applied: {exc.message}")
            continue
        if completion.error is not None and (work.results or work.products or work.plots):
            # A failed attempt's job keeps its error, not what it reported: kept beside it.
            _keep(catalog, job, work, f"the report of failed attempt {lease.attempt}")


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


def _field(document: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(document, dict):
            return None
        document = document.get(part)
    return document


def _compare(operator: str, value: Any, operand: Any) -> bool:
    if operator in ("$eq", "$ne"):
        return COMPARISONS[operator](value, operand)
    numbers = (int, float)
    if isinstance(value, bool) or isinstance(operand, bool):
        return False
    if isinstance(value, numbers) and isinstance(operand, numbers) or \
            isinstance(value, str) and isinstance(operand, str):
        return COMPARISONS[operator](value, operand)
    return False  # as Mongo: values of different kinds (or null) never compare


def _check_query(query: Any, where: str = "query") -> None:
    """Refuse (400) any operator a view does not know, before anything is read."""
    if not isinstance(query, dict):
        raise InvalidInput(f"{where} must be a JSON object")
    for key, condition in query.items():
        if key == "$expr":
            _expression(condition)
            continue
        if not isinstance(key, str) or key.startswith("$") or not key:
            raise InvalidInput(f"{where}: unknown operator {key!r}; a view takes fields with "
                               "values, $in, $nin, $eq, $ne, $gt, $gte, $lt, $lte and one $expr")
        if isinstance(condition, dict) and any(str(k).startswith("$") for k in condition):
            for operator, operand in condition.items():
                if operator in SET_OPERATORS:
                    if not isinstance(operand, list):
                        raise InvalidInput(f"{where}: {key} {operator} takes a list")
                elif operator not in COMPARISONS:
                    raise InvalidInput(f"{where}: unknown operator {operator!r} on {key!r}; "
                                       "known: $in, $nin, $eq, $ne, $gt, $gte, $lt, $lte")


def _expression(expression: Any) -> tuple[str, Any, Any]:
    """``{"$gte": ["$attempt", "$retries"]}`` and its kin: a comparison of two operands."""
    if isinstance(expression, dict) and len(expression) == 1:
        operator, operands = next(iter(expression.items()))
        if operator in COMPARISONS and isinstance(operands, list) and len(operands) == 2:
            return operator, operands[0], operands[1]
    raise InvalidInput("$expr takes one comparison of two operands, such as "
                       '{"$gte": ["$attempt", "$retries"]}')


def _operand(work: dict[str, Any], operand: Any) -> Any:
    if isinstance(operand, str) and operand.startswith("$"):
        return _field(work, operand[1:])
    return operand


def matches(work: dict[str, Any], query: dict[str, Any]) -> bool:
    """Whether ``work`` meets a (checked) Mongo-style query; a list field equals a value it
    holds, as in Mongo."""
    for key, condition in query.items():
        if key == "$expr":
            operator, left, right = _expression(condition)
            if not _compare(operator, _operand(work, left), _operand(work, right)):
                return False
            continue
        value = _field(work, key)
        candidates = value if isinstance(value, list) else [value]
        if isinstance(condition, dict) and any(str(k).startswith("$") for k in condition):
            for operator, operand in condition.items():
                if operator == "$in":
                    ok = any(c in operand for c in candidates) or value in operand
                elif operator == "$nin":
                    ok = not any(c in operand for c in candidates) and value not in operand
                else:
                    ok = any(_compare(operator, c, operand) for c in candidates) or \
                        _compare(operator, value, operand)
                if not ok:
                    return False
        elif value != condition and condition not in candidates:
            return False
    return True


def project(work: dict[str, Any], projection: dict[str, Any]) -> dict[str, Any]:
    """Mongo's projection: fields included (dotted paths too) or excluded, never both."""
    fields = {k: bool(v) for k, v in projection.items() if k != "_id"}
    if not fields:
        return work
    if len(set(fields.values())) > 1:
        raise InvalidInput("a projection includes fields or excludes them, not both")
    if not next(iter(fields.values())):
        return {k: v for k, v in work.items() if k not in fields}
    projected: dict[str, Any] = {}
    for path in fields:
        value = _field(work, path)
        parts = path.split(".")
        if value is None and not _has(work, parts):
            continue
        target = projected
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return projected


def _has(document: Any, parts: list[str]) -> bool:
    for part in parts:
        if not isinstance(document, dict) or part not in document:
            return False
        document = document[part]
    return True


def _eq_values(query: dict[str, Any], key: str) -> list[Any] | None:
    """The values ``key`` must take when the query says so plainly (equality or $in)."""
    if key not in query:
        return None
    condition = query[key]
    if isinstance(condition, dict):
        if set(condition) == {"$in"} and isinstance(condition["$in"], list):
            return list(condition["$in"])
        if set(condition) == {"$eq"}:
            return [condition["$eq"]]
        return None
    return [condition]


def _jobs(catalog: Catalog, query: dict[str, Any]) -> Iterator[Job]:
    """The submitted jobs a query may match: by id, else by pipeline and status as catalog
    queries, read a page at a time."""
    ids = _eq_values(query, "id")
    if ids is not None:
        for value in dict.fromkeys(v for v in ids if isinstance(v, str)):
            if looks_like_uuid(value) and value.startswith(UUIDType.pipelinejob.prefix):
                doc = catalog.store.get_job(value, history=False)
                if doc is not None and doc.get("queue") is not None:
                    yield Job.model_validate(doc)
        return
    names = _eq_values(query, "pipeline")
    pipelines: list[str | None] = [None]
    if names is not None:
        pipelines = list(pipeline_uuids(catalog, [n for n in names if isinstance(n, str)]))
    statuses = _eq_values(query, "status")
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
    _check_query(request.query)
    project({}, request.projection)  # refuse a mixed projection before reading
    renderer = _Renderer(catalog, files=not count and _wants_files(request.projection))
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
    renderer = _Renderer(catalog, files=False)
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
        _audit(catalog, job.uuid, HIDDEN, "deleted from the CHIME Buckets surface")
    return len(jobs)


def transfer(catalog: Catalog, document: Any) -> dict[str, int]:
    """Results' ``POST /results``: each ended Work's job is marked as in Results (nothing is
    copied); ``{pipeline: n}``."""
    works = _works(document, need_id=True)
    jobs = _jobs_by_id(catalog, [str(work.id) for work in works])
    renderer = _Renderer(catalog, files=False)
    for job in jobs:
        status = STATUS_OF_STATE.get(job.state, "failure")
        if job.queue is None or status not in ("success", "failure"):
            raise InvalidInput(f"work {job.uuid} is {status}: only success or failure "
                               "enter Results")
    done: dict[str, int] = {}
    for job in jobs:
        if not in_results(_marks(catalog, job)):
            _audit(catalog, job.uuid, TRANSFERRED, "transferred to the CHIME Results surface")
        name = renderer.name(job.pipeline_uuid)
        done[name] = done.get(name, 0) + 1
    return done


def update_results(catalog: Catalog, document: Any) -> dict[str, int]:
    """Results' ``PUT /results``: a job's results are its provenance and stay as they are;
    the update is kept beside it in the audit log. ``{pipeline: n}``."""
    works = _works(document, need_id=True)
    jobs = _jobs_by_id(catalog, [str(work.id) for work in works])
    renderer = _Renderer(catalog, files=False)
    for job in jobs:
        if not in_results(_marks(catalog, job)):
            raise JobNotFound(job.uuid)
    done: dict[str, int] = {}
    for work, job in zip(works, jobs, strict=True):
        _audit(catalog, job.uuid, RESULTS_UPDATED, "an update through the CHIME Results "
               "surface, kept beside the job", work.model_dump(
                   include={"results", "products", "plots", "status"}, exclude_none=True))
        name = renderer.name(job.pipeline_uuid)
        done[name] = done.get(name, 0) + 1
    return done


def remove_results(catalog: Catalog, by_pipeline: list[tuple[str, str]]) -> dict[str, int]:
    """Results' ``DELETE /results?<pipeline>=id``: the jobs leave Results' views."""
    jobs = _jobs_by_id(catalog, [uuid for _, uuid in by_pipeline])
    renderer = _Renderer(catalog, files=False)
    done: dict[str, int] = {name: 0 for name, _ in by_pipeline}
    for job in jobs:
        name = renderer.name(job.pipeline_uuid)
        if name in done and in_results(_marks(catalog, job)):
            _audit(catalog, job.uuid, RESULTS_DELETED, "deleted from the CHIME Results surface")
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


# HTTP ---------------------------------------------------------------------------------------
def _token(request: Request) -> str | None:
    token = request.headers.get("x-access-token") or request.headers.get("authorization")
    if token and token.lower().startswith("bearer "):
        token = token[7:]
    return token.strip() or None if token else None


def _writer(catalog: Catalog, request: Request, action: str) -> None:
    """A write needs the worker key or the admin token (``x-access-token`` or a raw
    ``authorization``), unless ``chime_anonymous_writes`` lets a tokenless client write."""
    token = _token(request)
    if token is None and catalog.settings.chime_anonymous_writes:
        return
    from catalog.web.abuse import client_address  # catalog.web imports this module

    # A refusal is counted, not written one by one (catalog.refusals), and rate-limited.
    catalog.check_worker(token, action, "api", client_address(request.scope))


async def _document(request: Request) -> Any:
    return parse_body(await request.body())


def _worker(request: Request) -> str:
    host = request.client.host if request.client is not None else "unknown"
    agent = request.headers.get("user-agent", "")[:64]
    return f"chime@{host} {agent}".strip()[:256]


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    """The request body a route reads raw, documented for the OpenAPI document."""
    schema = dict(schema)
    schema.pop("$defs", None)
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}}}


WORKS_BODY = _body({"type": "array", "items": WorkIn.model_json_schema(), "maxItems":
                    WORK_LIST_MAX})
VIEW_BODY = _body(ViewRequest.model_json_schema())
FILTER_BODY = _body({"type": "object", "description": "Equality or {$in: [...]} on "
                     + ", ".join(WITHDRAW_FIELDS), "properties": {
                         key: {} for key in WITHDRAW_FIELDS}, "additionalProperties": False})
REFUSALS: dict[int | str, dict[str, Any]] = {400: {}, 401: {}, 403: {}, 404: {}, 409: {},
                                            413: {}, 422: {}}


def add_chime_routes(app: FastAPI, catalog: Catalog) -> None:
    """Register Buckets (``/buckets``) and Results (``/results``) on ``app`` itself (an
    included router is one opaque route in FastAPI's list, which the 405 handler reads)."""

    def version() -> dict[str, str]:
        return {"name": "catalog", "version": __version__}

    for base in ("buckets", "results"):
        for method in ("GET", "HEAD"):  # workflow-core probes with HEAD
            app.add_api_route(f"/{base}/version", version, methods=[method], tags=[base],
                              operation_id=f"{method.lower()}_{base}_version",
                              summary=f"CHIME {base.title()}: the probe of a base URL")
        for root, name in ((f"/{base}", "root"), (f"/{base}/", "root_slash")):
            app.add_api_route(root, version, methods=["GET"], tags=[base],
                              operation_id=f"get_{base}_{name}",
                              summary=f"CHIME {base.title()}: the start-up check")

    def route(path: str, method: str, body: dict[str, Any] | None = None
              ) -> Callable[[Any], Any]:
        base = path.split("/")[1]

        def register(endpoint: Any) -> Any:
            app.add_api_route(path, endpoint, methods=[method], tags=[base],
                              responses=REFUSALS, openapi_extra=body,
                              operation_id=f"chime_{endpoint.__name__}")
            return endpoint
        return register

    def threaded(function: Callable[..., Any], *args: Any) -> Any:
        return run_in_threadpool(function, *args)

    @route("/buckets/work", "POST", WORKS_BODY)
    async def post_work(request: Request) -> JSONResponse:
        """Deposit Works (worker key): ``true``, or their ids with ``?return_ids=True``."""
        _writer(catalog, request, "deposit work")
        ids = await threaded(deposit, catalog, await _document(request))
        wanted = any(v.lower() == "true" for v in request.query_params.getlist("return_ids"))
        return JSONResponse(ids if wanted else True)

    @route("/buckets/work/withdraw", "POST", FILTER_BODY)
    async def post_withdraw(request: Request) -> JSONResponse:
        """Withdraw the next queued Work matching the filter (worker key), or ``null``."""
        _writer(catalog, request, "withdraw work")
        work = await threaded(withdraw_work, catalog, await _document(request),
                              _worker(request))
        return JSONResponse(work)

    @route("/buckets/work", "PUT", WORKS_BODY)
    async def put_work(request: Request) -> JSONResponse:
        """A runner's report (worker key): success or failure ends the running attempt."""
        _writer(catalog, request, "update work")
        await threaded(report, catalog, await _document(request))
        return JSONResponse(True)

    @route("/buckets/work", "DELETE")
    async def delete_work(request: Request) -> JSONResponse:
        """Hide ``?ids=`` from Buckets (worker key); the jobs and their history stay."""
        _writer(catalog, request, "delete work")
        await threaded(hide, catalog, request.query_params.getlist("ids"))
        return JSONResponse(True)

    @route("/buckets/view", "POST", VIEW_BODY)
    async def post_view(request: Request) -> JSONResponse:
        """Works matching a Mongo-style query, skipped, limited (0: all) and projected."""
        return JSONResponse(await threaded(view, catalog, await _document(request)))

    @route("/buckets/status", "GET")
    async def get_status() -> JSONResponse:
        """Works by status: total, queued, running, success, failure."""
        return JSONResponse(await threaded(counts, catalog))

    @route("/buckets/status/details/{pipeline}", "GET")
    async def get_status_details(pipeline: str) -> JSONResponse:
        """One pipeline's Works by status."""
        return JSONResponse(await threaded(counts, catalog, pipeline))

    @route("/buckets/status/pipelines", "GET")
    async def get_pipelines() -> JSONResponse:
        """The names of the pipelines that have jobs."""
        return JSONResponse(await threaded(pipelines, catalog))

    @route("/buckets/audit/failed", "GET")
    async def get_audit_failed(request: Request) -> JSONResponse:
        """Queue again failed Works with attempts left (worker key); how many."""
        _writer(catalog, request, "requeue failed work")
        return JSONResponse(await threaded(audit_failed, catalog))

    @route("/buckets/audit/expired", "GET")
    async def get_audit_expired(request: Request) -> JSONResponse:
        """Fail the attempts past their timeout (worker key); how many."""
        _writer(catalog, request, "fail expired work")
        return JSONResponse(await threaded(audit_expired, catalog))

    @route("/buckets/audit/stale/{days}", "GET")
    async def get_audit_stale(request: Request, days: float) -> JSONResponse:
        """Cancel the Works queued for more than ``days`` days (worker key); how many."""
        _writer(catalog, request, "cancel stale work")
        return JSONResponse(await threaded(audit_stale, catalog, days))

    @route("/results/results", "POST", WORKS_BODY)
    async def post_results(request: Request) -> JSONResponse:
        """Transfer ended Works to Results (worker key): marked, never copied."""
        _writer(catalog, request, "transfer work to results")
        return JSONResponse(await threaded(transfer, catalog, await _document(request)))

    @route("/results/results", "PUT", WORKS_BODY)
    async def put_results(request: Request) -> JSONResponse:
        """Updates of Works in Results (worker key), kept beside their jobs."""
        _writer(catalog, request, "update results")
        return JSONResponse(await threaded(update_results, catalog, await _document(request)))

    @route("/results/results", "DELETE")
    async def delete_results(request: Request) -> JSONResponse:
        """Hide ``?<pipeline>=id`` from Results (worker key); the jobs stay."""
        _writer(catalog, request, "delete results")
        pairs = list(request.query_params.multi_items())
        return JSONResponse(await threaded(remove_results, catalog, pairs))

    @route("/results/view", "POST", VIEW_BODY)
    async def post_results_view(request: Request) -> JSONResponse:
        """Works in Results matching a Mongo-style query."""
        return JSONResponse(await threaded(view, catalog, await _document(request), True))

    @route("/results/view/count", "POST", VIEW_BODY)
    async def post_results_count(request: Request) -> JSONResponse:
        """How many Works in Results match a query."""
        return JSONResponse(await threaded(view, catalog, await _document(request), True,
                                           True))

    @route("/results/status", "GET")
    async def get_results_status() -> JSONResponse:
        """Works in Results by pipeline."""
        return JSONResponse(await threaded(results_status, catalog))
