"""The MongoDB store's entities (references, products) and the links between records: lists on
the documents, and the links added later in ``links`` (``mongo_links``)."""

from __future__ import annotations

from contextlib import AbstractContextManager

from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

from catalog.store.mongo_links import Links
from catalog.store.mongo_rows import DUPLICATE_KEY, NO_ID
from catalog.store.paging import unique
from catalog.store.records import (
    ENTITY_LINK_FIELDS,
    JOB_LINK_FIELDS,
    check_link,
    link_source_not_found,
)
from catalog.store.values import Doc


class EntitiesMongo:
    """The entities-and-links part of ``MongoStore`` (which sets the attributes below)."""

    _guard: AbstractContextManager[object]
    _jobs: Collection[Doc]
    _files: Collection[Doc]
    _entities: Collection[Doc]
    _links: Links

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
            if any(e.get("code") != DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
                raise
            if exc.details.get("writeConcernErrors"):
                raise

    def get_entity(self, uuid: str) -> Doc | None:
        with self._guard:
            doc = self._entities.find_one({"uuid": uuid}, NO_ID)
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
