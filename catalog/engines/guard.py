"""The guard: one small process per worker that kills the worker's process groups if the
worker dies without doing it (SIGKILL, a crash), so that no work runs on, unheld, while its
job is retried elsewhere.

Why not ``prctl(PR_SET_PDEATHSIG)`` in each child: setting it needs a ``preexec_fn``, which
makes every start a full ``fork()`` of the worker instead of ``vfork()`` (45 starts/s instead of
several hundred here), and it reaches only the child, not its own children. The guard costs one
start per worker and two short writes per job, and kills whole groups.

The worker writes ``+PGID`` when it starts a group and ``-PGID`` once it has reaped its leader,
on a pipe whose only write end it holds (close-on-exec, so its children never hold it). When
the worker dies the guard reads end-of-file and SIGKILLs the groups still registered. The guard
lives in a session of its own, so that a terminal's Ctrl-C reaches the worker, not the guard.
Its window: a group started but not yet registered when the worker dies survives (until its own
timeout; the job's lease expires meanwhile and the job is retried).

Run by its path (``python .../catalog/engines/guard.py``), importing only the standard library.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import threading


def main() -> int:
    """The guard's side: follow the registrations until end-of-file, then kill."""
    groups: set[int] = set()
    for line in sys.stdin.buffer:
        with contextlib.suppress(ValueError):
            pgid = int(line[1:])
            if line[:1] == b"+" and pgid > 1:
                groups.add(pgid)
            elif line[:1] == b"-":
                groups.discard(pgid)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    return 0


class Guard:
    """The worker's side: a guard process, restarted if it went away, shared by the
    process's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._owner = 0  # the pid that started the guard (a forked child needs its own)
        self._groups: set[int] = set()

    def _write(self, line: bytes) -> None:
        """Tell the guard ``line`` (the lock held), starting one if there is none."""
        for _ in range(2):
            if self._process is None or self._owner != os.getpid():
                self._start()
            assert self._process is not None and self._process.stdin is not None
            try:
                os.write(self._process.stdin.fileno(), line)
                return
            except OSError:  # the guard died (killed by someone): reap it, start another
                dead, self._process = self._process, None
                with contextlib.suppress(OSError):
                    self._close_stdin(dead)
                dead.wait()

    def _start(self) -> None:
        if self._owner != os.getpid():
            self._groups = set()  # a forked child's groups are its own, not its parent's
            atexit.register(self.close)
        self._owner = os.getpid()
        self._process = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__)], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        assert self._process.stdin is not None
        if self._groups:  # a guard that went away: the new one learns what is live
            os.write(self._process.stdin.fileno(),
                     b"".join(b"+%d\n" % pgid for pgid in self._groups))

    def watch(self, pgid: int) -> None:
        """Have group ``pgid`` killed if this process dies before ``release``."""
        with self._lock:
            self._write(b"+%d\n" % pgid)
            self._groups.add(pgid)

    def release(self, pgid: int) -> None:
        """Group ``pgid``'s leader has been reaped: no longer this process's to kill."""
        with self._lock:
            if pgid in self._groups:
                self._groups.discard(pgid)
                self._write(b"-%d\n" % pgid)

    @staticmethod
    def _close_stdin(process: subprocess.Popen[bytes]) -> None:
        if process.stdin is not None:
            process.stdin.close()

    def close(self) -> None:
        """At a clean exit: the guard ends (killing what is still registered) and is reaped."""
        with self._lock:
            process, self._process = self._process, None
            if process is None or self._owner != os.getpid():
                return
        with contextlib.suppress(OSError):
            self._close_stdin(process)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


GUARD = Guard()

if __name__ == "__main__":
    sys.exit(main())
