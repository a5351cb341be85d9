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
import copy
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pymongo
from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError
from pymongo.errors import ConfigurationError as PyMongoConfigurationError

from catalog.errors import (
    ConcurrencyConflict,
    ConfigurationError,
    FileNotFound,
    JobNotFound,
    StoreError,
)
from catalog.store import mongo_bulk, mongo_claim
from catalog.store.base import (
    ENTITY_LINK_FIELDS,
    FILE_JOB_LINK_FIELDS,
    FILE_SORTS,
    INDEXED_CHECKSUMS,
    JOB_LINK_FIELDS,
    JOB_SORTS,
    Applied,
    Claimed,
    ClaimMatch,
    Decide,
    Doc,
    FixityUpdate,
    JobQuery,
    Move,
    Page,
    PlanSubmissions,
    PlanSweep,
    Submissions,
    check_algorithm,
    check_limit,
    check_link,
    check_new_job,
    check_sort,
    decided,
    decode_cursor,
    decode_sorted_cursor,
    last_check,
    latest_files,
    link_source_not_found,
    page_of,
    prefix_upper_bound,
    sorted_page,
    unique,
    without_link_fields,
)
from catalog.store.fixity_mongo import FixityMongo, last_check_expression
from catalog.store.mongo_links import Links, Session, in_transaction, merged
from catalog.store.openlineage_mongo import OpenLineageMongo
from catalog.store.tombstones_mongo import TombstonesMongo

DEFAULT_DATABASE = "catalog"
_NO_ID: Doc = {"_id": 0}
_WITHOUT_HISTORY: Doc = {"_id": 0, "history": 0}
_BARE: Doc = {**_WITHOUT_HISTORY, **{name: 0 for name in JOB_LINK_FIELDS}}  # links=False
_LISTED: Doc = {**_WITHOUT_HISTORY, "results": 0}  # results may be megabytes: one job at a time
_HEAD: Doc = {"_id": 0, "uuid": 1, "state": 1, "version": 1, "last_event": 1, "created": 1,
              "queue": 1}
# What a history document adds to the entry it stores: "changes" are the job fields the event
# replaced (the queue's), kept so that whoever moves the head onto the entry sets them too.
_ENTRY_KEYS = ("job_uuid", "job_created", "seq", "changes")
_CLAIM_ORDER = mongo_claim.CLAIM_ORDER  # the claim index's order
_ENTRY: Doc = {"_id": 0, **dict.fromkeys(_ENTRY_KEYS, 0)}
_LEGACY_HISTORY_INDEX = "history.event_id_1"  # earlier versions looked event_ids up in jobs
_DUPLICATE_KEY = 11000
_BY_PATH = [("path", ASCENDING), ("uuid", ASCENDING)]

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


def _after(first: str, second: str, cursor: str) -> Doc:
    """Keyset condition (first, second) > cursor, with a range on ``first`` for the index."""
    after_first, after_second = decode_cursor(cursor, 2)
    return {
        first: {"$gte": after_first},
        "$or": [{first: {"$gt": after_first}}, {second: {"$gt": after_second}}],
    }


def _sorted(sort: str, cursor: str | None, clauses: list[Doc]) -> list[tuple[str, int]]:
    """Add the condition "after the cursor" for ``sort``; return the sort specification."""
    field, descending = check_sort(sort, JOB_SORTS + FILE_SORTS)
    beyond = "$lt" if descending else "$gt"
    if cursor is not None:
        key, uuid = decode_sorted_cursor(cursor, sort)
        clauses.append({
            field: {"$lte" if descending else "$gte": key},
            "$or": [{field: {beyond: key}}, {"uuid": {beyond: uuid}}],
        })
    direction = DESCENDING if descending else ASCENDING
    return [(field, direction), ("uuid", direction)]


def _all_of(clauses: list[Doc]) -> Doc:
    return {"$and": clauses} if clauses else {}


