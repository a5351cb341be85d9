"""Waits (DESIGN §11): return as soon as the awaited jobs end, woken by the event that ended
them, whichever process applied it.

A waiter reads the jobs' states, then sleeps on a watch until something may have changed:

- in this process, every event that ends a job wakes every waiter (``notify``);
- SQLite: inotify on the database's directory (Linux, through ctypes: a few libc calls need no
  package), woken by the writes to the database and its WAL whichever process commits them,
  and by the touch of its wake file after a commit that ended a job (``announce``);
- MongoDB: a change stream on the jobs where the server has them (a replica set);
- and in every case a bounded wait, so a wake-up lost (a network file system, mongomock, no
  inotify) delays an answer by at most ``FALLBACK_S``, never for ever.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import select
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catalog.errors import InvalidInput, JobNotFound
from catalog.identifiers import UUIDType, parse_uuid
from catalog.queue.conditions import has_ended
from catalog.queue.models import WaitOutcome

if TYPE_CHECKING:
    from catalog.catalog import Catalog

FALLBACK_S = 1.0  # a check at least this often when no cross-process wake-up is to be had
WATCHED_FALLBACK_S = 10.0  # ...and when one is (inotify, a change stream): a safety net
# A commit's last write to the WAL comes before its fsync and the WAL index's update (a
# shared mapping, which inotify does not see): a read right after the write may not see the
# commit yet (an fsync later, seconds on a loaded disk). After the files change, look again
# at these delays (none repeated), then sleep until the next change.
SETTLE_S = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
MAX_JOBS = 1000
WAKE_SUFFIX = "-wake"  # beside the SQLite database: touched after a commit that ended a job


class _Woken(threading.Event):
    """A waiter's wake-up: an Event, and a pipe whose read end a watcher can ``select`` on
    along with its own files, so that ``notify`` interrupts the sleep at once."""

    def __init__(self) -> None:
        super().__init__()
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def set(self) -> None:
        super().set()
        with contextlib.suppress(OSError):  # full (already woken) or closed
            os.write(self.write_fd, b"\0")

    def clear(self) -> None:
        super().clear()
        with contextlib.suppress(OSError):
            while os.read(self.read_fd, 4096):
                pass

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


_listeners: set[threading.Event] = set()
_listeners_lock = threading.Lock()


def notify() -> None:
    """Wake every waiter of this process: a job has ended."""
    with _listeners_lock:
        for event in _listeners:
            event.set()


def announce(catalog: Catalog) -> None:
    """A job has ended (its event committed): wake this process's waiters, and on SQLite
    those of other processes, by touching the database's wake file (``<db>-wake``).

    Their inotify also sees the WAL written, but that write comes before the commit's fsync
    and becomes visible only after it: a waiter woken by it reads too early and looks again
    after ``SETTLE_S`` delays, tens of milliseconds on a loaded disk. The touch comes after
    the commit, so the read it wakes sees the job ended."""
    notify()
    store: Any = catalog.store
    if store.kind != "sqlite":
        return
    path = f"{store.path}{WAKE_SUFFIX}"
    try:
        os.utime(path)
    except FileNotFoundError:
        with contextlib.suppress(OSError):
            Path(path).touch()
    except OSError:  # a read-only directory: the WAL's write still wakes them, later
        pass


def wait(catalog: Catalog, uuids: list[str], any_: bool = False,
         timeout: float | None = None) -> WaitOutcome:
    """Wait until every job of ``uuids`` has ended (the first of them with ``any_``), or
    ``timeout`` seconds have passed: the jobs' states then, and whether time ran out."""
    if not uuids or len(uuids) > MAX_JOBS:
        raise InvalidInput(f"wait for 1 to {MAX_JOBS} jobs, not {len(uuids)}")
    if timeout is not None and timeout < 0:
        raise InvalidInput(f"a timeout is not negative, got {timeout}")
    jobs = list(dict.fromkeys(parse_uuid(uuid, UUIDType.pipelinejob) for uuid in uuids))
    deadline = None if timeout is None else time.monotonic() + timeout
    # As after a change: a commit whose writes came before the watch began may land after
    # the first read.
    settling = 0
    with _watch(catalog) as (woken, watcher):
        while True:
            woken.clear()  # before reading: an end from now on wakes the wait below
            states, ended = _states(catalog, jobs)
            if (any_ and ended) or len(ended) == len(jobs):
                return WaitOutcome(jobs=states, timed_out=False)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return WaitOutcome(jobs=states, timed_out=True)
            bound = WATCHED_FALLBACK_S if watcher is not None else FALLBACK_S
            if settling < len(SETTLE_S):
                bound = SETTLE_S[settling]
                settling += 1
            bound = bound if remaining is None else min(bound, remaining)
            if watcher is not None:
                if watcher.wait(bound, woken):
                    settling = 0
            else:
                woken.wait(bound)


