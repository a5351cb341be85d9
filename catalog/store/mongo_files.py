"""The MongoDB store's file records: their upserts (checksums and fixity history with them),
reads, listings and the fixity checks recorded on them."""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from catalog.errors import ConcurrencyConflict, FileNotFound
from catalog.store.fixity_mongo import last_check_expression
from catalog.store.mongo_links import Links, Session, in_transaction, merged
from catalog.store.mongo_rows import DUPLICATE_KEY, NO_ID, all_of, sort_spec
from catalog.store.paging import prefix_upper_bound, sorted_page, unique
from catalog.store.records import (
    ENTITY_LINK_FIELDS,
    FILE_JOB_LINK_FIELDS,
    FixityUpdate,
    check_algorithm,
    last_check,
    latest_files,
    without_link_fields,
)
from catalog.store.values import FILE_SORTS, Doc, Page, check_limit, check_sort


class FilesMongo:
    """The file-records part of ``MongoStore`` (which sets the attributes below)."""

    _guard: AbstractContextManager[object]
    _jobs: Collection[Doc]
    _files: Collection[Doc]
    _entities: Collection[Doc]
    _links: Links
    _fixity_runs: Collection[Doc]
    _mock: bool
    database: Database[Doc]
    _retries: int
    _transactions: bool

    if TYPE_CHECKING:  # FixityMongo's
        def _add_checks(self, checks: list[tuple[str, Doc]], session: Any = None) -> None: ...

    def upsert_files(self, docs: list[Doc]) -> None:
        # Deep copies: mongomock keeps what it is given, and pymongo may add _id to it.
        latest = {uuid: copy.deepcopy(doc) for uuid, doc in latest_files(docs).items()}
        if not latest:
            return
        uuids = list(latest)
        # The doc's checks join the history first; the record keeps its last (fixity_mongo).
        self._add_checks([(uuid, check) for uuid, doc in latest.items()
                          for check in doc.get("fixity") or ()])
        # A replaced record's lists become its edges: the links added to it since go too.
        replaced_links: Doc = {"src": {"$in": uuids}, "kind": "file"}
        if self._mock:
            with self._guard:
                for uuid, doc in latest.items():
                    self._files.update_one({"uuid": uuid}, _file_upsert(doc), upsert=True)
            self._links.delete(replaced_links)
            return
        pending = uuids

        def write(session: Session) -> None:
            with self._guard:
                self._files.bulk_write(
                    [UpdateOne({"uuid": uuid}, _file_upsert(latest[uuid]), upsert=True)
                     for uuid in pending],
                    ordered=False, session=session,
                )
            self._links.delete(replaced_links, session)

        for _ in range(self._retries):
            try:
                in_transaction(self.database.client, self._transactions, write)
                return
            except BulkWriteError as exc:
                # Two upserts of one new uuid can race to insert it; the loser is retried
                # (then as a replace). Anything else is a failure. In a transaction nothing
                # was written: all are retried.
                errors = exc.details.get("writeErrors", [])
                if exc.details.get("writeConcernErrors") or any(
                    e.get("code") != DUPLICATE_KEY for e in errors
                ):
                    raise
                if not self._transactions:
                    pending = [pending[e["index"]] for e in errors]
        raise ConcurrencyConflict(f"could not upsert {len(pending)} file records: they kept racing")

    def get_file(self, uuid: str) -> Doc | None:
        with self._guard:
            doc = self._files.find_one({"uuid": uuid}, NO_ID)
        return None if doc is None else self._links.attach([doc], ENTITY_LINK_FIELDS)[0]

    def get_files(self, uuids: list[str]) -> dict[str, Doc]:
        wanted = unique(uuids)
        if not wanted:
            return {}
        with self._guard:
            docs = list(self._files.find({"uuid": {"$in": wanted}}, NO_ID))
        found = {doc["uuid"]: doc for doc in self._links.attach(docs, ENTITY_LINK_FIELDS)}
        return {uuid: found[uuid] for uuid in wanted if uuid in found}

    def find_files(self, child_of: str | None = None, path_prefix: str | None = None,
                   status: str | None = None, limit: int = 100,
                   cursor: str | None = None, *, kind: str | None = None,
                   level: str | None = None, media_type: str | None = None,
                   sort: str = "path", checksum: tuple[str, str] | None = None,
                   links: bool = True) -> Page:
        check_limit(limit)
        check_sort(sort, FILE_SORTS)
        clauses: list[Doc] = []
        if checksum is not None:
            clauses.append({f"checksums.{check_algorithm(checksum[0])}": checksum[1]})
        if path_prefix:
            # A range rather than a regex: exact for any text, and served by the path index.
            upper = prefix_upper_bound(path_prefix)
            clauses.append({"path": {"$gte": path_prefix} if upper is None
                            else {"$gte": path_prefix, "$lt": upper}})
        for field, value in (("status", status), ("kind", kind), ("level", level),
                             ("media_type", media_type)):
            if value is not None:
                clauses.append({field: value})
        others = list(clauses)
        if child_of is not None:
            clauses.append({"child_of": child_of})  # matches one element of the array
        order = sort_spec(sort, cursor, clauses)
        with self._guard:
            rows = list(self._files.find(all_of(clauses), NO_ID).sort(order).limit(limit + 1))
        if child_of is not None:  # and the records linked to it later
            rows = merged(rows, self._links.linked_page(
                self._files, "file", "child_of", child_of, sort, cursor, others, limit + 1,
                NO_ID), sort, limit + 1)
        if not links:
            return sorted_page(without_link_fields(rows), limit, sort)
        return sorted_page(self._links.attach(rows, ENTITY_LINK_FIELDS), limit, sort)

    def record_fixity(self, checks: list[FixityUpdate]) -> None:
        if not checks:
            return
        wanted = unique([uuid for uuid, _, _ in checks])
        with self._guard:
            found = {doc["uuid"] for doc in
                     self._files.find({"uuid": {"$in": wanted}}, {"uuid": 1, "_id": 0})}
        for uuid in wanted:
            if uuid not in found:  # records are never deleted: checked first, nothing written
                raise FileNotFound(uuid)
        self._add_checks([(uuid, check) for uuid, check, _ in checks])  # first: see the module
        updates = [({"uuid": uuid}, {"$set": {"fixity": [copy.deepcopy(check)],
                                              "status": status, "updated": check["date"],
                                              "checked": check["date"]}})
                   for uuid, check, status in checks]
        with self._guard:
            if self._mock:
                for query, update in updates:
                    self._files.update_one(query, update)
            else:  # in order: two checks of one file are appended as given
                self._files.bulk_write([UpdateOne(query, update) for query, update in updates],
                                       ordered=True)

    def unlink_job_files(self, job_uuid: str) -> int:
        linked = {"$or": [{field: job_uuid} for field in FILE_JOB_LINK_FIELDS]}
        changed: set[str] = set()

        def unlink(session: Session) -> None:
            changed.clear()
            with self._guard:
                changed.update(doc["uuid"] for doc in self._files.find(
                    linked, {"_id": 0, "uuid": 1}, session=session))
                self._files.update_many(
                    linked, {"$pull": {field: job_uuid for field in FILE_JOB_LINK_FIELDS}},
                    session=session)
            changed.update(self._links.sources("file", FILE_JOB_LINK_FIELDS, job_uuid, session))
            self._links.delete({"dst": job_uuid, "rel": {"$in": list(FILE_JOB_LINK_FIELDS)},
                                "kind": "file"}, session)

        in_transaction(self.database.client, self._transactions, unlink)
        return len(changed)

    def oldest_checks(self, storage_system: str, before: str, limit: int) -> list[Doc]:
        check_limit(limit)
        query = {"storage_system": storage_system,
                 "$or": [{"checked": {"$lt": before}}, {"checked": None}]}
        with self._guard:
            return list(self._files.find(query, NO_ID).sort(
                [("checked", ASCENDING), ("uuid", ASCENDING)]).limit(limit))

    def append_fixity_run(self, summary: Doc) -> None:
        with self._guard:
            self._fixity_runs.insert_one(copy.deepcopy(summary))

    def find_fixity_runs(self, limit: int = 100) -> list[Doc]:
        check_limit(limit)
        with self._guard:
            return list(self._fixity_runs.find({}, NO_ID).sort("_id", DESCENDING).limit(limit))


def _file_upsert(doc: Doc) -> list[Doc]:
    """The update pipeline that upserts a file record: ``doc`` whole (``$literal``: no value of
    it is read as an expression), but for its fixity, which is the last of the stored check
    and the doc's (``last_check``: the doc's checks are in the history already), in one
    atomic write."""
    fixity = last_check_expression(last_check([], doc.get("fixity") or []))
    root: Doc = {"_id": "$_id"}  # the fields in the doc's order, the fixity log in its place
    root.update((key, fixity if key == "fixity" else {"$literal": value})
                for key, value in doc.items())
    root.setdefault("fixity", fixity)
    return [{"$replaceRoot": {"newRoot": root}}]
