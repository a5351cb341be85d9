"""Concurrent events on one job never lose an update, and a repeated event_id applies once."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MONGO_BACKENDS

from catalog import Catalog, ManagedPipelineJob
from catalog.messages import EventOutcome

SECRET = "concurrency-test-secret"
THREADS = 8
PROCESSES = 4
EVENTS = 50
# The wire server (a Python process sharing the 2 cores) applies ~100 events/s alone, and 8
# threads racing on one job retry most attempts: fewer events there, each still raced by all.
WIRE_EVENTS = 12

# (event_id, duplicate, state, last_event, answered event_id)
Sent = tuple[str, bool, str, str, str]


@pytest.fixture
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One secret for every catalog opened here (and inherited by child processes)."""
    for name in list(os.environ):
        if name.startswith("CATALOG_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CATALOG_SECRET", SECRET)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def running_job(catalog: Catalog) -> ManagedPipelineJob:
    catalog.add_pipeline("stress", "1.0")
    job = ManagedPipelineJob(catalog, "stress", {"kind": "concurrency"})
    job.setup()
    job.run(event_id="run")
    return job


def send(catalog: Catalog, uuid: str, token: str, event_ids: list[str]) -> list[Sent]:
    """Send one ``update`` per event_id; the outcome of each."""
    sent = []
    for event_id in event_ids:
        outcome: EventOutcome = catalog.handle_event(
            uuid, {"name": "update", "data": {"id": event_id}, "event_id": event_id}, token
        )
        sent.append((event_id, outcome.duplicate, outcome.state, outcome.last_event,
                     outcome.event_id))
    return sent


def check_history(catalog: Catalog, uuid: str, expected_ids: set[str]) -> None:
    """Every event applied exactly once, nothing else written, version == history length."""
    job = catalog.get_job(uuid)
    updates = job.history[2:]
    assert [e.name for e in job.history[:2]] == ["create", "run"]
    assert len(job.history) == 2 + len(expected_ids)
    assert len({e.event_id for e in job.history}) == len(job.history)
    assert {e.event_id for e in updates} == expected_ids
    assert all(e.name == "update" and e.state == "RUNNING" for e in updates)
    assert all(e.data == {"id": e.event_id} for e in updates)
    assert len({e.uuid for e in job.history}) == len(job.history)
    assert job.version == len(job.history)
    assert (job.state, job.last_event) == ("RUNNING", "update")
    assert [e.date for e in job.history] == sorted(e.date for e in job.history)


