"""OpenLineage's records in SQLite (migration 9): the events as received, and datasets.

``ol_events`` keeps every distinct event (its ``event_id`` unique) in the order received;
``ol_event_datasets`` indexes them by the datasets they name, so a dataset's versions and
runs are read without a scan. Datasets are the ``reference`` entities (one per namespace and
name); they are listed through an index on their namespace and name.

Events are kept as the job events are applied (``SQLiteStore.apply_event``): each caller queues
its record, and whichever caller takes the group lock writes every record queued by then in one
transaction, one commit for all (a SAVEPOINT each, so one refused record leaves the others).
Each caller returns once the commit holding its record is done: an answered event is durable.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from catalog.store.base import (
    ENTITY_LINK_FIELDS,
    Doc,
    Link,
    Page,
    check_limit,
    chunked,
    decode_cursor,
    page_of,
    unique,
)
from catalog.store.sqlite_links import attach

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

_MAX_GROUP = 256  # records per transaction


@dataclass
class _Record:
    doc: Doc
    entities: list[Doc]
    links: Sequence[Link]
    future: Future[bool] = field(default_factory=Future)


class _Group:
    """The records waiting for a commit, and the lock of the caller writing them."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[_Record] = queue.SimpleQueue()
        self.lock = threading.Lock()

    def drain(self) -> list[_Record]:
        batch: list[_Record] = []
        while len(batch) < _MAX_GROUP:
            try:
                batch.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return batch


_GROUP_INIT = threading.Lock()
_DATASET_KEY = ("json_extract(doc, '$.namespace')", "json_extract(doc, '$.name')", "uuid")
# An OpenLineage job's pipeline names its namespace in its one component.
_JOB_NAMESPACE = "json_extract(doc, '$.components[0].openlineage.namespace')"
_NAMESPACES = (
    f"SELECT {_JOB_NAMESPACE} AS name, created FROM pipelines WHERE {_JOB_NAMESPACE} IS NOT NULL "
    f"UNION ALL SELECT {_DATASET_KEY[0]}, created FROM entities WHERE kind = 'reference' "
    f"AND {_DATASET_KEY[0]} IS NOT NULL")


class OpenLineageSQLite:
    """The OpenLineage part of ``SQLiteStore`` (which provides the two methods below)."""

    def _connection(self) -> sqlite3.Connection:
        raise NotImplementedError  # SQLiteStore's

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # SQLiteStore's

    @staticmethod
    def _insert_entities(conn: sqlite3.Connection, docs: list[Doc]) -> None:
        raise NotImplementedError  # SQLiteStore's

    @staticmethod
    def _link(conn: sqlite3.Connection, src: str, relation: str, targets: list[str]) -> None:
        raise NotImplementedError  # SQLiteStore's

    def _ol_group(self) -> _Group:
        group = self.__dict__.get("_ol_records")
        if group is None:
            with _GROUP_INIT:
                group = self.__dict__.setdefault("_ol_records", _Group())
        return group  # type: ignore[no-any-return]

    def add_lineage_event(self, doc: Doc, entities: Sequence[Doc] = (),
                          links: Sequence[Link] = ()) -> bool:
        # One transaction (one sync) for the event, its datasets and their links, and for
        # those of every caller queued meanwhile (module docstring).
        record = _Record(doc, list(entities), links)
        group = self._ol_group()
        group.queue.put(record)
        while not record.future.done():
            with group.lock:
                if not record.future.done():
                    self._keep_records(group.drain())
        return record.future.result()

    def _keep_records(self, batch: list[_Record]) -> None:
        results: list[bool | BaseException] = []
        try:
            with self._write() as conn:
                for record in batch:
                    conn.execute("SAVEPOINT ol_record")
                    try:
                        results.append(self._keep_record(conn, record))
                    except Exception as exc:  # the caller's, its writes undone
                        conn.execute("ROLLBACK TO ol_record")
                        results.append(exc)
                    conn.execute("RELEASE ol_record")
        except BaseException as exc:
            for record in batch:
                record.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for record, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                record.future.set_exception(result)
            else:
                record.future.set_result(result)

    def _keep_record(self, conn: sqlite3.Connection, record: _Record) -> bool:
        doc = record.doc
        cursor = conn.execute(
            "INSERT OR IGNORE INTO ol_events (event_id, run_id, parent_run_id, job, doc) "
            "VALUES (?, ?, ?, ?, ?)",
            (doc["event_id"], doc.get("run_id"), doc.get("parent_run_id"), doc.get("job"),
             json.dumps(doc, separators=(",", ":"))))
        if cursor.rowcount != 1:
            return False
        seq = cursor.lastrowid
        conn.executemany("INSERT OR IGNORE INTO ol_event_datasets (dataset, seq) "
                         "VALUES (?, ?)", [(uuid, seq) for uuid in doc.get("datasets", [])])
        self._insert_entities(conn, record.entities)
        for src, relation, targets in record.links:
            self._link(conn, src, relation, targets)
        return True

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

