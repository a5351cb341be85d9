"""Hashing an index run's local files in worker processes, beside its record writes.

On small files hashing is mostly Python (open, read, hexdigest: some 30 µs a file), and a
thread doing it holds the GIL the record building and SQLite's parameter binding need: the
indexer's hashing thread overlapped almost nothing. A worker process hashes on another core
while the run builds and writes the previous chunk's records.

A pool costs its start: each worker is a new interpreter (``spawn``: forking a process that
runs threads can deadlock the child) that imports the catalog, about 0.4 s of CPU. Runs of
fewer than ``POOL_FILES`` files hash in a thread as before (the crossover measured with
``bench/hash_pool_crossover.py``); S3 storage always does (its reads wait on the network, which
threads overlap well, and its client is not shared across processes).

No worker outlives its run: the pool is shut down when the run ends or fails, a worker ignores
SIGINT (the parent stops it), and each worker watches its parent's sentinel and exits as soon
as the parent is gone, however it went (SIGTERM, SIGKILL).
"""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType

from catalog.errors import IndexingError
from catalog.fixity import HashResult, hash_many
from catalog.storage import LocalStorage

__all__ = ["POOL_FILES", "TASK_FILES", "HashPool", "pool_workers", "results"]

# Files a run must claim for its hashing to go to worker processes. Measured on 2 cores
# (bench/hash_pool_crossover.py, 4 KiB files): below it the worker's start-up costs more
# than taking the hashing off the run's thread saves.
POOL_FILES = 5000
TASK_FILES = 1000  # files per task handed to a worker: one round trip for many small files
_MAX_WORKERS = 4
_PARENT_CHECK_S = 60.0

_storage: LocalStorage | None = None  # a worker's own, made at its start


@functools.cache
def pool_workers() -> int:
    """Worker processes for a run: the cores this process may use but one (the run's own
    thread builds and writes records), at least one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(_MAX_WORKERS, cores - 1))


def _start_worker(root: str) -> None:
    """A worker's start: its storage, SIGINT left to the parent, and a watch on the parent."""
    global _storage
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the run
    _storage = LocalStorage(root)                 # stops the pool itself
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent.sentinel,), daemon=True,
                         name="catalog-hash-parent-watch").start()


def _exit_with_parent(sentinel: int) -> None:
    """Exit once the parent is gone (its sentinel becomes readable at its exit, however it
    exits): a parent killed mid-run leaves no worker waiting for work that never comes."""
    while not multiprocessing.connection.wait([sentinel], timeout=_PARENT_CHECK_S):
        pass
    os._exit(1)


def _hash_task(paths: list[str], algorithms: tuple[str, ...]
               ) -> dict[str, HashResult | Exception]:
    """In a worker: ``hash_many`` of ``paths`` on one thread (the process is the parallelism)."""
    assert _storage is not None, "a worker starts with _start_worker"
    return hash_many(_storage, paths, algorithms, workers=1)


class HashPool:
    """Worker processes hashing files of one ``LocalStorage``; use it as a context manager."""

    def __init__(self, storage: LocalStorage, workers: int | None = None) -> None:
        self._executor = ProcessPoolExecutor(
            workers or pool_workers(), mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker, initargs=(storage.root,))

    def submit(self, paths: list[str], algorithms: Iterable[str]
               ) -> list[Future[dict[str, HashResult | Exception]]]:
        """Tasks of up to ``TASK_FILES`` of ``paths``, each answering ``hash_many``'s dict."""
        names = tuple(algorithms)
        return [self._executor.submit(_hash_task, paths[start:start + TASK_FILES], names)
                for start in range(0, len(paths), TASK_FILES)]

    def pids(self) -> list[int]:
        """The workers' process ids (those started so far)."""
        processes = getattr(self._executor, "_processes", None) or {}
        return sorted(processes)

    def close(self) -> None:
        """Stop the workers (after the task each is running; queued tasks are dropped)."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> HashPool:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def results(futures: list[Future[dict[str, HashResult | Exception]]]
            ) -> dict[str, HashResult | Exception]:
    """The tasks' answers merged; a worker that died is an IndexingError (the run stops)."""
    merged: dict[str, HashResult | Exception] = {}
    for future in futures:
        try:
            merged.update(future.result())
        except BrokenProcessPool as exc:
            raise IndexingError(f"a hashing worker process ended abruptly: {exc}") from None
    return merged
