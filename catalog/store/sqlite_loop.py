"""Events from an asyncio event loop: applied and committed on the loop, made durable beside it.

A webhook's event is a few statements (~0.1 ms) and a durable COMMIT: an fsync, 0.2-0.7 ms
here, during which SQLite holds the write lock. Handing each event to a writer thread cost more
than the statements (a thread switch and the GIL passed back and forth, per event), and
committing on the loop with ``synchronous=FULL`` stops the loop for every fsync. Busy servers
see one or two events per turn of the loop, so batching alone does not hide the disk.

So the events that arrived in one turn of the loop are applied in one ``BEGIN IMMEDIATE``
transaction and committed right there, on the loop. While a loop is young (its first
``HELPER_AFTER`` commits: tests, one-off ``asyncio.run`` calls) that COMMIT is the store's own,
durable one. After that the loop connection commits with ``synchronous=NORMAL``: the COMMIT
writes the WAL frames and releases the write lock without waiting for the disk, and a helper
process (``wal_sync_helper.py``) then ``fdatasync``\\ s the WAL; only when it answers are the
batch's events answered. Events that arrive while a sync is out gather, and commit as the next
batch when it is back: one COMMIT and one fsync for all of them, the loop never blocked. This is
``synchronous=FULL`` (which syncs the WAL at every COMMIT) with the sync taken out of the write
lock and off the loop; a process rather than a thread, because a thread waking from its fsync
needs the GIL, and taking it from a busy loop cost more than the fsync saved. Nothing is
acknowledged before it is on disk, duplicates included, and a crash before the sync loses only
events nobody was told about: SQLite kept them (a resend is then a duplicate) or it did not.
Should the helper fail or die, the loop syncs the WAL itself and goes back to FULL.

All this applies when the store is durable (``synchronous`` FULL or EXTRA) and in WAL mode;
otherwise the loop commits with the store's own setting and answers at once.

OpenLineage events (``LoopLineage``: a whole ``LineageWrite`` each) join the batches the same
way, each under a savepoint of its own (``SQLiteStore._apply_batch``).

The loop never waits on a lock: when another thread of this process is writing, or another
process holds the database's write lock, the batch goes to the store's writer thread instead,
which may wait (``SQLiteStore.submit_event``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from catalog.errors import StoreError
from catalog.store.openlineage_sqlite import PendingLineage
from catalog.store.openlineage_write import LineageApplied, LineageWrite
from catalog.store.values import Applied, Decide
from catalog.store.wal_sync_helper import sync_path

if TYPE_CHECKING:
    from catalog.store.sqlite import SQLiteStore

log = logging.getLogger("catalog.store")

_MAX_BATCH = 256  # events per transaction, as for the writer thread
HELPER_AFTER = 64  # COMMITs of a loop before it starts its sync helper
CHECKPOINT_EVERY = 200  # the helper's syncs between checkpoints (~1000 WAL pages, as SQLite's)
_HELPER = str(Path(__file__).with_name("wal_sync_helper.py"))


@dataclass
class _LoopEvent:
    uuid: str
    event_id: str | None
    decide: Decide
    future: asyncio.Future[Applied]
    result: Applied | None = None
    error: BaseException | None = None


@dataclass
class LoopLineage(PendingLineage):
    """An OpenLineage event from the loop, answered through an asyncio future."""

    future: asyncio.Future[LineageApplied] = field(kw_only=True)


_Item = _LoopEvent | LoopLineage


class SyncHelper:
    """The helper process of one loop: a request down one pipe, the answer up another."""

    def __init__(self, wal: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-S", _HELPER, wal], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True)
        self._requests: IO[bytes] = self.process.stdin  # type: ignore[assignment]
        self._answers: IO[bytes] = self.process.stdout  # type: ignore[assignment]
        self.answers = self._answers.fileno()
        os.set_blocking(self.answers, False)

    def ask(self, checkpoint: bool = False) -> None:
        """Ask for one sync, and a checkpoint after it (raises OSError if the helper is gone)."""
        os.write(self._requests.fileno(), b"c" if checkpoint else b"s")

    def answer(self) -> str | None:
        """The answer (``ok`` or ``error: ...``), or None if it has not come yet."""
        try:
            data = os.read(self.answers, 4096)
        except BlockingIOError:
            return None
        if not data:
            raise OSError(f"the WAL sync helper exited ({self.process.poll()})")
        return data.decode(errors="replace").strip()

    def close(self) -> None:
        """Close its stdin (it exits after the sync in hand) and reap it."""
        for stream in (self._requests, self._answers):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class LoopEvents:
    """The events of one event loop for one store (see the module docstring)."""

    store: SQLiteStore
    loop: asyncio.AbstractEventLoop
    connection: sqlite3.Connection
    helper_after: int | None  # COMMITs before the helper starts; None: never
    helper: SyncHelper | None = None
    commits: int = 0  # of the loop before the helper; then syncs since its last checkpoint
    pending: list[_Item] = field(default_factory=list)
    syncing: list[_Item] | None = None  # committed, waiting for the helper's sync
    scheduled: bool = False

    def submit(self, uuid: str, event_id: str | None, decide: Decide) -> asyncio.Future[Applied]:
        future: asyncio.Future[Applied] = self.loop.create_future()
        self._add(_LoopEvent(uuid, event_id, decide, future))
        return future

    def submit_lineage(self, write: LineageWrite) -> asyncio.Future[LineageApplied]:
        future: asyncio.Future[LineageApplied] = self.loop.create_future()
        self._add(LoopLineage(write, future=future))
        return future

    def _add(self, item: _Item) -> None:
        self.pending.append(item)
        if not self.scheduled:
            self.scheduled = True
            # After the other callbacks of this turn: requests read together commit together.
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.scheduled = False
        if not self.pending or self.syncing is not None:
            return  # while a sync is out, events gather for the next batch
        batch, self.pending = self.pending[:_MAX_BATCH], self.pending[_MAX_BATCH:]
        if self.pending:
            self.scheduled = True
            self.loop.call_soon(self._flush)
        if not self.store._write_lock.acquire(blocking=False):
            self._to_writer(batch)  # a thread of this process is writing: never wait here
            return
        try:
            self.connection.execute("BEGIN IMMEDIATE")  # busy_timeout 0 on this connection
        except sqlite3.OperationalError:
            self.store._write_lock.release()
            self._to_writer(batch)  # another process is writing: the writer thread waits
            return
        except sqlite3.ProgrammingError as exc:  # the store was closed under this loop
            self.store._write_lock.release()
            _settle_batch(batch, StoreError(f"the catalog is closed: {exc}"))
            return
        failure: BaseException | None = StoreError("the commit was interrupted")
        try:
            self.store._apply_batch(self.connection, batch)
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
        if failure is not None:
            _settle_batch(batch, StoreError(f"the events were not committed: {failure}"))
            return
        if self.helper is None:
            _settle_batch(batch, None)  # that COMMIT was as durable as the store is
            self.commits += 1
            if self.helper_after is not None and self.commits >= self.helper_after:
                self._start_helper()
            return
        self._ask_for_sync(batch)

    # the helper ---------------------------------------------------------------------------
    def _start_helper(self) -> None:
        self.helper_after = None  # one attempt per loop
        try:
            helper = SyncHelper(os.path.abspath(self.store.path) + "-wal")
        except OSError as exc:
            log.warning("no WAL sync helper (%s): events commit with synchronous=FULL", exc)
            return
        self.connection.execute("PRAGMA synchronous = NORMAL")  # the helper syncs instead
        self.connection.execute("PRAGMA wal_autocheckpoint = 0")  # and checkpoints
        self.commits = 0
        self.helper = helper
        self.loop.add_reader(helper.answers, self._on_answer)

    def _ask_for_sync(self, batch: list[_Item]) -> None:
        assert self.helper is not None
        self.syncing = batch
        self.commits += 1
        checkpoint = self.commits >= CHECKPOINT_EVERY
        if checkpoint:
            self.commits = 0
        try:
            self.helper.ask(checkpoint)
        except OSError as exc:
            self._helper_failed(exc)

    def _on_answer(self) -> None:
        if self.helper is None:
            return
        try:
            answer = self.helper.answer()
        except OSError as exc:
            self._helper_failed(exc)
            return
        if answer is None:
            return
        batch, self.syncing = self.syncing or [], None
        _settle_batch(batch, None if answer == "ok" else StoreError(
            f"the events were committed but could not be made durable: {answer}"))
        self._flush()  # what gathered meanwhile

    def _helper_failed(self, exc: BaseException) -> None:
        """Without the helper: sync what waits here, and commit with FULL from now on."""
        log.warning("the WAL sync helper failed (%s): events commit with synchronous=FULL", exc)
        self._stop_helper(remove_reader=True)
        self.connection.execute(f"PRAGMA synchronous = {self.store._synchronous}")
        self.connection.execute("PRAGMA wal_autocheckpoint = 1000")  # SQLite's default
        self._sync_here()

    def _sync_here(self) -> None:
        """Make every committed batch durable from this thread, and answer them."""
        batch, self.syncing = self.syncing, None
        if batch is None:
            return
        error = None
        try:
            sync_path(os.path.abspath(self.store.path) + "-wal")
        except OSError as exc:
            error = StoreError(f"the events were committed but could not be made durable: {exc}")
        self._call_on_loop(_settle_batch, batch, error)
        self._call_on_loop(self._flush)  # what gathered meanwhile

    def _stop_helper(self, remove_reader: bool) -> None:
        helper, self.helper = self.helper, None
        if helper is None:
            return
        if remove_reader:
            self.loop.remove_reader(helper.answers)
        helper.close()

    def close(self) -> None:
        """Stop the helper; whatever waited for a sync is synced here and answered."""
        if self.helper is None:
            return
        if self.loop.is_closed():
            self._stop_helper(remove_reader=False)
        elif _on_loop_thread(self.loop):
            self._stop_helper(remove_reader=True)
        else:  # the loop's own thread removes its reader
            helper, self.helper = self.helper, None
            self._call_on_loop(self.loop.remove_reader, helper.answers)
            helper.close()
        self._sync_here()

    # handing over ---------------------------------------------------------------------------
    def _call_on_loop(self, callback: Callable[..., object], *args: object) -> None:
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop has closed: nobody is waiting for these answers
            pass

    def _handed_back(self, future: asyncio.Future[Any], done: Future[Any]) -> None:
        self._call_on_loop(_copy_outcome, done, future)

    def _to_writer(self, batch: list[_Item]) -> None:
        for item in batch:
            handed: Future[Any]
            if isinstance(item, LoopLineage):
                handed = self.store.submit_lineage(item.write)
            else:
                handed = self.store.submit_event(item.uuid, item.event_id, item.decide)
            handed.add_done_callback(functools.partial(self._handed_back, item.future))


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _settle_batch(batch: list[_Item], failure: StoreError | None) -> None:
    for item in batch:
        if failure is not None:
            item.result = None
            item.error = item.error or failure
        _settle(item.future, item.result, item.error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():  # the request went away; its event stands all the same
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert result is not None
        future.set_result(result)


def _copy_outcome(done: Future[Any], future: asyncio.Future[Any]) -> None:
    error = done.exception()
    _settle(future, None if error is not None else done.result(), error)


class LoopEventsRegistry:
    """One ``LoopEvents`` per running event loop."""

    def __init__(self, store: SQLiteStore, connect: Callable[[], sqlite3.Connection],
                 helper_after: int = HELPER_AFTER) -> None:
        self._store = store
        self._connect = connect
        self.helper_after = helper_after
        self._by_loop: dict[asyncio.AbstractEventLoop, LoopEvents] = {}
        self._lock = threading.Lock()

    def for_running_loop(self) -> LoopEvents:
        loop = asyncio.get_running_loop()
        events = self._by_loop.get(loop)
        if events is None:
            with self._lock:
                for closed in [known for known in self._by_loop if known.is_closed()]:
                    gone = self._by_loop.pop(closed)  # nobody waits on a closed loop
                    gone.close()
                    self._store._forget_connection(gone.connection)  # no pile of open files
                connection = self._connect()
                events = LoopEvents(self._store, loop, connection, self._helper_after(connection))
                self._by_loop[loop] = events
        return events

    def _helper_after(self, connection: sqlite3.Connection) -> int | None:
        """When this loop starts a helper: only for a durable store in WAL mode on a file."""
        durable = self._store._synchronous in ("FULL", "EXTRA")
        mode = str(connection.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        return self.helper_after if durable and mode == "wal" else None

    def close(self) -> None:
        """Stop the helpers (syncing what they had in hand); connections close with the store."""
        with self._lock:
            for events in self._by_loop.values():
                events.close()
            self._by_loop.clear()
