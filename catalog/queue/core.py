"""The work queue on the catalog's own books (DESIGN §10).

The queue is a view over job states, not a second database: submitting sends ``queue`` (or
``retry`` to a failed job), a worker's withdraw sends ``run`` with its lease, its report sends
``finish`` or ``fail`` (then ``retry`` while attempts remain), the sweep
(``catalog.queue.sweeper``) fails the attempts whose lease expired. Each is one
compare-and-set on the job with its history entry, the queue attributes (``Job.queue``)
changing in the same write, so every step is provenance.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, NoReturn

from catalog.catalog import Catalog, parse_document
from catalog.errors import (
    EventNotAllowed,
    InvalidCondition,
    InvalidInput,
    JobDeleted,
    JobNotFound,
    LeaseNotHeld,
)
from catalog.identifiers import UUIDType, looks_like_uuid, parse_uuid
from catalog.models import QueueInfo, format_date, utc_now
from catalog.queue.conditions import Value, check, evaluate, find_cycle
from catalog.queue.models import SubmitOutcome, SubmitRequest, Withdrawn, WorkFilter
from catalog.queue.release import after_event, release, settle
from catalog.states import allowed_events, next_state
from catalog.store.values import Applied, ClaimLost, Decide, Doc

# A job in one of these has run to success: submitting it again answers it, memoised.
DONE_STATES = frozenset({"FINISHED", "INDEXING", "VALIDATING", "VALIDATED", "FINALIZED"})
# The same job is already on its way: a repeated deposit must never run it twice.
IN_FLIGHT_STATES = frozenset({"WAITING", "QUEUED", "RUNNING"})
SOURCE = "queue"
Outcome = tuple[str, Doc] | tuple[str, Doc, Doc]


class _InFlight(Exception):
    """A submission found its job queued meanwhile (by another submission)."""


def _now() -> tuple[datetime, str]:
    now = utc_now()
    return now, format_date(now)


def _later(now: datetime, seconds: int) -> str:
    return format_date(now + timedelta(seconds=seconds))


def _apply(catalog: Catalog, uuid: str, decide: Decide) -> Applied:
    applied = catalog.store.apply_event(uuid, None, decide)
    after_event(catalog, uuid, applied)
    return applied


# submitting -------------------------------------------------------------------------------
def submit(catalog: Catalog, request: SubmitRequest | dict[str, Any],
           source: str = "python") -> SubmitOutcome:
    """Create the job (or find it: its UUID is its content) and queue it.

    A job that has finished is answered as it is (``memoised``), one that is waiting, queued
    or running is the same job and stays as it is; a failed or cancelled one is queued again
    with a fresh count of attempts, under this submission's queue attributes."""
    from catalog.jobs import ManagedPipelineJob

    if not isinstance(request, SubmitRequest):
        request = parse_document(SubmitRequest, request, "submission")
    managed = ManagedPipelineJob(
        catalog, request.pipeline, request.data, measurement_id=request.measurement_id,
        sample_id=request.sample_id, experiment_id=request.experiment_id,
        observation_id=request.observation_id, agent=request.agent, source=source)
    dependencies: list[str] = []
    if request.when is not None:  # checked before anything is stored
        when, dependencies = _check_condition(catalog, managed.uuid, request.when)
        request = request.model_copy(update={"when": when})
    info = request.queue_info()
    conditional = request.when is not None
    job = managed.setup(None if conditional else info,
                        _queue_data(info, resubmitted=False)).stored
    created = bool(managed.created)

    def outcome(state: str, queued: bool) -> SubmitOutcome:
        # Left as it was, a job keeps its resources: the answer says which it runs with.
        kept = job.queue.resources if job.queue is not None else None
        return SubmitOutcome(uuid=job.uuid, state=state, memoised=state in DONE_STATES,
                             queued=queued, created=created, archive_path=job.archive_path,
                             resources=info.resources if queued else kept)

    if created and not conditional:
        return outcome(job.state, True)
    if job.state in DONE_STATES or job.state in IN_FLIGHT_STATES:
        return outcome(job.state, False)
    if conditional:
        # Before the wait: a dependency ending from now on finds this job in the index.
        catalog.store.add_dependencies(job.uuid, dependencies)

    def decide(head: Doc) -> Outcome:
        if head["state"] in IN_FLIGHT_STATES or head["state"] in DONE_STATES:
            raise _InFlight(head["state"])
        event = "retry" if head["state"] == "FAILED" else "queue"
        if conditional:
            assert request.when is not None
            heads = {uuid: catalog.store.get_job(uuid, history=False) for uuid in dependencies}
            if evaluate(request.when, heads) is not Value.TRUE:
                event = "wait"  # settled below when already false
        state = next_state(job.uuid, head["state"], event)  # EventNotAllowed: RESET, RETIRED...
        entry = catalog.history_entry(job.uuid, event, _queue_data(
            info, resubmitted=head["state"] != "CREATED"), source, state)
        queued = entry["date"] if state == "QUEUED" else None
        return state, entry, {"queue": {**info.model_dump(mode="json"), "queued": queued}}

    try:
        applied = _apply(catalog, job.uuid, decide)
    except _InFlight as exc:
        return outcome(str(exc), False)
    state = str(applied.entry["state"])
    if state == "WAITING":
        # A dependency that ended between the evaluation and the wait found the job not yet
        # waiting: deciding again now leaves no window in which it would wait for ever.
        state = settle(catalog, job.uuid) or state
        if state == "CANCELLED":  # cancelled at submit: its own dependents are decided now,
            release(catalog, job.uuid)  # as when any job ends (one waiting on its cancelled)
    return outcome(state, True)


