"""The SQLite store's events: applied in group commits, from threads and from event loops.

Whoever holds the write lock (the writer thread, or a thread in ``apply_event`` or ``claim``)
applies every queued event, claim (``sqlite_claim``) and OpenLineage event (``openlineage_sqlite``)
in one transaction, one fsync for all; one refusal undoes only itself. An event loop's events are
applied on the loop and made durable off it (``sqlite_loop``).
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
from typing import TYPE_CHECKING, Any, Protocol

from catalog.errors import ConcurrencyConflict, JobNotFound, StoreError
from catalog.store import sqlite_bulk, sqlite_checkpoint
from catalog.store.base import settle_future
from catalog.store.openlineage_sqlite import PendingLineage, ThreadLineage
from catalog.store.openlineage_write import LineageApplied, LineageWrite
from catalog.store.sqlite_claim import PendingClaim, claim_in
from catalog.store.sqlite_loop import LoopEventsRegistry
from catalog.store.sqlite_rows import BULK_CHUNK, INSERT_HISTORY, dumps, queue_columns
from catalog.store.values import Applied, Decide, decided

_MAX_BATCH = 256  # events per group commit
_UPDATE_HEAD = ("UPDATE jobs SET version = version + 1, last_event = ?, updated = ? "
                "WHERE uuid = ? AND version = ?")
_UPDATE_HEAD_AND_STATE = ("UPDATE jobs SET state = ?, version = version + 1, last_event = ?, "
                          "updated = ? WHERE uuid = ? AND version = ?")
# An event of the queue moves the head and sets the queue document with the columns its
# indexes read (derived from it), in one statement.
_UPDATE_HEAD_AND_QUEUE = ("UPDATE jobs SET state = ?, version = version + 1, last_event = ?, "
                          "updated = ?, queue = ?, priority = ?, queued = ?, lease_expiry = ? "
                          "WHERE uuid = ? AND version = ?")


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
class PendingEvent:
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
Pending = PendingEvent | PendingClaim | ThreadLineage


class EventsSQLite:
    """The events part of ``SQLiteStore`` (which sets the attributes below)."""

    path: str
    _write_lock: threading.Lock
    _queue: queue.SimpleQueue[Pending | None]
    _writer: threading.Thread | None
    _writer_lock: threading.Lock
    _loop_events: LoopEventsRegistry
    _checkpointer: sqlite_checkpoint.BackgroundCheckpointer

    if TYPE_CHECKING:  # SQLiteStore's
        def _connection(self) -> sqlite3.Connection: ...

        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...

        @classmethod
        def _apply_lineage(cls, conn: sqlite3.Connection, item: PendingLineage) -> None: ...

    def submit_event(self, uuid: str, event_id: str | None, decide: Decide) -> Future[Applied]:
        """Queue an event for the writer thread; the future resolves after its COMMIT.

        Group commit: whoever holds the write lock (the writer thread, or a thread in
        ``apply_event``) applies every queued event in one transaction, one fsync for all;
        one refusal undoes only itself.
        """
        pending = PendingEvent(uuid, event_id, decide)
        self._to_writer(pending)
        return pending.future

    def submit_lineage(self, write: LineageWrite) -> Future[LineageApplied]:
        """``apply_lineage`` for the writer thread (``submit_event``'s)."""
        pending = ThreadLineage(write)
        self._to_writer(pending)
        return pending.future

    def _to_writer(self, pending: Pending) -> None:
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
        applied: Applied = self._apply_pending(PendingEvent(uuid, event_id, decide))
        return applied

    def _apply_pending(self, pending: Pending) -> Any:
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
        """In transactions of ``BULK_CHUNK`` events: a few commits for thousands of events,
        each holding the write lock a fraction of a second; events on distinct jobs without
        an event_id are written set-based (``sqlite_bulk``)."""
        outcomes: list[Applied | Exception] = []
        if not events:
            return outcomes
        # Their COMMITs do not checkpoint (tens of thousands of WAL pages, as long again as
        # the write): a thread of the store does, after (sqlite_checkpoint).
        with sqlite_checkpoint.deferred(self._connection()):
            for start in range(0, len(events), BULK_CHUNK):
                outcomes.extend(self._apply_chunk(events[start:start + BULK_CHUNK]))
        self._checkpointer.request()
        return outcomes

    def _apply_chunk(self, chunk: list[tuple[str, str | None, Decide]]
                     ) -> list[Applied | Exception]:
        if sqlite_bulk.settable(chunk):  # no event_id to deduplicate: set-based
            with self._write() as conn, sqlite_bulk.roomy_cache(conn):
                return sqlite_bulk.apply_set(conn, chunk)
        batch = [PendingEvent(*event) for event in chunk]
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

    def _drain(self, batch: list[Pending]) -> tuple[list[Pending], bool]:
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

    def _commit_batch(self, batch: list[Pending]) -> None:
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
            try:
                if isinstance(item, PendingClaim):
                    item.result = claim_in(conn, item.pipelines, item.match, item.decide,
                                           item.priority, cls._apply_one)
                else:
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
            INSERT_HISTORY,
            (uuid, version + 1, entry["uuid"], entry["event_id"], dumps(entry)),
        )
        if "queue" in changes:  # the queue's events: head and queue columns in one statement
            updated = conn.execute(_UPDATE_HEAD_AND_QUEUE, (
                new_state, entry["name"], entry["date"],
                *queue_columns(changes["queue"]), uuid, version))
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
                         (None if results is None else dumps(results), uuid))
        return Applied(entry, duplicate=False)
