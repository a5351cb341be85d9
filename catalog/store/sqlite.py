"""The embedded store: one SQLite file, WAL, numbered migrations, safe with several processes.

Each thread has its own connection. Writes run in ``BEGIN IMMEDIATE`` transactions, so a job's
head is read and rewritten under the database's write lock (the compare-and-set on ``version``
then cannot lose); threads of one process queue on a lock of their own rather than on SQLite's
sleeping busy handler, and other processes wait up to the busy timeout. Events are group
committed: from threads through a writer thread (``submit_event``, ``apply_event``), from an
event loop on the loop itself, the fsync off it (``catalog.store.sqlite_loop``).
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from catalog.errors import ConcurrencyConflict, ConfigurationError, StoreError
from catalog.store import sqlite_checkpoint, sqlite_file_keys
from catalog.store.fixity_sqlite import FixitySQLite
from catalog.store.openlineage_sqlite import OpenLineageSQLite
from catalog.store.paging import chunked, decode_cursor, page_of, sorted_page, unique
from catalog.store.records import JOB_LINK_FIELDS
from catalog.store.sqlite_entities import EntitiesSQLite
from catalog.store.sqlite_events import EventsSQLite, Pending
from catalog.store.sqlite_files import FilesSQLite
from catalog.store.sqlite_links import attach
from catalog.store.sqlite_loop import LoopEventsRegistry
from catalog.store.sqlite_queue import QueueSQLite
from catalog.store.sqlite_rows import (
    IN_CHUNK,
    INSERT_HISTORY,
    INSERT_JOB,
    INSERT_LINK,
    JOB_COLUMNS,
    dumps,
    job_row,
    job_rows,
    keyset,
)
from catalog.store.sqlite_schema import MIGRATIONS
from catalog.store.tombstones_sqlite import TombstonesSQLite
from catalog.store.values import Doc, JobQuery, Page, check_limit

__all__ = ["MIGRATIONS", "SQLiteStore"]

_SYNCHRONOUS = {"OFF", "NORMAL", "FULL", "EXTRA"}
_CACHE_KIB = 64 * 1024  # page cache per connection, at most (filled on demand)


class SQLiteStore(EventsSQLite, QueueSQLite, EntitiesSQLite, FilesSQLite, OpenLineageSQLite,
                  TombstonesSQLite, FixitySQLite):
    """Store backed by one SQLite file. Its connections, migrations, pipelines, jobs and audit
    are here; its other parts are mixins (``sqlite_events``, ``sqlite_queue``,
    ``sqlite_entities``, ``sqlite_files``, then ``openlineage_sqlite``, ``tombstones_sqlite``
    and ``fixity_sqlite``). The parts that implement a method come first: the last three
    declare what they use with stubs that raise, and the first found is the one called."""

    kind = "sqlite"
    # The class of every connection the store opens (a benchmark times the SQL through one).
    connection_factory: type[sqlite3.Connection] = sqlite3.Connection

    def __init__(self, path: str | Path, synchronous: str = "FULL",
                 busy_timeout_ms: int = 30000) -> None:
        synchronous = synchronous.upper()
        if synchronous not in _SYNCHRONOUS:
            raise ConfigurationError(f"sqlite synchronous must be one of {sorted(_SYNCHRONOUS)}")
        self.path = str(path)
        if self.path == ":memory:" or self.path.startswith("file:"):
            # Every thread (and the event loop, and the writer) has its own connection: each
            # would open its own empty in-memory database, and nothing would be kept.
            raise ConfigurationError(
                f"SQLite database {self.path!r} is not a file: the catalog keeps one database "
                "file shared by its connections; name a file (a temporary one for tests)")
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._queue: queue.SimpleQueue[Pending | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._loop_events = LoopEventsRegistry(self, self._loop_connection)
        self._checkpointer = sqlite_checkpoint.BackgroundCheckpointer(self.path)
        self.migrate()

    # connections and transactions -----------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open(self._busy_timeout_ms)
            conn.execute("PRAGMA journal_mode = WAL")
            self._local.conn = conn
        return conn

    def _loop_connection(self) -> sqlite3.Connection:
        """A connection for an event loop's events: it never waits for the write lock."""
        return self._open(0)

    def _open(self, busy_timeout_ms: int) -> sqlite3.Connection:
        """A new connection, closed with the store."""
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=busy_timeout_ms / 1000,
                               check_same_thread=False, factory=self.connection_factory)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        # SQLite's default page cache is 2 MiB: a catalog of 200,000 files (half a gigabyte)
        # then reads and writes its index pages from the OS over and over, and indexing slows
        # as the tree grows. The cache is filled on demand, so an idle connection costs nothing.
        conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def _forget_connection(self, conn: sqlite3.Connection) -> None:
        with self._connections_lock:
            if conn in self._connections:
                self._connections.remove(conn)
        conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding the database's write lock from its first statement."""
        conn = self._connection()
        with self._write_lock:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                # Another process held the write lock for longer than the busy timeout.
                raise ConcurrencyConflict(f"the catalog database is busy: {exc}") from None
            try:
                yield conn
            except sqlite3.IntegrityError as exc:
                conn.execute("ROLLBACK")
                raise StoreError(f"the catalog database refused a write: {exc}") from None
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")

    def close(self) -> None:
        self._loop_events.close()
        self._checkpointer.close()
        with self._writer_lock:
            if self._writer is not None and self._writer.is_alive():
                self._queue.put(None)  # after everything queued before it
                self._writer.join()
            self._writer = None
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def migrate(self) -> None:
        with self._write() as conn:
            sqlite_file_keys.register(conn)
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                "applied TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for version, name, script in MIGRATIONS:
                if version in done:
                    continue
                # executescript would COMMIT our transaction; run statement by statement.
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (?, ?)", (version, name)
                )

    def migrations(self) -> list[tuple[int, str]]:
        rows = self._connection().execute(
            "SELECT version, name FROM schema_migrations ORDER BY version"
        )
        return [(int(v), str(n)) for v, n in rows]

    # pipelines ---------------------------------------------------------------------------
    def insert_pipeline(self, doc: Doc) -> tuple[Doc, bool]:
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO pipelines (uuid, name, created, doc) VALUES (?, ?, ?, ?)",
                (doc["uuid"], doc["name"], doc["created"], dumps(doc)),
            )
            if cursor.rowcount == 1:
                return doc, True
            row = conn.execute(
                "SELECT doc FROM pipelines WHERE uuid = ?", (doc["uuid"],)
            ).fetchone()
            return json.loads(row[0]), False

    def get_pipeline(self, uuid: str) -> Doc | None:
        row = self._connection().execute(
            "SELECT doc FROM pipelines WHERE uuid = ?", (uuid,)
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def find_pipelines(self, name: str | None = None, limit: int = 100,
                       cursor: str | None = None) -> Page:
        check_limit(limit)
        where, params = [], []
        if name is not None:
            where.append("name = ?")
            params.append(name)
        if cursor is not None:
            after_name, after_uuid = decode_cursor(cursor, 2)
            where.append("(name, uuid) > (?, ?)")
            params += [after_name, after_uuid]
        sql = "SELECT doc FROM pipelines"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY name, uuid LIMIT ?"
        rows = self._connection().execute(sql, (*params, limit + 1)).fetchall()
        return page_of([json.loads(r[0]) for r in rows], limit, "name", "uuid")

    # jobs --------------------------------------------------------------------------------
    @staticmethod
    def _job_from_row(row: tuple[Any, ...]) -> Doc:
        uuid, pipeline_uuid, state, version, last_event, created, updated, body, queue_text = row
        doc: Doc = json.loads(body)
        doc.pop("results", None)  # in a column of its own, read by get_job alone
        doc.update(uuid=uuid, pipeline_uuid=pipeline_uuid, state=state, version=version,
                   last_event=last_event, created=created, updated=updated,
                   queue=None if queue_text is None else json.loads(queue_text))
        return doc

    @classmethod
    def _insert_new_job(cls, conn: sqlite3.Connection, doc: Doc) -> bool:
        """Insert the job with its history and links unless it exists; whether it was new."""
        if conn.execute(f"INSERT OR IGNORE {INSERT_JOB}", job_row(doc)).rowcount != 1:
            return False
        history, links = job_rows(doc)
        conn.executemany(INSERT_HISTORY, history)
        conn.executemany(INSERT_LINK, links)
        return True

    def insert_job(self, doc: Doc) -> tuple[Doc, bool]:
        with self._write() as conn:
            if self._insert_new_job(conn, doc):
                return doc, True
            existing = self._read_job(conn, doc["uuid"], history=True)
        assert existing is not None  # read under the write lock: it cannot have gone
        return existing, False

    def get_job(self, uuid: str, history: bool = True, links: bool = True) -> Doc | None:
        return self._read_job(self._connection(), uuid, history, links)

    def job_head(self, uuid: str) -> Doc | None:
        row = self._connection().execute(
            "SELECT state, version, last_event, created FROM jobs WHERE uuid = ?",
            (uuid,)).fetchone()
        return None if row is None else {"uuid": uuid, "state": row[0], "version": row[1],
                                         "last_event": row[2], "created": row[3]}

    def get_jobs(self, uuids: list[str]) -> dict[str, Doc]:
        wanted = unique(uuids)
        found: dict[str, Doc] = {}
        conn = self._connection()
        for chunk in chunked(wanted, IN_CHUNK):
            rows = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE uuid IN "
                                f"({', '.join('?' * len(chunk))})", chunk)
            found.update((row[0], self._job_from_row(row)) for row in rows)
        attach(conn, found.values(), JOB_LINK_FIELDS)
        return {uuid: found[uuid] for uuid in wanted if uuid in found}

    def _read_job(self, conn: sqlite3.Connection, uuid: str, history: bool,
                  links: bool = True) -> Doc | None:
        row = conn.execute(f"SELECT {JOB_COLUMNS}, results FROM jobs WHERE uuid = ?",
                           (uuid,)).fetchone()
        if row is None:
            return None
        doc = self._job_from_row(row[:-1])
        if links:
            attach(conn, [doc], JOB_LINK_FIELDS)
        else:  # the row keeps its lists empty: none rather than empty ones that mislead
            for field_name in JOB_LINK_FIELDS:
                doc.pop(field_name, None)
        doc["results"] = None if row[-1] is None else json.loads(row[-1])
        if history:
            doc["history"] = [
                json.loads(r[0]) for r in conn.execute(
                    "SELECT doc FROM history WHERE job_uuid = ? ORDER BY seq", (uuid,)
                )
            ]
        return doc

    def history_page(self, head: Doc, after: int = 0, limit: int = 1000) -> list[Doc]:
        # seq is the version the event made, 1, 2, ...: a page is a range of the key.
        rows = self._connection().execute(
            "SELECT doc FROM history WHERE job_uuid = ? AND seq > ? AND seq <= ? "
            "ORDER BY seq LIMIT ?", (head["uuid"], after, head["version"], limit))
        return [json.loads(doc) for doc, in rows]

    def changed_jobs(self, since: str, limit: int = 1000) -> list[Doc]:
        conn = self._connection()
        rows = conn.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE updated >= ? ORDER BY updated, uuid "
            "LIMIT ?", (since, limit))
        docs = [self._job_from_row(row) for row in rows]
        attach(conn, docs, JOB_LINK_FIELDS)
        return docs

    def find_jobs(self, query: JobQuery) -> Page:
        where, params = [], []
        source, keyed = "jobs", "jobs"
        if query.child_of is not None:
            # A page of the children is a range of links_reverse (src_key is their created).
            source, keyed = "links JOIN jobs ON jobs.uuid = links.src", "links"
            where.append("links.dst = ? AND links.relation = 'child_of'")
            params.append(query.child_of)
        for column in ("state", "pipeline_uuid", "agent"):
            value = getattr(query, column)
            if value is not None:
                where.append(f"jobs.{column} = ?")
                params.append(value)
        if query.created_after is not None:
            where.append("jobs.created >= ?")
            params.append(query.created_after)
        if query.created_before is not None:
            where.append("jobs.created < ?")
            params.append(query.created_before)
        order = keyset(query.sort, query.cursor, keyed, where, params)
        columns = ", ".join(f"jobs.{c.strip()}" for c in JOB_COLUMNS.split(","))
        sql = f"SELECT {columns} FROM {source}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {order} LIMIT ?"
        conn = self._connection()
        rows = conn.execute(sql, (*params, query.limit + 1)).fetchall()
        page = sorted_page([self._job_from_row(r) for r in rows], query.limit, query.sort)
        attach(conn, page.items, JOB_LINK_FIELDS)
        return page

    # audit -------------------------------------------------------------------------------
    def append_audit(self, entry: Doc) -> None:
        with self._write() as conn:
            self._insert_audit(conn, entry)

    @staticmethod
    def _insert_audit(conn: sqlite3.Connection, entry: Doc) -> None:
        conn.execute("INSERT INTO audit (job_uuid, date, doc) VALUES (?, ?, ?)",
                     (entry["job_uuid"], entry["date"], dumps(entry)))

    def find_audit(self, job_uuid: str | None = None, limit: int = 100) -> list[Doc]:
        check_limit(limit)
        if job_uuid is None:
            rows = self._connection().execute(
                "SELECT doc FROM audit ORDER BY id DESC LIMIT ?", (limit,)
            )
        else:
            rows = self._connection().execute(
                "SELECT doc FROM audit WHERE job_uuid = ? ORDER BY id DESC LIMIT ?",
                (job_uuid, limit),
            )
        return [json.loads(r[0]) for r in rows]
