"""Fixity: every configured digest of a file computed in one streaming pass (DESIGN §6).

``xxh3_128`` is always computed (it is nearly free next to the read); ``sha256`` is on by default
for tamper evidence; ``md5`` is optional. A file is read once, in large blocks, into reused
buffers; when more than one digest is asked, the slower ones are updated in their own threads
(hashlib and xxhash release the GIL on large buffers) while the next block is being read, so
with two cores or more a pass costs about as much as the slowest digest alone. ``hash_many``
hashes several files at once.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any, BinaryIO, Literal, Protocol

import xxhash

from catalog.errors import CatalogError, InvalidInput
from catalog.models import FixityOutcome, format_date
from catalog.storage.base import Storage

__all__ = [
    "ALGORITHMS",
    "BLOCK_SIZE",
    "DEFAULT_ALGORITHMS",
    "NO_COMMON_DIGEST",
    "check",
    "compare",
    "constructors",
    "hash_file",
    "hash_many",
    "hash_stream",
    "hashers",
    "normalise_algorithms",
]

ALGORITHMS = ("xxh3_128", "sha256", "md5")
DEFAULT_ALGORITHMS = ("xxh3_128", "sha256")
BLOCK_SIZE = 8 * 1024 * 1024
NO_COMMON_DIGEST = "no common digest"

# Most archived files are small: a first buffer this size keeps them from paying for zeroing an
# 8 MiB one (about 0.25 ms, far more than hashing 4 KiB). Buffers grow by _GROWTH up to a block.
_FIRST_BUFFER = 64 * 1024
_GROWTH = 8
# Buffers in turn when the slower digests run in their own threads: one being read while the
# other is hashed. A third bought nothing measurable (1 GiB file, 2 cores) and costs 8 MiB more.
_PIPELINE_DEPTH = 2
# hash_many adds a thread after a file that took longer than this (times the threads sharing
# the GIL): such a file waited on storage or hashed large blocks, both without the GIL. Small
# files in memory take ~0.06 ms, nearly all of it Python. A thread retires after _QUICK_RUN
# quick files in a row.
_SLOW_FILE_S = 0.001
_QUICK_RUN = 16


class _Digest(Protocol):
    def update(self, data: Any, /) -> None: ...

    def hexdigest(self) -> str: ...


_CONSTRUCTORS: dict[str, Callable[[], _Digest]] = {
    "xxh3_128": xxhash.xxh3_128,
    "sha256": hashlib.sha256,
    "md5": lambda: hashlib.md5(usedforsecurity=False),
}

HashResult = tuple[int, dict[str, str]]
Outcome = Literal["ok", "changed", "missing"]


def normalise_algorithms(names: Iterable[str] | None = None) -> tuple[str, ...]:
    """The digests to compute: ``names`` (None: the defaults) plus ``xxh3_128``, in
    ``ALGORITHMS`` order."""
    if names is None:
        names = DEFAULT_ALGORITHMS
    if isinstance(names, str):
        names = [names]  # one name, not its letters
    wanted = {name.strip().lower() for name in names} | {"xxh3_128"}
    unknown = sorted(wanted - set(ALGORITHMS))
    if unknown:
        raise InvalidInput(
            f"unknown checksum algorithm(s): {', '.join(unknown)}; "
            f"known: {', '.join(ALGORITHMS)}"
        )
    return tuple(name for name in ALGORITHMS if name in wanted)


def hashers(algorithms: Iterable[str]) -> dict[str, _Digest]:
    """A fresh digest object (``update``, ``hexdigest``) for each of ``algorithms``
    (normalised: ``xxh3_128`` included), for a caller that reads the bytes itself."""
    return {name: _CONSTRUCTORS[name]() for name in normalise_algorithms(algorithms)}


def constructors(algorithms: Iterable[str]) -> tuple[tuple[str, Callable[[], _Digest]], ...]:
    """``(name, constructor)`` of each of ``algorithms`` (normalised): for a caller that makes
    fresh digests for many files, worked out once rather than per file as ``hashers`` does."""
    return tuple((name, _CONSTRUCTORS[name]) for name in normalise_algorithms(algorithms))


def hash_stream(
    stream: BinaryIO, algorithms: Iterable[str] = DEFAULT_ALGORITHMS, block_size: int = BLOCK_SIZE
) -> HashResult:
    """Read ``stream`` to its end once; return (bytes read, {algorithm: lowercase hex digest}).

    ``algorithms`` go through ``normalise_algorithms``, so ``xxh3_128`` is always included.
    The stream is not closed.
    """
    names = normalise_algorithms(algorithms)
    _check_block_size(block_size)
    return _hash_stream(stream, names, block_size)


def _check_block_size(block_size: int) -> None:
    if block_size < 1:
        raise InvalidInput(f"block_size must be positive, got {block_size}")


def _hash_stream(stream: BinaryIO, names: tuple[str, ...], block_size: int) -> HashResult:
    digests = [_CONSTRUCTORS[name]() for name in names]
    # Most archived files are small: read them whole, with no buffer to allocate and zero,
    # and stream only what is larger than the first read.
    first_size = min(block_size, _FIRST_BUFFER)
    size = 0
    chunk = stream.read(first_size)
    while chunk:
        size += len(chunk)
        for digest in digests:
            digest.update(chunk)
        if len(chunk) == first_size:
            break  # a large file, likely: on with growing buffers
        chunk = stream.read(first_size)  # a short read is not always the end: make sure
    else:
        return size, _hex(names, digests)
    readinto = getattr(stream, "readinto", None)
    if callable(readinto):
        size += _hash_readinto(readinto, digests, block_size)
    else:
        size += _hash_reads(stream.read, digests, block_size)
    return size, _hex(names, digests)


def _hex(names: tuple[str, ...], digests: list[_Digest]) -> dict[str, str]:
    return {name: digest.hexdigest() for name, digest in zip(names, digests, strict=True)}


def _hash_reads(read: Callable[[int], bytes], digests: list[_Digest], block_size: int) -> int:
    """For streams without ``readinto``: one new ``bytes`` per block."""
    size = 0
    while chunk := read(block_size):
        size += len(chunk)
        for digest in digests:
            digest.update(chunk)
    return size


def _hash_readinto(
    readinto: Callable[[memoryview], int | None], digests: list[_Digest], block_size: int
) -> int:
    size = 0
    view = memoryview(bytearray(min(block_size, _FIRST_BUFFER * _GROWTH)))
    while count := readinto(view):
        size += count
        chunk = view[:count] if count < len(view) else view
        for digest in digests:
            digest.update(chunk)
        if count == len(view):  # the stream may well go on: read more at a time
            if len(view) < block_size:
                view = memoryview(bytearray(min(block_size, len(view) * _GROWTH)))
            elif len(digests) > 1 and _cores() > 1:
                return size + _hash_pipelined(readinto, digests, view, block_size)
    return size


@functools.cache
def _cores() -> int:
    """CPUs this process may run on: with one, hashing in threads only adds handovers."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _hash_pipelined(
    readinto: Callable[[memoryview], int | None],
    digests: list[_Digest],
    first: memoryview,
    block_size: int,
) -> int:
    """The rest of a large stream: this thread reads and updates the first (fastest) digest; each
    other digest has one thread of its own, which keeps its blocks in order."""
    lead, others = digests[0], digests[1:]
    buffers = [first]
    in_flight: list[list[Future[None]]] = [[]]
    executors = [ThreadPoolExecutor(1, thread_name_prefix="fixity") for _ in others]
    size = 0
    slot = 0
    try:
        while True:
            slot = (slot + 1) % _PIPELINE_DEPTH
            if slot == len(buffers):
                buffers.append(memoryview(bytearray(block_size)))
                in_flight.append([])
            for future in in_flight[slot]:
                future.result()  # this buffer is still being hashed: wait before reusing it
            view = buffers[slot]
            count = readinto(view)
            if not count:
                break
            size += count
            chunk = view[:count] if count < len(view) else view
            lead.update(chunk)
            in_flight[slot] = [
                executor.submit(digest.update, chunk)
                for executor, digest in zip(executors, others, strict=True)
            ]
    finally:
        for executor in executors:
            executor.shutdown(wait=True)
    for futures in in_flight:
        for future in futures:
            future.result()  # re-raise anything a digest thread raised
    return size


