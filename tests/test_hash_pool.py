"""Hashing in worker processes (catalog.hash_pool): same answers, used only for large local
trees, and no worker left behind when the run ends, fails, or its process is terminated."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid as uuid_module
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import xxhash

from catalog import Catalog, ManagedPipelineJob, hash_pool, index_chunk, indexer
from catalog.errors import IndexingError
from catalog.fixity import hash_many
from catalog.hash_pool import HashPool, results
from catalog.indexer import index_job
from catalog.storage import LocalStorage
from catalog.tokens import Keys

KEYS = Keys(b"h" * 32, b"a" * 32)
ALGORITHMS = ("xxh3_128", "sha256")


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (reaped, or a zombie nobody here reaps)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_gone(pids: list[int], seconds: float = 15.0) -> list[int]:
    """The pids of ``pids`` still running after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while (left := [pid for pid in pids if not gone(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    opened = Catalog.open(f"sqlite:///{tmp_path / 'catalog.db'}", keys=KEYS,
                          archive_root=str(tmp_path / "archive"), sqlite_synchronous="NORMAL")
    opened.add_pipeline("pool-test", "1")
    yield opened
    opened.close()


def finished_job(catalog: Catalog, files: int) -> ManagedPipelineJob:
    managed = ManagedPipelineJob(catalog, "pool-test", {"run": uuid_module.uuid4().hex},
                                 archive_patterns=[{"patterns": [r"\.bin$"], "level": "0"}])
    managed.setup()
    for number in range(files):
        catalog.storage.write(f"{managed.archive_path}/d{number % 3}/f{number:04d}.bin",
                              f"file {number}\n".encode() * (number + 1))
    managed.run()
    managed.finish()
    return managed


@pytest.fixture
def pools(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every HashPool an index run makes, with the pool used for any tree and batch."""
    made: list[Any] = []

    class Recorded(HashPool):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)
            self.tasks = 0
            assert self.wait_ready(60)  # else the run hashes on its thread until they are

        def submit(self, paths: list[str], algorithms: Iterable[str]) -> Any:
            futures = super().submit(paths, algorithms)
            self.tasks += len(futures)
            return futures

    monkeypatch.setattr(indexer, "HashPool", Recorded)
    monkeypatch.setattr(hash_pool, "POOL_FILES", 1)
    monkeypatch.setattr(index_chunk, "POOL_BATCH", 1)
    monkeypatch.setattr(hash_pool, "TASK_FILES", 7)  # several tasks a chunk
    return made


def test_workers_answer_as_hash_many_does(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    paths = []
    for number in range(30):
        paths.append(f"/t/f{number}")
        storage.write(paths[-1], os.urandom(number * 1000))
    paths += ["/t/missing", "/t/../escape"]
    with HashPool(storage, workers=2) as pool:
        answer = results(pool.submit(paths, ALGORITHMS))
        pids = pool.pids()
    expected = hash_many(storage, paths, ALGORITHMS)
    assert answer.keys() == expected.keys()
    for path in paths[:30]:
        assert answer[path] == expected[path]
    assert isinstance(answer["/t/missing"], FileNotFoundError)
    assert type(answer["/t/../escape"]).__name__ == "UnsafePath"
    assert len(pids) == 2 and wait_gone(pids, 0) == []  # reaped by close


def test_an_index_run_hashes_in_workers_and_records_the_true_digests(
        catalog: Catalog, pools: list[Any]) -> None:
    job = finished_job(catalog, 40)
    seen: list[str] = []
    result = index_job(catalog, job.uuid, job.token, progress=lambda path, size: seen.append(path))
    assert (result.indexed, result.hashed, result.state) == (40, 40, "FINISHED")
    assert len(pools) == 1 and wait_gone(pools[0].pids(), 0) == []
    assert pools[0].tasks == 6  # 40 files in tasks of 7
    assert len(seen) == 40  # the progress is told of every file the workers read
    for record in result.files:
        number = int(record["path"].rsplit("/f", 1)[1][:4])
        data = f"file {number}\n".encode() * (number + 1)
        assert record["checksums"] == {"xxh3_128": xxhash.xxh3_128_hexdigest(data),
                                       "sha256": hashlib.sha256(data).hexdigest()}


def test_a_small_tree_starts_no_worker(catalog: Catalog, monkeypatch: pytest.MonkeyPatch,
                                       pools: list[Any]) -> None:
    monkeypatch.setattr(hash_pool, "POOL_FILES", 41)
    job = finished_job(catalog, 40)
    assert index_job(catalog, job.uuid, job.token).hashed == 40
    assert pools == []


def test_a_failing_run_leaves_no_worker(catalog: Catalog, pools: list[Any],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(indexer, "UPSERT_CHUNK", 10)
    job = finished_job(catalog, 40)

    def sink(records: list[Any]) -> None:
        raise OSError("the sink's disk is full")

    with pytest.raises(IndexingError, match="the sink's disk is full"):
        index_job(catalog, job.uuid, job.token, sink=sink)
    assert len(pools) == 1
    assert wait_gone(pools[0].pids(), 0) == []  # reaped before the error came out


def test_a_worker_that_dies_stops_the_run(catalog: Catalog, pools: list[Any],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(indexer, "UPSERT_CHUNK", 10)
    job = finished_job(catalog, 40)

    killed: list[int] = []

    def sink(records: list[Any]) -> None:
        if not killed:  # after the first chunk: what is still to hash finds no worker
            killed.extend(pools[0].pids())
            for pid in killed:
                os.kill(pid, signal.SIGKILL)

    with pytest.raises(IndexingError, match="hashing worker process ended abruptly"):
        index_job(catalog, job.uuid, job.token, sink=sink)
    assert wait_gone(pools[0].pids(), 0) == []


SCRIPT = textwrap.dedent("""
    import sys, threading
    from catalog import Catalog, ManagedPipelineJob, hash_pool, index_chunk, indexer
    from catalog.indexer import index_job
    from catalog.tokens import Keys

    hash_pool.POOL_FILES = index_chunk.POOL_BATCH = 1
    hash_pool.TASK_FILES = 2
    indexer.UPSERT_CHUNK = 5
    made = []

    class Recorded(hash_pool.HashPool):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)
            self.wait_ready(60)

    indexer.HashPool = Recorded
    catalog = Catalog.open("sqlite:///" + sys.argv[1] + "/catalog.db",
                           keys=Keys(b"h" * 32, b"a" * 32), archive_root=sys.argv[1] + "/a")
    catalog.add_pipeline("pool-test", "1")
    job = ManagedPipelineJob(catalog, "pool-test", {},
                             archive_patterns=[{"patterns": ["bin$"], "level": "0"}])
    job.setup()
    for number in range(20):
        catalog.storage.write(f"{job.archive_path}/f{number}.bin", b"x" * number)
    job.run()
    job.finish()

    def sink(records):
        print(" ".join(map(str, made[0].pids())), flush=True)
        threading.Event().wait(120)  # until terminated

    index_job(catalog, job.uuid, job.token, sink=sink)
""")


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGKILL])
def test_a_terminated_run_leaves_no_worker(tmp_path: Path, signal_number: int) -> None:
    """The workers end with their parent however it ends: their input is closed."""
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    with subprocess.Popen([sys.executable, str(script), str(tmp_path)],
                          stdout=subprocess.PIPE, text=True) as parent:
        try:
            assert parent.stdout is not None
            pids = [int(pid) for pid in parent.stdout.readline().split()]
            assert pids and wait_gone(pids, 0) == pids  # running, mid-run
            parent.send_signal(signal_number)
            assert parent.wait(30) == -signal_number
        finally:
            if parent.poll() is None:
                parent.kill()
    assert wait_gone(pids) == []
