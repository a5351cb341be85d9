"""Events from an asyncio event loop, applied on the loop and committed off it.

A webhook's event is a few statements (~0.1 ms) and a durable COMMIT (an fsync, ~0.7 ms here).
Handing each event to a writer thread cost more than the statements: a thread switch and the
GIL passed back and forth both ways, per event. So on an event loop the statements of every
event that arrived in one turn of the loop run on the loop thread, in one ``BEGIN IMMEDIATE``
transaction, and only the COMMIT goes to a thread of its own (SQLite's own ``synchronous``
durability, the GIL released while it syncs). Events that arrive meanwhile wait for the next
batch, which starts when the COMMIT is back; every answer waits for the COMMIT of its batch,
so nothing is acknowledged before it is durable (duplicates included).

The loop never waits on a lock: when another thread of this process is writing, or another
process holds the database's write lock, the batch goes to the store's writer thread instead,
which may wait (``SQLiteStore.submit_event``).
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from catalog.errors import StoreError
from catalog.store.base import Applied, Decide

if TYPE_CHECKING:
    from catalog.store.sqlite import SQLiteStore

_MAX_BATCH = 256  # events per transaction, as for the writer thread


@dataclass
class _LoopEvent:
    uuid: str
    event_id: str | None
    decide: Decide
    future: asyncio.Future[Applied]
    result: Applied | None = None
    error: BaseException | None = None


@dataclass
class LoopEvents:
    """The events of one event loop for one store (see the module docstring)."""

    store: SQLiteStore
    loop: asyncio.AbstractEventLoop
    connection: sqlite3.Connection
    committer: ThreadPoolExecutor
    pending: list[_LoopEvent] = field(default_factory=list)
    scheduled: bool = False
    committing: bool = False

    def submit(self, uuid: str, event_id: str | None, decide: Decide) -> asyncio.Future[Applied]:
        future: asyncio.Future[Applied] = self.loop.create_future()
        self.pending.append(_LoopEvent(uuid, event_id, decide, future))
        if not (self.scheduled or self.committing):
            self.scheduled = True
            # After the other callbacks of this turn: requests read together commit together.
            self.loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self.scheduled = False
        if self.committing or not self.pending:
            return
        batch, self.pending = self.pending[:_MAX_BATCH], self.pending[_MAX_BATCH:]
        if not self.store._write_lock.acquire(blocking=False):
            self._to_writer(batch)  # a thread of this process is writing: never wait here
            return
        try:
            self.connection.execute("BEGIN IMMEDIATE")  # busy_timeout 0 on this connection
        except sqlite3.OperationalError:
            self.store._write_lock.release()
            self._to_writer(batch)  # another process is writing: the writer thread waits
            return
        self.store._apply_batch(self.connection, batch)
        self.committing = True
        try:
            self.committer.submit(self._commit, batch)
        except RuntimeError:  # the store is closing: commit here rather than lose the batch
            self._commit(batch)

    def _commit(self, batch: list[_LoopEvent]) -> None:
        """On the committer thread: COMMIT (the fsync), then hand the batch back to the loop."""
        failure: BaseException | None = StoreError("the commit was interrupted")
        try:
            self.connection.execute("COMMIT")
            failure = None
        except Exception as exc:
            failure = exc
        finally:
            try:
                if self.connection.in_transaction:
                    self.connection.execute("ROLLBACK")
            finally:
                self.store._write_lock.release()
                self._call_on_loop(self._finish, batch, failure)

    def _call_on_loop(self, callback: Callable[..., None], *args: object) -> None:
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop has closed: nobody is waiting for these answers
            pass

    def _handed_back(self, future: asyncio.Future[Applied], done: Future[Applied]) -> None:
        self._call_on_loop(_copy_outcome, done, future)

    def _finish(self, batch: list[_LoopEvent], failure: BaseException | None) -> None:
        self.committing = False
        for item in batch:
            if failure is not None:
                item.result = None
                item.error = item.error or StoreError(f"the events were not committed: {failure}")
            _settle(item.future, item.result, item.error)
        if self.pending:
            self._flush()

    def _to_writer(self, batch: list[_LoopEvent]) -> None:
        for item in batch:
            handed = self.store.submit_event(item.uuid, item.event_id, item.decide)
            handed.add_done_callback(functools.partial(self._handed_back, item.future))
        if self.pending:
            self.scheduled = True
            self.loop.call_soon(self._flush)


def _settle(future: asyncio.Future[Applied], result: Applied | None,
            error: BaseException | None) -> None:
    if future.cancelled():  # the request went away; its event stands all the same
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert result is not None
        future.set_result(result)


def _copy_outcome(done: Future[Applied], future: asyncio.Future[Applied]) -> None:
    error = done.exception()
    _settle(future, None if error is not None else done.result(), error)


class LoopEventsRegistry:
    """One ``LoopEvents`` per running event loop, and the one committer thread they share."""

    def __init__(self, store: SQLiteStore, connect: Callable[[], sqlite3.Connection]) -> None:
        self._store = store
        self._connect = connect
        self._by_loop: dict[asyncio.AbstractEventLoop, LoopEvents] = {}
        self._lock = threading.Lock()
        self._committer: ThreadPoolExecutor | None = None

    def for_running_loop(self) -> LoopEvents:
        loop = asyncio.get_running_loop()
        events = self._by_loop.get(loop)
        if events is None:
            with self._lock:
                for closed in [known for known in self._by_loop if known.is_closed()]:
                    gone = self._by_loop[closed]
                    if not gone.committing:  # asyncio.run per call must not pile up files
                        del self._by_loop[closed]
                        self._store._forget_connection(gone.connection)
                if self._committer is None:
                    self._committer = ThreadPoolExecutor(
                        1, thread_name_prefix=f"catalog-sqlite-commit:{self._store.path}")
                events = LoopEvents(self._store, loop, self._connect(), self._committer)
                self._by_loop[loop] = events
        return events

    def close(self) -> None:
        """Wait for COMMITs in flight; the connections are closed with the store's."""
        with self._lock:
            if self._committer is not None:
                self._committer.shutdown(wait=True)
                self._committer = None
            self._by_loop.clear()
