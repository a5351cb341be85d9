"""The WAL sync helper: a child process that ``fdatasync``\\ s one SQLite WAL file on request.

Run by ``catalog.store.sqlite_loop`` as ``python -I -S wal_sync_helper.py <wal path>``, by path,
so that it imports nothing but the standard library. Each read from stdin is a request, ``s``
(sync) or ``c`` (sync, then checkpoint); the answer, one line on stdout, comes after one
``fdatasync`` of the WAL begun after the request arrived: ``ok`` or ``error: <why>``. It exits
when stdin closes (its parent is done or gone) and ignores SIGINT, which a terminal sends to the
whole process group: the parent decides when it stops.

The checkpoint is the parent's: its loop connection does not checkpoint at COMMIT (that would
put two more fsyncs on its loop). The parent asks for one while it is not writing (it waits for
this answer), so the checkpoint can copy the whole WAL into the database, and SQLite then starts
the WAL over instead of growing it. A checkpoint that cannot finish is left for the next one.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys

# fdatasync is enough on Linux (the data and the size that finds it); macOS has only fsync.
_datasync = getattr(os, "fdatasync", os.fsync)


class WalFile:
    """The WAL, opened once and reopened if SQLite ever replaced the file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None
        self.inode: int | None = None

    def datasync(self) -> None:
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            # No WAL: SQLite checkpointed it into the database and removed it; sync that.
            self.close()
            sync_path(self.path[: -len("-wal")], data_only=False)
            return
        if self.fd is None or inode != self.inode:
            self.close()
            self.fd = os.open(self.path, os.O_RDONLY)
            self.inode = os.fstat(self.fd).st_ino
            sync_path(os.path.dirname(os.path.abspath(self.path)), data_only=False)  # its name
        _datasync(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = self.inode = None


def sync_path(path: str, data_only: bool = True) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        (_datasync if data_only else os.fsync)(fd)
    finally:
        os.close(fd)


class Checkpointer:
    """Passive checkpoints of the database, on a connection opened at the first."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.connection: sqlite3.Connection | None = None

    def checkpoint(self) -> None:
        try:
            if self.connection is None:
                self.connection = sqlite3.connect(self.database, isolation_level=None, timeout=0)
            self.connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            pass  # housekeeping: the next one will do

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


def serve(wal: WalFile, checkpointer: Checkpointer, requests: int, answers: int) -> None:
    while request := os.read(requests, 4096):
        try:
            wal.datasync()
            if b"c" in request:
                checkpointer.checkpoint()  # before the answer: the parent writes nothing
            answer = b"ok\n"
        except OSError as exc:
            answer = f"error: {exc}\n".encode(errors="replace")
        os.write(answers, answer)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].endswith("-wal"):
        print("usage: wal_sync_helper.py <database>-wal", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    wal = WalFile(argv[1])
    checkpointer = Checkpointer(argv[1][: -len("-wal")])
    try:
        serve(wal, checkpointer, sys.stdin.fileno(), sys.stdout.fileno())
    except BrokenPipeError:
        pass  # the parent went away while we answered
    finally:
        checkpointer.close()
        wal.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
