"""The WAL sync helper: a child process that ``fdatasync``\\ s one SQLite WAL file on request.

Run by ``catalog.store.sqlite_loop`` as ``python -I -S wal_sync_helper.py <wal path>``, by path,
so that it imports nothing but the standard library. Each read from stdin is a request; the
answer, one line on stdout, comes after one ``fdatasync`` of the WAL begun after the request
arrived: ``ok`` or ``error: <why>``. It exits when stdin closes (its parent is done or gone)
and ignores SIGINT, which a terminal sends to the whole process group: the parent decides when
it stops.
"""

from __future__ import annotations

import os
import signal
import sys


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
        os.fdatasync(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = self.inode = None


def sync_path(path: str, data_only: bool = True) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        (os.fdatasync if data_only else os.fsync)(fd)
    finally:
        os.close(fd)


def serve(wal: WalFile, requests: int, answers: int) -> None:
    while os.read(requests, 4096):
        try:
            wal.datasync()
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
    try:
        serve(wal, sys.stdin.fileno(), sys.stdout.fileno())
    except BrokenPipeError:
        pass  # the parent went away while we answered
    finally:
        wal.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