def _check_condition(catalog: Catalog, uuid: str, when: dict[str, Any]
                     ) -> tuple[dict[str, Any], list[str]]:
    """The condition's canonical form and the jobs it names; InvalidCondition when it is
    malformed, too large, names an unknown job or would make ``uuid`` wait on itself."""
    condition, places = check(when)
    for named, place in places.items():
        if catalog.store.get_job(named, history=False) is None:
            _refuse_missing(catalog, named, place)

    def condition_of(job: str) -> dict[str, Any] | None:
        head = catalog.store.get_job(job, history=False)
        queue = (head or {}).get("queue") or {}
        return queue.get("when")

    jobs = list(places)
    cycle = find_cycle(uuid, jobs, condition_of)
    if cycle is not None:
        raise InvalidCondition(f"{places[cycle[1]]}: a cycle: " + " waits on ".join(cycle),
                               cycle=cycle, place=places[cycle[1]])
    return condition, jobs


def _refuse_missing(catalog: Catalog, named: str, place: str) -> NoReturn:
    """A condition naming a job the store does not have: JobDeleted (410) when it was
    deleted (gone, not malformed), InvalidCondition (400) when there never was one."""
    from catalog.deletion import missing

    error = missing(catalog, named)
    if isinstance(error, JobDeleted):
        raise JobDeleted(named, error.details["date"], error.details["source"], place=place)
    raise InvalidCondition(f"{place}: no job {named}", job=named, place=place)


def _queue_data(info: QueueInfo, resubmitted: bool) -> Doc:
    """What a ``queue`` (or re-queueing ``retry``) entry records of the submission."""
    data: Doc = {"priority": info.priority, "retries": info.retries, "timeout": info.timeout,
                 "resubmitted": resubmitted}
    if info.resources is not None:
        data["resources"] = info.resources.model_dump(mode="json", exclude_none=True)
    return data


# a worker's side ----------------------------------------------------------------------------
def pipeline_uuids(catalog: Catalog, names: list[str]) -> dict[str, str]:
    """The pipelines named (every version of a name), by UUID: their names (a UUID given
    names itself until it is looked up). Unknown names have none."""
    uuids: dict[str, str] = {}
    for name in names:
        if looks_like_uuid(name):
            uuid = parse_uuid(name, UUIDType.pipeline)
            doc = catalog.store.get_pipeline(uuid)
            if doc is not None:
                uuids[uuid] = str(doc["name"])
            continue
        cursor: str | None = None
        while True:
            page = catalog.store.find_pipelines(name=name, limit=100, cursor=cursor)
            uuids.update((doc["uuid"], name) for doc in page.items)
            cursor = page.next
            if cursor is None:
                break
    return uuids