def utc_now_text() -> str:
    """Now, in the stored text form of dates."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _has_transactions(database: Database[Doc]) -> bool:
    """Whether the server runs multi-document transactions: a replica set member or mongos."""
    try:
        hello = database.client.admin.command("hello")
    except NotImplementedError:  # mongomock, given without mock=True (tests of a real path)
        return False
    return "setName" in hello or hello.get("msg") == "isdbgrid"


class MongoStore(OpenLineageMongo, TombstonesMongo, FixityMongo):
    """Store backed by a MongoDB database (or a mongomock one in tests)."""

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

    def _create_indexes(self) -> None:
        with self._guard:
            self._pipelines.create_index([("uuid", ASCENDING)], unique=True)
            self._pipelines.create_index([("name", ASCENDING), ("uuid", ASCENDING)])
            self._jobs.create_index([("uuid", ASCENDING)], unique=True)
            self._jobs.create_index([("state", ASCENDING), ("pipeline_uuid", ASCENDING),
                                     *_CLAIM_ORDER])
            self._jobs.create_index([("queue.lease.expiry", ASCENDING)], sparse=True)
            self._jobs.create_index([("pipeline_uuid", ASCENDING), ("state", ASCENDING)])
            self._jobs.create_index([("updated", ASCENDING), ("uuid", ASCENDING)])
            for head in (None, "state", "pipeline_uuid", "child_of", "agent"):
                keys = [] if head is None else [(head, ASCENDING)]
                self._jobs.create_index([*keys, ("created", ASCENDING), ("uuid", ASCENDING)])
            for key in ("seq", "event_id"):
                self._history.create_index(
                    [("job_uuid", ASCENDING), ("job_created", ASCENDING), (key, ASCENDING)],
                    unique=True)
            # Reverse lookups of the links kept in list fields (which jobs read this reference,
            # what a job generated): child_of is covered by the query index above.
            for field in ("acted_on", "acted_using"):
                self._jobs.create_index([(field, ASCENDING)])
            self._entities.create_index([("uuid", ASCENDING)], unique=True)
            for field in ENTITY_LINK_FIELDS:
                self._entities.create_index([(field, ASCENDING)])
            self._files.create_index([("uuid", ASCENDING)], unique=True)
            self._files.create_index(_BY_PATH)
            self._files.create_index([("storage_system", ASCENDING), ("path", ASCENDING)])
            # find_files filters then sorts by (path, uuid): these serve both at once.
            for head in ("status", "child_of"):
                self._files.create_index([(head, ASCENDING), *_BY_PATH])
            self._files.create_index([("created", ASCENDING), ("uuid", ASCENDING)])
            # Scheduled fixity takes the oldest checks first (a missing one sorts first).
            self._files.create_index([("storage_system", ASCENDING), ("checked", ASCENDING),
                                      ("uuid", ASCENDING)])
            for field in ENTITY_LINK_FIELDS:
                if field != "child_of":
                    self._files.create_index([(field, ASCENDING)])
            for algorithm in INDEXED_CHECKSUMS:
                self._files.create_index([(f"checksums.{algorithm}", ASCENDING)])
            # find_audit sorts by _id: ObjectIds grow with insertion order within a process.
            self._audit.create_index([("job_uuid", ASCENDING), ("_id", DESCENDING)])
            self._dependencies.create_index([("dependency", ASCENDING), ("dependent", ASCENDING)],
                                            unique=True)
            self._dependencies.create_index([("dependent", ASCENDING)])
        self._links.create_indexes()

    def migrate(self) -> None:
        """Run the migrations not recorded in ``schema_migrations``, in order, and record each.

        Each is idempotent: two stores opened at once on an old database may both run one."""
        with self._guard:
            done = {doc["_id"] for doc in self._schema.find({}, {"_id": 1})}
        for version, name, step in ((1, "history in its own collection",
                                     MongoStore._move_embedded_histories),
                                    (2, "links added later in their own collection",
                                     MongoStore._move_added_links),
                                    (3, "fixity history in its own collection",
                                     MongoStore._move_fixity_logs)):
            if version in done:
                continue
            step(self)
            with self._guard:
                self._schema.update_one(
                    {"_id": version},
                    {"$setOnInsert": {"name": name, "applied": utc_now_text()}}, upsert=True)

    def migrations(self) -> list[tuple[int, str]]:
        """The migrations recorded, as (version, name), in order."""
        with self._guard:
            return [(int(doc["_id"]), str(doc["name"]))
                    for doc in self._schema.find({}).sort("_id", ASCENDING)]

    def _move_added_links(self) -> None:
        """Earlier versions added links to their source's lists (``$addToSet``), so a product
        written by many runs grew one document without bound. What was added cannot be told
        from what was written with the record: an entity's lists, and a job's lists but for
        ``child_of`` (fixed at its creation: its identity), move to ``links`` whole, in their
        order; file records keep theirs (each upsert rewrites them whole)."""
        for collection, kind, fields in ((self._entities, "entity", ENTITY_LINK_FIELDS),
                                         (self._jobs, "job", JOB_LINK_FIELDS[1:])):
            query: Doc = {"$or": [{f"{field}.0": {"$exists": True}} for field in fields]}
            while True:
                with self._guard:
                    batch = list(collection.find(
                        query, {"_id": 0, "uuid": 1, "created": 1, **dict.fromkeys(fields, 1)}
                    ).limit(500))
                if not batch:
                    break
                for doc in batch:
                    links = [{"src": doc["uuid"], "rel": field, "dst": target, "kind": kind,
                              "at": n, **({"created": doc["created"]} if kind == "job"
                                          and field == "generated_by" else {})}
                             for n, (field, target) in enumerate(
                                 (field, target) for field in fields
                                 for target in doc.get(field) or [])]
                    self._links.insert(links)  # first: the lists go only once they are there
                    with self._guard:
                        collection.update_one({"uuid": doc["uuid"]},
                                              {"$set": dict.fromkeys(fields, [])})

    def _move_embedded_histories(self) -> None:
        """Jobs stored by earlier versions carry their history: move it to ``history``."""
        with self._guard:
            legacy = list(self._jobs.find({"history": {"$exists": True}},
                                          {"_id": 0, "uuid": 1, "created": 1, "history": 1}))
        for job in legacy:
            self._insert_entries(job["uuid"], job["created"], job["history"], first_seq=1)
            with self._guard:
                self._jobs.update_one({"uuid": job["uuid"]}, {"$unset": {"history": ""}})
        with self._guard:
            if _LEGACY_HISTORY_INDEX in self._jobs.index_information():
                self._jobs.drop_index(_LEGACY_HISTORY_INDEX)

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
                    existing = collection.find_one({"uuid": doc["uuid"]}, _NO_ID)
                if existing is not None:  # else removed since: try again
                    return existing, False
            stored.pop("_id", None)
        raise ConcurrencyConflict(f"could not insert {doc['uuid']}: it kept being removed")

    # pipelines ---------------------------------------------------------------------------
    def insert_pipeline(self, doc: Doc) -> tuple[Doc, bool]:
        return self._insert(self._pipelines, doc, dict(doc))

    def get_pipeline(self, uuid: str) -> Doc | None:
        with self._guard:
            return self._pipelines.find_one({"uuid": uuid}, _NO_ID)

    def find_pipelines(self, name: str | None = None, limit: int = 100,
                       cursor: str | None = None) -> Page:
        check_limit(limit)
        clauses: list[Doc] = []
        if name is not None:
            clauses.append({"name": name})
        if cursor is not None:
            clauses.append(_after("name", "uuid", cursor))
        with self._guard:
            rows = list(
                self._pipelines.find(_all_of(clauses), _NO_ID)
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
        order = _sorted(query.sort, query.cursor, clauses)
        with self._guard:
            rows = list(
                self._jobs.find(_all_of(clauses), _LISTED).sort(order)
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

    # the queue ---------------------------------------------------------------------------
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
        return mongo_bulk.sweep_leases(self, now, limit, plan)

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
        return mongo_bulk.submit_jobs(self, uuids, plan)

    def dependents(self, dependency: str) -> list[str]:
        with self._guard:
            rows = list(self._dependencies.find({"dependency": dependency},
                                                {"_id": 0, "dependent": 1})
                        .sort("dependent", ASCENDING))
        return [row["dependent"] for row in rows]

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

    # entities and links ------------------------------------------------------------------
    def upsert_entities(self, docs: list[Doc]) -> None:
        if not docs:
            return
        fresh = [{**doc, **{f: unique(doc[f]) for f in ENTITY_LINK_FIELDS if f in doc}}
                 for doc in docs]  # copies: pymongo adds _id to what it inserts
        try:
            with self._guard:
                self._entities.insert_many(fresh, ordered=False)
        except BulkWriteError as exc:
            # The unique index keeps the entities already there; anything else is a failure.
            if any(e.get("code") != _DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
                raise
            if exc.details.get("writeConcernErrors"):
                raise

    def get_entity(self, uuid: str) -> Doc | None:
        with self._guard:
            doc = self._entities.find_one({"uuid": uuid}, _NO_ID)
        return None if doc is None else self._links.attach([doc], ENTITY_LINK_FIELDS)[0]

    def add_links(self, src: str, relation: str, targets: list[str]) -> None:
        """Links not in the source's own list go to ``links`` (``mongo_links``): no document
        grows with the links added to it."""
        kind = check_link(src, relation)
        collection = {"job": self._jobs, "file": self._files, "entity": self._entities}[kind]
        with self._guard:
            source = collection.find_one({"uuid": src}, {
                "_id": 0, "uuid": 1, "created": 1, "path": 1, relation: 1})
        if source is None:
            raise link_source_not_found(src)
        self._links.add(kind, source, relation, targets)

    def edges(self, uuids: list[str], direction: str,
              limit: int | None = None) -> list[tuple[str, str, str]]:
        # Link lists live on the documents, each field multikey-indexed: up reads the lists
        # of the documents themselves, down finds the documents whose lists name the uuids.
        # Down, each document found gives one edge or more, so with a limit no more documents
        # than edges still wanted are read. Up, the documents are the uuids' own (a few may
        # have no edges): all are read, and the edges cut to the limit.
        wanted = unique(uuids)
        named = set(wanted)
        found: list[tuple[str, str, str]] = []
        # Links added later first: with a limit, those of a product of many runs are read no
        # further than wanted, from their index.
        seen = set()
        for edge in self._links.edges(wanted, direction, limit):
            if edge not in seen:
                seen.add(edge)
                found.append(edge)
        for collection, fields in ((self._jobs, JOB_LINK_FIELDS),
                                   (self._files, ENTITY_LINK_FIELDS),
                                   (self._entities, ENTITY_LINK_FIELDS)):
            if limit is not None and len(found) >= limit:
                break
            projection: Doc = {"_id": 0, "uuid": 1, **dict.fromkeys(fields, 1)}
            if direction == "up":
                query: Doc = {"uuid": {"$in": wanted}}
            else:
                query = {"$or": [{field: {"$in": wanted}} for field in fields]}
            with self._guard:
                cursor = collection.find(query, projection)
                if limit is not None and direction == "down":
                    cursor = cursor.limit(limit - len(found))
                documents = list(cursor)
            for doc in documents:
                for field in fields:
                    for target in doc.get(field, []):
                        edge = (doc["uuid"], field, target)
                        if (direction == "up" or target in named) and edge not in seen:
                            seen.add(edge)
                            found.append(edge)
        return found if limit is None else found[:limit]

    # files -------------------------------------------------------------------------------
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
                    e.get("code") != _DUPLICATE_KEY for e in errors
                ):
                    raise
                if not self._transactions:
                    pending = [pending[e["index"]] for e in errors]
        raise ConcurrencyConflict(f"could not upsert {len(pending)} file records: they kept racing")

    def get_file(self, uuid: str) -> Doc | None:
        with self._guard:
            doc = self._files.find_one({"uuid": uuid}, _NO_ID)
        return None if doc is None else self._links.attach([doc], ENTITY_LINK_FIELDS)[0]

    def get_files(self, uuids: list[str]) -> dict[str, Doc]:
        wanted = unique(uuids)
        if not wanted:
            return {}
        with self._guard:
            docs = list(self._files.find({"uuid": {"$in": wanted}}, _NO_ID))
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
        order = _sorted(sort, cursor, clauses)
        with self._guard:
            rows = list(self._files.find(_all_of(clauses), _NO_ID).sort(order).limit(limit + 1))
        if child_of is not None:  # and the records linked to it later
            rows = merged(rows, self._links.linked_page(
                self._files, "file", "child_of", child_of, sort, cursor, others, limit + 1,
                _NO_ID), sort, limit + 1)
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
            return list(self._files.find(query, _NO_ID).sort(
                [("checked", ASCENDING), ("uuid", ASCENDING)]).limit(limit))

    def append_fixity_run(self, summary: Doc) -> None:
        with self._guard:
            self._fixity_runs.insert_one(copy.deepcopy(summary))

    def find_fixity_runs(self, limit: int = 100) -> list[Doc]:
        check_limit(limit)
        with self._guard:
            return list(self._fixity_runs.find({}, _NO_ID).sort("_id", DESCENDING).limit(limit))

    # audit -------------------------------------------------------------------------------
    def append_audit(self, entry: Doc) -> None:
        with self._guard:
            self._audit.insert_one(dict(entry))

    def find_audit(self, job_uuid: str | None = None, limit: int = 100) -> list[Doc]:
        check_limit(limit)
        query: Doc = {} if job_uuid is None else {"job_uuid": job_uuid}
        with self._guard:
            return list(self._audit.find(query, _NO_ID).sort("_id", DESCENDING).limit(limit))


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


def _entry(stored: Doc) -> Doc:
    """A history entry as stored, without what the ``history`` document adds to it."""
    return {key: value for key, value in stored.items()
            if key != "_id" and key not in _ENTRY_KEYS}
