"""The write of ``submit_many`` (issue 16): a whole batch decided together, written at once.

N single submits cost N (or 2N, with the wait and the reverse index) commits. Here the batch's
heads are read in one query inside the store's atomic section (``Store.submit_jobs``), the
items are played in order over those heads in memory, with the rules of ``submit`` (a job
done is memoised, one on its way is left as it is, a failed or cancelled one is queued
again; a condition true queues, pending waits, false waits then is cancelled with its
cause), and what they do is written in one transaction: new jobs with their history, the
entries and head moves of existing ones, the reverse index's pairs. The answers are those of
N single submits (``tests/test_submit_many.py`` compares them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from catalog.errors import InvalidCondition
from catalog.queue.conditions import Value, cause, evaluate, find_cycle
from catalog.queue.models import SubmitOutcome
from catalog.states import next_state
from catalog.store.values import Doc, Move, Submissions

if TYPE_CHECKING:
    from catalog.catalog import Catalog
    from catalog.jobs import ManagedPipelineJob
    from catalog.models import QueueInfo

SOURCE = "queue"


@dataclass
class Planned:
    """One checked item: its job, its queue attributes and its condition (UUIDs, canonical)."""

    index: int
    managed: ManagedPipelineJob
    info: QueueInfo
    when: dict[str, Any] | None
    places: dict[str, str]  # the jobs the condition names, each with its place


class _Job:
    """A job as the batch leaves it so far: new (its doc) or moved (its Move)."""

    def __init__(self, head: Doc, doc: Doc | None = None, move: Move | None = None) -> None:
        self.head = head
        self.doc = doc
        self.move = move

    def append(self, entry: Doc, state: str, queue: Doc | None) -> None:
        self.head = {**self.head, "state": state, "queue": queue,
                     "version": self.head["version"] + 1, "last_event": entry["name"]}
        if self.doc is not None:
            self.doc["history"].append(entry)
            self.doc.update(state=state, queue=queue, version=len(self.doc["history"]),
                            last_event=entry["name"], updated=entry["date"])
        else:
            assert self.move is not None
            self.move.entries.append(entry)
            self.move.state, self.move.queue = state, queue


def _queue_data(info: QueueInfo, resubmitted: bool) -> Doc:
    return {"priority": info.priority, "retries": info.retries, "timeout": info.timeout,
            "resubmitted": resubmitted}


class _Plan:
    """The batch played over the heads read (``__call__`` is the store's plan)."""

    def __init__(self, catalog: Catalog, items: list[Planned], source: str) -> None:
        self.catalog = catalog
        self.items = items
        self.source = source
        # uuid, state, queued, created, the resources its attempts ask for (as SubmitOutcome)
        self.outcomes: list[tuple[str, str, bool, bool, Any]] = []
        self.cancelled: list[str] = []

    def uuids(self) -> list[str]:
        named = [job for item in self.items for job in item.places]
        return [item.managed.uuid for item in self.items] + named

    def __call__(self, heads: dict[str, Doc]) -> Submissions:
        from catalog.queue.core import DONE_STATES, IN_FLIGHT_STATES

        self.outcomes, self.cancelled = [], []
        jobs: dict[str, _Job] = {uuid: _Job(head) for uuid, head in heads.items()}
        written = Submissions()
        for item in self.items:
            uuid = item.managed.uuid
            if item.when is not None:
                self._check_cycle(item, jobs)
            job = jobs.get(uuid)
            created = job is None
            if job is None:
                if item.when is None:
                    doc = item.managed.new_job(item.info, _queue_data(item.info, False)
                                               ).model_dump(mode="json")
                    jobs[uuid] = _Job(_head(doc), doc=doc)
                    written.jobs.append(doc)
                    self.outcomes.append((uuid, doc["state"], True, True, item.info.resources))
                    continue
                doc = item.managed.new_job().model_dump(mode="json")
                job = jobs[uuid] = _Job(_head(doc), doc=doc)
                written.jobs.append(doc)
            state = job.head["state"]
            if state in DONE_STATES or state in IN_FLIGHT_STATES:
                kept = (job.head.get("queue") or {}).get("resources")
                self.outcomes.append((uuid, state, False, False, kept))
                continue
            if item.when is not None:
                written.dependencies += [(named, uuid) for named in item.places]
            if job.doc is None and job.move is None:
                job.move = Move(uuid, job.head["version"], state, [], job.head["queue"])
                written.moves.append(job.move)
            self._queue(item, job, jobs)
            self.outcomes.append((uuid, job.head["state"], True, created, item.info.resources))
        return written

    def _queue(self, item: Planned, job: _Job, jobs: dict[str, _Job]) -> None:
        """``submit``'s event on a job not on its way, then ``settle``'s when it waits."""
        uuid, head = item.managed.uuid, job.head
        event = "retry" if head["state"] == "FAILED" else "queue"
        value = Value.TRUE
        named: dict[str, Doc | None] = {}
        if item.when is not None:
            named = {j: (jobs[j].head if j in jobs else None) for j in item.places}
            value = evaluate(item.when, named)
            if value is not Value.TRUE:
                event = "wait"
        state = next_state(uuid, head["state"], event)
        entry = self.catalog.history_entry(uuid, event, _queue_data(
            item.info, resubmitted=head["state"] != "CREATED"), self.source, state)
        queued = entry["date"] if state == "QUEUED" else None
        queue = {**item.info.model_dump(mode="json"), "queued": queued}
        job.append(entry, state, queue)
        if state == "WAITING" and value is Value.FALSE:
            assert item.when is not None
            reason = f"its condition can no longer be met: {cause(item.when, named)}"
            state = next_state(uuid, state, "cancel")
            entry = self.catalog.history_entry(uuid, "cancel", {"reason": reason}, SOURCE,
                                               state)
            job.append(entry, state, {**queue, "reason": reason})
            self.cancelled.append(uuid)

    def _check_cycle(self, item: Planned, jobs: dict[str, _Job]) -> None:
        """``submit``'s check: the item's job would not wait on itself through the
        conditions the jobs have at this point of the batch (or stored, for the others)."""

        def condition_of(uuid: str) -> dict[str, Any] | None:
            head = jobs[uuid].head if uuid in jobs else self.catalog.store.get_job(
                uuid, history=False)
            return cast(dict[str, Any] | None, ((head or {}).get("queue") or {}).get("when"))

        cycle = find_cycle(item.managed.uuid, list(item.places), condition_of)
        if cycle is not None:
            place = f"items[{item.index}].{item.places[cycle[1]]}"
            raise InvalidCondition(f"{place}: a cycle: " + " waits on ".join(cycle),
                                   cycle=cycle, place=place)


def _head(doc: Doc) -> Doc:
    return {"uuid": doc["uuid"], "state": doc["state"], "version": doc["version"],
            "last_event": doc["last_event"], "queue": doc.get("queue")}


def write(catalog: Catalog, items: list[Planned], source: str) -> list[SubmitOutcome]:
    """Play and write the batch; the outcomes, in order; the jobs it cancelled (a condition
    already false) have their own dependents decided after."""
    from catalog.queue.core import DONE_STATES
    from catalog.queue.release import release

    plan = _Plan(catalog, items, source)
    written = catalog.store.submit_jobs(plan.uuids(), plan)
    new = {doc["uuid"]: doc["archive_path"] for doc in written.jobs}
    paths: dict[str, str] = {}
    outcomes = []
    for uuid, state, queued, created, resources in plan.outcomes:
        if uuid not in new and uuid not in paths:  # stored before: its own archive path
            stored = catalog.store.get_job(uuid, history=False)
            paths[uuid] = str((stored or {}).get("archive_path", ""))
        outcomes.append(SubmitOutcome(
            uuid=uuid, state=state, memoised=state in DONE_STATES, queued=queued,
            created=created, archive_path=new.get(uuid) or paths[uuid], resources=resources))
    for uuid in plan.cancelled:
        release(catalog, uuid)
    return outcomes
