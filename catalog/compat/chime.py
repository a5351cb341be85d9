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

Here: Works in and out, withdraw and the runner's report. The views, counts, marks and audits
are ``catalog.compat.chime_views``, their query language ``catalog.compat.chime_query``, and the
HTTP routes ``catalog.web.chime_routes`` (the Buckets under ``/buckets``, Results under
``/results``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, model_validator

from catalog.catalog import Catalog, parse_document
from catalog.errors import InvalidInput, LeaseNotHeld, SchemaViolation
from catalog.identifiers import pipeline_uuid
from catalog.models import MAX_TIMEOUT_S, AuditEntry, Job, utc_now
from catalog.queue import submit, withdraw
from catalog.queue.archive import complete
from catalog.queue.models import Completion, SubmitRequest, WorkFilter

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
    """A Work as the clients send it (every field, nulls included); the rest is ignored.
    Numbers are numbers: ``true`` is no attempt count, ``"3"`` no priority."""

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
    event: list[StrictInt] | None = Field(None, max_length=1000)
    tags: list[str] | None = None
    timeout: StrictInt = Field(3600, ge=1, le=MAX_TIMEOUT_S)
    retries: StrictInt = Field(2, ge=0, le=5)
    priority: StrictInt = Field(3, ge=1, le=5)
    config: dict[str, Any] | None = None
    notify: dict[str, Any] | None = None
    id: str | None = None
    status: Status | None = None
    attempt: StrictInt | None = Field(None, ge=0)
    start: StrictFloat | None = None
    stop: StrictFloat | None = None

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
def works_of(document: Any, need_id: bool = False) -> list[WorkIn]:
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
    works = works_of(document)
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


class Renderer:
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
    return Renderer(catalog).work(catalog.get_job(withdrawn.uuid, history=False))


def _reason(work: WorkIn) -> str:
    error = (work.results or {}).get("error")
    if isinstance(error, str) and error:
        return error[:20000]
    if work.start is not None and work.stop is not None and \
            work.stop - work.start > work.timeout:
        return f"the work ran {work.stop - work.start:.1f} s, over its timeout of " \
               f"{work.timeout} s"
    return "the work reported failure"


def audit_mark(catalog: Catalog, uuid: str, code: str, reason: str,
           data: dict[str, Any] | None = None) -> None:
    entry = AuditEntry(job_uuid=uuid, name=code, date=utc_now(), source=MARKS_SOURCE,
                       code=code, reason=reason, data=data or {})
    catalog.store.append_audit(entry.model_dump(mode="json"))


def _keep(catalog: Catalog, job: Job, work: WorkIn, why: str) -> None:
    """A report that cannot be applied to the job: kept beside it in the audit log."""
    data = {key: value for key, value in work.model_dump(
        include={"status", "attempt", "results", "products", "plots", "start", "stop"}).items()
        if value is not None}
    audit_mark(catalog, job.uuid, REPORT_KEPT, why, data)


def report(catalog: Catalog, document: Any) -> None:
    """The runner's ``PUT /work``: a success or failure of the attempt its job's holder runs
    is that attempt's end (``complete``); anything else is kept in the audit log."""
    works = works_of(document, need_id=True)
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
