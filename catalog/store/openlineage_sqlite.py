"""OpenLineage's records in SQLite (migration 9): the events as received, and datasets.

``ol_events`` keeps every distinct event (its ``event_id`` unique) in the order received;
``ol_event_datasets`` indexes them by the datasets they name, so a dataset's versions and
runs are read without a scan. Datasets are the ``reference`` entities (one per namespace and
name); they are listed through an index on their namespace and name.

An event is applied whole (``apply_lineage``: its pipeline and job when new, the job's events,
a refusal's audit entry, the record with its datasets and links) in ONE transaction, and with
the job events of the store (``SQLiteStore.apply_event``) in its group commit: each caller
queues its write, and whichever caller takes the write lock applies everything queued by then
in one transaction, one commit for all (a SAVEPOINT each, so one refused write leaves the
others). Each caller returns once the commit holding its write is done: an answered event is
durable, and a failure anywhere in it leaves nothing of it.

An event writes as few rows and statements as give the same database: a new run's job is
inserted with its events already applied (``applied_to_new_job``: one insert, where applying
them took a read and an update each), a link that a record inserted by the same write already
has in its own list is not inserted again, and an entity's links go in without a read of it.
Most of what is left is the b-tree work of the rows themselves (about 30 WAL pages per event,
a third of them ``links`` and its two indexes, a sixth ``ol_event_datasets``), not the
statements: one statement per table for a whole group commit instead of per event would save
about 2 us a row (measured), against an event's 0.9 ms.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import orjson

from catalog.errors import CatalogError, StoreError
from catalog.store import sqlite_links
from catalog.store.base import settle_future
from catalog.store.openlineage_write import (
    LineageApplied,
    LineageWrite,
    applied_to_new_job,
    run_steps,
)
from catalog.store.paging import chunked, decode_cursor, page_of, unique
from catalog.store.records import ENTITY_LINK_FIELDS
from catalog.store.sqlite_links import attach
from catalog.store.sqlite_rows import INSERT_LINK
from catalog.store.values import Applied, Decide, Doc, Link, Page, check_limit


def _dumps(doc: Doc) -> str:
    return orjson.dumps(doc).decode()  # as SQLiteStore's documents


_IN_CHUNK = 500  # run ids per IN (...) list, well under SQLite's bound on parameters

# The OpenLineage products of earlier versions (a dataset a run wrote: a namespace, and
# generated_by) join the reference of the same namespace and name (the dataset read): their
# UUIDs differ in the type prefix alone. Products no run wrote are left as they are.
MIGRATION = (
    9,
    "OpenLineage: events as received, indexed by run, parent run, job and dataset; one record "
    "per dataset whatever its role (the products of earlier versions join their references)",
    """
    CREATE TABLE ol_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL UNIQUE,
        run_id TEXT,
        parent_run_id TEXT,
        job TEXT,
        doc TEXT NOT NULL
    );
    CREATE INDEX ol_events_run ON ol_events (run_id, seq) WHERE run_id IS NOT NULL;
    CREATE INDEX ol_events_parent ON ol_events (parent_run_id, seq)
        WHERE parent_run_id IS NOT NULL;
    CREATE INDEX ol_events_job ON ol_events (job, seq) WHERE job IS NOT NULL;
    CREATE TABLE ol_event_datasets (
        dataset TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (dataset, seq)
    ) WITHOUT ROWID;
    CREATE INDEX entities_dataset ON entities (json_extract(doc, '$.namespace'),
        json_extract(doc, '$.name'), uuid) WHERE kind = 'reference';
    CREATE TEMP TABLE ol_split AS SELECT uuid AS product, '109' || substr(uuid, 4) AS reference
        FROM entities WHERE kind = 'product' AND json_extract(doc, '$.namespace') IS NOT NULL
        AND uuid IN (SELECT src FROM links WHERE relation = 'generated_by');
    INSERT OR IGNORE INTO entities (uuid, kind, created, doc)
        SELECT s.reference, 'reference', e.created,
               json_set(e.doc, '$.uuid', s.reference, '$.kind', 'reference')
        FROM ol_split s JOIN entities e ON e.uuid = s.product;
    INSERT OR IGNORE INTO links (src, relation, dst, src_key)
        SELECT s.reference, l.relation, l.dst, NULL
        FROM ol_split s JOIN links l ON l.src = s.product;
    UPDATE entities SET doc = json_set(doc, '$.generated_by', json((
            SELECT json_group_array(dst) FROM (SELECT dst FROM links
                WHERE links.src = entities.uuid AND links.relation = 'generated_by'
                ORDER BY dst))))
        WHERE uuid IN (SELECT reference FROM ol_split);
    DELETE FROM links WHERE src IN (SELECT product FROM ol_split);
    DELETE FROM entities WHERE uuid IN (SELECT product FROM ol_split);
    DROP TABLE ol_split
    """,
)

@dataclass
class PendingLineage:
    """A ``LineageWrite`` waiting for the next group commit, and what became of it."""

    write: LineageWrite
    result: LineageApplied | None = None
    error: BaseException | None = None


@dataclass
class ThreadLineage(PendingLineage):
    """One from a thread (``apply_lineage``), answered through a future."""

    future: Future[LineageApplied] = field(default_factory=Future)

    def settle(self) -> None:
        settle_future(self.future, self.result, self.error)


_DATASET_KEY = ("json_extract(doc, '$.namespace')", "json_extract(doc, '$.name')", "uuid")
# An OpenLineage job's pipeline names its namespace in its one component.
_JOB_NAMESPACE = "json_extract(doc, '$.components[0].openlineage.namespace')"
_NAMESPACES = (
    f"SELECT {_JOB_NAMESPACE} AS name, created FROM pipelines WHERE {_JOB_NAMESPACE} IS NOT NULL "
    f"UNION ALL SELECT {_DATASET_KEY[0]}, created FROM entities WHERE kind = 'reference' "
    f"AND {_DATASET_KEY[0]} IS NOT NULL")


class OpenLineageSQLite:
    """The OpenLineage part of ``SQLiteStore`` (which provides the methods below that raise)."""

    def _connection(self) -> sqlite3.Connection:
        raise NotImplementedError  # SQLiteStore's

    def _apply_pending(self, pending: ThreadLineage) -> LineageApplied:
        raise NotImplementedError  # SQLiteStore's: queued for its group commit

    async def _apply_on_loop(self, write: LineageWrite) -> LineageApplied:
        raise NotImplementedError  # SQLiteStore's: with its loop's events (sqlite_loop)

    @staticmethod
    def _insert_entities(conn: sqlite3.Connection, docs: list[Doc]) -> set[str]:
        raise NotImplementedError  # SQLiteStore's

    @staticmethod
    def _link(conn: sqlite3.Connection, src: str, relation: str, targets: list[str]) -> None:
        raise NotImplementedError  # SQLiteStore's

    @staticmethod
    def _apply_one(conn: sqlite3.Connection, uuid: str, event_id: str | None,
                   decide: Decide) -> Applied:
        raise NotImplementedError  # SQLiteStore's

    @classmethod
    def _insert_new_job(cls, conn: sqlite3.Connection, doc: Doc) -> bool:
        raise NotImplementedError  # SQLiteStore's

    @staticmethod
    def _insert_audit(conn: sqlite3.Connection, entry: Doc) -> None:
        raise NotImplementedError  # SQLiteStore's

    def add_lineage_event(self, doc: Doc, entities: Sequence[Doc] = (),
                          links: Sequence[Link] = ()) -> bool:
        return self.apply_lineage(LineageWrite(doc, list(entities), links)).new

    def apply_lineage(self, write: LineageWrite) -> LineageApplied:
        # One transaction (one sync) for the whole event, shared with every write queued
        # meanwhile (module docstring).
        return self._apply_pending(ThreadLineage(write))

    async def apply_lineage_async(self, write: LineageWrite) -> LineageApplied:
        return await self._apply_on_loop(write)

    @classmethod
    def _apply_lineage(cls, conn: sqlite3.Connection, item: PendingLineage) -> None:
        """Apply ``item`` in the open transaction under a savepoint of its own: all of it, or
        (noting its error) none of it."""
        conn.execute("SAVEPOINT ol_write")
        try:
            item.result = cls._write_lineage(conn, item.write)
        except sqlite3.Error as exc:  # a constraint, a full disk, ...: named, not raw
            item.error = StoreError(f"the catalog database refused a write: {exc}")
        except Exception as exc:  # the caller's, its writes undone
            item.error = exc
        if item.error is not None:
            conn.execute("ROLLBACK TO ol_write")
        conn.execute("RELEASE ol_write")

    @classmethod
    def _write_lineage(cls, conn: sqlite3.Connection, write: LineageWrite) -> LineageApplied:
        if write.pipeline is not None:
            pipeline = write.pipeline
            conn.execute("INSERT OR IGNORE INTO pipelines (uuid, name, created, doc) "
                         "VALUES (?, ?, ?, ?)", (pipeline["uuid"], pipeline["name"],
                                                 pipeline["created"], _dumps(pipeline)))
        new_job: Doc | None = None  # the job as inserted by this write
        applied: Applied | None = None
        refusal: CatalogError | None = None
        ready = applied_to_new_job(write)
        if ready is not None and cls._insert_new_job(conn, ready[0]):
            new_job, applied = ready  # inserted with its steps applied: nothing more to do
        else:
            if write.job is not None and cls._insert_new_job(conn, write.job):
                new_job = write.job
            applied, refusal = run_steps(
                write,
                lambda uuid, event_id, decide: cls._apply_one(conn, uuid, event_id, decide),
                lambda entry: cls._insert_audit(conn, entry))
        head = None
        if refusal is not None:
            state, last_event = conn.execute("SELECT state, last_event FROM jobs WHERE uuid = ?",
                                             (write.uuid,)).fetchone()
            head = {"state": state, "last_event": last_event}
        new = cls._keep_record(conn, write.record_as(refusal), write.entities, write.links,
                               new_job)
        return LineageApplied(new, applied, refusal, head)

    @classmethod
    def _keep_record(cls, conn: sqlite3.Connection, doc: Doc, entities: list[Doc],
                     links: Sequence[Link], new_job: Doc | None = None) -> bool:
        cursor = conn.execute(
            "INSERT OR IGNORE INTO ol_events (event_id, run_id, parent_run_id, job, doc) "
            "VALUES (?, ?, ?, ?, ?)",
            (doc["event_id"], doc.get("run_id"), doc.get("parent_run_id"), doc.get("job"),
             _dumps(doc)))
        if cursor.rowcount != 1:
            return False
        seq = cursor.lastrowid
        conn.executemany("INSERT OR IGNORE INTO ol_event_datasets (dataset, seq) "
                         "VALUES (?, ?)", [(uuid, seq) for uuid in doc.get("datasets", [])])
        inserted = cls._insert_entities(conn, entities)
        cls._link_all(conn, links, entities, inserted, new_job)
        return True

    @classmethod
    def _link_all(cls, conn: sqlite3.Connection, links: Sequence[Link], entities: list[Doc],
                  inserted: set[str], new_job: Doc | None) -> None:
        """``_link`` each of ``links``, with less: a link a record inserted by this write
        already has in its own list is there; one from an entity of this write (which exists
        now, inserted or not) is inserted with no read of the entity, whose key is NULL."""
        first: dict[str, Doc] = {}  # the entity kept of each uuid (_insert_entities')
        for entity in entities:
            first.setdefault(entity["uuid"], entity)
        rows: list[tuple[str, str, str, str | None, int]] = []
        for src, relation, targets in links:
            if new_job is not None and src == new_job["uuid"]:
                if set(targets) <= set(new_job.get(relation) or ()):
                    continue
            elif src in first:
                if src in inserted and set(targets) <= set(first[src].get(relation) or ()):
                    continue
                if relation in ENTITY_LINK_FIELDS:
                    new = unique(targets)
                    position = sqlite_links.added_pos.take(len(new))
                    rows += [(src, relation, target, None, position + n)
                             for n, target in enumerate(new)]
                    continue
            cls._link(conn, src, relation, targets)
        # In key order (as _link's): near-appends to the key and links_reverse b-trees.
        conn.executemany(INSERT_LINK, sorted(rows))

    def lineage_events(self, *, run_id: str | None = None, parent_run_id: str | None = None,
                       job: str | None = None, dataset: str | None = None,
                       limit: int = 1000) -> list[Doc]:
        check_limit(limit)
        if dataset is not None:
            sql = ("SELECT e.doc FROM ol_event_datasets d JOIN ol_events e ON e.seq = d.seq "
                   "WHERE d.dataset = ? ORDER BY d.seq DESC LIMIT ?")
            params: list[Any] = [dataset, limit]
        else:
            column, value = next((c, v) for c, v in (("run_id", run_id),
                                                      ("parent_run_id", parent_run_id),
                                                      ("job", job)) if v is not None)
            sql = (f"SELECT doc FROM ol_events WHERE {column} = ? "
                   "ORDER BY seq DESC LIMIT ?")
            params = [value, limit]
        rows = self._connection().execute(sql, params).fetchall()
        return [json.loads(row[0]) for row in reversed(rows)]

    def lineage_events_of_runs(self, run_ids: list[str],
                               limit: int = 1000) -> dict[str, list[Doc]]:
        check_limit(limit)
        found: dict[str, list[Doc]] = {}
        conn = self._connection()
        for chunk in chunked(unique(run_ids), _IN_CHUNK):
            rows = conn.execute(
                "SELECT run_id, doc FROM ol_events WHERE run_id IN "
                f"({', '.join('?' * len(chunk))}) ORDER BY seq", chunk)
            for run_id, doc in rows:
                found.setdefault(run_id, []).append(json.loads(doc))
        return {run_id: events[-limit:] for run_id, events in found.items()}

    def lineage_namespaces(self, name: str | None = None, limit: int = 100,
                           offset: int = 0) -> tuple[list[Doc], int]:
        check_limit(limit)
        where, params = ("WHERE name = ?", [name]) if name is not None else ("", [])
        conn = self._connection()
        rows = conn.execute(
            f"SELECT name, MIN(created), MAX(created) FROM ({_NAMESPACES}) {where} "
            "GROUP BY name ORDER BY name LIMIT ? OFFSET ?", [*params, limit, offset]).fetchall()
        total = conn.execute(f"SELECT COUNT(DISTINCT name) FROM ({_NAMESPACES}) {where}",
                             params).fetchone()[0]
        return [{"name": n, "created": c, "updated": u} for n, c, u in rows], total

    def lineage_jobs(self, namespace: str, limit: int = 100,
                     offset: int = 0) -> tuple[list[Doc], int]:
        check_limit(limit)
        conn = self._connection()
        rows = conn.execute(f"SELECT doc FROM pipelines WHERE {_JOB_NAMESPACE} = ? "
                            "ORDER BY name, uuid LIMIT ? OFFSET ?",
                            (namespace, limit, offset)).fetchall()
        total = conn.execute(f"SELECT COUNT(*) FROM pipelines WHERE {_JOB_NAMESPACE} = ?",
                             (namespace,)).fetchone()[0]
        return [json.loads(row[0]) for row in rows], total

    def count_datasets(self, namespace: str) -> int:
        row = self._connection().execute(
            f"SELECT COUNT(*) FROM entities WHERE kind = 'reference' AND {_DATASET_KEY[0]} = ?",
            (namespace,)).fetchone()
        return int(row[0])

    def find_datasets(self, namespace: str | None = None, limit: int = 100,
                      cursor: str | None = None, offset: int = 0) -> Page:
        check_limit(limit)
        where, params = ["kind = 'reference'"], []
        namespace_column, name_column, _ = _DATASET_KEY
        if namespace is not None:
            where.append(f"{namespace_column} = ?")
            params.append(namespace)
        if cursor is not None:
            after = decode_cursor(cursor, 3)
            where.append(f"({', '.join(_DATASET_KEY)}) > (?, ?, ?)")
            params += after
        rows = self._connection().execute(
            f"SELECT doc FROM entities WHERE {' AND '.join(where)} AND {namespace_column} "
            f"IS NOT NULL ORDER BY {', '.join(_DATASET_KEY)} LIMIT ? OFFSET ?",
            [*params, limit + 1, offset]).fetchall()
        docs = [json.loads(row[0]) for row in rows]
        page = page_of(docs, limit, "namespace", "name", "uuid")
        attach(self._connection(), page.items, ENTITY_LINK_FIELDS)  # lists: sqlite_links
        return page

