"""Deleted jobs in MongoDB: the ``tombstones`` collection (``uuid`` unique).

A deletion moves the job's head into ``tombstones`` and out of ``jobs``, guarded by the
job's ``version`` (an event that lands meanwhile makes it try again). With transactions (a
replica set) both writes commit together; without them the tombstone is written first, so a
crash in between leaves the job listed with a tombstone beside it, and deleting again finishes
the move (the tombstone is replaced, never doubled). A purge unlinks the job's file records a
page at a time, erases the history, then the links, dependencies and the tombstone last, in
one transaction where the server has them; each step is idempotent, so purging again finishes
an interrupted purge.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.database import Database

from catalog.errors import ConcurrencyConflict
from catalog.store.mongo_links import Links, in_transaction
from catalog.store.records import FILE_JOB_LINK_FIELDS
from catalog.store.values import Doc, check_limit

Session = Any
_NO_ID: Doc = {"_id": 0}


class _Moved(Exception):
    """The job changed between its read and its deletion: abort the transaction, retry."""


class TombstonesMongo:
    """The tombstones part of ``MongoStore`` (which sets the attributes below)."""

    database: Database[Doc]
    _guard: AbstractContextManager[object]
    _jobs: Collection[Doc]
    _history: Collection[Doc]
    _files: Collection[Doc]
    _dependencies: Collection[Doc]
    _links: Links
    _transactions: bool
    _retries: int

    def get_job(self, uuid: str, history: bool = True, links: bool = True) -> Doc | None:
        raise NotImplementedError  # MongoStore's

    @property
    def _tombstones(self) -> Collection[Doc]:
        return self.database["tombstones"]

    def _tombstone_indexes(self) -> None:
        with self._guard:
            self._tombstones.create_index([("uuid", ASCENDING)], unique=True)

    def tombstone_job(self, uuid: str, deleted: Doc,
                      check: Callable[[Doc], None]) -> Doc | None:
        for _ in range(self._retries):
            head = self.get_job(uuid, history=False)
            if head is None:
                return None
            check(head)
            tombstone = {**head, "deleted": deleted}

            def move(session: Session, head: Doc = head, tombstone: Doc = tombstone) -> None:
                with self._guard:
                    self._tombstones.replace_one({"uuid": uuid}, dict(tombstone), upsert=True,
                                                 session=session)
                    removed = self._jobs.delete_one(
                        {"uuid": uuid, "version": head["version"]}, session=session)
                if removed.deleted_count != 1:
                    raise _Moved(uuid)

            try:
                in_transaction(self.database.client, self._transactions, move)
            except _Moved:
                if not self._transactions:  # the job stands: no tombstone beside it
                    with self._guard:
                        if self._jobs.count_documents({"uuid": uuid}, limit=1):
                            self._tombstones.delete_one({"uuid": uuid})
                continue
            return tombstone
        raise ConcurrencyConflict(f"job {uuid} kept changing while it was being deleted")

    def get_tombstone(self, uuid: str) -> Doc | None:
        with self._guard:
            return self._tombstones.find_one({"uuid": uuid}, _NO_ID)

    def purge_job(self, uuid: str, page: int = 1000) -> bool:
        check_limit(page)
        tombstone = self.get_tombstone(uuid)
        if tombstone is None:
            return False
        linked = {"$or": [{field: uuid} for field in FILE_JOB_LINK_FIELDS]}
        while True:  # the file records' own link fields, a page at a time
            with self._guard:
                batch = [doc["uuid"] for doc in
                         self._files.find(linked, {"_id": 0, "uuid": 1}).limit(page)]
                if batch:
                    self._files.update_many(
                        {"uuid": {"$in": batch}},
                        {"$pull": {field: uuid for field in FILE_JOB_LINK_FIELDS}})
            if len(batch) < page:
                break
        with self._guard:  # one server-side deletion each: nothing is held here
            self._history.delete_many({"job_uuid": uuid, "job_created": tombstone["created"]})
        self._links.delete({"dst": uuid})  # links added later, the file records' among them
        erased: list[int] = []

        def erase(session: Session) -> None:
            erased.clear()
            self._links.delete({"src": uuid}, session)
            with self._guard:
                self._dependencies.delete_many({"dependent": uuid}, session=session)
                self._dependencies.delete_many({"dependency": uuid}, session=session)
                erased.append(self._tombstones.delete_one({"uuid": uuid},
                                                          session=session).deleted_count)

        in_transaction(self.database.client, self._transactions, erase)
        return erased == [1]
