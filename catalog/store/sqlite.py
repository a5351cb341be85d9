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
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from catalog.errors import (
    ConcurrencyConflict,
    ConfigurationError,
    FileNotFound,
    JobNotFound,
    StoreError,
)
from catalog.store import sqlite_bulk, sqlite_checkpoint, sqlite_file_keys, sqlite_links
from catalog.store.base import (
    CHANGEABLE,
    ENTITY_LINK_FIELDS,
    FILE_JOB_LINK_FIELDS,
    FILE_SORTS,
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
    chunked,
    decided,
    decode_cursor,
    decode_sorted_cursor,
    last_check,
    latest_files,
    lease_expiry,
    link_source_not_found,
    page_of,
    prefix_upper_bound,
    settle_future,
    sorted_page,
    unique,
    without_link_fields,
)
from catalog.store.fixity_sqlite import MIGRATION as FIXITY_MIGRATION
from catalog.store.fixity_sqlite import (
    SET_LAST_CHECK,
    FixitySQLite,
    add_checks,
    add_checks_of_uuids,
)
from catalog.store.openlineage_sqlite import MIGRATION as OPENLINEAGE_MIGRATION
from catalog.store.openlineage_sqlite import OpenLineageSQLite, PendingLineage, ThreadLineage
from catalog.store.openlineage_write import LineageApplied, LineageWrite
from catalog.store.sqlite_claim import PendingClaim
from catalog.store.sqlite_links import MIGRATION as LINKS_MIGRATION
from catalog.store.sqlite_links import attach, list_rows, without_lists
from catalog.store.sqlite_loop import LoopEventsRegistry
from catalog.store.tombstones_sqlite import MIGRATION as TOMBSTONES_MIGRATION
from catalog.store.tombstones_sqlite import TombstonesSQLite