def hash_file(
    storage: Storage, path: str, algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
    block_size: int = BLOCK_SIZE,
) -> HashResult:
    """``hash_stream`` over one stored file, opened through ``storage`` and closed after."""
    with storage.open(path) as stream:
        return hash_stream(stream, algorithms, block_size)


def _per_file_errors() -> tuple[type[Exception], ...]:
    """What reading one file may raise without the others being affected."""
    errors: tuple[type[Exception], ...] = (OSError, CatalogError)
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # pragma: no cover - boto3 is a dependency, but S3 is optional at runtime
        return errors
    return (*errors, BotoCoreError, ClientError)


def hash_many(
    storage: Storage,
    paths: Iterable[str],
    algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
    workers: int | None = None,
    on_done: Callable[[str, int], None] | None = None,
    block_size: int = BLOCK_SIZE,
) -> dict[str, HashResult | Exception]:
    """Hash many stored files in parallel threads: {path: (size, digests) or the error}.

    Errors reading one file (missing, unreadable, an unsafe path, an S3 error) become that
    file's value instead of being raised; the dict follows the order of ``paths``.
    ``on_done(path, size)`` is called once per file as it finishes (size 0 for a file that
    failed), from the worker threads but one call at a time, so a progress bar can be updated
    from it without a lock of its own; an exception it raises stops the work and is raised here.

    ``workers`` (default ``min(8, os.cpu_count() + 2)``) is the most threads used. Work starts
    on one thread; another is added whenever a file takes long (waiting on storage, or hashing
    large blocks, both without the GIL), and a thread retires after a run of quick files: on
    small files already in memory the work is Python holding the GIL, and more threads only
    pass it back and forth (20,000 files of 4 KiB: 3x slower on 4 threads than on one).
    """
    names = normalise_algorithms(algorithms)
    _check_block_size(block_size)
    if workers is None:
        workers = min(8, (os.cpu_count() or 1) + 2)
    if workers < 1:
        raise InvalidInput(f"workers must be positive, got {workers}")
    unique = list(dict.fromkeys(paths))
    recoverable = _per_file_errors()
    results: dict[str, HashResult | Exception] = {}
    # Each worker takes the next path until none is left: one task per file would cost more in
    # handing work and results between threads than hashing a small file does.
    pending = iter(unique)
    taking, reporting = threading.Lock(), threading.Lock()
    stop, slow, wake = threading.Event(), threading.Event(), threading.Event()
    active = 0  # workers started and not retired, changed under ``taking``

    def work() -> None:
        nonlocal active
        quick = 0
        try:
            while not stop.is_set():
                with taking:
                    path = None if quick >= _QUICK_RUN and active > 1 else next(pending, None)
                    if path is None:
                        active -= 1
                        return
                    sharing = active
                started = time.perf_counter()
                result: HashResult | Exception
                try:
                    with storage.open(path) as stream:
                        result = _hash_stream(stream, names, block_size)
                except recoverable as error:
                    result = error
                results[path] = result
                # Threads sharing the GIL slow each other's files down about that many times.
                if time.perf_counter() - started > _SLOW_FILE_S * sharing:
                    quick = 0
                    slow.set()
                    wake.set()
                else:
                    quick += 1
                if on_done is not None:
                    with reporting:
                        on_done(path, 0 if isinstance(result, Exception) else result[0])
        except BaseException:
            stop.set()  # the others finish their current file and stop
            raise

    with ThreadPoolExecutor(workers, thread_name_prefix="fixity") as executor:
        running: set[Future[None]] = set()
        slow.set()  # to start the first worker
        while True:
            if slow.is_set() and not stop.is_set():
                slow.clear()
                with taking:
                    another = active < workers
                    active += another
                if another:
                    future = executor.submit(work)
                    future.add_done_callback(lambda _: wake.set())
                    running.add(future)
            for future in [future for future in running if future.done()]:
                running.discard(future)
                future.result()  # a worker's error, once the others have been told to stop
            if not running:
                break
            wake.wait()
            wake.clear()
    return {path: results[path] for path in unique}


