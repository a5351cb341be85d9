"""Fixity: digests against hashlib and xxhash run directly, on local storage, S3 and streams."""

from __future__ import annotations

import hashlib
import io
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import xxhash
from s3server import create_bucket, delete_bucket

from catalog import fixity
from catalog.errors import InvalidInput, UnsafePath
from catalog.fixity import (
    ALGORITHMS,
    BLOCK_SIZE,
    DEFAULT_ALGORITHMS,
    NO_COMMON_DIGEST,
    check,
    compare,
    hash_file,
    hash_many,
    hash_stream,
    normalise_algorithms,
)
from catalog.models import FixityCheck
from catalog.storage import LocalStorage, S3Storage, Storage

SMALL_BLOCK = 64 * 1024
MiB = 1024 * 1024


def expected(data: bytes, algorithms: tuple[str, ...] = ALGORITHMS) -> tuple[int, dict[str, str]]:
    """What the digests must be, computed with hashlib and xxhash directly, in one call each."""
    independent = {
        "xxh3_128": lambda: xxhash.xxh3_128(data).hexdigest(),
        "sha256": lambda: hashlib.sha256(data).hexdigest(),
        "md5": lambda: hashlib.md5(data, usedforsecurity=False).hexdigest(),
    }
    return len(data), {name: independent[name]() for name in algorithms}


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that differ everywhere (so a skipped or repeated block would show)."""
    return random.Random(seed).randbytes(size)


# Sizes around the block boundary of SMALL_BLOCK, and a few MiB (many blocks, last one short).
SIZES = {
    "empty": 0,
    "one byte": 1,
    "one block": SMALL_BLOCK,
    "block + 1": SMALL_BLOCK + 1,
    "few MiB": 3 * MiB + 12345,
}


# --- storages -------------------------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "local":
        yield LocalStorage(tmp_path / "root")
        return
    client = request.getfixturevalue("s3")
    bucket = create_bucket(client)
    yield S3Storage(bucket, prefix="archive", client=client)
    delete_bucket(client, bucket)


@pytest.fixture
def local(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "root")


# --- streams without the usual shape ---------------------------------------------------------


class ReadOnlyStream(io.RawIOBase):
    """A stream offering ``read`` but no ``readinto`` (hash_stream must fall back to read)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def __getattribute__(self, name: str) -> Any:
        if name == "readinto":
            raise AttributeError(name)
        return super().__getattribute__(name)

    def read(self, size: int = -1) -> bytes:
        return self._data.read(size)


class ShortReads(io.RawIOBase):
    """``readinto`` returning at most ``most`` bytes at a time, as network streams do."""

    def __init__(self, data: bytes, most: int = 1000) -> None:
        self._data = io.BytesIO(data)
        self._most = most

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        return self._data.readinto(view[: self._most])


STREAMS: dict[str, Callable[[bytes], Any]] = {
    "BytesIO": io.BytesIO,
    "read only": ReadOnlyStream,
    "short reads": ShortReads,
}


# --- normalise_algorithms --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "normalised"),
    [
        (None, ("xxh3_128", "sha256")),
        ((), ("xxh3_128",)),
        (["sha256"], ("xxh3_128", "sha256")),
        (["md5", "sha256", "xxh3_128"], ("xxh3_128", "sha256", "md5")),
        (["md5", "md5"], ("xxh3_128", "md5")),
        (["SHA256 "], ("xxh3_128", "sha256")),
        ("md5", ("xxh3_128", "md5")),
        (DEFAULT_ALGORITHMS, DEFAULT_ALGORITHMS),
    ],
)
def test_normalise_algorithms(names: Any, normalised: tuple[str, ...]) -> None:
    assert normalise_algorithms(names) == normalised


def test_normalise_algorithms_names_every_unknown_algorithm() -> None:
    with pytest.raises(InvalidInput, match=r"crc32, sha1") as raised:
        normalise_algorithms(["sha256", "sha1", "crc32"])
    assert raised.value.code == "invalid_input"


# --- hash_stream / hash_file -----------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_hash_file_matches_independent_digests(storage: Storage, size: int) -> None:
    data = payload(size, seed=size)
    storage.write("/products/x/f.bin", data)
    assert hash_file(storage, "/products/x/f.bin", ALGORITHMS, SMALL_BLOCK) == expected(data)


@pytest.mark.parametrize("algorithms", [("xxh3_128",), DEFAULT_ALGORITHMS, ALGORITHMS],
                         ids="+".join)
