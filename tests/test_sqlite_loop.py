"""Events from an event loop on SQLite: applied and committed on the loop in batches, synced by a
helper process once the loop is busy, never blocking it, falling back to the writer thread when
the database is busy and to syncing on the loop when the helper is gone."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from catalog import Catalog, ManagedPipelineJob
from catalog.errors import EventNotAllowed, JobNotFound
from catalog.messages import EventOutcome
from catalog.store import sqlite_loop
from catalog.store.sqlite import SQLiteStore
from catalog.store.sqlite_loop import LoopEvents
from catalog.tokens import Keys

KEYS = Keys(b"l" * 32, b"a" * 32)
EVENTS = 200


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    opened = Catalog.open(f"sqlite:///{tmp_path / 'catalog.db'}", keys=KEYS,
                          archive_root=str(tmp_path / "archive"))
    yield opened
    opened.close()


def running_job(catalog: Catalog, name: str = "loop") -> ManagedPipelineJob:
    catalog.add_pipeline(name, "1")
    job = ManagedPipelineJob(catalog, name, {"test": name})
    job.setup()
    job.run(event_id="run")
    return job


def update(event_id: str) -> bytes:
    return json.dumps({"name": "update", "data": {"id": event_id}, "event_id": event_id}).encode()


async def send_all(catalog: Catalog, uuid: str, token: str,
                   event_ids: list[str]) -> list[EventOutcome | BaseException]:
    return await asyncio.gather(
        *(catalog.handle_event_async(uuid, update(e), token) for e in event_ids),
        return_exceptions=True)


def assert_applied_once(catalog: Catalog, uuid: str, event_ids: set[str]) -> None:
    job = catalog.get_job(uuid)
    updates = [e for e in job.history if e.name == "update"]
    assert {e.event_id for e in updates} == event_ids
    assert len(updates) == len(event_ids)
    assert job.version == len(job.history)


class CountingCommits:
    """Counts the COMMITs of the loop's connection (how many batches the events took)."""

    def __init__(self, store: SQLiteStore) -> None:
        self.commits = 0
        original = store._loop_connection

        def connect() -> sqlite3.Connection:
            connection = original()
            connection.set_trace_callback(self.trace)
            return connection

        store._loop_events._connect = connect

    def trace(self, statement: str) -> None:
        self.commits += statement == "COMMIT"


@pytest.mark.anyio
async def test_events_sent_together_commit_together_and_apply_once(catalog: Catalog) -> None:
    assert isinstance(catalog.store, SQLiteStore)
    counter = CountingCommits(catalog.store)
    job = running_job(catalog)
    ids = [f"e{i}" for i in range(EVENTS)]
    outcomes = await send_all(catalog, job.uuid, job.token, ids + ids[:50])  # 50 resent
    assert all(isinstance(o, EventOutcome) for o in outcomes), outcomes
    answered = [o for o in outcomes if isinstance(o, EventOutcome)]
    assert sum(o.duplicate for o in answered) == 50
    assert [o.event_id for o in answered] == ids + ids[:50]
    assert_applied_once(catalog, job.uuid, set(ids))
    assert 1 <= counter.commits <= 3, counter.commits  # group commit, not one per event


@pytest.mark.anyio
async def test_a_refusal_in_a_batch_undoes_only_itself(catalog: Catalog) -> None:
    job = running_job(catalog)
    finished = running_job(catalog, "finished")
    finished.finish()
    outcomes = await asyncio.gather(
        catalog.handle_event_async(job.uuid, update("a"), job.token),
        catalog.handle_event_async(finished.uuid, update("late"), finished.token),
        catalog.handle_event_async("107" + job.uuid[3:-1] + "0", update("x"), KEYS.admin_token()),
        catalog.handle_event_async(job.uuid, update("b"), job.token),
        return_exceptions=True)
    assert isinstance(outcomes[0], EventOutcome) and isinstance(outcomes[3], EventOutcome)
    assert isinstance(outcomes[1], EventNotAllowed)
    assert isinstance(outcomes[2], JobNotFound)
    assert_applied_once(catalog, job.uuid, {"a", "b"})
    assert catalog.get_job(finished.uuid).state == "FINISHED"
    assert [e.name for e in catalog.audit_log(finished.uuid)] == ["update"]