def withdraw(catalog: Catalog, work_filter: WorkFilter | dict[str, Any], worker: str,
             lease: int | None = None, source: str = "python") -> Withdrawn | None:
    """Claim the highest-priority, oldest QUEUED job the filter matches (None if there is
    none) for ``worker``: RUNNING, its attempt counted, its lease running ``lease`` seconds
    (the job's timeout if None) from now."""
    if not isinstance(work_filter, WorkFilter):
        work_filter = parse_document(WorkFilter, work_filter, "work filter")
    if not isinstance(worker, str) or not 1 <= len(worker) <= 256:
        raise InvalidInput("a worker needs a name of 1 to 256 characters")
    pipelines = pipeline_uuids(catalog, work_filter.pipelines)
    if not pipelines:
        return None
    now, now_text = _now()

    def decide(head: Doc) -> Outcome:
        if head["state"] != "QUEUED" or head.get("queue") is None:
            raise ClaimLost(head["uuid"])
        queue = head["queue"]
        attempt = int(queue.get("attempt", 0)) + 1
        expiry = _later(now, lease or int(queue["timeout"]))
        entry = catalog.history_entry(head["uuid"], "run", {
            "worker": worker, "attempt": attempt, "lease_expiry": expiry}, source, "RUNNING")
        return "RUNNING", entry, {"queue": {
            **queue, "attempt": attempt, "start": now_text, "stop": None, "reason": None,
            "lease": {"worker": worker, "attempt": attempt, "start": now_text,
                      "expiry": expiry}}}

    priority = (work_filter.priorities[0] if work_filter.priorities is not None
                and len(work_filter.priorities) == 1 else None)
    claimed = catalog.store.claim(list(pipelines),
                                  lambda head: work_filter.matches(head["queue"]), decide,
                                  priority)
    if claimed is None:
        return None
    job = claimed.job  # as the claim left it (MongoDB: read just after it)
    queue = QueueInfo.model_validate(job["queue"])
    if queue.lease is None or queue.lease.worker != worker:
        return None  # cancelled (or swept) between the claim and its read: nothing to run
    return Withdrawn(uuid=job["uuid"], pipeline=pipelines.get(job["pipeline_uuid"],
                                                              job["pipeline_uuid"]),
                     data=job["data"], archive_path=job["archive_path"],
                     attempt=queue.attempt, timeout=queue.timeout,
                     lease_expiry=format_date(queue.lease.expiry),
                     token=catalog.job_token(job["uuid"]), queue=queue)


def held_queue(catalog: Catalog, uuid: str, worker: str) -> tuple[Doc, QueueInfo]:
    """The head and queue attributes of a job ``worker`` holds; LeaseNotHeld otherwise. The
    head comes without its link lists (what holding and ending an attempt never read)."""
    uuid = parse_uuid(uuid, UUIDType.pipelinejob)
    head = catalog.store.get_job(uuid, history=False, links=False)
    if head is None:
        raise JobNotFound(uuid)
    _check_holder(head, worker)
    return head, QueueInfo.model_validate(head["queue"])


def _check_holder(head: Doc, worker: str, attempt: int | None = None) -> dict[str, Any]:
    queue = head.get("queue") or {}
    lease = queue.get("lease")
    if head["state"] != "RUNNING" or lease is None:
        raise LeaseNotHeld(head["uuid"], worker, f"the job is {head['state']}, held by nobody")
    if lease["worker"] != worker:
        raise LeaseNotHeld(head["uuid"], worker, "another worker holds it")
    if attempt is not None and lease["attempt"] != attempt:
        raise LeaseNotHeld(head["uuid"], worker, f"its attempt {attempt} has ended")
    return dict(queue)


def heartbeat(catalog: Catalog, uuid: str, worker: str, lease: int | None = None) -> str:
    """Renew ``worker``'s lease on ``uuid`` for ``lease`` seconds (the job's timeout if None)
    from now; returns the new expiry. Not an event: a renewal would drown the history."""
    head, queue = held_queue(catalog, uuid, worker)
    assert queue.lease is not None
    expiry = _later(utc_now(), lease or queue.timeout)
    if not catalog.store.renew_lease(head["uuid"], worker, queue.lease.attempt, expiry):
        fresh = catalog.store.get_job(head["uuid"], history=False) or head
        _check_holder(fresh, worker, queue.lease.attempt)
        raise LeaseNotHeld(head["uuid"], worker, "it changed while the lease was renewed")
    return expiry


def _ender(catalog: Catalog, worker: str, error: str | None,
           results: dict[str, Any] | None, source: str, attempts: list[int],
           told: dict[str, Any] | None = None) -> Decide:
    """The decide of ``end_attempt``; it notes the attempt it ended in ``attempts``."""

    def decide(head: Doc) -> Outcome:
        queue = _check_holder(head, worker)
        attempt = int(queue["lease"]["attempt"])
        attempts.append(attempt)
        event = "finish" if error is None else "fail"
        state = next_state(head["uuid"], head["state"], event)
        data: Doc = {"attempt": attempt, "worker": queue["lease"]["worker"]}
        if error is not None:
            data["error"] = error
        data.update(told or {})
        entry = catalog.history_entry(head["uuid"], event, data, source, state)
        changes: Doc = {"queue": {**queue, "lease": None, "stop": entry["date"],
                                  "reason": error}}
        if results is not None:
            changes["results"] = results
        return state, entry, changes

    return decide


