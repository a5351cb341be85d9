"""Hashing an index run's local files in worker processes, beside its record writes.

On small files hashing is mostly Python (open, read, hexdigest: some 30 µs a file), and a
thread doing it holds the GIL that the record building and SQLite's parameter binding need: the
indexer's hashing thread overlapped little. A worker process hashes on another core while the
run builds and writes the chunk before.

Each worker is ``python -m catalog.hash_worker``, talking pickles over its stdin and stdout
(not ``multiprocessing``: its ``spawn`` re-runs the parent's main script in every child, which
for a script that indexes at top level means indexing again, and ``fork`` in a process that
runs threads can deadlock the child). A worker costs its start, an interpreter importing the
catalog (about 0.4 s of CPU, on another core): the run hashes on its own thread until a worker
has started, and runs of fewer than ``POOL_FILES`` files start none. S3 storage always hashes
on threads (its reads wait on the network, which threads overlap well).

No worker outlives its run: each is in a process group of its own (a terminal's Ctrl-C goes to
the parent, which stops it), the pool closes every worker's input when the run ends or fails
and reaps it, and a worker ends at the end of its input, which comes as well when the parent
dies however it died (SIGTERM, SIGKILL): only the parent holds the other end of the pipe.
"""

from __future__ import annotations

import functools
import os
import pickle
import queue
import subprocess
import sys
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType

from catalog.errors import IndexingError
from catalog.fixity import HashResult
from catalog.hash_worker import READY
from catalog.storage import LocalStorage

__all__ = ["POOL_FILES", "TASK_FILES", "HashPool", "pool_workers", "results"]

# Files a run must claim for its hashing to go to worker processes. Measured on this 2-core
# host (bench/hash_pool_crossover.py, 4 KiB files, load 2-5), pool vs thread files/s: 0.39 at
# 2,000 files, 0.60 at 5,000, 0.74 at 10,000, 0.86 at 20,000, and 0.86 at 200,000
# (4,260 vs 4,932 files/s, one run each): no crossover. The run's own thread (record building
# and SQLite writes) is the bottleneck, and the hashing thread already overlaps the writes
# (SQLite releases the GIL while it works), so a worker only adds its start and its pickles.
# Hence the threshold sits above every tree measured; with more cores or larger files, measure.
POOL_FILES = 1_000_000
TASK_FILES = 1000  # files per task handed to a worker: one round trip for many small files
_MAX_WORKERS = 4
_EXIT_WAIT_S = 10.0  # for a worker to end once its input is closed, before it is killed

Answer = dict[str, HashResult | Exception]
_Task = tuple[list[str], tuple[str, ...], "Future[Answer]"]


@functools.cache
def pool_workers() -> int:
    """Worker processes for a run: the cores this process may use but one (the run's own
    thread builds and writes records), at least one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(_MAX_WORKERS, cores - 1))


class _Worker:
    """One worker process, and the thread of this process that hands it tasks in turn."""

    def __init__(self, root: str, tasks: queue.SimpleQueue[_Task | None],
                 broken: threading.Event) -> None:
        package_parent = str(Path(__file__).resolve().parent.parent)
        path = os.environ.get("PYTHONPATH")
        environment = {**os.environ, "PYTHONPATH": package_parent + (
            os.pathsep + path if path else "")}  # this very catalog, wherever it came from
        self.process = subprocess.Popen(
            [sys.executable, "-m", "catalog.hash_worker", root], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=environment, process_group=0)
        self._tasks, self._broken = tasks, broken
        self.ready = threading.Event()  # set once the worker has started (its imports done)
        self.thread = threading.Thread(target=self._serve, daemon=True,
                                       name=f"catalog-hash-worker:{self.process.pid}")
        self.thread.start()

    def _serve(self) -> None:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        try:
            if stdout.read(len(READY)) == READY:
                self.ready.set()
            while (task := self._tasks.get()) is not None:
                paths, algorithms, future = task
                if not future.set_running_or_notify_cancel():
                    continue
                if self._broken.is_set():
                    future.set_exception(IndexingError("a hashing worker process ended "
                                                       "abruptly: the run stopped"))
                    continue
                try:
                    pickle.dump((paths, algorithms), stdin, protocol=pickle.HIGHEST_PROTOCOL)
                    stdin.flush()
                    answer: Answer = pickle.load(stdout)
                except (OSError, EOFError, pickle.UnpicklingError) as exc:
                    self._broken.set()
                    future.set_exception(IndexingError(
                        f"a hashing worker process ended abruptly "
                        f"(exit status {self.process.poll()}): {type(exc).__name__}"))
                else:
                    future.set_result(answer)
        finally:
            self._stop()

    def _stop(self) -> None:
        """Close the worker's input (it ends at its end) and reap it, killed if it lingers."""
        for stream in (self.process.stdin, self.process.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        try:
            self.process.wait(_EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class HashPool:
    """Worker processes hashing files of one ``LocalStorage``; use it as a context manager.
    The workers start at once (their start-up overlaps the run's first chunk)."""

    def __init__(self, storage: LocalStorage, workers: int | None = None) -> None:
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._broken = threading.Event()
        self._workers: list[_Worker] = []
        try:
            for _ in range(workers or pool_workers()):
                self._workers.append(_Worker(storage.root, self._tasks, self._broken))
        except BaseException:
            self.close()
            raise

    def submit(self, paths: list[str], algorithms: Iterable[str]) -> list[Future[Answer]]:
        """Tasks of up to ``TASK_FILES`` of ``paths``, each answering ``hash_many``'s dict."""
        names = tuple(algorithms)
        futures: list[Future[Answer]] = []
        for start in range(0, len(paths), TASK_FILES):
            future: Future[Answer] = Future()
            self._tasks.put((paths[start:start + TASK_FILES], names, future))
            futures.append(future)
        return futures

    def ready(self) -> bool:
        """Whether a worker has started: until then a run hashes on its own thread, rather
        than wait for a worker's start-up (about 0.4 s of imports, far more on a busy host)."""
        return any(worker.ready.is_set() for worker in self._workers)

    def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every worker to start; whether they all did."""
        return all(worker.ready.wait(timeout) for worker in self._workers)

    def pids(self) -> list[int]:
        """The workers' process ids."""
        return [worker.process.pid for worker in self._workers]

    def close(self) -> None:
        """Drop the tasks not started, let each worker finish the one it is on, then end and
        reap every worker."""
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                break
            if task is not None:
                task[2].cancel()
        for _ in self._workers:
            self._tasks.put(None)
        for worker in self._workers:
            worker.thread.join()

    def __enter__(self) -> HashPool:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def results(futures: list[Future[Answer]]) -> Answer:
    """The tasks' answers merged (an IndexingError if a worker died: the run stops)."""
    merged: Answer = {}
    for future in futures:
        merged.update(future.result())
    return merged
