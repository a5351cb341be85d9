"""Checkpoints of a bulk write's WAL, off the writer's path.

SQLite checkpoints at COMMIT once the WAL passes ``wal_autocheckpoint`` pages (1,000 by
default): the committing connection then copies the WAL into the database and syncs it,
before COMMIT returns. For an ordinary event that is a few pages now and then; for a bulk write
(a sweep of 10,000 leases, a release of thousands of dependents) it is tens of thousands of
pages, and the checkpoint cost as much as the write itself (measured: 1.1 s of a 2.2 s sweep of
1,000,000 jobs, 10,000 expired).

Durability does not need the checkpoint: with ``synchronous=FULL`` the WAL is synced at COMMIT
and a crash replays it. So a bulk write commits with autocheckpoint off (``deferred``), and a
thread of the store then runs a PASSIVE checkpoint on a connection of its own: it copies what
no reader still needs, never takes the write lock, and writers go on meanwhile. Requests that
come while one runs are served by one more run after it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("catalog.store")

_DEFAULT_PAGES = 1000  # SQLite's wal_autocheckpoint


@contextmanager
def deferred(conn: sqlite3.Connection) -> Iterator[None]:
    """No checkpoint at this connection's COMMITs meanwhile (restored after)."""
    (before,) = conn.execute("PRAGMA wal_autocheckpoint").fetchone()
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA wal_autocheckpoint = {int(before) or _DEFAULT_PAGES}")


class BackgroundCheckpointer:
    """One thread (started at the first request) that checkpoints ``path`` when asked."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._asked = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.done = 0  # checkpoints run (for tests)

    def request(self) -> None:
        with self._lock:
            if self._stopping:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"catalog-sqlite-checkpoint:{self.path}")
                self._thread.start()
            self._asked.set()

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            while True:
                self._asked.wait()
                self._asked.clear()
                if self._stopping:
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.done += 1
                except sqlite3.Error as exc:  # housekeeping: the next COMMIT's or request's
                    log.warning("a background checkpoint of %s failed: %s", self.path, exc)
        finally:
            conn.close()

    def close(self) -> None:
        """Stop the thread, after the checkpoint it is running (if any)."""
        with self._lock:
            self._stopping = True
            thread, self._thread = self._thread, None
            self._asked.set()
        if thread is not None:
            thread.join()