@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("stream", STREAMS.values(), ids=STREAMS.keys())
def test_hash_stream_matches_independent_digests(
    stream: Callable[[bytes], Any], size: int, algorithms: tuple[str, ...]
) -> None:
    data = payload(size, seed=3)
    assert hash_stream(stream(data), algorithms, SMALL_BLOCK) == expected(data, algorithms)


@pytest.mark.parametrize("size", [0, 1, BLOCK_SIZE, BLOCK_SIZE + 1, 2 * BLOCK_SIZE + 5 * MiB],
                         ids=["empty", "one byte", "one block", "block + 1", "2.6 blocks"])
def test_hash_file_at_the_default_block_size(local: LocalStorage, size: int) -> None:
    data = payload(size, seed=1)
    local.write("/products/x/f.bin", data)
    assert hash_file(local, "/products/x/f.bin", ALGORITHMS) == expected(data)


def test_one_cpu_hashes_in_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fixity, "_cores", lambda: 1)
    monkeypatch.setattr(fixity, "_hash_pipelined", None)  # would fail if it were called
    data = payload(5 * SMALL_BLOCK + 3)
    assert hash_stream(io.BytesIO(data), ALGORITHMS, SMALL_BLOCK) == expected(data)


def test_hash_stream_always_includes_xxh3_and_defaults_to_sha256() -> None:
    data = payload(1000)
    assert hash_stream(io.BytesIO(data), ["md5"]) == expected(data, ("xxh3_128", "md5"))
    assert hash_stream(io.BytesIO(data)) == expected(data, DEFAULT_ALGORITHMS)


def test_hash_stream_reads_once_and_leaves_the_stream_open() -> None:
    stream = io.BytesIO(payload(SMALL_BLOCK * 3))
    hash_stream(stream, ALGORITHMS, SMALL_BLOCK)
    assert not stream.closed
    assert stream.read() == b""


def test_hash_stream_refuses_unknown_algorithms_and_bad_block_sizes() -> None:
    with pytest.raises(InvalidInput, match="sha1"):
        hash_stream(io.BytesIO(b"x"), ["sha1"])
    with pytest.raises(InvalidInput, match="block_size"):
        hash_stream(io.BytesIO(b"x"), block_size=0)


class FailingStream(io.RawIOBase):
    """Gives ``good`` bytes, then fails the way a disk or a connection does."""

    def __init__(self, good: int) -> None:
        self._data = io.BytesIO(payload(good))

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self._data.readinto(buffer)
        if not count:
            raise OSError("read error")
        return count


@pytest.mark.parametrize("good", [0, 10 * SMALL_BLOCK], ids=["at once", "mid-stream"])
def test_a_read_error_is_raised_and_leaves_no_thread_behind(good: int) -> None:
    before = threading.active_count()
    with pytest.raises(OSError, match="read error"):
        hash_stream(FailingStream(good), ALGORITHMS, SMALL_BLOCK)
    assert threading.active_count() == before