async def ticks_while(work: asyncio.Future[list[EventOutcome | BaseException]]) -> float:
    """The longest gap between ticks of a 5 ms ticker on the loop while ``work`` runs."""
    longest, last = 0.0, time.perf_counter()
    while not work.done():
        await asyncio.sleep(0.005)
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    return longest


@pytest.mark.anyio
async def test_a_thread_writing_does_not_block_the_loop(catalog: Catalog) -> None:
    """Another thread holds the store's write lock: the events wait on the writer thread."""
    assert isinstance(catalog.store, SQLiteStore)
    job = running_job(catalog)
    store = catalog.store
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        with store._write_lock:
            held.set()
            release.wait(5)

    thread = threading.Thread(target=writer)
    thread.start()
    held.wait(5)
    work = asyncio.ensure_future(send_all(catalog, job.uuid, job.token, ["w1", "w2", "w3"]))
    asyncio.get_running_loop().call_later(0.3, release.set)
    gap = await ticks_while(work)
    thread.join()
    assert all(isinstance(o, EventOutcome) for o in work.result()), work.result()
    assert gap < 0.2, gap
    assert_applied_once(catalog, job.uuid, {"w1", "w2", "w3"})


@pytest.mark.anyio
async def test_another_process_writing_does_not_block_the_loop(catalog: Catalog,
                                                               tmp_path: Path) -> None:
    """Another connection (as another process would) holds the database's write lock."""
    job = running_job(catalog)
    other = sqlite3.connect(tmp_path / "catalog.db", isolation_level=None,
                            check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    work = asyncio.ensure_future(send_all(catalog, job.uuid, job.token, ["p1", "p2"]))
    asyncio.get_running_loop().call_later(0.3, other.execute, "COMMIT")
    gap = await ticks_while(work)
    other.close()
    assert all(isinstance(o, EventOutcome) for o in work.result()), work.result()
    assert gap < 0.2, gap
    assert_applied_once(catalog, job.uuid, {"p1", "p2"})


@pytest.mark.anyio
async def test_events_keep_flowing_after_a_busy_spell(catalog: Catalog, tmp_path: Path) -> None:
    job = running_job(catalog)
    other = sqlite3.connect(tmp_path / "catalog.db", isolation_level=None,
                            check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    first = asyncio.ensure_future(send_all(catalog, job.uuid, job.token, ["b1"]))
    await asyncio.sleep(0.05)
    other.execute("COMMIT")
    other.close()
    await first
    later = await send_all(catalog, job.uuid, job.token, [f"n{i}" for i in range(20)])
    assert all(isinstance(o, EventOutcome) for o in later)
    assert_applied_once(catalog, job.uuid, {"b1", *(f"n{i}" for i in range(20))})


def test_closing_the_store_waits_for_a_commit_in_flight(tmp_path: Path) -> None:
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'catalog.db'}", keys=KEYS,
                           archive_root=str(tmp_path / "archive"))
    job = running_job(catalog)

    async def send_then_close() -> None:
        work = asyncio.ensure_future(
            send_all(catalog, job.uuid, job.token, [f"c{i}" for i in range(30)]))
        await asyncio.sleep(0)  # the batch is applied and its COMMIT handed off
        await asyncio.sleep(0)
        outcomes = await work
        assert all(isinstance(o, EventOutcome) for o in outcomes), outcomes

    asyncio.run(send_then_close())
    catalog.close()
    reopened = Catalog.open(f"sqlite:///{tmp_path / 'catalog.db'}", keys=KEYS,
                            archive_root=str(tmp_path / "archive"))
    try:
        assert_applied_once(reopened, job.uuid, {f"c{i}" for i in range(30)})
    finally:
        reopened.close()


