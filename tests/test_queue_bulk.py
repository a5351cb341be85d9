"""The queue's bulk paths on every store: apply_events with a job named twice, the sweep's
fail-and-retry written together, a fan-out released and a cancellation propagated in rounds,
a failed job submitted again behind a pending condition, and a waiter woken at once by an
event of its own process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from catalog import Catalog
from catalog.errors import JobNotFound
from catalog.models import format_date, utc_now
from catalog.queue import end_attempt, submit, sweep, withdraw
from catalog.queue.waits import WATCHED_FALLBACK_S
from catalog.states import next_state
from catalog.store.values import Applied, ClaimLost, Doc, Move
from catalog.tokens import Keys

KEYS = Keys(b"q" * 32, b"b" * 32)


@pytest.fixture
def catalog(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[Catalog]:
    monkeypatch.chdir(tmp_path)
    opened = Catalog.open(store_url, keys=KEYS, sqlite_synchronous="NORMAL")
    opened.add_pipeline("step")
    yield opened
    opened.close()


def work(n: Any, **queue: Any) -> dict[str, Any]:
    return {"pipeline": "step", "data": {"n": n}, **queue}


def run(catalog: Catalog, uuid: str, error: str | None = None) -> str:
    job = withdraw(catalog, {"pipelines": ["step"]}, "w")
    assert job is not None and job.uuid == uuid
    return end_attempt(catalog, uuid, "w", error)


def state(catalog: Catalog, uuid: str) -> str:
    return catalog.get_job(uuid, history=False).state


def test_apply_events_gives_a_job_named_twice_its_events_in_order(catalog: Catalog) -> None:
    a, b = submit(catalog, work(1)).uuid, submit(catalog, work(2)).uuid
    seen: list[tuple[str, str, int]] = []

    def event(name: str) -> Any:
        def decide(head: Doc) -> tuple[str, Doc]:
            seen.append((head["uuid"], head["state"], head["version"]))
            new = next_state(head["uuid"], head["state"], name)
            return new, catalog.history_entry(head["uuid"], name, {}, "test", new)
        return decide

    def refuse(head: Doc) -> tuple[str, Doc]:
        raise ClaimLost(head["uuid"])

    before = {u: catalog.get_job(u).version for u in (a, b)}
    missing = "107" + a[3:-4] + "ffff"
    outcomes = catalog.store.apply_events([
        (a, None, event("cancel")), (b, None, refuse), (a, None, event("queue")),
        (missing, None, refuse), (a, None, event("cancel"))])
    assert [type(o) for o in outcomes] == [Applied, ClaimLost, Applied, JobNotFound, Applied]
    assert seen == [(a, "QUEUED", before[a]), (a, "CANCELLED", before[a] + 1),
                    (a, "QUEUED", before[a] + 2)]
    job = catalog.get_job(a)
    assert job.state == "CANCELLED" and job.version == before[a] + 3
    assert [e.name for e in job.history][-3:] == ["cancel", "queue", "cancel"]
    assert catalog.get_job(b).version == before[b]  # a refusal writes nothing


def test_the_sweep_writes_each_fail_and_its_retry(catalog: Catalog) -> None:
    retried = [submit(catalog, work(n, retries=2)).uuid for n in range(30)]
    final = submit(catalog, work("last", retries=1)).uuid
    for _ in range(31):
        assert withdraw(catalog, {"pipelines": ["step"]}, "w", lease=10) is not None
    outcome = sweep(catalog, utc_now() + timedelta(seconds=60))
    assert outcome == {"expired": 31, "failed": 31, "retried": 30}
    for uuid in retried:
        job = catalog.get_job(uuid)
        assert job.state == "QUEUED" and job.version == len(job.history)
        assert [(e.name, e.state) for e in job.history[-3:]] == [
            ("run", "RUNNING"), ("fail", "FAILED"), ("retry", "QUEUED")]
        assert job.queue is not None and job.queue.lease is None
    assert state(catalog, final) == "FAILED"


def test_the_sweep_writes_entries_as_a_worker_report_does(catalog: Catalog,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Chunks of two jobs (SQLite; MongoDB reads them at once): each expired job failed with
    its attempt and worker, then queued again, its lease gone; a job that has attempts no
    more stays FAILED; the limit bounds the jobs read; a fresh lease is left alone."""
    monkeypatch.setattr(catalog.store, "sweep_chunk", 2, raising=False)
    expired = [submit(catalog, work(n, retries=2)).uuid for n in range(5)]
    final = submit(catalog, work("final", retries=1)).uuid
    for _ in range(6):
        assert withdraw(catalog, {"pipelines": ["step"]}, "w", lease=10) is not None
    fresh = submit(catalog, work("fresh")).uuid
    assert withdraw(catalog, {"pipelines": ["step"]}, "v", lease=3600) is not None
    later = utc_now() + timedelta(seconds=60)
    assert sweep(catalog, later, limit=3) == {"expired": 3, "failed": 3, "retried": 3}
    assert sweep(catalog, later) == {"expired": 3, "failed": 3, "retried": 2}
    for uuid in expired:
        job = catalog.get_job(uuid)
        run_, fail, retry = job.history[-3:]
        assert (fail.name, fail.state, fail.source) == ("fail", "FAILED", "queue")
        assert fail.data == {"attempt": 1, "worker": "w", "error": "lease expired"}
        assert (retry.name, retry.state, retry.data) == (
            "retry", "QUEUED", {"attempt": 1, "retries": 2, "automatic": True})
        assert fail.event_id == fail.uuid != retry.uuid == retry.event_id
        assert job.state == "QUEUED" and job.version == len(job.history)
        assert job.queue is not None and job.queue.lease is None
        assert job.queue.reason == "lease expired" and job.queue.stop == fail.date
        assert job.queue.queued == retry.date and job.queue.attempt == 1
    job = catalog.get_job(final)
    assert job.state == "FAILED" and job.history[-1].name == "fail"
    assert job.queue is not None and job.queue.lease is None
    assert state(catalog, fresh) == "RUNNING"
    assert sweep(catalog, later) == {"expired": 0, "failed": 0, "retried": 0}