def end_attempt(catalog: Catalog, uuid: str, worker: str, error: str | None,
                results: dict[str, Any] | None = None, source: str = "python",
                told: dict[str, Any] | None = None) -> str:
    """End ``worker``'s running attempt on ``uuid`` (it must hold the lease): ``finish`` with
    ``results`` when ``error`` is None, else ``fail`` with it, then ``retry`` while attempts
    remain; ``told`` goes into the event's data. Returns the job's state then."""
    attempts: list[int] = []
    applied = _apply(catalog, uuid, _ender(catalog, worker, error, results, source, attempts,
                                           told))
    if error is not None and not applied.duplicate:
        try:
            applied = _apply(catalog, uuid, _retrier(catalog, attempts, source))
        except ClaimLost:
            pass  # the failure is final, or someone acted on it meanwhile
    return str(applied.entry["state"])


def _retrier(catalog: Catalog, attempts: list[int], source: str) -> Decide:
    """The decide of an automatic ``retry`` after the attempt ``_ender`` noted in
    ``attempts`` failed (none noted: the failure did not happen, nothing to retry)."""

    def decide(head: Doc) -> Outcome:
        if not attempts:
            raise ClaimLost(head["uuid"])
        attempt = attempts[-1]
        queue = dict(head.get("queue") or {})
        if head["state"] != "FAILED" or queue.get("attempt") != attempt:
            raise ClaimLost(head["uuid"])  # someone acted on the failure meanwhile
        if attempt >= int(queue.get("retries", 0)):
            raise ClaimLost(head["uuid"])  # the failure is final
        entry = catalog.history_entry(head["uuid"], "retry", {
            "attempt": attempt, "retries": queue["retries"], "automatic": True}, source,
            "QUEUED")
        return "QUEUED", entry, {"queue": {**queue, "queued": entry["date"]}}

    return decide


# a user's side ----------------------------------------------------------------------------
def retry(catalog: Catalog, uuid: str, source: str = "python") -> Applied:
    """Queue a FAILED job again, by hand, with a fresh count of attempts."""
    uuid = parse_uuid(uuid, UUIDType.pipelinejob)

    def decide(head: Doc) -> Outcome:
        state = next_state(uuid, head["state"], "retry")
        queue = head.get("queue")
        if queue is None:
            raise EventNotAllowed(uuid, "retry", f"{head['state']} (never submitted)",
                                  allowed_events(head["state"]))
        entry = catalog.history_entry(uuid, "retry", {
            "attempts_before": queue.get("attempt", 0), "automatic": False}, source, state)
        return state, entry, {"queue": {**queue, "attempt": 0, "queued": entry["date"]}}

    return _apply(catalog, uuid, decide)


def cancel(catalog: Catalog, uuid: str, reason: str = "cancelled by a user",
           source: str = "python") -> Applied:
    """Cancel a job that has not ended (CREATED, WAITING, QUEUED or RUNNING): a running one's
    worker finds its lease gone at its next heartbeat and stops the work."""
    uuid = parse_uuid(uuid, UUIDType.pipelinejob)

    def decide(head: Doc) -> Outcome:
        state = next_state(uuid, head["state"], "cancel")
        entry = catalog.history_entry(uuid, "cancel", {"reason": reason}, source, state)
        queue = head.get("queue")
        if queue is None:
            return state, entry
        return state, entry, {"queue": {**queue, "lease": None, "reason": reason,
                                        "stop": entry["date"] if queue.get("lease") else
                                        queue.get("stop")}}

    return _apply(catalog, uuid, decide)


# the counts ---------------------------------------------------------------------------------
def status(catalog: Catalog, pipelines: list[str] | None = None) -> dict[str, Any]:
    """Jobs by pipeline name and state: ``{"pipelines": {name: {state: n}}, "total": {...}}``."""
    uuids = list(pipeline_uuids(catalog, pipelines)) if pipelines is not None else None
    names: dict[str, str] = {}
    by_pipeline: dict[str, dict[str, int]] = {}
    total: dict[str, int] = {}
    for pipeline, state, count in catalog.store.queue_counts(uuids):
        if pipeline not in names:
            doc = catalog.store.get_pipeline(pipeline) or {}
            names[pipeline] = str(doc.get("name", pipeline))
        counts = by_pipeline.setdefault(names[pipeline], {})
        counts[state] = counts.get(state, 0) + count
        total[state] = total.get(state, 0) + count
    return {"pipelines": by_pipeline, "total": total}
