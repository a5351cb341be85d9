"""A batch of submissions on MongoDB (``MongoStore.submit_jobs``): bulk writes, no loop of
round trips.

The heads come from one ``$in`` query; the new jobs' entries, then the jobs, go in with one
``insert_many`` each; the moved jobs' entries with one ``insert_many`` (an entry at a place
already taken means another writer moved the job: ConcurrencyConflict), their heads moved
onto them as ``apply_event`` does, and the reverse index's pairs with one unordered
``insert_many`` (a pair already there is kept).

A sweep (``MongoStore.sweep_leases``) reads the expired heads from the lease index in one
query and writes each planned entry as ``apply_events`` does, its own compare-and-set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pymongo import ASCENDING, UpdateOne
from pymongo.errors import BulkWriteError

from catalog.errors import ConcurrencyConflict, JobNotFound
from catalog.store.paging import unique
from catalog.store.records import check_new_job
from catalog.store.values import (
    Applied,
    ClaimLost,
    Decide,
    Doc,
    Move,
    PlanSubmissions,
    PlanSweep,
    Submissions,
)

if TYPE_CHECKING:
    from catalog.store.mongo import MongoStore

_DUPLICATE_KEY = 11000
_HEAD: Doc = {"_id": 0, "uuid": 1, "state": 1, "version": 1, "last_event": 1, "created": 1,
              "queue": 1}


def _insert_all(store: MongoStore, collection: Any, docs: list[Doc], what: str,
                duplicates_ok: bool = False) -> None:
    """Insert ``docs`` unordered; a duplicate is a conflict unless ``duplicates_ok``."""
    if not docs:
        return
    try:
        with store._guard:
            collection.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(error.get("code") != _DUPLICATE_KEY for error in errors):
            raise
        if not duplicates_ok:
            raise ConcurrencyConflict(f"{what} changed while a batch was submitted") from None


def submit_jobs(store: MongoStore, uuids: list[str], plan: PlanSubmissions) -> Submissions:
    with store._guard:
        found = list(store._jobs.find({"uuid": {"$in": unique(uuids)}}, _HEAD))
    created = {doc["uuid"]: doc["created"] for doc in found}
    heads = {doc["uuid"]: {"uuid": doc["uuid"], "state": doc["state"],
                           "version": doc["version"], "last_event": doc["last_event"],
                           "queue": doc.get("queue")} for doc in found}
    planned = plan(heads)
    entries: list[Doc] = []
    jobs: list[Doc] = []
    for doc in planned.jobs:
        check_new_job(doc)
        entries += [{**entry, "job_uuid": doc["uuid"], "job_created": doc["created"],
                     "seq": seq} for seq, entry in enumerate(doc.get("history", []), start=1)]
        jobs.append({k: v for k, v in doc.items() if k != "history"})
    _insert_all(store, store._history, entries, "jobs")
    _insert_all(store, store._jobs, jobs, "jobs")  # the unique index on uuid decides
    moved: list[Doc] = []
    for move in planned.moves:
        moved += [{**entry, "job_uuid": move.uuid, "job_created": created[move.uuid],
                   "seq": seq, "changes": {"queue": move.queue}}
                  for seq, entry in enumerate(move.entries, start=move.read_version + 1)]
    _insert_all(store, store._history, moved, "jobs")  # (job, seq) unique: the compare
    updates = [({"uuid": move.uuid, "created": created[move.uuid],
                 "version": move.read_version},
                {"$set": {"state": move.state, "last_event": move.entries[-1]["name"],
                          "updated": move.entries[-1]["date"], "queue": move.queue},
                 "$inc": {"version": len(move.entries)}}) for move in planned.moves]
    with store._guard:
        if store._mock:  # mongomock cannot run bulk_write(UpdateOne) with current pymongo
            for where, change in updates:
                store._jobs.update_one(where, change)
        elif updates:
            store._jobs.bulk_write([UpdateOne(w, c) for w, c in updates], ordered=False)
    _insert_all(store, store._dependencies,
                [{"dependency": dependency, "dependent": dependent}
                 for dependency, dependent in planned.dependencies], "dependencies",
                duplicates_ok=True)
    return planned


def sweep_leases(store: MongoStore, now: str, limit: int, plan: PlanSweep
                 ) -> tuple[int, list[Move]]:
    with store._guard:
        found = list(store._jobs.find({"queue.lease.expiry": {"$lt": now}}, _HEAD)
                     .sort("queue.lease.expiry", ASCENDING).limit(limit))
    moves = plan([{"uuid": doc["uuid"], "state": doc["state"], "version": doc["version"],
                   "last_event": doc["last_event"], "queue": doc.get("queue")}
                  for doc in found])
    # Entry by entry, each round only on the jobs whose earlier entry went in: a version
    # alone cannot tell a job's next place from one another writer took meanwhile.
    done = dict.fromkeys(range(len(moves)), 0)
    error: Exception | None = None
    for offset in range(max((len(move.entries) for move in moves), default=0)):
        going = [index for index, count in done.items()
                 if count == offset and offset < len(moves[index].entries)]
        outcomes = store.apply_events([(moves[index].uuid, None, _step(moves[index], offset))
                                       for index in going])
        for index, outcome in zip(going, outcomes, strict=True):
            if isinstance(outcome, Applied):
                done[index] += 1
            elif not isinstance(outcome, ClaimLost | JobNotFound):
                error = error or outcome
    if error is not None:
        raise error
    written = []
    for index, count in done.items():  # as far as each job's entries went in
        move = moves[index]
        if count:
            written.append(Move(move.uuid, move.read_version, str(move.entries[count - 1]
                                                                  ["state"]),
                                move.entries[:count], move.queue))
    return len(found), written


def _step(move: Move, offset: int) -> Decide:
    """The decide writing ``move``'s entry at ``offset`` on the head its earlier entries
    left (ClaimLost when another writer moved the job meanwhile). Each entry carries the
    move's last queue, as a batch of submissions' do."""
    entry = move.entries[offset]

    def decide(head: Doc) -> tuple[str, Doc, Doc]:
        if head["version"] != move.read_version + offset:
            raise ClaimLost(move.uuid)
        return str(entry["state"]), entry, {"queue": move.queue}

    return decide