def _states(catalog: Catalog, jobs: list[str]) -> tuple[dict[str, str], list[str]]:
    states: dict[str, str] = {}
    ended: list[str] = []
    for uuid in jobs:
        head = catalog.store.get_job(uuid, history=False)
        if head is None:
            raise JobNotFound(uuid)
        states[uuid] = str(head["state"])
        if has_ended(head):
            ended.append(uuid)
    return states, ended


@contextlib.contextmanager
def _watch(catalog: Catalog) -> Iterator[tuple[threading.Event, _Watcher | None]]:
    woken = _Woken()
    with _listeners_lock:
        _listeners.add(woken)
    watcher = _watcher(catalog, woken)
    try:
        yield woken, watcher
    finally:
        with _listeners_lock:
            _listeners.discard(woken)
        if watcher is not None:
            watcher.close()
        woken.close()


def watch(catalog: Catalog) -> contextlib.AbstractContextManager[
        tuple[threading.Event, _Watcher | None]]:
    """The watch a waiter sleeps on, for other followers of the store (the job-state stream):
    an event set by ``notify`` and the store's cross-process watcher, if it has one."""
    return _watch(catalog)


class _Watcher:
    def wait(self, timeout: float, woken: threading.Event) -> bool:
        """Sleep until woken, the watched files change or ``timeout``; whether they changed
        (then a commit may still be landing: ``SETTLE_S``)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def _watcher(catalog: Catalog, woken: threading.Event) -> _Watcher | None:
    store: Any = catalog.store
    if store.kind == "sqlite":
        return _Inotify.of(Path(store.path))
    if store.kind == "mongo":
        return _ChangeStream.of(store.database, woken)
    return None


# SQLite: inotify on the database's directory -----------------------------------------------
_IN_MODIFY, _IN_ATTRIB, _IN_MOVED_TO, _IN_CREATE = 0x2, 0x4, 0x80, 0x100
_IN_NONBLOCK, _IN_CLOEXEC = 0o4000, 0o2000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, length of the name that follows


class _Inotify(_Watcher):
    """Wakes when the database file or its WAL (or journal) is written, by any process."""

    def __init__(self, fd: int, name: bytes) -> None:
        self.fd = fd
        self.name = name

    @classmethod
    def of(cls, database: Path) -> _Inotify | None:
        libc_name = ctypes.util.find_library("c")
        if libc_name is None or not hasattr(os, "O_CLOEXEC"):
            return None
        try:
            libc = ctypes.CDLL(libc_name, use_errno=True)
            fd = int(libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))
        except (OSError, AttributeError):  # not Linux
            return None
        if fd < 0:
            return None
        directory = os.fsencode(str(database.resolve().parent))
        mask = _IN_MODIFY | _IN_ATTRIB | _IN_MOVED_TO | _IN_CREATE  # ATTRIB: the wake file
        if libc.inotify_add_watch(fd, directory, mask) < 0:
            os.close(fd)
            return None
        return cls(fd, os.fsencode(database.name))

    def wait(self, timeout: float, woken: threading.Event) -> bool:
        # This process's own commits write the files too; notify() wakes it through the pipe.
        deadline = time.monotonic() + timeout
        watched = [self.fd] + ([woken.read_fd] if isinstance(woken, _Woken) else [])
        while not woken.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            readable, _, _ = select.select(watched, [], [], remaining)
            if self.fd in readable and self._ours():
                return True
        return False

    def _ours(self) -> bool:
        """Drain what inotify has; whether any of it is about the database's files."""
        ours = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return ours
            offset = 0
            while offset + _EVENT.size <= len(data):
                _, _, _, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size:offset + _EVENT.size + length].rstrip(b"\0")
                ours = ours or name.startswith(self.name)
                offset += _EVENT.size + length

    def close(self) -> None:
        os.close(self.fd)


# MongoDB: a change stream on the jobs ---------------------------------------------------------
class _ChangeStream(_Watcher):
    """A thread that follows the jobs' state changes and wakes the waiter."""

    def __init__(self, stream: Any, woken: threading.Event) -> None:
        self.stream = stream
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._follow, args=(woken,), daemon=True,
                                       name="catalog-wait-change-stream")
        self.thread.start()

    @classmethod
    def of(cls, database: Any, woken: threading.Event) -> _ChangeStream | None:
        try:
            stream = database["jobs"].watch(
                [{"$match": {"updateDescription.updatedFields.state": {"$exists": True}}}],
                max_await_time_ms=1000)
        except Exception:  # mongomock, a server without replica set: the bounded wait
            return None
        return cls(stream, woken)

    def _follow(self, woken: threading.Event) -> None:
        with contextlib.suppress(Exception):  # closed under it, or the server went away
            while not self.closed.is_set():
                if self.stream.try_next() is not None:
                    woken.set()

    def wait(self, timeout: float, woken: threading.Event) -> bool:
        woken.wait(timeout)
        return False

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(Exception):
            self.stream.close()
        self.thread.join(timeout=5)