# Numbered migrations; each runs once, in order, recorded in schema_migrations.
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "pipelines, jobs, history, links, audit",
        """
        CREATE TABLE pipelines (
            uuid TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            created TEXT NOT NULL,
            doc TEXT NOT NULL
        );
        CREATE INDEX pipelines_name ON pipelines (name, uuid);
        CREATE TABLE jobs (
            uuid TEXT PRIMARY KEY,
            pipeline_uuid TEXT NOT NULL,
            state TEXT NOT NULL,
            version INTEGER NOT NULL,
            last_event TEXT NOT NULL,
            created TEXT NOT NULL,
            updated TEXT NOT NULL,
            doc TEXT NOT NULL
        );
        CREATE INDEX jobs_created ON jobs (created, uuid);
        CREATE INDEX jobs_state ON jobs (state, created, uuid);
        CREATE INDEX jobs_pipeline ON jobs (pipeline_uuid, created, uuid);
        CREATE TABLE history (
            job_uuid TEXT NOT NULL,
            seq INTEGER NOT NULL,
            uuid TEXT NOT NULL UNIQUE,
            event_id TEXT NOT NULL,
            doc TEXT NOT NULL,
            PRIMARY KEY (job_uuid, seq),
            UNIQUE (job_uuid, event_id)
        );
        CREATE TABLE links (
            src TEXT NOT NULL,
            relation TEXT NOT NULL,
            dst TEXT NOT NULL,
            PRIMARY KEY (src, relation, dst)
        ) WITHOUT ROWID;
        CREATE INDEX links_reverse ON links (dst, relation, src);
        CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_uuid TEXT NOT NULL,
            date TEXT NOT NULL,
            doc TEXT NOT NULL
        );
        CREATE INDEX audit_job ON audit (job_uuid, id);
        """,
    ),
    (
        2,
        "entities (references, products)",
        """
        CREATE TABLE entities (
            uuid TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            created TEXT NOT NULL,
            doc TEXT NOT NULL
        );
        """,
    ),
    (
        3,
        "files, file checksums",
        """
        CREATE TABLE files (
            uuid TEXT PRIMARY KEY,
            path TEXT NOT NULL,
            storage_system TEXT NOT NULL,
            status TEXT NOT NULL,
            doc TEXT NOT NULL
        );
        CREATE INDEX files_path ON files (path, uuid);
        CREATE INDEX files_storage_path ON files (storage_system, path);
        CREATE INDEX files_status ON files (status, path, uuid);
        CREATE TABLE file_checksums (
            algorithm TEXT NOT NULL,
            digest TEXT NOT NULL,
            uuid TEXT NOT NULL,
            PRIMARY KEY (algorithm, digest, uuid)
        ) WITHOUT ROWID;
        """,
    ),
    (
        4,
        "columns to find jobs by agent, files by kind, level, media type, and sort by created; "
        "no (storage_system, path) index: the uuid is derived from both, nothing reads it",
        """
        ALTER TABLE jobs ADD COLUMN agent TEXT;
        UPDATE jobs SET agent = json_extract(doc, '$.agent');
        CREATE INDEX jobs_agent ON jobs (agent, created, uuid);
        ALTER TABLE files ADD COLUMN kind TEXT;
        ALTER TABLE files ADD COLUMN level TEXT;
        ALTER TABLE files ADD COLUMN media_type TEXT;
        ALTER TABLE files ADD COLUMN created TEXT;
        UPDATE files SET kind = json_extract(doc, '$.kind'), level = json_extract(doc, '$.level'),
            media_type = json_extract(doc, '$.media_type'),
            created = json_extract(doc, '$.created');
        CREATE INDEX files_created ON files (created, uuid);
        DROP INDEX files_storage_path;
        """,
    ),
    (
        5,
        "history without a unique index on the entry uuid: (job_uuid, event_id) is unique and "
        "the uuid is derived from it; nothing looks entries up by uuid, and every event paid "
        "for the index with a page written at random",
        """
        CREATE TABLE history_v5 (
            job_uuid TEXT NOT NULL,
            seq INTEGER NOT NULL,
            uuid TEXT NOT NULL,
            event_id TEXT NOT NULL,
            doc TEXT NOT NULL,
            PRIMARY KEY (job_uuid, seq),
            UNIQUE (job_uuid, event_id)
        );
        INSERT INTO history_v5 (job_uuid, seq, uuid, event_id, doc)
            SELECT job_uuid, seq, uuid, event_id, doc FROM history ORDER BY job_uuid, seq;
        DROP TABLE history;
        ALTER TABLE history_v5 RENAME TO history;
        """,
    ),
    (
        6,
        "links carry the key their source is paged by (a file's path, a job's created), and "
        "links_reverse orders a job's files and children by it: paging them (file list --job, "
        "verify, job list --child-of) read and sorted all of them for every page",
        """
        ALTER TABLE links ADD COLUMN src_key TEXT;
        UPDATE links SET src_key = (SELECT path FROM files WHERE files.uuid = links.src)
            WHERE src IN (SELECT uuid FROM files);
        UPDATE links SET src_key = (SELECT created FROM jobs WHERE jobs.uuid = links.src)
            WHERE src IN (SELECT uuid FROM jobs);
        DROP INDEX links_reverse;
        CREATE INDEX links_reverse ON links (dst, relation, src_key, src);
        """,
    ),
    (
        7,
        "the work queue: a job's queue attributes and results in columns of their own, the "
        "claim order of QUEUED jobs and the lease expiries in partial indexes (a claim and the "
        "sweep read only what they need), and counts by pipeline and state",
        """
        ALTER TABLE jobs ADD COLUMN queue TEXT;
        ALTER TABLE jobs ADD COLUMN results TEXT;
        ALTER TABLE jobs ADD COLUMN priority INTEGER;
        ALTER TABLE jobs ADD COLUMN queued TEXT;
        ALTER TABLE jobs ADD COLUMN lease_expiry TEXT;
        CREATE INDEX jobs_claim ON jobs (pipeline_uuid, priority DESC, queued, uuid)
            WHERE state = 'QUEUED';
        CREATE INDEX jobs_lease ON jobs (lease_expiry) WHERE lease_expiry IS NOT NULL;
        CREATE INDEX jobs_pipeline_state ON jobs (pipeline_uuid, state)
        """,
    ),
    (
        8,
        "scheduled fixity: a file's last check in a column ('' for never) indexed by storage "
        "system, so the oldest checks are found without a scan; a summary of each scheduled run",
        """
        ALTER TABLE files ADD COLUMN checked TEXT NOT NULL DEFAULT '';
        UPDATE files SET checked = coalesce(json_extract(doc, '$.checked'),
                                            json_extract(doc, '$.fixity[#-1].date'), '');
        CREATE INDEX files_checked ON files (storage_system, checked, uuid);
        CREATE TABLE fixity_runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            doc TEXT NOT NULL
        );
        """,
    ),
    OPENLINEAGE_MIGRATION,
    (
        11,
        "conditions: the reverse index of a job's dependencies, so that a job's end reaches "
        "the jobs waiting on it (and only them) without a scan",
        """
        CREATE TABLE dependencies (
            dependency TEXT NOT NULL,
            dependent TEXT NOT NULL,
            PRIMARY KEY (dependency, dependent)
        ) WITHOUT ROWID;
        CREATE INDEX dependencies_dependent ON dependencies (dependent)
        """,
    ),
    (
        12,
        "the job-state stream reads the jobs changed since its last read: a range of an index "
        "on updated, not a scan of every job each time it is woken",
        """
        CREATE INDEX jobs_updated ON jobs (updated, uuid)
        """,
    ),
    TOMBSTONES_MIGRATION,
    FIXITY_MIGRATION,  # 15 (14: another branch)
    LINKS_MIGRATION,  # 16
    sqlite_file_keys.MIGRATION,  # 17
)

_MAX_BATCH = 256  # events per group commit
_BULK_CHUNK = 10000  # events per transaction of apply_events, jobs per one of a sweep
_SYNCHRONOUS = {"OFF", "NORMAL", "FULL", "EXTRA"}
_CACHE_KIB = 64 * 1024  # page cache per connection, at most (filled on demand)
_INSERT_HISTORY = "INSERT INTO history (job_uuid, seq, uuid, event_id, doc) VALUES (?, ?, ?, ?, ?)"
# src_key: what its source is paged by, a file's path or a job's created (None for entities);
# pos: its place in its source's list (sqlite_links).
_INSERT_LINK = ("INSERT OR IGNORE INTO links (src, relation, dst, src_key, pos) "
                "VALUES (?, ?, ?, ?, ?)")
_LINK_KEY_COLUMNS = {"jobs": "created", "files": "path", "entities": "NULL"}
_UPDATE_HEAD = ("UPDATE jobs SET version = version + 1, last_event = ?, updated = ? "
                "WHERE uuid = ? AND version = ?")
_UPDATE_HEAD_AND_STATE = ("UPDATE jobs SET state = ?, version = version + 1, last_event = ?, "
                          "updated = ? WHERE uuid = ? AND version = ?")
_JOB_COLUMNS = ("uuid, pipeline_uuid, state, version, last_event, created, updated, doc, "
                "queue")
