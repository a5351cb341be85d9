"""Set-based writes of many events on SQLite, for ``SQLiteStore.apply_events`` (and the
sweep's chunks, ``sweep_chunk``).

A release queues every dependent of a job, a sweep fails thousands of jobs: applied one by
one, each event costs three statements (read the head, append the entry, move the head), some
30 µs each on a loaded machine. Here a chunk of events on distinct jobs costs a read of their
heads by ``uuid IN (...)`` (a sweep's, by its walk of the lease index), their decides in
Python, and one ``executemany`` for the entries and one per kind of head update: the same
rows written, a fraction of the statements. The write lock is held throughout (the caller's
transaction), so the heads read are the heads written over; the compare-and-set on
``version`` still guards every row.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson

from catalog.errors import ConcurrencyConflict, JobNotFound
from catalog.store.base import lease_expiry
from catalog.store.values import Applied, Decide, Doc, Move, PlanSweep, decided

_IN_CHUNK = 500  # uuids per IN (...) list, well under SQLite's bound on parameters
_INSERT_HISTORY = "INSERT INTO history (job_uuid, seq, uuid, event_id, doc) VALUES (?, ?, ?, ?, ?)"
# The head of a job after its events in the chunk: version set, compared with the one read.
_UPDATE_HEAD = ("UPDATE jobs SET state = ?, version = ?, last_event = ?, updated = ? "
                "WHERE uuid = ? AND version = ?")
_UPDATE_HEAD_AND_QUEUE = ("UPDATE jobs SET state = ?, version = ?, last_event = ?, updated = ?, "
                          "queue = ?, priority = ?, queued = ?, lease_expiry = ? "
                          "WHERE uuid = ? AND version = ?")
_UPDATE_RESULTS = "UPDATE jobs SET results = ? WHERE uuid = ?"


_ROOMY_CACHE_KIB = 65536  # a bulk write's pages stay in memory until its commit


@contextmanager
def roomy_cache(conn: sqlite3.Connection) -> Iterator[None]:
    """A page cache that holds a bulk write's dirty pages (SQLite's default 2 MB spills them
    to the WAL midway, and reads the same pages back), restored after."""
    (before,) = conn.execute("PRAGMA cache_size").fetchone()
    conn.execute(f"PRAGMA cache_size = -{_ROOMY_CACHE_KIB}")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA cache_size = {int(before)}")


def _dumps(doc: Any) -> str:
    return orjson.dumps(doc).decode()


def settable(events: Sequence[tuple[str, str | None, Decide]]) -> bool:
    """Whether ``apply_set`` can take these: no event_id to deduplicate against (those need
    a look at the job's history each)."""
    return all(event_id is None for _, event_id, _ in events)


def heads(conn: sqlite3.Connection, uuids: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    """(state, version, last_event, queue text) of each job that exists, by uuid."""
    found: dict[str, tuple[Any, ...]] = {}
    for start in range(0, len(uuids), _IN_CHUNK):
        part = uuids[start:start + _IN_CHUNK]
        rows = conn.execute(
            "SELECT uuid, state, version, last_event, queue FROM jobs WHERE uuid IN "
            f"({', '.join('?' * len(part))})", part)
        found.update((row[0], row[1:]) for row in rows)
    return found


def head_docs(conn: sqlite3.Connection, uuids: Sequence[str]) -> dict[str, Doc]:
    """The heads ({"uuid", "state", "version", "last_event", "queue"}) of the jobs that
    exist, by uuid."""
    return {uuid: _Head(uuid, row).doc for uuid, row in heads(conn, sorted(uuids)).items()}


def move_entries(moves: Sequence[Move]) -> list[tuple[Any, ...]]:
    """The history rows of ``moves``: each job's entries after the version it was read at."""
    return [(move.uuid, seq, entry["uuid"], entry["event_id"], _dumps(entry))
            for move in moves
            for seq, entry in enumerate(move.entries, start=move.read_version + 1)]


def move_heads(conn: sqlite3.Connection, moves: Sequence[Move],
               queue_columns: Any) -> None:
    """Each moved job's head on its last entry, compared with the version read."""
    rows = []
    for move in sorted(moves, key=lambda m: m.uuid):
        last = move.entries[-1]
        rows.append((move.state, move.read_version + len(move.entries), last["name"],
                     last["date"], *queue_columns(move.queue), move.uuid, move.read_version))
    if rows and conn.executemany(_UPDATE_HEAD_AND_QUEUE, rows).rowcount != len(rows):
        raise ConcurrencyConflict("jobs changed while their submissions were written")


def sweep_chunk(conn: sqlite3.Connection, now: str, after: tuple[str, int] | None,
                limit: int, plan: PlanSweep, queue_columns: Any
                ) -> tuple[int, list[Move], tuple[str, int] | None]:
    """One chunk of a sweep in the open write transaction of ``conn``: the heads of up to
    ``limit`` jobs whose lease expired before ``now``, read with the lease index's walk
    (after ``after``, its last (expiry, rowid): a job the plan left out is not read again),
    planned, and their entries and heads written. Returns the heads read, the moves and
    where the walk stopped (None when it read nothing)."""
    sql = ("SELECT rowid, uuid, state, version, last_event, queue, lease_expiry FROM jobs "
           "WHERE lease_expiry IS NOT NULL AND lease_expiry < ?")
    params: list[Any] = [now]
    if after is not None:
        sql += " AND (lease_expiry, rowid) > (?, ?)"
        params += after
    rows = conn.execute(f"{sql} ORDER BY lease_expiry, rowid LIMIT ?", (*params, limit)
                        ).fetchall()
    if not rows:
        return 0, [], None
    heads = [{"uuid": uuid, "state": state, "version": version, "last_event": last_event,
              "queue": None if queue_text is None else orjson.loads(queue_text)}
             for _, uuid, state, version, last_event, queue_text, _ in rows]
    moves = plan(heads)
    history = move_entries(moves)
    history.sort()  # in key order: neighbouring rows share their pages
    conn.executemany(_INSERT_HISTORY, history)
    move_heads(conn, moves, queue_columns)
    return len(rows), moves, (rows[-1][6], rows[-1][0])


class _Head:
    """A job's head as its events in the chunk leave it, and what they changed."""

    __slots__ = ("read_version", "doc", "date", "queue_changed", "results")

    def __init__(self, uuid: str, row: tuple[Any, ...]) -> None:
        state, version, last_event, queue_text = row
        self.read_version: int = version
        self.doc: dict[str, Any] = {
            "uuid": uuid, "state": state, "version": version, "last_event": last_event,
            "queue": None if queue_text is None else orjson.loads(queue_text)}
        self.date = ""
        self.queue_changed = False
        self.results: tuple[Any] | None = None


def apply_set(conn: sqlite3.Connection, events: Sequence[tuple[str, str | None, Decide]]
              ) -> list[Applied | Exception]:
    """Apply ``events`` (``settable``) in the open write transaction of ``conn``, in order: a
    job's later event sees the head its earlier ones left, and a job gets one head update for
    all of its events (a ``fail`` then a ``retry`` is one compare-and-set recording both
    entries). Each outcome, or the error that refused that event alone (it writes nothing)."""
    uuids = list(dict.fromkeys(uuid for uuid, _, _ in events))
    found = {uuid: _Head(uuid, row) for uuid, row in heads(conn, sorted(uuids)).items()}
    outcomes: list[Applied | Exception] = []
    history: list[tuple[Any, ...]] = []
    for uuid, _, decide in events:
        head = found.get(uuid)
        if head is None:
            outcomes.append(JobNotFound(uuid))
            continue
        try:
            new_state, entry, changes = decided(decide(dict(head.doc)))
        except Exception as exc:  # handed to the caller whose event it was
            outcomes.append(exc)
            continue
        version = head.doc["version"] + 1
        history.append((uuid, version, entry["uuid"], entry["event_id"], _dumps(entry)))
        head.doc.update(state=new_state, version=version, last_event=entry["name"])
        head.date = entry["date"]
        if "queue" in changes:
            head.doc["queue"] = changes["queue"]
            head.queue_changed = True
        if "results" in changes:
            head.results = (changes["results"],)
        outcomes.append(Applied(entry, duplicate=False))
    with_queue: list[tuple[Any, ...]] = []
    without: list[tuple[Any, ...]] = []
    results: list[tuple[Any, ...]] = []
    for uuid in sorted(found):  # in key order: neighbouring rows share their pages
        head = found[uuid]
        doc = head.doc
        if doc["version"] == head.read_version:
            continue  # every event on it was refused
        moved = (doc["state"], doc["version"], doc["last_event"], head.date)
        if head.queue_changed:
            queue = doc["queue"]
            columns = (None, None, None, None) if queue is None else (
                _dumps(queue), int(queue.get("priority", 3)), queue.get("queued"),
                lease_expiry(queue))
            with_queue.append((*moved, *columns, uuid, head.read_version))
        else:
            without.append((*moved, uuid, head.read_version))
        if head.results is not None:
            value = head.results[0]
            results.append((None if value is None else _dumps(value), uuid))
    history.sort()
    conn.executemany(_INSERT_HISTORY, history)
    updated = 0
    for sql, rows in ((_UPDATE_HEAD_AND_QUEUE, with_queue), (_UPDATE_HEAD, without)):
        if rows:
            updated += conn.executemany(sql, rows).rowcount
    if updated != len(with_queue) + len(without):  # cannot happen under the write lock
        raise ConcurrencyConflict("jobs changed while their events were applied")
    if results:
        conn.executemany(_UPDATE_RESULTS, results)
    return outcomes
