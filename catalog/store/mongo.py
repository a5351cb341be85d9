"""The MongoDB store: a document per job (its head) and one per history entry, compare-and-set.

Collections ``pipelines``, ``jobs``, ``history``, ``entities``, ``files``, ``links``, ``audit``
and ``schema_migrations``, with unique indexes on ``uuid`` and an index for every query path,
created (idempotently) when the store is opened; then the migrations not recorded in
``schema_migrations`` run, in order (``MIGRATIONS``).
No document grows with use. A record's link lists as written with it stay in its document
(multikey indexes serve the reverse direction); links added later are documents of ``links``
(``mongo_links``), merged into the lists when a record is read. A job's history is in
``history`` (below); a file's fixity log is in ``fixity_checks`` (``fixity_mongo``), its
record keeping only the last check.

Writes that span documents and must be seen whole (a file record replaced and its added links
dropped, a job's files unlinked, a job deleted with its history and links) run in a transaction
when the server has them (a replica set or a sharded cluster: told by its ``hello``). Without
them (a standalone server, mongomock) each write is atomic alone and they run in an order that
leaves nothing dangling that a later read would trust: a reader may see the first write without
the second for that moment, and a process stopped between them leaves links that the next
upsert or unlink of the record clears.

A job's history is not embedded in its document: a job that takes events for months would pass
MongoDB's 16 MB document limit (and every event would rewrite the whole document). Each entry is
a document of ``history``, keyed by (job_uuid, job_created, seq) and by (job_uuid, job_created,
event_id), both unique: the job's ``created`` is there so that entries of a deleted job can
never be taken for those of a new one with the same UUID. An event is applied in two writes:
insert the entry at ``seq = version + 1`` (the unique key lets one writer win that place, and
refuses an ``event_id`` seen before), then move the head to ``version + 1`` compare-and-set on
``version``. An entry past the head (its writer stopped between the two writes) is rolled
forward by the next writer before it decides anything, so the head never skips or loses an
entry; readers see the history up to the head's version. A lost race is retried with a short
jittered backoff, each time deciding again on the new head. Jobs written by earlier versions,
with their history embedded, are moved to this layout when the store is opened.

``mongomock://name`` opens database ``name`` on one in-process mongomock client shared by every
store of the process (so two stores opened on one URL see the same data, as with a SQLite file).
mongomock applies an update in place, step by step, with no lock held between matching and
writing, so its calls are serialized here by one process-wide lock: that restores the per-document
atomicity a real server provides, and nothing more (the compare-and-set still does the work).
mongomock 4.3 also cannot run ``bulk_write`` with the ``ReplaceOne`` / ``UpdateOne`` objects of
pymongo 4.11 and newer (they pass a ``sort`` it rejects), so on mongomock bulk writes become one
call per document.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from urllib.parse import urlsplit

import pymongo
from pymongo import ASCENDING, DESCENDING
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import ConfigurationError as PyMongoConfigurationError
from pymongo.errors import DuplicateKeyError

from catalog.errors import (
    ConcurrencyConflict,
    ConfigurationError,
    JobNotFound,
    StoreError,
)
from catalog.store import mongo_claim
from catalog.store.fixity_mongo import FixityMongo
from catalog.store.mongo_entities import EntitiesMongo
from catalog.store.mongo_files import FilesMongo
from catalog.store.mongo_links import Links, Session, in_transaction, merged
from catalog.store.mongo_queue import QueueMongo
from catalog.store.mongo_rows import (
    NO_ID,
    after,
    all_of,
    sort_spec,
)
from catalog.store.mongo_schema import SchemaMongo
from catalog.store.openlineage_mongo import OpenLineageMongo
from catalog.store.paging import page_of, sorted_page, unique
from catalog.store.records import JOB_LINK_FIELDS, check_new_job
from catalog.store.tombstones_mongo import TombstonesMongo
from catalog.store.values import Applied, Decide, Doc, JobQuery, Page, check_limit, decided

DEFAULT_DATABASE = "catalog"
_WITHOUT_HISTORY: Doc = {"_id": 0, "history": 0}
_BARE: Doc = {**_WITHOUT_HISTORY, **{name: 0 for name in JOB_LINK_FIELDS}}  # links=False
_LISTED: Doc = {**_WITHOUT_HISTORY, "results": 0}  # results may be megabytes: one job at a time
_HEAD: Doc = {"_id": 0, "uuid": 1, "state": 1, "version": 1, "last_event": 1, "created": 1,
              "queue": 1}
# What a history document adds to the entry it stores: "changes" are the job fields the event
# replaced (the queue's), kept so that whoever moves the head onto the entry sets them too.
_ENTRY_KEYS = ("job_uuid", "job_created", "seq", "changes")
_ENTRY: Doc = {"_id": 0, **dict.fromkeys(_ENTRY_KEYS, 0)}

_mock_client: pymongo.MongoClient[Doc] | None = None
_mock_client_lock = threading.Lock()
_mock_calls_lock = threading.Lock()


def _shared_mock_client() -> pymongo.MongoClient[Doc]:
    global _mock_client
    with _mock_client_lock:
        if _mock_client is None:
            import mongomock  # a test dependency only

            _mock_client = mongomock.MongoClient()
        return _mock_client


def _has_transactions(database: Database[Doc]) -> bool:
    """Whether the server runs multi-document transactions: a replica set member or mongos."""
    try:
        hello = database.client.admin.command("hello")
    except NotImplementedError:  # mongomock, given without mock=True (tests of a real path)
        return False
    return "setName" in hello or hello.get("msg") == "isdbgrid"


class MongoStore(SchemaMongo, QueueMongo, EntitiesMongo, FilesMongo, OpenLineageMongo,
                 TombstonesMongo, FixityMongo):
    """Store backed by a MongoDB database (or a mongomock one in tests). Its connection, jobs,
    events, pipelines and audit are here; its other parts are mixins (``mongo_schema``,
    ``mongo_queue``, ``mongo_entities``, ``mongo_files``, then ``openlineage_mongo``,
    ``tombstones_mongo`` and ``fixity_mongo``). The parts that implement a method come first:
    the last three declare what they use with stubs that raise, and the first found is the one
    called."""

    kind = "mongo"

    def __init__(self, database: Database[Doc], retries: int = 64, *,
                 client: pymongo.MongoClient[Doc] | None = None,
                 guard: AbstractContextManager[object] | None = None,
                 mock: bool = False) -> None:
        """Use ``database``; ``client`` is closed by ``close()``; ``guard`` wraps every call.

        ``mock`` says ``database`` is a mongomock one: writes are then limited to what
        mongomock can run (no ``bulk_write`` of ``ReplaceOne``).
        """
        if retries < 1:
            raise ConfigurationError(f"retries must be at least 1, got {retries}")
        self.database = database
        self._retries = retries
        self._mock = mock
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        self._client = client
        self._guard: AbstractContextManager[object] = guard if guard is not None else nullcontext()
        self._pipelines: Collection[Doc] = database["pipelines"]
        self._jobs: Collection[Doc] = database["jobs"]
        self._history: Collection[Doc] = database["history"]
        self._entities: Collection[Doc] = database["entities"]
        self._files: Collection[Doc] = database["files"]
        self._audit: Collection[Doc] = database["audit"]
        self._fixity_runs: Collection[Doc] = database["fixity_runs"]
        self._fixity_checks: Collection[Doc] = database["fixity_checks"]
        self._dependencies: Collection[Doc] = database["dependencies"]
        self._links = Links(database["links"], self._guard)
        self._schema: Collection[Doc] = database["schema_migrations"]
        self._transactions = not mock and _has_transactions(database)
        self._claims = mongo_claim.Claims(self)
        self._create_indexes()
        self._tombstone_indexes()
        self._fixity_indexes()
        self.migrate()
        self._open_lineage()

    @classmethod
    def from_url(cls, url: str, retries: int = 64) -> MongoStore:
        """``mongodb://host/dbname``, ``mongodb+srv://...`` or ``mongomock://dbname``."""
        parts = urlsplit(url)
        if parts.scheme == "mongomock":
            name = parts.netloc or parts.path.strip("/") or DEFAULT_DATABASE
            return cls(_shared_mock_client()[name], retries, guard=_mock_calls_lock, mock=True)
        if parts.scheme not in ("mongodb", "mongodb+srv"):
            raise ConfigurationError(f"{url!r} is not a mongodb:// or mongomock:// URL")
        try:
            client: pymongo.MongoClient[Doc] = pymongo.MongoClient(url, tz_aware=False)
        except (PyMongoConfigurationError, ValueError) as exc:  # a malformed URL or option
            raise ConfigurationError(f"invalid MongoDB URL: {exc}") from None
        try:
            return cls(client.get_default_database(DEFAULT_DATABASE), retries, client=client)
        except BaseException:
            client.close()
            raise

    def _insert_entries(self, uuid: str, created: str, entries: list[Doc],
                        first_seq: int) -> None:
        """Store entries from ``first_seq`` on; those already stored are left as they are."""
        for seq, entry in enumerate(entries, start=first_seq):
            try:
                with self._guard:
                    self._history.insert_one(
                        {**entry, "job_uuid": uuid, "job_created": created, "seq": seq})
            except DuplicateKeyError:
                pass

    def _entries(self, head: Doc) -> list[Doc]:
        """The job's entries up to its head's version, in order."""
        with self._guard:
            return list(self._history.find(
                {"job_uuid": head["uuid"], "job_created": head["created"],
                 "seq": {"$lte": head["version"]}}, _ENTRY).sort("seq"))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._client is not None:
            self._client.close()

    def submit_event(self, uuid: str, event_id: str | None, decide: Decide) -> Future[Applied]:
        """Apply on a small pool of threads (each event is its own compare-and-set)."""
        return self._pool().submit(self.apply_event, uuid, event_id, decide)

    def _pool(self) -> ThreadPoolExecutor:
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=8,
                                                    thread_name_prefix="catalog-mongo")
            return self._executor

    def apply_events(self, events: list[tuple[str, str | None, Decide]]
                     ) -> list[Applied | Exception]:
        """Each its own compare-and-set, on the pool of ``submit_event``; a job's events in
        their order (its n-th event waits for the round of (n-1)-th events to end)."""
        rounds: list[list[int]] = []
        seen: dict[str, int] = {}
        for index, (uuid, _, _) in enumerate(events):
            n = seen.get(uuid, 0)
            seen[uuid] = n + 1
            if n == len(rounds):
                rounds.append([])
            rounds[n].append(index)
        outcomes: list[Applied | Exception] = [StoreError("not applied")] * len(events)
        for indexes in rounds:
            futures = [(index, self.submit_event(*events[index])) for index in indexes]
            for index, future in futures:
                error = future.exception()
                if error is None:
                    outcomes[index] = future.result()
                else:
                    outcomes[index] = error if isinstance(error, Exception) else StoreError(
                        repr(error))
        return outcomes

    async def apply_event_async(self, uuid: str, event_id: str | None,
                                decide: Decide) -> Applied:
        """``apply_event`` from an event loop, on the pool of ``submit_event``."""
        return await asyncio.wrap_future(self.submit_event(uuid, event_id, decide))

    def _insert(self, collection: Collection[Doc], doc: Doc, stored: Doc) -> tuple[Doc, bool]:
        """Insert ``stored`` unless its uuid exists; the unique index decides, not a prior find."""
        for _ in range(self._retries):
            try:
                with self._guard:
                    collection.insert_one(stored)  # pymongo adds _id to what it inserts
                return dict(doc), True
            except DuplicateKeyError:
                with self._guard:
                    existing = collection.find_one({"uuid": doc["uuid"]}, NO_ID)
                if existing is not None:  # else removed since: try again
                    return existing, False
            stored.pop("_id", None)
        raise ConcurrencyConflict(f"could not insert {doc['uuid']}: it kept being removed")

    # pipelines ---------------------------------------------------------------------------
    def insert_pipeline(self, doc: Doc) -> tuple[Doc, bool]:
        return self._insert(self._pipelines, doc, dict(doc))

    def get_pipeline(self, uuid: str) -> Doc | None:
        with self._guard:
            return self._pipelines.find_one({"uuid": uuid}, NO_ID)

    def find_pipelines(self, name: str | None = None, limit: int = 100,
                       cursor: str | None = None) -> Page:
        check_limit(limit)
        clauses: list[Doc] = []
        if name is not None:
            clauses.append({"name": name})
        if cursor is not None:
            clauses.append(after("name", "uuid", cursor))
        with self._guard:
            rows = list(
                self._pipelines.find(all_of(clauses), NO_ID)
                .sort([("name", ASCENDING), ("uuid", ASCENDING)])
                .limit(limit + 1)
            )
        return page_of(rows, limit, "name", "uuid")

    # jobs --------------------------------------------------------------------------------
    def insert_job(self, doc: Doc) -> tuple[Doc, bool]:
        check_new_job(doc)
        entries = list(doc.get("history", []))
        # The entries first: if the job exists they are refused as duplicates and its own stay;
        # if not, the job is never seen without them.
        self._insert_entries(doc["uuid"], doc["created"], entries, first_seq=1)
        stored = {key: value for key, value in doc.items() if key != "history"}
        found, created = self._insert(self._jobs, doc, stored)
        if created:
            return found, True
        found = self._links.attach([found], JOB_LINK_FIELDS)[0]
        return ({**found, "history": self._entries(found)} if "history" in doc else found), False

    def get_job(self, uuid: str, history: bool = True, links: bool = True) -> Doc | None:
        with self._guard:
            doc = self._jobs.find_one({"uuid": uuid}, _WITHOUT_HISTORY if links else _BARE)
        if doc is None:
            return None
        if links:
            doc = self._links.attach([doc], JOB_LINK_FIELDS)[0]
        if not history:
            return doc
        return {**doc, "history": self._entries(doc)}

    def job_head(self, uuid: str) -> Doc | None:
        with self._guard:
            head = self._jobs.find_one({"uuid": uuid}, _HEAD)
        return None if head is None else {field: head[field] for field in (
            "uuid", "state", "version", "last_event", "created")}

    def get_jobs(self, uuids: list[str]) -> dict[str, Doc]:
        wanted = unique(uuids)
        if not wanted:
            return {}
        with self._guard:
            docs = list(self._jobs.find({"uuid": {"$in": wanted}}, _WITHOUT_HISTORY))
        found = {doc["uuid"]: doc for doc in self._links.attach(docs, JOB_LINK_FIELDS)}
        return {uuid: found[uuid] for uuid in wanted if uuid in found}

    def history_page(self, head: Doc, after: int = 0, limit: int = 1000) -> list[Doc]:
        with self._guard:
            return list(self._history.find(
                {"job_uuid": head["uuid"], "job_created": head["created"],
                 "seq": {"$gt": after, "$lte": head["version"]}}, _ENTRY)
                .sort("seq").limit(limit))

    def changed_jobs(self, since: str, limit: int = 1000) -> list[Doc]:
        with self._guard:
            rows = list(self._jobs.find({"updated": {"$gte": since}}, _LISTED)
                        .sort([("updated", ASCENDING), ("uuid", ASCENDING)]).limit(limit))
        return rows

    def find_jobs(self, query: JobQuery) -> Page:
        clauses: list[Doc] = []
        for field in ("state", "pipeline_uuid", "agent"):
            value = getattr(query, field)
            if value is not None:
                clauses.append({field: value})
        created: Doc = {}
        if query.created_after is not None:
            created["$gte"] = query.created_after
        if query.created_before is not None:
            created["$lt"] = query.created_before
        if created:
            clauses.append({"created": created})
        others = list(clauses)
        if query.child_of is not None:
            clauses.append({"child_of": query.child_of})  # matches one element of the array
        order = sort_spec(query.sort, query.cursor, clauses)
        with self._guard:
            rows = list(
                self._jobs.find(all_of(clauses), _LISTED).sort(order)
                .limit(query.limit + 1)
            )
        if query.child_of is not None:  # and the jobs linked to it later
            rows = merged(rows, self._links.linked_page(
                self._jobs, "job", "child_of", query.child_of, query.sort, query.cursor,
                others, query.limit + 1, _WITHOUT_HISTORY), query.sort, query.limit + 1)
        return sorted_page(self._links.attach(rows, JOB_LINK_FIELDS), query.limit, query.sort)

    def apply_event(self, uuid: str, event_id: str | None, decide: Decide) -> Applied:
        for attempt in range(self._retries):
            if attempt:
                # Capped at 0.25 s: eight writers racing one job over a slow wire ran out of
                # 64 attempts capped at 50 ms (tests/test_store_contract.py, under load).
                time.sleep(random.uniform(0, min(0.25, 0.001 * 2**(attempt - 1))))
            with self._guard:
                head = self._jobs.find_one({"uuid": uuid}, _HEAD)
            if head is None:
                raise JobNotFound(uuid)
            version = head["version"]
            # An entry past the head (its writer stopped before moving the head), and this
            # event's entry if it was stored before, in one query: each clause whole, so that
            # each is served by its own unique index.
            job = {"job_uuid": uuid, "job_created": head["created"]}
            wanted: list[Doc] = [{**job, "seq": version + 1}]
            if event_id is not None:
                wanted.append({**job, "event_id": event_id})
            # One clause alone, not in an $or: SecantusDB serves an $or by a scan of every
            # entry (74 ms at 1,024 jobs), the clause by its index (2 ms).
            with self._guard:
                found = list(self._history.find(wanted[0] if len(wanted) == 1
                                                else {"$or": wanted}))
            ahead = next((entry for entry in found if entry["seq"] > version), None)
            if ahead is not None:
                self._move_head(head, ahead)
                continue  # and decide on the head it made
            if found:
                return Applied(_entry(found[0]), duplicate=True)
            new_state, entry, changes = decided(decide(
                {"uuid": uuid, "state": head["state"], "version": version,
                 "last_event": head["last_event"], "queue": head.get("queue")}))
            stored: Doc = {**entry, "job_uuid": uuid, "job_created": head["created"],
                           "seq": version + 1}
            if changes:
                stored["changes"] = changes
            try:
                with self._guard:
                    self._history.insert_one(stored)
            except DuplicateKeyError:
                continue  # another event took this place, or this event_id came meanwhile
            # The entry is stored: the event is applied once the head moves onto it, here or,
            # should this write fail or this process stop, by the next writer of this job.
            self._move_head(head, stored)
            return Applied(entry, duplicate=False)
        raise ConcurrencyConflict(
            f"job {uuid} kept changing while an event was applied ({self._retries} attempts)"
        )

    def _move_head(self, head: Doc, entry: Doc) -> None:
        """Put the head on ``entry``, the one after it (a no-op if another writer did)."""
        with self._guard:
            self._jobs.update_one(
                {"uuid": head["uuid"], "created": head["created"],
                 "version": entry["seq"] - 1},
                {"$set": {"state": entry["state"], "last_event": entry["name"],
                          "updated": entry["date"], **entry.get("changes", {})},
                 "$inc": {"version": 1}},
            )

    def delete_job(self, uuid: str) -> bool:
        with self._guard:
            head = self._jobs.find_one({"uuid": uuid}, _HEAD)
        if head is None:
            return False
        deleted: list[int] = []

        def delete(session: Session) -> None:
            deleted.clear()
            with self._guard:
                deleted.append(self._jobs.delete_one(
                    {"uuid": uuid, "created": head["created"]}, session=session).deleted_count)
            # Entries are tagged with the job's created: any left behind (a writer racing the
            # delete) never belong to a job made again with this UUID, which is created later.
            with self._guard:
                self._history.delete_many({"job_uuid": uuid, "job_created": head["created"]},
                                          session=session)
            with self._guard:
                self._dependencies.delete_many({"dependent": uuid}, session=session)
            self._links.delete({"src": uuid}, session)

        in_transaction(self.database.client, self._transactions, delete)
        return deleted == [1]

    # audit -------------------------------------------------------------------------------
    def append_audit(self, entry: Doc) -> None:
        with self._guard:
            self._audit.insert_one(dict(entry))

    def find_audit(self, job_uuid: str | None = None, limit: int = 100) -> list[Doc]:
        check_limit(limit)
        query: Doc = {} if job_uuid is None else {"job_uuid": job_uuid}
        with self._guard:
            return list(self._audit.find(query, NO_ID).sort("_id", DESCENDING).limit(limit))


def _entry(stored: Doc) -> Doc:
    """A history entry as stored, without what the ``history`` document adds to it."""
    return {key: value for key, value in stored.items()
            if key != "_id" and key not in _ENTRY_KEYS}