_INSERT_JOB = (f"INTO jobs ({_JOB_COLUMNS}, priority, queued, lease_expiry, agent, results) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
# A job's fields kept in columns of their own (or in the history table), not in its doc.
_HEAD_FIELDS = frozenset({"uuid", "pipeline_uuid", "state", "version", "last_event", "created",
                          "updated", "history", *CHANGEABLE})
# An event of the queue moves the head and sets the queue document with the columns its
# indexes read (derived from it), in one statement.
_UPDATE_HEAD_AND_QUEUE = ("UPDATE jobs SET state = ?, version = version + 1, last_event = ?, "
                          "updated = ?, queue = ?, priority = ?, queued = ?, lease_expiry = ? "
                          "WHERE uuid = ? AND version = ?")
_IN_CHUNK = 500  # uuids per IN (...) list, well under SQLite's bound on parameters
_ENTITY_CHUNK = 200  # entities per INSERT (4 parameters each)
_UPSERT_FILE = (
    "INSERT INTO files (uuid, path, storage_system, status, kind, level, media_type, created, "
    "doc, checked) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (uuid) DO UPDATE SET path = excluded.path, "
    "storage_system = excluded.storage_system, status = excluded.status, "
    "kind = excluded.kind, level = excluded.level, media_type = excluded.media_type, "
    "created = excluded.created, doc = excluded.doc, "
    "checked = max(files.checked, excluded.checked)"
)
_LINK_SOURCE_TABLES = {"job": "jobs", "file": "files", "entity": "entities"}


def _keyset(sort: str, cursor: str | None, table: str, where: list[str],
            params: list[Any]) -> str:
    """Add the condition "after the cursor" for ``sort``; return the ORDER BY clause.

    ``table`` "links" keys a source's sort value and uuid by its link row (src_key, src)."""
    column, descending = check_sort(sort, JOB_SORTS + FILE_SORTS)
    key_column, uuid_column = (f"{table}.{column}", f"{table}.uuid") if table != "links" else (
        "links.src_key", "links.src")
    if cursor is not None:
        key, uuid = decode_sorted_cursor(cursor, sort)
        where.append(f"({key_column}, {uuid_column}) {'<' if descending else '>'} (?, ?)")
        params += [key, uuid]
    direction = "DESC" if descending else "ASC"
    return f"{key_column} {direction}, {uuid_column} {direction}"


def _dumps(doc: Any) -> str:
    """A document's stored text: compact JSON, UTF-8 as is. orjson takes a tenth of
    json.dumps's time, which was a quarter of indexing's writes. (Reading stays json.loads:
    orjson reads an integer beyond 64 bits as a float, and rows written before such integers
    were refused may hold one.)"""
    return orjson.dumps(doc).decode()


class _Batched(Protocol):
    """An event in a group commit: what to apply, and what became of it."""

    result: Applied | None
    error: BaseException | None

    @property
    def uuid(self) -> str: ...

    @property
    def event_id(self) -> str | None: ...

    @property
    def decide(self) -> Decide: ...


@dataclass
class _PendingEvent:
    """An event waiting for the next group commit, and what became of it."""

    uuid: str
    event_id: str | None
    decide: Decide
    result: Applied | None = None
    error: BaseException | None = None
    future: Future[Applied] = field(default_factory=Future)

    def settle(self) -> None:
        settle_future(self.future, self.result, self.error)


# What the group commit takes: job events, claims (sqlite_claim), and OpenLineage events whole
# (openlineage_sqlite).
_Pending = _PendingEvent | PendingClaim | ThreadLineage


class SQLiteStore(OpenLineageSQLite, TombstonesSQLite, FixitySQLite):
    """Store backed by one SQLite file."""

    kind = "sqlite"
    # The class of every connection the store opens (a benchmark times the SQL through one).
    connection_factory: type[sqlite3.Connection] = sqlite3.Connection
    # Jobs per transaction of a sweep (a test makes it small): 10,000 expired leases in one
    # COMMIT. Measured on 1,000,000 jobs: a second COMMIT of 5,000 cost more wall time (its
    # fsync, its WAL pages) than holding the write lock for all 10,000 (2.7 / 1.6 / 2.3 s
    # against 3.8 / 3.3 / 3.1 s, same CPU, under a load of 9 on 2 cores).
    sweep_chunk = _BULK_CHUNK

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
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
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
                (doc["uuid"], doc["name"], doc["created"], _dumps(doc)),
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

    @staticmethod
    def _queue_columns(queue: Doc | None) -> tuple[str | None, int | None, str | None,
                                                    str | None]:
        if queue is None:
            return None, None, None, None
        return _dumps(queue), int(queue.get("priority", 3)), queue.get("queued"), lease_expiry(
            queue)

    @classmethod
    def _job_row(cls, doc: Doc) -> tuple[Any, ...]:
        """The jobs row of a new job (``_INSERT_JOB``'s parameters)."""
        check_new_job(doc)
        body = without_lists({k: v for k, v in doc.items() if k not in _HEAD_FIELDS},
                             JOB_LINK_FIELDS)
        results = doc.get("results")
        return (doc["uuid"], doc["pipeline_uuid"], doc["state"], doc["version"],
                doc["last_event"], doc["created"], doc["updated"], _dumps(body),
                *cls._queue_columns(doc.get("queue")), doc.get("agent"),
                None if results is None else _dumps(results))

    @staticmethod
    def _job_rows(doc: Doc) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """A new job's history rows and link rows."""
        return ([(doc["uuid"], seq, e["uuid"], e["event_id"], _dumps(e))
                 for seq, e in enumerate(doc.get("history", []), start=1)],
                list_rows(doc["uuid"], doc, JOB_LINK_FIELDS, doc["created"]))

    @classmethod
    def _insert_new_job(cls, conn: sqlite3.Connection, doc: Doc) -> bool:
        """Insert the job with its history and links unless it exists; whether it was new."""
        if conn.execute(f"INSERT OR IGNORE {_INSERT_JOB}", cls._job_row(doc)).rowcount != 1:
            return False
        history, links = cls._job_rows(doc)
        conn.executemany(_INSERT_HISTORY, history)
        conn.executemany(_INSERT_LINK, links)
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
        for chunk in chunked(wanted, _IN_CHUNK):
            rows = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE uuid IN "
                                f"({', '.join('?' * len(chunk))})", chunk)
            found.update((row[0], self._job_from_row(row)) for row in rows)
        attach(conn, found.values(), JOB_LINK_FIELDS)
        return {uuid: found[uuid] for uuid in wanted if uuid in found}

    def _read_job(self, conn: sqlite3.Connection, uuid: str, history: bool,
                  links: bool = True) -> Doc | None:
        row = conn.execute(f"SELECT {_JOB_COLUMNS}, results FROM jobs WHERE uuid = ?",
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
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE updated >= ? ORDER BY updated, uuid "
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
        order = _keyset(query.sort, query.cursor, keyed, where, params)
        columns = ", ".join(f"jobs.{c.strip()}" for c in _JOB_COLUMNS.split(","))
        sql = f"SELECT {columns} FROM {source}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {order} LIMIT ?"
        conn = self._connection()
        rows = conn.execute(sql, (*params, query.limit + 1)).fetchall()
        page = sorted_page([self._job_from_row(r) for r in rows], query.limit, query.sort)
        attach(conn, page.items, JOB_LINK_FIELDS)
        return page

    def submit_event(self, uuid: str, event_id: str | None, decide: Decide) -> Future[Applied]:
        """Queue an event for the writer thread; the future resolves after its COMMIT.

        Group commit: whoever holds the write lock (the writer thread, or a thread in
        ``apply_event``) applies every queued event in one transaction, one fsync for all;
        one refusal undoes only itself.
        """
        pending = _PendingEvent(uuid, event_id, decide)
        self._to_writer(pending)
        return pending.future

    def submit_lineage(self, write: LineageWrite) -> Future[LineageApplied]:
        """``apply_lineage`` for the writer thread (``submit_event``'s)."""
        pending = ThreadLineage(write)
        self._to_writer(pending)
        return pending.future

    def _to_writer(self, pending: _Pending) -> None:
        with self._writer_lock:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._write_events, daemon=True,
                                                name=f"catalog-sqlite-writer:{self.path}")
                self._writer.start()
            self._queue.put(pending)

    async def apply_event_async(self, uuid: str, event_id: str | None,
                                decide: Decide) -> Applied:
        """``apply_event`` from an event loop: applied on the loop with the other events of
        its turn, made durable off it (``catalog.store.sqlite_loop``)."""
        return await self._loop_events.for_running_loop().submit(uuid, event_id, decide)

    async def _apply_on_loop(self, write: LineageWrite) -> LineageApplied:
        """An OpenLineage event from an event loop, in the loop's next batch of events."""
        return await self._loop_events.for_running_loop().submit_lineage(write)

    def apply_event(self, uuid: str, event_id: str | None, decide: Decide) -> Applied:
        """Apply in the calling thread (no hand-over to the writer: a lone caller pays no
        thread switch), committing along whatever else is queued."""
        applied: Applied = self._apply_pending(_PendingEvent(uuid, event_id, decide))
        return applied

    def _apply_pending(self, pending: _Pending) -> Any:
        """Queue ``pending``; unless another caller's commit took it meanwhile, commit it with
        whatever else is queued; its outcome once committed."""
        self._queue.put(pending)
        with self._write_lock:
            if not pending.future.done():
                batch, stop = self._drain([])
                if stop:
                    self._queue.put(None)  # the writer's stop signal is not ours to take
                self._commit_batch(batch)
        return pending.future.result()

    def apply_events(self, events: list[tuple[str, str | None, Decide]]
                     ) -> list[Applied | Exception]:
        """In transactions of ``_BULK_CHUNK`` events: a few commits for thousands of events,
        each holding the write lock a fraction of a second; events on distinct jobs without
        an event_id are written set-based (``sqlite_bulk``)."""
        outcomes: list[Applied | Exception] = []
        if not events:
            return outcomes
        # Their COMMITs do not checkpoint (tens of thousands of WAL pages, as long again as
        # the write): a thread of the store does, after (sqlite_checkpoint).
        with sqlite_checkpoint.deferred(self._connection()):
            for start in range(0, len(events), _BULK_CHUNK):
                outcomes.extend(self._apply_chunk(events[start:start + _BULK_CHUNK]))
        self._checkpointer.request()
        return outcomes

    def _apply_chunk(self, chunk: list[tuple[str, str | None, Decide]]
                     ) -> list[Applied | Exception]:
        if sqlite_bulk.settable(chunk):  # no event_id to deduplicate: set-based
            with self._write() as conn, sqlite_bulk.roomy_cache(conn):
                return sqlite_bulk.apply_set(conn, chunk)
        batch = [_PendingEvent(*event) for event in chunk]
        with self._write() as conn:
            self._apply_batch(conn, batch)
        outcomes: list[Applied | Exception] = []
        for item in batch:
            if item.error is not None:
                outcomes.append(item.error if isinstance(item.error, Exception)
                                else StoreError(repr(item.error)))
            else:
                assert item.result is not None
                outcomes.append(item.result)
        return outcomes

    def _drain(self, batch: list[_Pending]) -> tuple[list[_Pending], bool]:
        """Add what is queued to ``batch`` (up to a limit); True if the stop signal came."""
        while len(batch) < _MAX_BATCH:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _write_events(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            with self._write_lock:  # drained under the lock: all that queued meanwhile
                batch, stop = self._drain([first])
                self._commit_batch(batch)
            if stop:
                return

    def _commit_batch(self, batch: list[_Pending]) -> None:
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            error = ConcurrencyConflict(f"the catalog database is busy: {exc}")
            for item in batch:
                item.future.set_exception(error)
            return
        try:
            self._apply_batch(conn, batch)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for item in batch:
                item.result = None
                item.error = item.error or StoreError(f"the events were not committed: {exc}")
            if not isinstance(exc, Exception):
                raise
        finally:
            for item in batch:
                item.settle()

    @classmethod
    def _apply_batch(cls, conn: sqlite3.Connection,
                     batch: Sequence[_Batched | PendingClaim | PendingLineage]) -> None:
        """Apply each event of ``batch`` in the open transaction, noting its result or error.

        ``_apply_one`` writes nothing unless it succeeds, so one refusal needs no savepoint to
        leave the rest of the batch intact (an OpenLineage write, of many statements, has one)."""
        for item in batch:
            if isinstance(item, PendingLineage):
                cls._apply_lineage(conn, item)
                continue
            if isinstance(item, PendingClaim):
                item.apply(conn, cls._apply_one)
                continue
            try:
                item.result = cls._apply_one(conn, item.uuid, item.event_id, item.decide)
            except sqlite3.IntegrityError as exc:
                item.error = StoreError(f"the catalog database refused a write: {exc}")
            except Exception as exc:  # handed to the caller whose event it was
                item.error = exc

    @staticmethod
    def _apply_one(conn: sqlite3.Connection, uuid: str, event_id: str | None,
                   decide: Decide) -> Applied:
        # The head and any earlier entry with this event_id, in one statement.
        row = conn.execute(
            "SELECT state, version, last_event, queue, (SELECT doc FROM history "
            "WHERE history.job_uuid = jobs.uuid AND history.event_id = ?) "
            "FROM jobs WHERE uuid = ?",
            (event_id, uuid),
        ).fetchone()
        if row is None:
            raise JobNotFound(uuid)
        state, version, last_event, queue_text, seen = row
        if seen is not None:
            return Applied(json.loads(seen), duplicate=True)
        new_state, entry, changes = decided(decide(
            {"uuid": uuid, "state": state, "version": version, "last_event": last_event,
             "queue": None if queue_text is None else json.loads(queue_text)}
        ))
        # The history row first: if a constraint refuses it, nothing has been written.
        conn.execute(
            _INSERT_HISTORY,
            (uuid, version + 1, entry["uuid"], entry["event_id"], _dumps(entry)),
        )
        if "queue" in changes:  # the queue's events: head and queue columns in one statement
            updated = conn.execute(_UPDATE_HEAD_AND_QUEUE, (
                new_state, entry["name"], entry["date"],
                *SQLiteStore._queue_columns(changes["queue"]), uuid, version))
        elif new_state == state:  # most events: leave the state index alone
            updated = conn.execute(_UPDATE_HEAD, (entry["name"], entry["date"], uuid, version))
        else:
            updated = conn.execute(_UPDATE_HEAD_AND_STATE,
                                   (new_state, entry["name"], entry["date"], uuid, version))
        if updated.rowcount != 1:  # cannot happen under the write lock; never write blind
            conn.execute("DELETE FROM history WHERE job_uuid = ? AND seq = ?", (uuid, version + 1))
            raise ConcurrencyConflict(f"job {uuid} changed while an event was applied")
        if "results" in changes:
            results = changes["results"]
            conn.execute("UPDATE jobs SET results = ? WHERE uuid = ?",
                         (None if results is None else _dumps(results), uuid))
        return Applied(entry, duplicate=False)

    # the queue ---------------------------------------------------------------------------
    def claim(self, pipelines: list[str], match: ClaimMatch, decide: Decide,
              priority: int | None = None) -> Claimed | None:
        """In the group commit (``sqlite_claim``): the write lock makes choosing and moving
        one step, and claims share their COMMIT with whatever else is queued."""
        claimed: Claimed | None = self._apply_pending(
            PendingClaim(unique(pipelines), match, decide, priority))
        return claimed

    def renew_lease(self, uuid: str, worker: str, attempt: int, expiry: str) -> bool:
        with self._write() as conn:
            changed = conn.execute(
                "UPDATE jobs SET queue = json_set(queue, '$.lease.expiry', ?), lease_expiry = ? "
                "WHERE uuid = ? AND state = 'RUNNING' AND lease_expiry IS NOT NULL "
                "AND json_extract(queue, '$.lease.worker') = ? "
                "AND json_extract(queue, '$.lease.attempt') = ?",
                (expiry, expiry, uuid, worker, attempt)).rowcount
        return changed == 1

    def expired_leases(self, now: str, limit: int = 1000) -> list[str]:
        rows = self._connection().execute(
            "SELECT uuid FROM jobs WHERE lease_expiry IS NOT NULL AND lease_expiry < ? "
            "ORDER BY lease_expiry LIMIT ?", (now, limit))
        return [uuid for uuid, in rows]

    def sweep_leases(self, now: str, limit: int, plan: PlanSweep) -> tuple[int, list[Move]]:
        """Chunks of ``sweep_chunk`` jobs (a fail and a retry each), a transaction each,
        their COMMITs leaving the checkpoint to the store's thread (as ``apply_events``)."""
        read, moved = 0, []
        after: tuple[str, int] | None = None
        with sqlite_checkpoint.deferred(self._connection()):
            while read < limit:
                chunk = min(self.sweep_chunk, limit - read)
                with self._write() as conn, sqlite_bulk.roomy_cache(conn):
                    count, moves, after = sqlite_bulk.sweep_chunk(
                        conn, now, after, chunk, plan, self._queue_columns)
                read += count
                moved += moves
                if count < chunk:  # the walk reached the leases not yet expired
                    break
        if moved:
            self._checkpointer.request()
        return read, moved

    def queue_counts(self, pipelines: list[str] | None = None) -> list[tuple[str, str, int]]:
        sql = "SELECT pipeline_uuid, state, count(*) FROM jobs"
        params: list[str] = []
        if pipelines is not None:
            if not pipelines:
                return []
            sql += f" WHERE pipeline_uuid IN ({', '.join('?' * len(pipelines))})"
            params = list(pipelines)
        rows = self._connection().execute(sql + " GROUP BY pipeline_uuid, state", params)
        return [(str(p), str(state), int(n)) for p, state, n in rows]

    def delete_job(self, uuid: str) -> bool:
        with self._write() as conn:
            deleted = conn.execute("DELETE FROM jobs WHERE uuid = ?", (uuid,)).rowcount
            conn.execute("DELETE FROM history WHERE job_uuid = ?", (uuid,))
            conn.execute("DELETE FROM links WHERE src = ?", (uuid,))
            conn.execute("DELETE FROM dependencies WHERE dependent = ?", (uuid,))
            return deleted == 1

    def add_dependencies(self, dependent: str, dependencies: list[str]) -> None:
        with self._write() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO dependencies (dependency, dependent) VALUES (?, ?)",
                [(dependency, dependent) for dependency in unique(dependencies)])

    def submit_jobs(self, uuids: list[str], plan: PlanSubmissions) -> Submissions:
        """One transaction: the heads by ``uuid IN (...)``, the plan, then its new jobs,
        entries, head moves and dependencies each in one ``executemany``."""
        with self._write() as conn, sqlite_bulk.roomy_cache(conn):
            heads = sqlite_bulk.head_docs(conn, unique(uuids))
            planned = plan(heads)
            jobs, history, links = [], [], []
            for doc in planned.jobs:
                jobs.append(self._job_row(doc))
                entries, linked = self._job_rows(doc)
                history += entries
                links += linked
            conn.executemany(f"INSERT {_INSERT_JOB}", jobs)
            history += sqlite_bulk.move_entries(planned.moves)
            conn.executemany(_INSERT_HISTORY, sorted(history))
            conn.executemany(_INSERT_LINK, links)
            sqlite_bulk.move_heads(conn, planned.moves, self._queue_columns)
            conn.executemany(
                "INSERT OR IGNORE INTO dependencies (dependency, dependent) VALUES (?, ?)",
                planned.dependencies)
        return planned

    def dependents(self, dependency: str) -> list[str]:
        rows = self._connection().execute(
            "SELECT dependent FROM dependencies WHERE dependency = ? ORDER BY dependent",
            (dependency,))
        return [uuid for uuid, in rows]

    # entities and links ------------------------------------------------------------------
    def upsert_entities(self, docs: list[Doc]) -> None:
        with self._write() as conn:
            self._insert_entities(conn, docs)

    @staticmethod
    def _insert_entities(conn: sqlite3.Connection, docs: list[Doc]) -> None:
        """upsert_entities within the caller's write transaction: one statement per chunk,
        which answers the entities it inserted (their links are inserted with them)."""
        for start in range(0, len(docs), _ENTITY_CHUNK):
            first: dict[str, Doc] = {}  # of a uuid given twice, the first is kept
            for doc in docs[start:start + _ENTITY_CHUNK]:
                first.setdefault(doc["uuid"], doc)
            rows = list(first.values())
            inserted = conn.execute(
                "INSERT OR IGNORE INTO entities (uuid, kind, created, doc) VALUES "
                f"{', '.join(['(?, ?, ?, ?)'] * len(rows))} RETURNING uuid",
                [value for doc in rows
                 for value in (doc["uuid"], doc["kind"], doc["created"],
                               _dumps(without_lists(doc, ENTITY_LINK_FIELDS)))],
            ).fetchall()
            conn.executemany(
                _INSERT_LINK,
                [row for uuid, in inserted for row in list_rows(
                    uuid, {field: unique(first[uuid].get(field) or [])
                           for field in ENTITY_LINK_FIELDS}, ENTITY_LINK_FIELDS, None)],
            )

    def get_entity(self, uuid: str) -> Doc | None:
        conn = self._connection()
        row = conn.execute("SELECT doc FROM entities WHERE uuid = ?", (uuid,)).fetchone()
        if row is None:
            return None
        doc: Doc = json.loads(row[0])
        attach(conn, [doc], ENTITY_LINK_FIELDS)
        return doc

    def add_links(self, src: str, relation: str, targets: list[str]) -> None:
        with self._write() as conn:
            self._link(conn, src, relation, targets)

    @staticmethod
    def _link(conn: sqlite3.Connection, src: str, relation: str, targets: list[str]) -> None:
        """add_links within the caller's write transaction."""
        table = _LINK_SOURCE_TABLES[check_link(src, relation)]
        # The lists live in links alone (sqlite_links): the record's row is only read, for
        # its existence and its sort key, and a link already there is ignored by the key.
        row = conn.execute(f"SELECT {_LINK_KEY_COLUMNS[table]} FROM {table} "
                           "WHERE uuid = ?", (src,)).fetchone()
        if row is None:
            raise link_source_not_found(src)
        new = unique(targets)
        first = sqlite_links.added_pos.take(len(new))
        # In key order: both b-trees (the key and links_reverse) take sorted rows as
        # near-appends, random ones as a page search each.
        conn.executemany(_INSERT_LINK, sorted(
            (src, relation, target, row[0], first + n) for n, target in enumerate(new)))

    def edges(self, uuids: list[str], direction: str,
              limit: int | None = None) -> list[tuple[str, str, str]]:
        # Both directions are served by an index: the key (src, relation, dst) and
        # links_reverse (dst, relation, src_key, src).
        column = "src" if direction == "up" else "dst"
        found: list[tuple[str, str, str]] = []
        conn = self._connection()
        for chunk in chunked(unique(uuids), _IN_CHUNK):
            room = -1 if limit is None else limit - len(found)  # LIMIT -1: no limit
            if room == 0:
                break
            found += conn.execute(
                f"SELECT src, relation, dst FROM links WHERE {column} IN "
                f"({', '.join('?' * len(chunk))}) LIMIT ?",
                [*chunk, room],
            ).fetchall()
        return found

    # files -------------------------------------------------------------------------------
    def upsert_files(self, docs: list[Doc]) -> None:
        latest = latest_files(docs)
        if not latest:
            return
        # The COMMIT does not checkpoint (a chunk of an index run dirties thousands of pages
        # of its random-keyed trees: the checkpoint cost as much as the write); a thread of
        # the store does, after (sqlite_checkpoint). Durability is the WAL's, synced at COMMIT.
        with sqlite_checkpoint.deferred(self._connection()):
            self._upsert_files(latest)
        self._checkpointer.request()

    def _upsert_files(self, latest: dict[str, Doc]) -> None:
        with self._write() as conn:
            # A replaced record's checksum rows are found by its id, and its edges through
            # the links key (src, relation). Its last check is read under the write lock, to
            # be kept if newer (last_check).
            replaced: dict[str, int] = {}
            stored: dict[str, list[Doc]] = {}
            for chunk in chunked(list(latest), _IN_CHUNK):
                rows = conn.execute(
                    "SELECT uuid, id, json_extract(doc, '$.fixity') "
                    f"FROM files WHERE uuid IN ({', '.join('?' * len(chunk))})",
                    chunk,
                )
                for uuid, file, fixity in rows:
                    replaced[uuid] = file
                    stored[uuid] = json.loads(fixity or "[]")
            # The doc's checks join the history (once the new records have their ids); the
            # record keeps its last check only.
            checks = [(uuid, check) for uuid, doc in latest.items()
                      for check in doc.get("fixity") or ()]
            for uuid, doc in latest.items():
                given = doc.get("fixity") or []
                kept = last_check(stored.get(uuid, []), given)
                if kept != given:
                    latest[uuid] = {**doc, "fixity": kept}
            conn.executemany(
                "DELETE FROM links WHERE src = ? AND relation = ?",
                [(uuid, relation) for uuid in replaced for relation in ENTITY_LINK_FIELDS],
            )
            # Rows in key order: a b-tree takes sorted keys as near-appends, and random ones
            # as a page search each. A new record's id is the next rowid: the trees keyed by
            # it (checksums, check history, last checks) take the chunk side by side
            # (sqlite_file_keys).
            conn.executemany(
                _UPSERT_FILE,
                [(doc["uuid"], doc["path"], doc["storage_system"], doc["status"],
                  doc.get("kind"), doc.get("level"), doc.get("media_type"), doc.get("created"),
                  _dumps(without_lists(doc, ENTITY_LINK_FIELDS)), doc.get("checked") or "")
                 for _, doc in sorted(latest.items())],
            )
            ids = {**replaced, **sqlite_file_keys.file_ids(
                conn, [uuid for uuid in latest if uuid not in replaced])}
            sqlite_file_keys.replace_checksums(
                conn, replaced.values(), ((ids[uuid], doc) for uuid, doc in latest.items()))
            add_checks(conn, ((ids[uuid], check) for uuid, check in checks))
            conn.executemany(
                _INSERT_LINK,
                sorted(row for doc in latest.values()
                       for row in list_rows(doc["uuid"], doc, ENTITY_LINK_FIELDS, doc["path"])),
            )

    def get_file(self, uuid: str) -> Doc | None:
        conn = self._connection()
        row = conn.execute("SELECT doc FROM files WHERE uuid = ?", (uuid,)).fetchone()
        if row is None:
            return None
        doc: Doc = json.loads(row[0])
        attach(conn, [doc], ENTITY_LINK_FIELDS)
        return doc

    def get_files(self, uuids: list[str]) -> dict[str, Doc]:
        wanted = unique(uuids)
        found: dict[str, Doc] = {}
        conn = self._connection()
        for chunk in chunked(wanted, _IN_CHUNK):
            rows = conn.execute(
                f"SELECT uuid, doc FROM files WHERE uuid IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
            found.update((uuid, json.loads(body)) for uuid, body in rows)
        attach(conn, found.values(), ENTITY_LINK_FIELDS)
        return {uuid: found[uuid] for uuid in wanted if uuid in found}

    def find_files(self, child_of: str | None = None, path_prefix: str | None = None,
                   status: str | None = None, limit: int = 100,
                   cursor: str | None = None, *, kind: str | None = None,
                   level: str | None = None, media_type: str | None = None,
                   sort: str = "path", checksum: tuple[str, str] | None = None,
                   links: bool = True) -> Page:
        check_limit(limit)
        check_sort(sort, FILE_SORTS)
        where: list[str] = []
        params: list[Any] = []
        source, keyed = "files", "files"
        if checksum is not None:
            # Driven by file_checksums_key (the digest's first 60 bits): the matches of a
            # digest, sorted for the page (a sorter that keeps a page, however many files
            # share it).
            source = "file_checksums JOIN files ON files.id = file_checksums.file"
            condition, values = sqlite_file_keys.checksum_match(check_algorithm(checksum[0]),
                                                                checksum[1])
            where.append(condition)
            params += values
        if child_of is not None:
            if checksum is None:
                source = "links JOIN files ON files.uuid = links.src"
            else:
                source += " JOIN links ON links.src = files.uuid"
            where.append("links.dst = ? AND links.relation = 'child_of'")
            params.append(child_of)
            if sort.lstrip("-") == "path":
                # links_reverse (dst, relation, src_key, src) holds the job's files in the
                # page's order: each page is a range of it, not all the job's files sorted.
                keyed = "links"
        if path_prefix:
            # A range, not LIKE: LIKE ignores ASCII case in SQLite, so it would need escaping
            # and would still match /Products for /products (and could not use the index).
            where.append("files.path >= ?")
            params.append(path_prefix)
            upper = prefix_upper_bound(path_prefix)
            if upper is not None:
                where.append("files.path < ?")
                params.append(upper)
        for column, value in (("status", status), ("kind", kind), ("level", level),
                              ("media_type", media_type)):
            if value is not None:
                where.append(f"files.{column} = ?")
                params.append(value)
        order = _keyset(sort, cursor, keyed, where, params)
        sql = f"SELECT files.doc FROM {source}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {order} LIMIT ?"
        conn = self._connection()
        rows = conn.execute(sql, (*params, limit + 1)).fetchall()
        page = sorted_page([json.loads(r[0]) for r in rows], limit, sort)
        if links:
            attach(conn, page.items, ENTITY_LINK_FIELDS)
        else:
            page.items[:] = without_link_fields(page.items)
        return page

    def record_fixity(self, checks: list[FixityUpdate]) -> None:
        if not checks:
            return
        with self._write() as conn:
            # Set by SQLite's JSON functions: no record is parsed and rewritten in Python.
            appended = conn.executemany(
                SET_LAST_CHECK,
                [(status, check["date"], _dumps(check), status, check["date"], check["date"],
                  uuid) for uuid, check, status in checks],
            ).rowcount
            if appended != len(checks):
                wanted = unique([uuid for uuid, _, _ in checks])
                found: set[str] = set()
                for chunk in chunked(wanted, _IN_CHUNK):
                    found.update(uuid for (uuid,) in conn.execute(
                        f"SELECT uuid FROM files WHERE uuid IN ({', '.join('?' * len(chunk))})",
                        chunk))
                # Raised inside the transaction: it is rolled back, nothing is written.
                raise FileNotFound(next(uuid for uuid in wanted if uuid not in found))
            add_checks_of_uuids(conn, ((uuid, check) for uuid, check, _ in checks))

    def unlink_job_files(self, job_uuid: str) -> int:
        relations = ", ".join(f"'{relation}'" for relation in FILE_JOB_LINK_FIELDS)
        with self._write() as conn:  # the lists are in links alone (sqlite_links)
            rows = conn.execute(
                "SELECT uuid FROM files WHERE uuid IN "
                f"(SELECT src FROM links WHERE dst = ? AND relation IN ({relations}))",
                (job_uuid,),
            ).fetchall()
            conn.executemany(
                "DELETE FROM links WHERE src = ? AND relation = ? AND dst = ?",
                [(uuid, relation, job_uuid) for uuid, in rows
                 for relation in FILE_JOB_LINK_FIELDS],
            )
            return len(rows)

    def oldest_checks(self, storage_system: str, before: str, limit: int) -> list[Doc]:
        check_limit(limit)
        conn = self._connection()
        rows = conn.execute(
            "SELECT doc FROM files WHERE storage_system = ? AND checked < ? "
            "ORDER BY checked, id LIMIT ?", (storage_system, before, limit)).fetchall()
        docs = [json.loads(row[0]) for row in rows]
        attach(conn, docs, ENTITY_LINK_FIELDS)
        return docs

    def append_fixity_run(self, summary: Doc) -> None:
        with self._write() as conn:
            conn.execute("INSERT INTO fixity_runs (doc) VALUES (?)", (_dumps(summary),))

    def find_fixity_runs(self, limit: int = 100) -> list[Doc]:
        check_limit(limit)
        rows = self._connection().execute(
            "SELECT doc FROM fixity_runs ORDER BY id DESC LIMIT ?", (limit,))
        return [json.loads(row[0]) for row in rows]

    # audit -------------------------------------------------------------------------------
    def append_audit(self, entry: Doc) -> None:
        with self._write() as conn:
            self._insert_audit(conn, entry)

    @staticmethod
    def _insert_audit(conn: sqlite3.Connection, entry: Doc) -> None:
        conn.execute("INSERT INTO audit (job_uuid, date, doc) VALUES (?, ?, ?)",
                     (entry["job_uuid"], entry["date"], _dumps(entry)))

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
