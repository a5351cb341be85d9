"""File records' fixity history in MongoDB: the ``fixity_checks`` collection, a document a
check, unique on (file, date, outcome), so that no record grows with its checks.

A record keeps only its last check (``fixity``, one element). A check is added to the history
first, then made the record's last check (``record_fixity``) or kept beside the record's newer
one (``upsert_files``), each write atomic alone: a crash in between leaves a check in the
history that the record does not name yet, never a record naming a check the history lacks.
Adding a check that is there already changes nothing, so the writes may be retried. Databases
written before keep the whole log in the record: migration 3 moves it here on open (it is
idempotent: a log already moved is found in the history and left there once).
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager
from typing import Any

from pymongo import ASCENDING, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

from catalog.store.paging import decode_cursor, encode_cursor
from catalog.store.records import check_identity
from catalog.store.values import Doc, Page, check_limit

_DUPLICATE_KEY = 11000


class FixityMongo:
    """The fixity-history part of ``MongoStore`` (which sets the attributes below)."""

    _guard: AbstractContextManager[object]
    _files: Collection[Doc]
    _fixity_checks: Collection[Doc]
    _mock: bool

    def _fixity_indexes(self) -> None:
        with self._guard:
            self._fixity_checks.create_index(
                [("file", ASCENDING), ("date", ASCENDING), ("outcome", ASCENDING)], unique=True)

    def _add_checks(self, checks: list[tuple[str, Doc]], session: Any = None) -> None:
        """Add ``(file uuid, check)`` to the history (a check already there stays as it is)."""
        writes = []
        for uuid, check in checks:
            date, outcome = check_identity(check)
            key = {"file": uuid, "date": date, "outcome": outcome}
            writes.append((key, {"$setOnInsert": {**key, "check": copy.deepcopy(check)}}))
        if not writes:
            return
        with self._guard:
            if self._mock:  # mongomock cannot bulk_write pymongo's UpdateOne
                for key, update in writes:
                    self._fixity_checks.update_one(key, update, upsert=True)
                return
            try:
                self._fixity_checks.bulk_write(
                    [UpdateOne(key, update, upsert=True) for key, update in writes],
                    ordered=False, session=session)
            except BulkWriteError as exc:
                # Two writers adding one check race to insert it: the loser's is there already.
                if exc.details.get("writeConcernErrors") or any(
                        e.get("code") != _DUPLICATE_KEY for e in exc.details["writeErrors"]):
                    raise

    def fixity_checks(self, uuid: str, limit: int = 100, cursor: str | None = None) -> Page:
        check_limit(limit)
        query: Doc = {"file": uuid}
        if cursor is not None:
            date, outcome = decode_cursor(cursor, 2)
            query["$or"] = [{"date": {"$gt": date}}, {"date": date, "outcome": {"$gt": outcome}}]
        with self._guard:
            rows = list(self._fixity_checks.find(query, {"_id": 0}).sort(
                [("date", ASCENDING), ("outcome", ASCENDING)]).limit(limit + 1))
        after = encode_cursor(rows[limit - 1]["date"], rows[limit - 1]["outcome"]) \
            if len(rows) > limit else None
        return Page([row["check"] for row in rows[:limit]], after)

    def _move_fixity_logs(self) -> None:
        """Earlier versions appended every check to the record: the log moves to the history
        (first: the record loses it only once it is there) and the record keeps its last."""
        after = ""
        while True:  # in uuid order, a page at a time: every record with a check
            with self._guard:
                batch = list(self._files.find(
                    {"uuid": {"$gt": after}, "fixity.0": {"$exists": True}},
                    {"_id": 0, "uuid": 1, "fixity": 1}).sort("uuid", ASCENDING).limit(500))
            if not batch:
                break
            after = batch[-1]["uuid"]
            self._add_checks([(doc["uuid"], check) for doc in batch for check in doc["fixity"]])
            with self._guard:
                for doc in batch:
                    if len(doc["fixity"]) > 1:  # guarded: a check recorded meanwhile stays
                        self._files.update_one({"uuid": doc["uuid"], "fixity": doc["fixity"]},
                                               {"$set": {"fixity": doc["fixity"][-1:]}})


def last_check_expression(given: list[Doc]) -> Doc:
    """The update-pipeline expression of a record's ``fixity`` after an upsert that brings
    ``given`` (its last check, or nothing): ``base.last_check`` in the server's words."""
    stored: Doc = {"$ifNull": ["$fixity", []]}  # one check at most (moved by migration 3)
    if not given:
        return stored
    # $map, not $let or "$fixity.date": mongomock drops a $let on insert, and the wire server
    # reads "$fixity.date" otherwise than MongoDB
    dates: Doc = {"$map": {"input": stored, "as": "check", "in": "$$check.date"}}
    last_date: Doc = {"$ifNull": [{"$arrayElemAt": [dates, -1]}, ""]}
    newer: Doc = {"$gt": [last_date, {"$literal": given[0]["date"]}]}
    return {"$cond": [newer, stored, {"$literal": given}]}