def test_a_job_the_sweeps_plan_leaves_out_is_read_once(catalog: Catalog,
                                                       monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    """The walk of the lease index goes on past the jobs left out: it ends, each read once."""
    monkeypatch.setattr(catalog.store, "sweep_chunk", 2, raising=False)
    uuids = {submit(catalog, work(n)).uuid for n in range(5)}
    for _ in uuids:
        assert withdraw(catalog, {"pipelines": ["step"]}, "w", lease=10) is not None
    seen: list[str] = []

    def plan(heads: list[Doc]) -> list[Move]:
        seen.extend(head["uuid"] for head in heads)
        return []

    later = format_date(utc_now() + timedelta(seconds=60))
    assert catalog.store.sweep_leases(later, 100, plan) == (5, [])
    assert sorted(seen) == sorted(uuids)
    assert {state(catalog, uuid) for uuid in uuids} == {"RUNNING"}


def test_a_fan_out_is_released_and_a_cancellation_propagates_in_rounds(
        catalog: Catalog) -> None:
    root = submit(catalog, work("root")).uuid
    fan = [submit(catalog, work(n, when={"job": root, "is": "finished"})).uuid
           for n in range(40)]
    assert {state(catalog, u) for u in fan} == {"WAITING"}
    assert run(catalog, root) == "FINISHED"
    assert {state(catalog, u) for u in fan} == {"QUEUED"}
    for uuid in fan:  # out of the way of the next withdraw
        catalog.cancel(uuid)
    other = submit(catalog, work("other", retries=0)).uuid
    chained = [submit(catalog, work(f"c{n}", when={"job": other, "is": "finished"})).uuid
               for n in range(5)]
    below = [submit(catalog, work(f"d{n}", when={"job": chained[n], "is": "finished"})).uuid
             for n in range(5)]
    assert {state(catalog, u) for u in chained + below} == {"WAITING"}
    assert run(catalog, other, "broken") == "FAILED"
    for uuid in chained + below:
        job = catalog.get_job(uuid)
        assert job.state == "CANCELLED"
        cause = chained[below.index(uuid)] if uuid in below else other
        assert cause in job.history[-1].data["reason"]


def test_a_failed_job_submitted_again_waits_for_its_condition(catalog: Catalog) -> None:
    job = submit(catalog, work("j", retries=0)).uuid
    assert run(catalog, job, "broken") == "FAILED"
    dependency = submit(catalog, work("dependency")).uuid
    again = submit(catalog, work("j", retries=0, when={"job": dependency, "is": "finished"}))
    assert (again.uuid, again.state, again.queued) == (job, "WAITING", True)
    assert catalog.get_job(job).history[-1].name == "wait"
    assert run(catalog, dependency) == "FINISHED"
    assert state(catalog, job) == "QUEUED"


def test_a_waiter_is_woken_at_once_by_an_event_of_its_own_process(catalog: Catalog) -> None:
    latencies = []
    for n in range(3):
        uuid = submit(catalog, work(f"w{n}")).uuid
        assert withdraw(catalog, {"pipelines": ["step"]}, "w") is not None
        returned: list[float] = []

        def wait(uuid: str = uuid, returned: list[float] = returned) -> None:
            catalog.wait([uuid], timeout=60)
            returned.append(time.monotonic())

        waiting = threading.Thread(target=wait)
        waiting.start()
        threading.Event().wait(0.2)  # asleep on its watch by now
        end_attempt(catalog, uuid, "w", None)
        ended = time.monotonic()
        waiting.join(timeout=60)
        assert returned
        latencies.append(returned[0] - ended)
    # It slept the whole safety net before (WATCHED_FALLBACK_S on SQLite).
    assert max(latencies) < min(WATCHED_FALLBACK_S, 1.0) / 2, latencies


def test_a_job_cancelled_at_submit_decides_its_own_dependents(catalog: Catalog) -> None:
    """Submitted again behind a condition already false, a failed job is cancelled at once;
    a job waiting on its cancellation is queued then, not left waiting for its other half."""
    broken = submit(catalog, work("a", retries=0)).uuid
    assert run(catalog, broken, "broken") == "FAILED"
    x = submit(catalog, work("x", retries=0)).uuid
    assert run(catalog, x, "broken") == "FAILED"
    later = submit(catalog, work("b", priority=1)).uuid  # pending throughout
    y = submit(catalog, work("y", when={"any": [{"job": x, "is": "cancelled"},
                                               {"job": later, "is": "finished"}]})).uuid
    assert state(catalog, y) == "WAITING"
    again = submit(catalog, work("x", retries=0, when={"job": broken, "is": "finished"}))
    assert again.state == "CANCELLED"
    assert state(catalog, y) == "QUEUED"
    assert state(catalog, later) == "QUEUED"