def test_each_event_loop_has_its_own_batches(catalog: Catalog) -> None:
    """Loops in turn (and in threads) on one store: every event applied once."""
    job = running_job(catalog)
    errors: list[BaseException] = []

    def in_a_loop(prefix: str) -> None:
        try:
            outcomes = asyncio.run(send_all(catalog, job.uuid, job.token,
                                            [f"{prefix}{i}" for i in range(40)]))
            errors.extend(o for o in outcomes if isinstance(o, BaseException))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=in_a_loop, args=(f"t{n}-",)) for n in range(4)]
    for thread in threads:
        thread.start()
    in_a_loop("main-")
    for thread in threads:
        thread.join()
    assert errors == []
    expected = {f"{p}{i}" for p in ["main-", *(f"t{n}-" for n in range(4))] for i in range(40)}
    assert_applied_once(catalog, job.uuid, expected)


class FailingCommit(sqlite3.Connection):
    """A connection whose next COMMIT fails, as a full disk or an I/O error would make it."""

    fail_next_commit = True

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql == "COMMIT" and FailingCommit.fail_next_commit:
            FailingCommit.fail_next_commit = False
            raise sqlite3.OperationalError("disk I/O error")
        return super().execute(sql, *args)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_a_failed_commit_fails_its_whole_batch_and_keeps_nothing(catalog: Catalog) -> None:
    assert isinstance(catalog.store, SQLiteStore)
    store = catalog.store
    job = running_job(catalog)

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(store.path, isolation_level=None, timeout=0,
                                     check_same_thread=False, factory=FailingCommit)
        connection.execute("PRAGMA busy_timeout = 0")
        return connection

    store._loop_events._connect = connect
    FailingCommit.fail_next_commit = True
    failed = await send_all(catalog, job.uuid, job.token, ["f1", "f2", "f3"])
    assert all(type(o).__name__ == "StoreError" for o in failed), failed
    assert all("not committed" in str(o) for o in failed)
    assert_applied_once(catalog, job.uuid, set())  # nothing of the batch was kept
    again = await send_all(catalog, job.uuid, job.token, ["f1", "f2", "f3"])
    assert all(isinstance(o, EventOutcome) and not o.duplicate for o in again), again
    assert_applied_once(catalog, job.uuid, {"f1", "f2", "f3"})


def test_loops_that_ended_leave_no_connections_behind(catalog: Catalog) -> None:
    """A caller running ``asyncio.run`` per event must not pile up open database files."""
    assert isinstance(catalog.store, SQLiteStore)
    job = running_job(catalog)
    before = len(catalog.store._connections)
    for n in range(30):
        outcomes = asyncio.run(send_all(catalog, job.uuid, job.token, [f"r{n}"]))
        assert all(isinstance(o, EventOutcome) for o in outcomes), outcomes
    assert len(catalog.store._connections) <= before + 2
    assert_applied_once(catalog, job.uuid, {f"r{n}" for n in range(30)})


# the sync helper: a loop past its first commits syncs the WAL through a child process --------


@pytest.fixture
def helped(catalog: Catalog) -> Catalog:
    """A catalog whose loops start their sync helper after their first COMMIT."""
    assert isinstance(catalog.store, SQLiteStore)
    catalog.store._loop_events.helper_after = 1
    return catalog


async def loop_with_helper(catalog: Catalog, job: ManagedPipelineJob) -> LoopEvents:
    """Send one event (the loop's one FULL commit), and the loop's events, helper started."""
    assert isinstance(catalog.store, SQLiteStore)
    first = await send_all(catalog, job.uuid, job.token, ["first"])
    assert isinstance(first[0], EventOutcome), first
    events = catalog.store._loop_events._by_loop[asyncio.get_running_loop()]
    assert events.helper is not None and events.helper.process.poll() is None
    return events


def synchronous(events: LoopEvents) -> int:
    return int(events.connection.execute("PRAGMA synchronous").fetchone()[0])


@pytest.mark.anyio
async def test_a_busy_loop_commits_with_normal_and_syncs_through_its_helper(
        helped: Catalog) -> None:
    job = running_job(helped)
    events = await loop_with_helper(helped, job)
    assert synchronous(events) == 1  # NORMAL: the helper syncs
    ids = [f"h{i}" for i in range(EVENTS)]
    outcomes = await send_all(helped, job.uuid, job.token, ids + ids[:20])
    assert all(isinstance(o, EventOutcome) for o in outcomes), outcomes
    assert sum(isinstance(o, EventOutcome) and o.duplicate for o in outcomes) == 20
    assert_applied_once(helped, job.uuid, {"first", *ids})
    helper = events.helper.process if events.helper else None
    assert helper is not None
    helped.close()
    assert helper.poll() == 0  # stopped with the store, not left behind