def compare(
    recorded: dict[str, str],
    size_recorded: int | None,
    size_now: int | None,
    found: dict[str, str] | None,
) -> tuple[Outcome, list[str]]:
    """Compare a new reading with the record: ("ok" | "changed" | "missing", what differs).

    ``found`` is None when the file is gone ("missing", []). Otherwise every algorithm present
    on both sides is compared (hex digests case-insensitively), in ``ALGORITHMS`` order, then
    the sizes when both are known ("size"). A reading that shares no digest with the record
    cannot vouch for the content, so it is never "ok": it is "changed" with
    ``NO_COMMON_DIGEST`` listed. Hashing with at least the recorded algorithms keeps that to
    records that have no checksum at all.
    """
    if found is None:
        return "missing", []
    common = [name for name in ALGORITHMS if name in recorded and name in found]
    changed = [name for name in common if recorded[name].lower() != found[name].lower()]
    if not common:
        changed.append(NO_COMMON_DIGEST)
    if size_recorded is not None and size_now is not None and size_recorded != size_now:
        changed.append("size")
    return ("changed" if changed else "ok"), changed


def check(
    date: datetime | str,
    outcome: FixityOutcome,
    size: int | None,
    checksums: dict[str, str],
    changed: list[str] | None = None,
) -> dict[str, Any]:
    """One fixity check as stored on a file record (a ``FixityCheck`` in JSON form).

    Built as the JSON form directly: it runs once per file when indexing thousands of them,
    and every part is made here (tests hold it to the ``FixityCheck`` schema). ``date`` may be
    given already formatted (``format_date``), as indexing does for all its files at once."""
    return {"date": date if isinstance(date, str) else format_date(date),
            "outcome": outcome, "size": size,
            "checksums": dict(checksums), "changed": list(changed or [])}
