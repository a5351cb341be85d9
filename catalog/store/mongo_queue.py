"""The MongoDB store's work queue: claims (``mongo_claim``), leases, the sweep and submissions in
bulk (``mongo_bulk``), counts and the dependencies of conditions."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, cast

from pymongo import ASCENDING
from pymongo.collection import Collection

from catalog.store import mongo_bulk, mongo_claim
from catalog.store.base import ClaimMatch
from catalog.store.mongo_links import Links
from catalog.store.paging import unique
from catalog.store.values import Claimed, Decide, Doc, Move, PlanSubmissions, PlanSweep, Submissions

if TYPE_CHECKING:
    from catalog.store.mongo import MongoStore


class QueueMongo:
    """The work-queue part of ``MongoStore`` (which sets the attributes below)."""

    _guard: AbstractContextManager[object]
    _jobs: Collection[Doc]
    _files: Collection[Doc]
    _entities: Collection[Doc]
    _links: Links
    _dependencies: Collection[Doc]
    _claims: mongo_claim.Claims

    def claim(self, pipelines: list[str], match: ClaimMatch, decide: Decide,
              priority: int | None = None) -> Claimed | None:
        return self._claims.claim(pipelines, match, decide, priority)

    def renew_lease(self, uuid: str, worker: str, attempt: int, expiry: str) -> bool:
        with self._guard:
            result = self._jobs.update_one(
                {"uuid": uuid, "state": "RUNNING", "queue.lease.worker": worker,
                 "queue.lease.attempt": attempt},
                {"$set": {"queue.lease.expiry": expiry}})
        return result.matched_count == 1

    def expired_leases(self, now: str, limit: int = 1000) -> list[str]:
        with self._guard:
            rows = list(self._jobs.find({"queue.lease.expiry": {"$lt": now}}, {"_id": 0, "uuid": 1})
                        .sort("queue.lease.expiry", ASCENDING).limit(limit))
        return [row["uuid"] for row in rows]

    def sweep_leases(self, now: str, limit: int, plan: PlanSweep) -> tuple[int, list[Move]]:
        return mongo_bulk.sweep_leases(cast("MongoStore", self), now, limit, plan)

    def queue_counts(self, pipelines: list[str] | None = None) -> list[tuple[str, str, int]]:
        stages: list[Doc] = []
        if pipelines is not None:
            stages.append({"$match": {"pipeline_uuid": {"$in": list(pipelines)}}})
        stages.append({"$group": {"_id": {"p": "$pipeline_uuid", "s": "$state"},
                                  "n": {"$sum": 1}}})
        with self._guard:
            rows = list(self._jobs.aggregate(stages))
        return [(row["_id"]["p"], row["_id"]["s"], int(row["n"])) for row in rows]

    def add_dependencies(self, dependent: str, dependencies: list[str]) -> None:
        with self._guard:
            for dependency in unique(dependencies):
                self._dependencies.update_one(
                    {"dependency": dependency, "dependent": dependent},
                    {"$setOnInsert": {"dependency": dependency, "dependent": dependent}},
                    upsert=True)

    def submit_jobs(self, uuids: list[str], plan: PlanSubmissions) -> Submissions:
        return mongo_bulk.submit_jobs(cast("MongoStore", self), uuids, plan)

    def dependents(self, dependency: str) -> list[str]:
        with self._guard:
            rows = list(self._dependencies.find({"dependency": dependency},
                                                {"_id": 0, "dependent": 1})
                        .sort("dependent", ASCENDING))
        return [row["dependent"] for row in rows]