@pytest.mark.anyio
async def test_no_event_is_answered_before_the_helper_synced_it(helped: Catalog) -> None:
    job = running_job(helped)
    events = await loop_with_helper(helped, job)
    assert events.helper is not None
    pid = events.helper.process.pid
    os.kill(pid, signal.SIGSTOP)  # the disk "hangs"
    try:
        work = asyncio.ensure_future(send_all(helped, job.uuid, job.token, ["s1", "s2"]))
        await asyncio.sleep(0.3)
        assert not work.done()  # committed, perhaps, but nobody is told before the sync
        later = asyncio.ensure_future(send_all(helped, job.uuid, job.token, ["s3"]))
        await asyncio.sleep(0.05)
        assert not later.done()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert all(isinstance(o, EventOutcome) for o in [*await work, *await later])
    assert_applied_once(helped, job.uuid, {"first", "s1", "s2", "s3"})


@pytest.mark.anyio
@pytest.mark.parametrize("when", ["before the ask", "during the sync"])
async def test_a_dead_helper_is_replaced_by_syncing_on_the_loop(helped: Catalog,
                                                                 when: str) -> None:
    job = running_job(helped)
    events = await loop_with_helper(helped, job)
    assert events.helper is not None
    process = events.helper.process
    if when == "before the ask":
        process.kill()
        process.wait()
        outcomes = await send_all(helped, job.uuid, job.token, ["d1", "d2"])
    else:
        os.kill(process.pid, signal.SIGSTOP)
        work = asyncio.ensure_future(send_all(helped, job.uuid, job.token, ["d1", "d2"]))
        await asyncio.sleep(0.1)
        process.kill()
        outcomes = await work
    assert all(isinstance(o, EventOutcome) for o in outcomes), outcomes
    assert events.helper is None
    assert synchronous(events) == 2  # back to FULL: each COMMIT syncs itself
    after = await send_all(helped, job.uuid, job.token, ["d3"])
    assert isinstance(after[0], EventOutcome)
    assert_applied_once(helped, job.uuid, {"first", "d1", "d2", "d3"})


def test_helpers_of_loops_that_ended_are_stopped(helped: Catalog) -> None:
    assert isinstance(helped.store, SQLiteStore)
    job = running_job(helped)
    helpers = []
    for n in range(4):
        async def two(n: int = n) -> None:
            for i in range(2):
                outcomes = await send_all(helped, job.uuid, job.token, [f"r{n}-{i}"])
                assert isinstance(outcomes[0], EventOutcome), outcomes
            events = helped.store._loop_events._by_loop[asyncio.get_running_loop()]
            assert events.helper is not None
            helpers.append(events.helper.process)
        asyncio.run(two())
    assert all(process.poll() == 0 for process in helpers[:-1])  # forgotten with their loop
    helped.close()
    assert helpers[-1].poll() == 0
    assert_applied_once(helped, job.uuid, {f"r{n}-{i}" for n in range(4) for i in range(2)})