def test_hash_file_closes_the_stream(local: LocalStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    local.write("/products/x/f.bin", b"abc")
    opened: list[Any] = []
    original = local.open

    def spy(path: str) -> Any:
        opened.append(original(path))
        return opened[-1]

    monkeypatch.setattr(local, "open", spy)
    hash_file(local, "/products/x/f.bin")
    assert [stream.closed for stream in opened] == [True]


@pytest.mark.parametrize(("path", "error"), [("/products/x/absent.bin", FileNotFoundError),
                                             ("/products/../../etc/passwd", UnsafePath)])
def test_hash_file_raises_what_storage_raises(
    local: LocalStorage, path: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        hash_file(local, path)


# --- hash_many -------------------------------------------------------------------------------


@pytest.fixture
def tree(local: LocalStorage) -> dict[str, bytes]:
    """50 files of different sizes (some empty, some over a SMALL_BLOCK)."""
    files = {f"/products/tree/{i:02d}.bin": payload(i * 4099 % (3 * SMALL_BLOCK), seed=i)
             for i in range(50)}
    for path, data in files.items():
        local.write(path, data)
    return files


def test_hash_many_in_parallel_equals_serial_and_independent(
    local: LocalStorage, tree: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fixity, "_SLOW_FILE_S", 0.0)  # every file brings in another thread
    names: set[str] = set()
    paths = list(tree)
    parallel = hash_many(local, paths, ALGORITHMS, workers=8, block_size=SMALL_BLOCK,
                         on_done=lambda path, size: names.add(threading.current_thread().name))
    assert len(names) > 1
    serial = {path: hash_file(local, path, ALGORITHMS) for path in paths}
    assert parallel == serial
    assert parallel == {path: expected(data) for path, data in tree.items()}
    assert list(parallel) == paths  # in the order asked


def test_hash_many_returns_per_file_errors(local: LocalStorage, tree: dict[str, bytes]) -> None:
    paths = [*tree, "/products/tree/absent.bin", "/products/../outside.bin"]
    results = hash_many(local, paths, DEFAULT_ALGORITHMS)
    assert isinstance(results["/products/tree/absent.bin"], FileNotFoundError)
    assert isinstance(results["/products/../outside.bin"], UnsafePath)
    assert all(results[path] == expected(data, DEFAULT_ALGORITHMS)
               for path, data in tree.items())


def test_hash_many_calls_on_done_once_per_file_one_call_at_a_time(
    local: LocalStorage, tree: dict[str, bytes]
) -> None:
    calls: list[tuple[str, int]] = []
    inside = threading.Semaphore(1)
    overlapped = []

    def on_done(path: str, size: int) -> None:
        if not inside.acquire(blocking=False):
            overlapped.append(path)
        time.sleep(0.001)  # give another worker the chance to call in meanwhile
        calls.append((path, size))
        inside.release()

    paths = [*tree, "/products/tree/absent.bin", next(iter(tree))]  # one missing, one repeated
    hash_many(local, paths, workers=8, on_done=on_done)
    assert sorted(calls) == sorted([*((p, len(d)) for p, d in tree.items()),
                                    ("/products/tree/absent.bin", 0)])
    assert overlapped == []


def test_an_error_in_on_done_stops_the_work_and_is_raised(
    local: LocalStorage, tree: dict[str, bytes]
) -> None:
    calls = []

    def on_done(path: str, size: int) -> None:
        calls.append(path)
        if len(calls) == 1:
            raise RuntimeError("progress bar broke")

    before = threading.active_count()
    with pytest.raises(RuntimeError, match="progress bar broke"):
        hash_many(local, list(tree), workers=2, on_done=on_done)
    assert len(calls) < 10  # the other worker stopped soon after, not at the end of the list
    assert threading.active_count() == before


def test_hash_many_on_each_storage(storage: Storage) -> None:
    files = {f"/products/s3/{i}.bin": payload(i * 1000, seed=i) for i in range(6)}
    for path, data in files.items():
        storage.write(path, data)
    results = hash_many(storage, [*files, "/products/s3/absent.bin"], ALGORITHMS, workers=3)
    assert isinstance(results.pop("/products/s3/absent.bin"), FileNotFoundError)
    assert results == {path: expected(data) for path, data in files.items()}


class DelayedStorage:
    """Storage whose ``open`` waits first, as a remote store does; counts concurrent reads."""

    kind = "delayed"

    def __init__(self, delay: Callable[[str], float]) -> None:
        self._delay = delay
        self._lock = threading.Lock()
        self._reading = 0
        self.concurrency: list[int] = []  # how many reads were under way as each began

    def open(self, path: str) -> io.BytesIO:
        with self._lock:
            self._reading += 1
            self.concurrency.append(self._reading)
        try:
            time.sleep(self._delay(path))
            return io.BytesIO(path.encode() * 100)
        finally:
            with self._lock:
                self._reading -= 1


def test_hash_many_adds_threads_for_slow_files() -> None:
    storage = DelayedStorage(lambda path: 0.05)
    paths = [f"/products/slow/{i}" for i in range(20)]
    results = hash_many(storage, paths, workers=4)  # type: ignore[arg-type]
    assert results == {path: expected(path.encode() * 100, DEFAULT_ALGORITHMS) for path in paths}
    assert max(storage.concurrency) == 4


def test_hash_many_retires_threads_on_quick_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fixity, "_SLOW_FILE_S", 0.02)  # no quick file ever takes this long
    paths = [f"/products/mixed/{i}" for i in range(300)]
    slow = set(paths[:8])
    storage = DelayedStorage(lambda path: 0.2 if path in slow else 0.0)
    results = hash_many(storage, paths, workers=4)  # type: ignore[arg-type]
    assert len(results) == len(paths)
    assert max(storage.concurrency) == 4  # the slow files brought more threads in
    # each thread retires after _QUICK_RUN quick files while another is left: at most 4 * 16
    assert storage.concurrency[-100:] == [1] * 100


def test_hash_many_with_nothing_to_do(local: LocalStorage) -> None:
    assert hash_many(local, []) == {}


def test_hash_many_refuses_bad_arguments_before_reading(local: LocalStorage) -> None:
    with pytest.raises(InvalidInput, match="sha1"):
        hash_many(local, ["/products/x"], ["sha1"])
    with pytest.raises(InvalidInput, match="workers"):
        hash_many(local, ["/products/x"], workers=0)


def test_default_workers(monkeypatch: pytest.MonkeyPatch, local: LocalStorage,
                         tree: dict[str, bytes]) -> None:
    seen: list[int] = []
    real = fixity.ThreadPoolExecutor

    def recording(max_workers: int, **kwargs: Any) -> Any:
        seen.append(max_workers)
        return real(max_workers, **kwargs)

    monkeypatch.setattr(fixity, "ThreadPoolExecutor", recording)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    hash_many(local, list(tree), ["xxh3_128"])
    assert seen == [4]


# --- compare and check -----------------------------------------------------------------------

RECORDED = {"xxh3_128": "aa", "sha256": "bb"}


@pytest.mark.parametrize(
    ("recorded", "size_recorded", "size_now", "found", "outcome", "changed"),
    [
        (RECORDED, 10, 10, {"xxh3_128": "aa", "sha256": "bb"}, "ok", []),
        (RECORDED, 10, 10, {"xxh3_128": "AA", "sha256": "BB"}, "ok", []),
        (RECORDED, 10, 10, {"xxh3_128": "aa", "sha256": "bc"}, "changed", ["sha256"]),
        (RECORDED, 10, 10, {"xxh3_128": "ab", "sha256": "bc"}, "changed", ["xxh3_128", "sha256"]),
        (RECORDED, 10, 11, {"xxh3_128": "aa", "sha256": "bb"}, "changed", ["size"]),
        (RECORDED, 10, 11, {"xxh3_128": "ab", "sha256": "bb"}, "changed", ["xxh3_128", "size"]),
        (RECORDED, 10, None, None, "missing", []),
        (RECORDED, None, 10, {"xxh3_128": "aa"}, "ok", []),  # only what both sides have
        ({"xxh3_128": "aa"}, 10, 10, {"xxh3_128": "aa", "md5": "cc"}, "ok", []),
        ({"md5": "cc"}, 10, 10, {"xxh3_128": "aa"}, "changed", [NO_COMMON_DIGEST]),
        ({}, 10, 11, {"xxh3_128": "aa"}, "changed", [NO_COMMON_DIGEST, "size"]),
    ],
    ids=["ok", "ok ignoring case", "one digest changed", "two digests changed", "size changed",
         "digest and size changed", "missing", "common subset", "extra digest",
         "disjoint algorithms", "nothing recorded"],
)
def test_compare(recorded: dict[str, str], size_recorded: int | None, size_now: int | None,
                 found: dict[str, str] | None, outcome: str, changed: list[str]) -> None:
    assert compare(recorded, size_recorded, size_now, found) == (outcome, changed)


def test_compare_a_real_bit_flip(local: LocalStorage) -> None:
    data = bytearray(payload(SMALL_BLOCK + 1))
    local.write("/products/x/f.bin", bytes(data))
    size, recorded = hash_file(local, "/products/x/f.bin", ALGORITHMS)
    data[SMALL_BLOCK] ^= 0x01  # in the second block
    local.write("/products/x/f.bin", bytes(data))
    size_now, found = hash_file(local, "/products/x/f.bin", ALGORITHMS, SMALL_BLOCK)
    assert compare(recorded, size, size_now, found) == ("changed", list(ALGORITHMS))


def test_check_is_a_fixity_check_document() -> None:
    date = datetime(2026, 11, 21, 12, 0, 0, 123456, tzinfo=UTC)
    document = check(date, "changed", 10, {"xxh3_128": "aa"}, ["xxh3_128"])
    assert document == {"date": "2026-11-21T12:00:00.123Z", "outcome": "changed", "size": 10,
                        "checksums": {"xxh3_128": "aa"}, "changed": ["xxh3_128"]}
    assert FixityCheck.model_validate(document).outcome == "changed"
    assert check(date, "missing", None, {})["changed"] == []
