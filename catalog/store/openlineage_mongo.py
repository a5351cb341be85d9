"""OpenLineage's records in MongoDB: ``openlineage_events`` and the datasets among entities.

Each distinct event is one document (``event_id`` unique) in the order received (``_id``, as
the audit log); multikey indexes on ``datasets`` and indexes on the run, parent run and job
serve every read. Datasets are the ``reference`` entities, indexed by namespace and name. When
the store is opened, the OpenLineage products of earlier versions (a dataset a run wrote: with
a namespace and ``generated_by``) are joined to the reference of the same namespace and name
(the dataset read); products no run wrote are left as they are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from catalog.identifiers import UUIDType
from catalog.store.mongo_links import Links
from catalog.store.openlineage_write import LineageApplied, LineageWrite, run_steps
from catalog.store.paging import decode_cursor, page_of
from catalog.store.records import (
    ENTITY_LINK_FIELDS,
    check_link,
    check_new_job,
    link_source,
    link_source_not_found,
)
from catalog.store.values import Applied, Decide, Doc, Link, LinkSource, Page, check_limit

_NO_ID: Doc = {"_id": 0}
_JOB_NAMESPACE = "$components.openlineage.namespace"  # an OpenLineage job's pipeline's
_DATASET_ORDER = [("namespace", ASCENDING), ("name", ASCENDING), ("uuid", ASCENDING)]


class OpenLineageMongo:
    """The OpenLineage part of ``MongoStore`` (which sets the attributes below)."""

    database: Database[Doc]
    _guard: AbstractContextManager[object]
    _entities: Collection[Doc]
    _pipelines: Collection[Doc]
    _jobs: Collection[Doc]
    _files: Collection[Doc]
    _links: Links

    @property
    def _ol_events(self) -> Collection[Doc]:
        return self.database["openlineage_events"]

    def _open_lineage(self) -> None:
        """Indexes, then the split datasets of earlier versions joined (idempotent)."""
        with self._guard:
            self._ol_events.create_index([("event_id", ASCENDING)], unique=True)
            for field in ("run_id", "parent_run_id", "job", "datasets"):
                self._ol_events.create_index([(field, ASCENDING), ("_id", DESCENDING)])
            self._entities.create_index([("kind", ASCENDING), *_DATASET_ORDER])
            products = list(self._entities.find(  # written by a run: OpenLineage's
                {"kind": UUIDType.product.name, "namespace": {"$type": "string"},
                 "generated_by.0": {"$exists": True}}, _NO_ID))
        for product in products:
            uuid = UUIDType.reference.prefix + product["uuid"][3:]
            joined = {**product, "uuid": uuid, "kind": UUIDType.reference.name}
            links = {field: joined.pop(field) for field in ENTITY_LINK_FIELDS if field in joined}
            with self._guard:
                try:
                    self._entities.insert_one({**joined, **links})
                except DuplicateKeyError:
                    self._entities.update_one({"uuid": uuid}, {"$addToSet": {
                        field: {"$each": targets} for field, targets in links.items()}})
                self._entities.delete_one({"uuid": product["uuid"]})

    def upsert_entities(self, docs: list[Doc]) -> None:
        raise NotImplementedError  # MongoStore's

    def apply_event(self, uuid: str, event_id: str | None, decide: Decide) -> Applied:
        raise NotImplementedError  # MongoStore's

    def append_audit(self, entry: Doc) -> None:
        raise NotImplementedError  # MongoStore's

    def _insert_entries(self, uuid: str, created: str, entries: list[Doc],
                        first_seq: int) -> None:
        raise NotImplementedError  # MongoStore's

    def add_lineage_event(self, doc: Doc, entities: Sequence[Doc] = (),
                          links: Sequence[Link] = ()) -> bool:
        return self._keep_record(doc, list(entities), links)

    def apply_lineage(self, write: LineageWrite) -> LineageApplied:
        """Each write atomic alone, in an order that a retry completes (each is idempotent):
        the pipeline and job if new, the job's events, then the datasets, their links and
        last the record (an event stored is an event applied). Round trips for an event on a
        known run: the events' (four each), two finds of the links' sources, and one insert
        each for the datasets, the links and the record."""
        if write.pipeline is not None:
            self._insert_absent(self._pipelines, write.pipeline)
        if write.job is not None:
            self._insert_job_absent(write.job)
        applied, refusal = run_steps(write, self.apply_event, self.append_audit)
        head = None
        if refusal is not None:
            with self._guard:
                head = self._jobs.find_one({"uuid": write.uuid},
                                           {"_id": 0, "state": 1, "last_event": 1})
        new = self._keep_record(write.record_as(refusal), write.entities, write.links)
        return LineageApplied(new, applied, refusal, head)

    async def apply_lineage_async(self, write: LineageWrite) -> LineageApplied:
        """``apply_lineage`` on the pool of ``submit_event``."""
        return await asyncio.wrap_future(self._pool().submit(self.apply_lineage, write))

    def _pool(self) -> ThreadPoolExecutor:
        raise NotImplementedError  # MongoStore's

    def _insert_absent(self, collection: Collection[Doc], doc: Doc) -> bool:
        try:
            with self._guard:
                collection.insert_one(dict(doc))  # a copy: pymongo adds _id to what it inserts
        except DuplicateKeyError:
            return False
        return True

    def _insert_job_absent(self, doc: Doc) -> None:
        """``insert_job`` without reading back a job already there (its entries first)."""
        check_new_job(doc)
        self._insert_entries(doc["uuid"], doc["created"], list(doc.get("history", [])), 1)
        self._insert_absent(self._jobs, {k: v for k, v in doc.items() if k != "history"})

    def _keep_record(self, doc: Doc, entities: list[Doc], links: Sequence[Link]) -> bool:
        # Datasets and links first (each idempotent): an event stored is an event applied.
        if entities:
            self.upsert_entities(entities)
        self._add_links_at_once(links)
        return self._insert_absent(self._ol_events, doc)

    def _add_links_at_once(self, links: Sequence[Link]) -> None:
        """``add_links`` for each link, their sources read in one find per kind of record and
        their new links inserted in one call."""
        wanted: dict[LinkSource, dict[str, set[str]]] = {}
        for src, relation, _ in links:
            wanted.setdefault(check_link(src, relation), {}).setdefault(src, set()).add(relation)
        sources: dict[str, Doc] = {}
        for kind, by_uuid in wanted.items():
            collection = {"job": self._jobs, "file": self._files, "entity": self._entities}[kind]
            relations = set().union(*by_uuid.values())
            with self._guard:
                sources.update((found["uuid"], found) for found in collection.find(
                    {"uuid": {"$in": list(by_uuid)}},
                    {"_id": 0, "uuid": 1, "created": 1, "path": 1,
                     **dict.fromkeys(relations, 1)}))
        docs: list[Doc] = []
        for src, relation, targets in links:
            source = sources.get(src)
            if source is None:
                raise link_source_not_found(src)
            docs += Links.new_links(link_source(src), source, relation, targets)
        self._links.insert(docs)

    def lineage_events(self, *, run_id: str | None = None, parent_run_id: str | None = None,
                       job: str | None = None, dataset: str | None = None,
                       limit: int = 1000) -> list[Doc]:
        check_limit(limit)
        field, value = next((f, v) for f, v in (("run_id", run_id),
                                                ("parent_run_id", parent_run_id), ("job", job),
                                                ("datasets", dataset)) if v is not None)
        with self._guard:
            found = list(self._ol_events.find({field: value}, _NO_ID)
                         .sort("_id", DESCENDING).limit(limit))
        return found[::-1]

    def lineage_events_of_runs(self, run_ids: list[str],
                               limit: int = 1000) -> dict[str, list[Doc]]:
        check_limit(limit)
        wanted = list(dict.fromkeys(run_ids))
        if not wanted:
            return {}
        with self._guard:
            docs = list(self._ol_events.find({"run_id": {"$in": wanted}}, _NO_ID)
                        .sort("_id", ASCENDING))
        found: dict[str, list[Doc]] = {}
        for doc in docs:
            found.setdefault(doc["run_id"], []).append(doc)
        return {run_id: events[-limit:] for run_id, events in found.items()}

    def lineage_namespaces(self, name: str | None = None, limit: int = 100,
                           offset: int = 0) -> tuple[list[Doc], int]:
        check_limit(limit)
        spans: dict[str, list[str]] = {}
        jobs: list[Doc] = [{"$match": {_JOB_NAMESPACE.lstrip("$"): {"$type": "string"}}},
                           {"$unwind": "$components"},
                           {"$match": {_JOB_NAMESPACE.lstrip("$"): {"$type": "string"}}}]
        datasets: list[Doc] = [{"$match": {"kind": UUIDType.reference.name,
                                           "namespace": {"$type": "string"}}}]
        for collection, stages, field in ((self._pipelines, jobs, _JOB_NAMESPACE),
                                          (self._entities, datasets, "$namespace")):
            if name is not None:
                stages = [*stages, {"$match": {field.lstrip("$"): name}}]
            with self._guard:
                groups = list(collection.aggregate([*stages, {"$group": {
                    "_id": field, "created": {"$min": "$created"},
                    "updated": {"$max": "$created"}}}]))
            for group in groups:
                span = spans.setdefault(group["_id"], [group["created"], group["updated"]])
                span[0], span[1] = min(span[0], group["created"]), max(span[1], group["updated"])
        names = sorted(spans)
        return ([{"name": n, "created": spans[n][0], "updated": spans[n][1]}
                 for n in names[offset:offset + limit]], len(names))

    def lineage_jobs(self, namespace: str, limit: int = 100,
                     offset: int = 0) -> tuple[list[Doc], int]:
        check_limit(limit)
        query = {_JOB_NAMESPACE.lstrip("$"): namespace}
        with self._guard:
            docs = list(self._pipelines.find(query, _NO_ID)
                        .sort([("name", ASCENDING), ("uuid", ASCENDING)]).skip(offset)
                        .limit(limit))
            total = self._pipelines.count_documents(query)
        return docs, total

    def count_datasets(self, namespace: str) -> int:
        with self._guard:
            return self._entities.count_documents({"kind": UUIDType.reference.name,
                                                   "namespace": namespace})

    def find_datasets(self, namespace: str | None = None, limit: int = 100,
                      cursor: str | None = None, offset: int = 0) -> Page:
        check_limit(limit)
        query: dict[str, Any] = {"kind": UUIDType.reference.name,
                                 "namespace": {"$type": "string"}}
        if namespace is not None:
            query["namespace"] = namespace
        if cursor is not None:
            after_namespace, after_name, after_uuid = decode_cursor(cursor, 3)
            query["$or"] = [
                {"namespace": {"$gt": after_namespace}},
                {"namespace": after_namespace, "name": {"$gt": after_name}},
                {"namespace": after_namespace, "name": after_name, "uuid": {"$gt": after_uuid}},
            ]
        with self._guard:
            docs = list(self._entities.find(query, _NO_ID).sort(_DATASET_ORDER).skip(offset)
                        .limit(limit + 1))
        return page_of(docs, limit, "namespace", "name", "uuid")