def run_threads(work: Callable[[int], list[Sent]]) -> list[Sent]:
    """Run ``work(index)`` on THREADS threads started together; every outcome, or the error."""
    barrier = threading.Barrier(THREADS)
    results: dict[int, list[Sent]] = {}
    errors: list[BaseException] = []

    def target(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[index] = work(index)
        except BaseException as exc:  # reported below, with the thread's own traceback
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    if errors:
        raise errors[0]
    return [outcome for index in sorted(results) for outcome in results[index]]


def _ids(group: int, events: int = EVENTS) -> list[str]:
    return [f"g{group}-e{n}" for n in range(events)]


def _both(group: int, events: int = EVENTS) -> list[str]:
    """This group's ids interleaved with the next group's: each id is sent by two threads."""
    mine, theirs = _ids(group, events), _ids((group + 1) % THREADS, events)
    return [event_id for pair in zip(mine, theirs, strict=True) for event_id in pair]


@pytest.fixture(params=["sqlite", *MONGO_BACKENDS])
def backend(request: pytest.FixtureRequest, environment: Path,
            database_url: Callable[[str], str]) -> Iterator[
        tuple[Catalog, Callable[[], Catalog], int]]:
    """The catalog, how each thread gets its own (a new one, but on mongomock the same), and
    how many events each thread sends.

    With SQLite every thread opens the file, and on a MongoDB server (the wire server, or a real
    one) its own client, as a separate server process would. mongomock lives in this process,
    so there one shared Catalog is what many servers on one MongoDB would be.
    """
    url = database_url(request.param)
    catalog = Catalog.open(url)
    opened: list[Catalog] = []
    lock = threading.Lock()

    def per_thread() -> Catalog:
        if request.param == "mongomock":
            return catalog
        own = Catalog.open(url)
        with lock:
            opened.append(own)
        return own

    yield catalog, per_thread, WIRE_EVENTS if request.param == "mongowire" else EVENTS
    for own in opened:
        own.close()
    catalog.close()


def test_concurrent_events_are_all_applied(
    backend: tuple[Catalog, Callable[[], Catalog], int]
) -> None:
    catalog, per_thread, events = backend
    job = running_job(catalog)
    token = job.token

    outcomes = run_threads(lambda i: send(per_thread(), job.uuid, token, _ids(i, events)))

    assert len(outcomes) == THREADS * events
    assert all(o[1:4] == (False, "RUNNING", "update") and o[4] == o[0] for o in outcomes)
    expected = {event_id for i in range(THREADS) for event_id in _ids(i, events)}
    check_history(catalog, job.uuid, expected)
    assert len(expected) == THREADS * events


def test_concurrent_duplicates_are_applied_once(
    backend: tuple[Catalog, Callable[[], Catalog], int]
) -> None:
    catalog, per_thread, events = backend
    job = running_job(catalog)
    token = job.token

    outcomes = run_threads(lambda i: send(per_thread(), job.uuid, token, _both(i, events)))

    assert len(outcomes) == 2 * THREADS * events
    by_id: dict[str, list[bool]] = {}
    for event_id, duplicate, state, last_event, answered in outcomes:
        assert (state, last_event, answered) == ("RUNNING", "update", event_id)
        by_id.setdefault(event_id, []).append(duplicate)
    assert {event_id: sorted(seen) for event_id, seen in by_id.items()} == {
        event_id: [False, True] for i in range(THREADS) for event_id in _ids(i, events)
    }
    check_history(catalog, job.uuid, set(by_id))


# -- processes ----------------------------------------------------------------------------------


def process_worker(url: str, uuid: str, token: str, group: int, start: Any, results: Any) -> None:
    """Runs in a spawned process: its own catalog on the shared database, 50 events."""
    try:
        with Catalog.open(url) as catalog:
            start.wait(timeout=60)
            results.put((group, send(catalog, uuid, token, _ids(group))))
    except BaseException as exc:  # the parent reports it
        results.put((group, repr(exc)))


@pytest.mark.slow
@pytest.mark.parametrize("backend_name", ["sqlite", *MONGO_BACKENDS[1:]])
def test_concurrent_processes_on_one_database(environment: Path, backend_name: str,
                                              database_url: Callable[[str], str]) -> None:
    """Processes each with its own catalog: on one SQLite file, or one MongoDB server."""
    url = database_url(backend_name)
    with Catalog.open(url) as catalog:
        job = running_job(catalog)
        token = job.token
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(PROCESSES)
    results = context.Queue()
    processes = [
        context.Process(target=process_worker, args=(url, job.uuid, token, group, start, results))
        for group in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    try:
        answers = dict(results.get(timeout=120) for _ in processes)
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    assert [process.exitcode for process in processes] == [0] * PROCESSES

    failed = {group: answer for group, answer in answers.items() if isinstance(answer, str)}
    assert failed == {}
    outcomes = [outcome for group in sorted(answers) for outcome in answers[group]]
    assert len(outcomes) == PROCESSES * EVENTS
    assert all(o[1:4] == (False, "RUNNING", "update") and o[4] == o[0] for o in outcomes)
    with Catalog.open(url) as catalog:
        check_history(catalog, job.uuid,
                      {event_id for group in range(PROCESSES) for event_id in _ids(group)})


def test_concurrent_setup_creates_the_job_once(
    backend: tuple[Catalog, Callable[[], Catalog], int]
) -> None:
    catalog, per_thread, events = backend
    catalog.add_pipeline("stress", "1.0")

    def set_up(index: int) -> list[Sent]:
        job = ManagedPipelineJob(per_thread(), "stress", {"kind": "setup"}, instanced=True,
                                 session=f"thread-{index}")
        stored = job.setup()
        return [(stored.uuid, bool(job.created), stored.state, stored.archive_path, "")]

    outcomes = run_threads(set_up)

    assert sorted(created for _, created, _, _, _ in outcomes) == [False] * (THREADS - 1) + [True]
    assert len({(uuid, path) for uuid, _, _, path, _ in outcomes}) == 1
    jobs = catalog.find_jobs().items
    assert [job["uuid"] for job in jobs] == [outcomes[0][0]]
    assert len(catalog.get_job(outcomes[0][0]).history) == 1