@pytest.mark.anyio
async def test_the_helper_checkpoints_so_the_wal_starts_over(
        helped: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop connection does not checkpoint; the helper does, between syncs, while the loop
    waits, so the whole WAL is copied and SQLite reuses it instead of growing it."""
    monkeypatch.setattr(sqlite_loop, "CHECKPOINT_EVERY", 5)
    job = running_job(helped)
    events = await loop_with_helper(helped, job)
    assert events.connection.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    for i in range(300):  # one at a time: 300 batches, ~5 pages each, 1.5 MB of frames
        outcome = await helped.handle_event_async(job.uuid, update(f"w{i}"), job.token)
        assert not outcome.duplicate
    assert (tmp_path / "catalog.db-wal").stat().st_size < 512 * 1024
    assert_applied_once(helped, job.uuid, {"first", *(f"w{i}" for i in range(300))})


def helper(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-I", "-S", sqlite_loop._HELPER, *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def ask(process: subprocess.Popen[bytes], request: bytes) -> bytes:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(request)
    process.stdin.flush()
    return process.stdout.readline()


def test_the_helper_syncs_checkpoints_and_answers_each_request(tmp_path: Path) -> None:
    database = tmp_path / "raw.db"
    writer = sqlite3.connect(database, isolation_level=None)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("CREATE TABLE t (x)")
    writer.execute("INSERT INTO t VALUES (randomblob(100000))")
    size_before = database.stat().st_size
    try:
        with helper(f"{database}-wal") as process:
            assert ask(process, b"s") == b"ok\n"
            assert database.stat().st_size == size_before  # a sync copies nothing
            assert ask(process, b"c") == b"ok\n"
            assert database.stat().st_size > size_before + 90000  # the checkpoint copied it
            assert process.stdin is not None
            process.stdin.close()  # its way to stop
            assert process.wait(5) == 0
    finally:
        writer.close()


def test_the_helper_answers_an_error_it_cannot_sync_and_refuses_bad_arguments(
        tmp_path: Path) -> None:
    with helper(str(tmp_path / "gone" / "x.db-wal")) as process:
        assert ask(process, b"s").startswith(b"error: ")
        assert ask(process, b"s").startswith(b"error: ")  # and goes on answering
        assert process.stdin is not None
        process.stdin.close()
        assert process.wait(5) == 0
    with helper("raw.db") as wrong:
        _, err = wrong.communicate(timeout=5)
    assert wrong.returncode == 2 and b"usage" in err


@pytest.mark.anyio
async def test_an_event_after_the_store_closed_is_an_error_not_a_hang(tmp_path: Path) -> None:
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'closing.db'}", keys=KEYS,
                           archive_root=str(tmp_path / "archive"))
    job = running_job(catalog)
    before = await send_all(catalog, job.uuid, job.token, ["before"])
    assert isinstance(before[0], EventOutcome)
    assert isinstance(catalog.store, SQLiteStore)
    loop_events = catalog.store._loop_events._by_loop[asyncio.get_running_loop()]
    catalog.close()
    catalog.store._loop_events._by_loop[asyncio.get_running_loop()] = loop_events  # as if
    # a request were still in flight on this loop when the store closed under it
    after = await asyncio.wait_for(send_all(catalog, job.uuid, job.token, ["after"]), 5)
    assert type(after[0]).__name__ == "StoreError" and "closed" in str(after[0]), after


@pytest.mark.anyio
async def test_no_helper_to_start_leaves_the_loop_committing_with_full(
        helped: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_loop.sys, "executable", "/nonexistent/python")
    job = running_job(helped)
    outcomes = await send_all(helped, job.uuid, job.token, ["n1", "n2"])
    outcomes += await send_all(helped, job.uuid, job.token, ["n3"])
    assert all(isinstance(o, EventOutcome) for o in outcomes), outcomes
    assert isinstance(helped.store, SQLiteStore)
    events = helped.store._loop_events._by_loop[asyncio.get_running_loop()]
    assert events.helper is None and events.helper_after is None  # tried once, not again
    assert synchronous(events) == 2  # FULL: each COMMIT syncs itself
    assert_applied_once(helped, job.uuid, {"n1", "n2", "n3"})


@pytest.mark.anyio
async def test_a_sync_the_helper_could_not_do_fails_its_events(
        helped: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The helper answers ``error: ...`` (here: it was given a WAL that does not exist): the
    events were committed but are not known to be on disk, so nobody is told they are."""
    wrong = sqlite_loop.SyncHelper

    class Misdirected(wrong):  # type: ignore[misc, valid-type]
        def __init__(self, wal: str) -> None:
            super().__init__(str(tmp_path / "missing" / "x.db-wal"))

    monkeypatch.setattr(sqlite_loop, "SyncHelper", Misdirected)
    job = running_job(helped)
    await loop_with_helper(helped, job)
    failed = await send_all(helped, job.uuid, job.token, ["u1"])
    assert type(failed[0]).__name__ == "StoreError", failed
    assert "could not be made durable" in str(failed[0])
    again = await send_all(helped, job.uuid, job.token, ["u1"])  # the resend: committed before
    assert type(again[0]).__name__ == "StoreError"  # still not known to be durable
