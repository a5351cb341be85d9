"""The guard: one small process per worker that kills the worker's process groups if the
worker dies without doing it (SIGKILL, a crash), so that no work runs on, unheld, while its
job is retried elsewhere.

Why not ``prctl(PR_SET_PDEATHSIG)`` in each child: setting it needs a ``preexec_fn``, which
makes every start a full ``fork()`` of the worker instead of ``vfork()`` (45 starts/s instead of
several hundred here), and it reaches only the child, not its own children. The guard costs one
start per worker and nothing per job but two stores into shared memory, and kills whole groups.

The worker keeps the process group ids it has started and not yet reaped in a table of slots
in a memory file it shares with the guard (a store into a mapped page: no system call, no
wake-up of the guard per job). The guard only waits for end-of-file on a pipe whose only write
end the worker holds (close-on-exec, so its children never hold it); when the worker dies, it
SIGKILLs the groups left in the table. It lives in a session of its own, so that a terminal's
Ctrl-C reaches the worker, not the guard; one that was killed is started again on the same
table. Its window: a group started but not yet in the table when the worker dies survives
(until its own timeout; the job's lease expires meanwhile and the job is retried).

The table's tail holds the directory of the worker's memory cgroups, if it made any
(``catalog.engines.cgroups``): the guard then kills what is left in each and removes them, so
that a worker killed outright leaves no cgroup behind.

Run by its path (``python .../catalog/engines/guard.py FD``), importing only the standard
library.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import mmap
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

SLOTS = 65536  # groups a worker may have running at once (a 512 KB table, mapped lazily)
_SLOT = struct.Struct("=q")
_TAIL = 4096  # after the slots: a directory of cgroups to remove, NUL-padded UTF-8
_TABLE = SLOTS * _SLOT.size + _TAIL
_EMPTY_WAIT_S = 5.0  # for the processes killed in a cgroup to leave it


def remove_cgroups(directory: str) -> None:
    """Kill every process left in ``directory``'s cgroups (its subdirectories), remove them,
    then ``directory`` itself; what cannot be removed within a few seconds is left."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            if entry.is_dir(follow_symlinks=False):
                remove_cgroup(entry.path)
    with contextlib.suppress(OSError):
        os.rmdir(directory)


def remove_cgroup(group: str, wait_s: float = _EMPTY_WAIT_S) -> bool:
    """SIGKILL every process in cgroup ``group`` until it is empty, then remove it; whether it
    is gone (False after ``wait_s`` s of trying)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            os.rmdir(group)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:  # EBUSY: processes still in it
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                return False
        try:
            with open(os.path.join(group, "cgroup.procs")) as handle:
                pids = [int(line) for line in handle if line.strip()]
        except OSError:
            pids = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def main(fd: int) -> int:
    """The guard's side: wait for the worker to go, then kill what the table holds."""
    table = mmap.mmap(fd, _TABLE)
    while sys.stdin.buffer.read(4096):
        pass  # nothing is written: read returns b"" once the worker has gone
    for (pgid,) in _SLOT.iter_unpack(memoryview(table)[:SLOTS * _SLOT.size]):
        if pgid > 1:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
    directory = table[SLOTS * _SLOT.size:].rstrip(b"\0").decode("utf-8", "replace")
    if directory:
        remove_cgroups(directory)
    return 0


class Guard:
    """The worker's side: the table, and a guard process (started on first use, again if it
    went away), shared by the process's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._owner = 0  # the pid that made the table (a forked child needs its own)
        self._table: mmap.mmap | None = None
        self._fd = -1
        self._slots: dict[int, int] = {}  # pgid -> slot
        self._free: list[int] = []

    def _ensure(self) -> mmap.mmap:
        """The table, with a live guard watching it (the lock held)."""
        if self._owner != os.getpid():  # first use, or a forked child: its own of each
            self._make_table()
        if self._process is None or self._process.poll() is not None:
            if self._process is not None:
                self._close_stdin(self._process)  # reaped by poll(): a guard someone killed
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__), str(self._fd)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                pass_fds=[self._fd], start_new_session=True)
        assert self._table is not None
        return self._table

    def _make_table(self) -> None:
        try:
            fd = os.memfd_create("catalog-guard", os.MFD_CLOEXEC)
        except (AttributeError, OSError):  # not Linux: an unlinked file does the same
            fd = os.dup(tempfile.TemporaryFile().fileno())
        os.ftruncate(fd, _TABLE)
        self._table = mmap.mmap(fd, _TABLE)
        self._fd, self._owner, self._process = fd, os.getpid(), None
        self._slots, self._free = {}, list(range(SLOTS - 1, -1, -1))
        atexit.register(self.close)

    def watch(self, pgid: int) -> None:
        """Have group ``pgid`` killed if this process dies before ``release``."""
        with self._lock:
            table = self._ensure()
            if pgid in self._slots:
                return
            if not self._free:
                raise OSError(f"more than {SLOTS} process groups at once")
            slot = self._free.pop()
            _SLOT.pack_into(table, slot * _SLOT.size, pgid)
            self._slots[pgid] = slot

    def remove_at_death(self, directory: str) -> None:
        """Have the cgroups under ``directory`` emptied and removed (``remove_cgroups``) once
        this process has gone."""
        encoded = directory.encode("utf-8")
        if len(encoded) >= _TAIL:
            raise OSError(f"a cgroup directory of more than {_TAIL - 1} bytes: {directory}")
        with self._lock:
            table = self._ensure()
            table[SLOTS * _SLOT.size:] = encoded.ljust(_TAIL, b"\0")

    def release(self, pgid: int) -> None:
        """Group ``pgid``'s leader has been reaped: no longer this process's to kill."""
        with self._lock:
            slot = self._slots.pop(pgid, None) if self._owner == os.getpid() else None
            if slot is not None and self._table is not None:
                _SLOT.pack_into(self._table, slot * _SLOT.size, 0)
                self._free.append(slot)

    def watching(self) -> set[int]:
        """The groups the guard would kill now."""
        with self._lock:
            return set(self._slots) if self._owner == os.getpid() else set()

    def pid(self) -> int | None:
        """The guard process's id, once there is one."""
        with self._lock:
            return self._process.pid if self._process is not None else None

    @staticmethod
    def _close_stdin(process: subprocess.Popen[bytes]) -> None:
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()

    def close(self) -> None:
        """At a clean exit: the guard ends (killing what is still registered) and is reaped."""
        with self._lock:
            process, self._process = self._process, None
            if process is None or self._owner != os.getpid():
                return
        self._close_stdin(process)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


GUARD = Guard()

if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
