"""OpenLineage's records in MongoDB: ``openlineage_events`` and the datasets among entities.

Each distinct event is one document (``event_id`` unique) in the order received (``_id``, as
the audit log); multikey indexes on ``datasets`` and indexes on the run, parent run and job
serve every read. Datasets are the ``reference`` entities, indexed by namespace and name. When
the store is opened, the OpenLineage products of earlier versions (a dataset a run wrote: with
a namespace and ``generated_by``) are joined to the reference of the same namespace and name
(the dataset read); products no run wrote are left as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from catalog.identifiers import UUIDType
from catalog.store.base import (
    ENTITY_LINK_FIELDS,
    Doc,
    Link,
    Page,
    check_limit,
    decode_cursor,
    page_of,
)

_NO_ID: Doc = {"_id": 0}
_JOB_NAMESPACE = "$components.openlineage.namespace"  # an OpenLineage job's pipeline's
_DATASET_ORDER = [("namespace", ASCENDING), ("name", ASCENDING), ("uuid", ASCENDING)]


class OpenLineageMongo:
    """The OpenLineage part of ``MongoStore`` (which sets the attributes below)."""

    database: Database[Doc]
    _guard: AbstractContextManager[object]
    _entities: Collection[Doc]
    _pipelines: Collection[Doc]

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

    def add_links(self, src: str, relation: str, targets: list[str]) -> None:
        raise NotImplementedError  # MongoStore's

    def add_lineage_event(self, doc: Doc, entities: Sequence[Doc] = (),
                          links: Sequence[Link] = ()) -> bool:
        # Datasets and links first (each idempotent): an event stored is an event applied.
        if entities:
            self.upsert_entities(list(entities))
        for src, relation, targets in links:
            self.add_links(src, relation, targets)
        try:
            with self._guard:
                self._ol_events.insert_one(dict(doc))
        except DuplicateKeyError:
            return False
        return True

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
