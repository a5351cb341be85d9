"""The MongoDB store's indexes and its numbered migrations (each idempotent, recorded in
``schema_migrations``)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from pymongo import ASCENDING, DESCENDING
from pymongo.collection import Collection

from catalog.store import mongo_claim
from catalog.store.mongo_links import Links
from catalog.store.mongo_rows import BY_PATH, utc_now_text
from catalog.store.records import ENTITY_LINK_FIELDS, INDEXED_CHECKSUMS, JOB_LINK_FIELDS
from catalog.store.values import Doc

_LEGACY_HISTORY_INDEX = "history.event_id_1"  # earlier versions looked event_ids up in jobs


class SchemaMongo:
    """The indexes and migrations of ``MongoStore`` (which sets the attributes below)."""

    _guard: AbstractContextManager[object]
    _jobs: Collection[Doc]
    _files: Collection[Doc]
    _entities: Collection[Doc]
    _links: Links
    _pipelines: Collection[Doc]
    _history: Collection[Doc]
    _audit: Collection[Doc]
    _dependencies: Collection[Doc]
    _schema: Collection[Doc]

    if TYPE_CHECKING:  # MongoStore's, and FixityMongo's
        def _insert_entries(self, uuid: str, created: str, entries: list[Doc],
                            first_seq: int) -> None: ...

        def _move_fixity_logs(self) -> None: ...

    def _create_indexes(self) -> None:
        with self._guard:
            self._pipelines.create_index([("uuid", ASCENDING)], unique=True)
            self._pipelines.create_index([("name", ASCENDING), ("uuid", ASCENDING)])
            self._jobs.create_index([("uuid", ASCENDING)], unique=True)
            self._jobs.create_index([("state", ASCENDING), ("pipeline_uuid", ASCENDING),
                                     *mongo_claim.CLAIM_ORDER])
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
            self._files.create_index(BY_PATH)
            self._files.create_index([("storage_system", ASCENDING), ("path", ASCENDING)])
            # find_files filters then sorts by (path, uuid): these serve both at once.
            for head in ("status", "child_of"):
                self._files.create_index([(head, ASCENDING), *BY_PATH])
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
                                     self._move_embedded_histories),
                                    (2, "links added later in their own collection",
                                     self._move_added_links),
                                    (3, "fixity history in its own collection",
                                     self._move_fixity_logs)):
            if version in done:
                continue
            step()
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
