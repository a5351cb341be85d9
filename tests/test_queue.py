"""The work queue on every store: submit, claim, leases, retries, cancel, sweep, counts."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import MONGO_BACKENDS

from catalog import Catalog
from catalog.errors import (
    EventNotAllowed,
    LeaseNotHeld,
    QueueEventRefused,
    SchemaViolation,
)
from catalog.models import utc_now
from catalog.queue import (
    cancel,
    end_attempt,
    heartbeat,
    retry,
    status,
    submit,
    sweep,
    withdraw,
)
from catalog.queue.core import pipeline_uuids
from catalog.tokens import Keys

KEYS = Keys(b"q" * 32, b"a" * 32)
NOTHING_SWEPT = {"expired": 0, "failed": 0, "retried": 0}


@pytest.fixture
def catalog(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[Catalog]:
    monkeypatch.chdir(tmp_path)
    opened = Catalog.open(store_url, keys=KEYS, sqlite_synchronous="NORMAL")
    opened.add_pipeline("reduce")
    opened.add_pipeline("fit")
    yield opened
    opened.close()


def work(n: int = 0, pipeline: str = "reduce", **queue: Any) -> dict[str, Any]:
    return {"pipeline": pipeline, "data": {"function": "pkg.mod.f", "parameters": {"n": n}},
            **queue}


def history(catalog: Catalog, uuid: str) -> list[tuple[str, str]]:
    return [(entry.name, entry.state) for entry in catalog.get_job(uuid).history]


def test_submit_queues_and_answers_the_same_job_again(catalog: Catalog) -> None:
    first = submit(catalog, work(1, priority=2, tags=["a"]))
    assert (first.state, first.queued, first.created, first.memoised) == ("QUEUED", True, True,
                                                                           False)
    # priority, tags, site, user and timeout are not part of the identity
    again = submit(catalog, work(1, priority=5, tags=["b"], site="chime", user="me",
                                 timeout=10))
    assert (again.uuid, again.state, again.queued, again.created) == (first.uuid, "QUEUED",
                                                                      False, False)
    job = catalog.get_job(first.uuid)
    assert job.queue is not None and (job.queue.priority, job.queue.tags) == (2, ["a"])
    assert history(catalog, first.uuid) == [("create", "CREATED"), ("queue", "QUEUED")]
    assert submit(catalog, work(2)).uuid != first.uuid


def test_a_finished_job_is_memoised_and_a_failed_or_cancelled_one_queued_again(
        catalog: Catalog) -> None:
    done = submit(catalog, work(1, retries=1))
    job = withdraw(catalog, {"pipelines": ["reduce"]}, "w")
    assert job is not None and job.uuid == done.uuid
    end_attempt(catalog, job.uuid, "w", None, {"answer": 42})
    memo = submit(catalog, work(1))
    assert (memo.state, memo.memoised, memo.queued) == ("FINISHED", True, False)
    assert catalog.get_job(done.uuid).results == {"answer": 42}
    assert withdraw(catalog, {"pipelines": ["reduce"]}, "w") is None

    failing = submit(catalog, work(2, retries=1))
    held = withdraw(catalog, {"pipelines": ["reduce"]}, "w")
    assert held is not None
    end_attempt(catalog, held.uuid, "w", "Traceback: boom")
    assert catalog.get_job(failing.uuid).state == "FAILED"  # retries=1: the failure is final
    again = submit(catalog, work(2, retries=3))
    assert (again.state, again.queued) == ("QUEUED", True)
    job_after = catalog.get_job(failing.uuid)
    assert job_after.queue is not None and (job_after.queue.attempt,
                                            job_after.queue.retries) == (0, 3)

    cancelled = submit(catalog, work(3))
    cancel(catalog, cancelled.uuid, "not needed")
    assert submit(catalog, work(3)).state == "QUEUED"
    assert [name for name, _ in history(catalog, cancelled.uuid)] == [
        "create", "queue", "cancel", "queue"]


def test_claim_order_is_priority_then_age_and_the_filter_holds(catalog: Catalog) -> None:
    claim_order_holds(catalog)


def claim_order_holds(catalog: Catalog) -> None:
    low = submit(catalog, work(1, priority=1)).uuid
    old = submit(catalog, work(2, priority=4, site="chime")).uuid
    new = submit(catalog, work(3, priority=4, tags=["x"], user="ann")).uuid
    other = submit(catalog, work(4, pipeline="fit", priority=5)).uuid
    top = submit(catalog, work(5, priority=5, site="gbo", events=[7, 9])).uuid

    def take(**filters: Any) -> str | None:
        got = withdraw(catalog, {"pipelines": ["reduce"], **filters}, "w")
        return None if got is None else got.uuid

    assert take(site="nowhere") is None
    assert take(tags=["y"]) is None
    assert take(events=[8]) is None
    assert take(events=[9, 10]) == top
    assert take(users=["ann"]) == new
    assert take() == old
    assert take(priorities=[2, 3]) is None
    assert take(priorities=[1]) == low
    assert take() is None
    got = withdraw(catalog, {"pipelines": ["reduce", "fit"]}, "w")
    assert got is not None and got.uuid == other and got.pipeline == "fit"
    assert withdraw(catalog, {"pipelines": ["no-such-pipeline"]}, "w") is None


def test_later_claims_keep_the_claim_order(catalog: Catalog) -> None:
    later_claims_keep_the_order(catalog)


def later_claims_keep_the_order(catalog: Catalog) -> None:
    """MongoDB's claims read from where the store's last claim was (``mongo_claim``): a job
    passed over before it, the next ones after it, one queued a second later and one of a
    higher priority queued last are all taken as one sorted read would take them."""
    def take(**filters: Any) -> str | None:
        got = withdraw(catalog, {"pipelines": ["reduce"], **filters}, "w")
        return None if got is None else got.uuid

    def queued(n: int, **queue: Any) -> str:
        time.sleep(0.005)  # a millisecond of its own: the order is not left to the uuids
        return submit(catalog, work(n, **queue)).uuid

    passed = queued(1)
    first, second, third = (queued(n, user="ann") for n in (2, 3, 4))
    assert take(users=["ann"]) == first
    assert take() == passed
    assert take() == second
    time.sleep(1.1)  # past the first windows after the mark
    later = queued(5)
    top = queued(6, priority=5)
    assert take() == top
    assert take() == third
    assert take() == later
    assert take() is None


@pytest.mark.parametrize("backend", MONGO_BACKENDS)
def test_mongo_claims_by_windows_and_by_one_sorted_query_take_the_same_jobs(
        backend: str, database_url: Callable[[str], str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The store asks mongod (its plan has no SORT) one sorted query and a server that sorts
    in memory (the wire server, mongomock) windows of queued times: both ways, on each test
    server, take the jobs in the same order."""
    from catalog.store.mongo import MongoStore

    monkeypatch.chdir(tmp_path)
    for sorted_by_index in (True, False):
        for scenario in (claim_order_holds, later_claims_keep_the_order):
            with Catalog.open(database_url(backend), keys=KEYS) as opened:
                assert isinstance(opened.store, MongoStore)
                opened.add_pipeline("reduce")
                opened.add_pipeline("fit")
                claims = opened.store._claims
                if backend in ("mongomock", "mongowire"):  # neither reads the order from it
                    assert claims._server_sorts_by_index() is False
                claims.sorted_by_index = sorted_by_index
                scenario(opened)


def test_a_claim_answers_the_job_as_it_left_it(catalog: Catalog,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """withdraw reads nothing after its claim: the store's claim answers the job as written,
    exactly what a read after it finds (without history or link lists)."""
    answered: list[Any] = []
    claim = catalog.store.claim

    def recording(*args: Any, **kwargs: Any) -> Any:
        answered.append(claim(*args, **kwargs))
        return answered[-1]

    monkeypatch.setattr(catalog.store, "claim", recording)
    uuid = submit(catalog, work(1, timeout=600, tags=["t"])).uuid
    got = withdraw(catalog, {"pipelines": ["reduce"]}, "host:1", lease=30)
    assert got is not None and answered[-1] is not None
    claimed = answered[-1]
    assert claimed.uuid == uuid and claimed.applied.entry["name"] == "run"
    assert claimed.job == catalog.store.get_job(uuid, history=False, links=False)
    assert claimed.job["state"] == "RUNNING" and claimed.job["queue"]["lease"]["worker"] == "host:1"
    assert got.archive_path == claimed.job["archive_path"] == catalog.get_job(uuid).archive_path
    assert withdraw(catalog, {"pipelines": ["reduce"]}, "host:1") is None
    assert answered[-1] is None


def test_a_claim_whose_filter_raises_is_refused_alone(catalog: Catalog) -> None:
    """A claim's filter runs inside the store's write (on SQLite, in the group commit with
    whatever else is queued): its error reaches its caller, nothing is claimed, and the next
    claim and event go through."""
    uuid = submit(catalog, work(1)).uuid
    pipelines = list(pipeline_uuids(catalog, ["reduce"]))

    def boom(head: dict[str, Any]) -> bool:
        raise RuntimeError("filter failed")

    def must_not_decide(head: dict[str, Any]) -> Any:
        raise AssertionError("nothing matched: nothing to decide")

    with pytest.raises(RuntimeError, match="filter failed"):
        catalog.store.claim(pipelines, boom, must_not_decide)
    job = catalog.get_job(uuid)
    assert job.state == "QUEUED" and [entry.name for entry in job.history] == ["create",
                                                                               "queue"]
    got = withdraw(catalog, {"pipelines": ["reduce"]}, "w")
    assert got is not None and got.uuid == uuid
    assert catalog.get_job(uuid).state == "RUNNING"


def test_claims_committed_together_take_distinct_jobs(catalog: Catalog) -> None:
    """Claims from many threads share COMMITs on SQLite (the group commit) and compare-and-set
    on MongoDB: each job is taken once, each claim gets one, none is lost."""
    uuids = {submit(catalog, work(n)).uuid for n in range(40)}
    barrier = threading.Barrier(8)

    def take(worker: str) -> list[str]:
        barrier.wait()
        taken = []
        while (got := withdraw(catalog, {"pipelines": ["reduce"]}, worker)) is not None:
            taken.append(got.uuid)
        return taken

    with ThreadPoolExecutor(8) as pool:
        taken = [uuid for part in pool.map(take, [f"w{n}" for n in range(8)]) for uuid in part]
    assert sorted(taken) == sorted(uuids)
    for uuid in uuids:
        job = catalog.get_job(uuid)
        runs = [entry for entry in job.history if entry.name == "run"]
        assert job.state == "RUNNING" and len(runs) == 1
        assert job.queue is not None and job.queue.lease is not None
        assert job.queue.lease.worker == runs[0].data["worker"]


@pytest.mark.parametrize("backend", MONGO_BACKENDS)
def test_a_job_cancelled_between_its_claim_and_its_read_is_not_handed_out(
        backend: str, database_url: Callable[[str], str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """MongoDB's claim reads the job just after claiming it: a cancel in between leaves it
    held by nobody, and the worker is given nothing rather than a job it must not run."""
    monkeypatch.chdir(tmp_path)
    with Catalog.open(database_url(backend), keys=KEYS) as opened:
        opened.add_pipeline("reduce")
        uuid = submit(opened, work(1)).uuid
        get_job = opened.store.get_job

        def cancelled_first(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("links") is False:
                opened.cancel(uuid)
            return get_job(*args, **kwargs)

        monkeypatch.setattr(opened.store, "get_job", cancelled_first)
        assert withdraw(opened, {"pipelines": ["reduce"]}, "w") is None
        monkeypatch.setattr(opened.store, "get_job", get_job)
        job = opened.get_job(uuid)
        assert job.state == "CANCELLED" and job.queue is not None and job.queue.lease is None
        assert [entry.name for entry in job.history][-2:] == ["run", "cancel"]


def test_withdraw_gives_the_worker_what_it_needs_and_records_the_lease(
        catalog: Catalog) -> None:
    uuid = submit(catalog, work(1, timeout=600)).uuid
    got = withdraw(catalog, {"pipelines": ["reduce"]}, "host:1", lease=30)
    assert got is not None
    assert (got.uuid, got.attempt, got.timeout) == (uuid, 1, 600)
    assert got.data == {"function": "pkg.mod.f", "parameters": {"n": 1}}
    assert got.token == catalog.job_token(uuid)
    job = catalog.get_job(uuid)
    assert job.state == "RUNNING" and job.queue is not None and job.queue.lease is not None
    assert job.queue.lease.worker == "host:1"
    assert 25 <= (job.queue.lease.expiry - utc_now()).total_seconds() <= 30
    run = job.history[-1]
    assert (run.name, run.data["worker"], run.data["attempt"]) == ("run", "host:1", 1)


def test_only_the_holder_renews_or_ends_an_attempt(catalog: Catalog) -> None:
    uuid = submit(catalog, work(1)).uuid
    assert withdraw(catalog, {"pipelines": ["reduce"]}, "w1", lease=10) is not None
    version = catalog.get_job(uuid).version
    expiry = heartbeat(catalog, uuid, "w1", lease=120)
    job = catalog.get_job(uuid)
    assert job.version == version  # a renewal is no history entry
    assert job.queue is not None and job.queue.lease is not None
    assert expiry.startswith(job.queue.lease.expiry.isoformat()[:16])
    for action in (lambda: heartbeat(catalog, uuid, "w2"),
                   lambda: end_attempt(catalog, uuid, "w2", None, {})):
        with pytest.raises(LeaseNotHeld, match="another worker holds it"):
            action()
    assert catalog.get_job(uuid).version == version
    end_attempt(catalog, uuid, "w1", None, {"ok": True})
    with pytest.raises(LeaseNotHeld, match="FINISHED, held by nobody"):
        end_attempt(catalog, uuid, "w1", None, {})
    with pytest.raises(LeaseNotHeld):
        heartbeat(catalog, uuid, "w1")


def test_failures_are_retried_until_retries_then_final(catalog: Catalog) -> None:
    uuid = submit(catalog, work(1, retries=3)).uuid
    for attempt in (1, 2, 3):
        got = withdraw(catalog, {"pipelines": ["reduce"]}, "w")
        assert got is not None and got.attempt == attempt
        end_attempt(catalog, uuid, "w", f"error {attempt}")
    job = catalog.get_job(uuid)
    assert job.state == "FAILED" and job.queue is not None
    assert (job.queue.attempt, job.queue.reason, job.queue.lease) == (3, "error 3", None)
    names = [name for name, _ in history(catalog, uuid)]
    assert names == ["create", "queue", "run", "fail", "retry", "run", "fail", "retry", "run",
                     "fail"]
    assert withdraw(catalog, {"pipelines": ["reduce"]}, "w") is None
    retry(catalog, uuid)  # by hand: a fresh count
    got = withdraw(catalog, {"pipelines": ["reduce"]}, "w")
    assert got is not None and got.attempt == 1
    with pytest.raises(EventNotAllowed):
        retry(catalog, uuid)  # it is RUNNING


def test_the_sweep_fails_expired_leases_and_retries_them(catalog: Catalog) -> None:
    expiring = submit(catalog, work(1, retries=2)).uuid
    final = submit(catalog, work(2, retries=1)).uuid
    for _ in range(2):
        assert withdraw(catalog, {"pipelines": ["reduce"]}, "w", lease=10) is not None
    fresh = submit(catalog, work(3)).uuid
    assert withdraw(catalog, {"pipelines": ["reduce"]}, "w", lease=3600) is not None
    assert sweep(catalog) == NOTHING_SWEPT
    later = utc_now() + timedelta(seconds=60)
    assert sweep(catalog, later) == {"expired": 2, "failed": 2, "retried": 1}
    assert catalog.get_job(expiring).state == "QUEUED"
    assert catalog.get_job(final).state == "FAILED"
    assert catalog.get_job(fresh).state == "RUNNING"
    fail = catalog.get_job(final).history[-1]
    assert (fail.name, fail.data["error"], fail.source) == ("fail", "lease expired", "queue")
    assert sweep(catalog, later) == NOTHING_SWEPT


def test_a_renewed_lease_is_not_swept(catalog: Catalog) -> None:
    uuid = submit(catalog, work(1)).uuid
    assert withdraw(catalog, {"pipelines": ["reduce"]}, "w", lease=10) is not None
    heartbeat(catalog, uuid, "w", lease=3600)
    assert sweep(catalog, utc_now() + timedelta(seconds=60)) == NOTHING_SWEPT


def test_cancel_ends_a_running_attempt_and_the_worker_loses_its_lease(
        catalog: Catalog) -> None:
    uuid = submit(catalog, work(1)).uuid
    assert withdraw(catalog, {"pipelines": ["reduce"]}, "w") is not None
    cancel(catalog, uuid, "stop it")
    job = catalog.get_job(uuid)
    assert job.state == "CANCELLED" and job.queue is not None and job.queue.lease is None
    assert job.history[-1].data == {"reason": "stop it"}
    with pytest.raises(LeaseNotHeld, match="CANCELLED"):
        heartbeat(catalog, uuid, "w")
    with pytest.raises(EventNotAllowed):
        cancel(catalog, uuid)
    assert sweep(catalog, utc_now() + timedelta(days=30)) == NOTHING_SWEPT


def test_queue_events_cannot_be_sent_as_plain_events(catalog: Catalog) -> None:
    uuid = submit(catalog, work(1)).uuid
    token = catalog.job_token(uuid)
    for name in ("queue", "retry", "wait", "cancel", "run"):
        with pytest.raises(QueueEventRefused):
            catalog.handle_event(uuid, {"name": name}, token)
    assert catalog.get_job(uuid).state == "QUEUED"
    refused = [entry.name for entry in catalog.audit_log(uuid)]
    assert sorted(refused) == ["cancel", "queue", "retry", "run", "wait"]


def test_a_webhook_finish_releases_the_lease(catalog: Catalog) -> None:
    uuid = submit(catalog, work(1)).uuid
    assert withdraw(catalog, {"pipelines": ["reduce"]}, "w", lease=10) is not None
    catalog.handle_event(uuid, {"name": "finish"}, catalog.job_token(uuid))
    job = catalog.get_job(uuid)
    assert job.queue is not None and job.queue.lease is None
    assert sweep(catalog, utc_now() + timedelta(days=1)) == NOTHING_SWEPT


@pytest.mark.parametrize(("change", "message"), [
    ({"priority": 0}, "priority"),
    ({"priority": 6}, "priority"),
    ({"timeout": 0}, "timeout"),
    ({"timeout": 259201}, "timeout"),
    ({"retries": 6}, "retries"),
    ({"data": {"function": "a.b", "command": ["x"]}}, "a function or a command, not both"),
    ({"surprise": 1}, "surprise"),
])
def test_bad_submissions_are_refused_and_change_nothing(catalog: Catalog, change: dict[str, Any],
                                                        message: str) -> None:
    with pytest.raises(SchemaViolation, match=message):
        submit(catalog, {**work(1), **change})
    assert catalog.find_jobs().items == []


def test_status_counts_by_pipeline_and_state(catalog: Catalog) -> None:
    for n in range(3):
        submit(catalog, work(n))
    submit(catalog, work(9, pipeline="fit"))
    assert withdraw(catalog, {"pipelines": ["reduce"]}, "w") is not None
    assert status(catalog) == {
        "pipelines": {"reduce": {"QUEUED": 2, "RUNNING": 1}, "fit": {"QUEUED": 1}},
        "total": {"QUEUED": 3, "RUNNING": 1}}
    assert status(catalog, ["fit"]) == {"pipelines": {"fit": {"QUEUED": 1}},
                                        "total": {"QUEUED": 1}}


def test_concurrent_claims_never_hand_one_job_to_two_workers(catalog: Catalog) -> None:
    uuids = {submit(catalog, work(n)).uuid for n in range(60)}
    taken: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (got := withdraw(catalog, {"pipelines": ["reduce"]}, name)) is not None:
            with lock:
                taken.append(got.uuid)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken) == sorted(uuids)
    runs = [entry for uuid in uuids for entry in catalog.get_job(uuid).history
            if entry.name == "run"]
    assert len(runs) == 60


def test_sqlite_claims_and_sweeps_read_their_indexes(tmp_path: Path) -> None:
    from catalog.store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "plan.db")
    store.close()
    with sqlite3.connect(tmp_path / "plan.db") as conn:
        claim = " ".join(row[3] for row in conn.execute(
            "EXPLAIN QUERY PLAN SELECT uuid, priority, queued, queue FROM jobs "
            "WHERE state = 'QUEUED' AND pipeline_uuid = ? ORDER BY priority DESC, queued, uuid "
            "LIMIT 64", ("p",)))
        expired = " ".join(row[3] for row in conn.execute(
            "EXPLAIN QUERY PLAN SELECT uuid FROM jobs WHERE lease_expiry IS NOT NULL AND "
            "lease_expiry < ? ORDER BY lease_expiry LIMIT 10", ("x",)))
    assert "USING INDEX jobs_claim" in claim and "TEMP B-TREE" not in claim
    assert "USING INDEX jobs_lease" in expired and "TEMP B-TREE" not in expired


def test_reported_products_are_archived_indexed_and_linked(catalog: Catalog,
                                                           tmp_path: Path) -> None:
    from catalog.queue.archive import complete

    uuid = submit(catalog, work(1)).uuid
    assert withdraw(catalog, {"pipelines": ["reduce"]}, "w") is not None
    made = tmp_path / "work"
    made.mkdir()
    (made / "table.csv").write_text("a,b\n1,2\n")
    (made / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (made / "stdout.txt").write_text("hello\n")
    state = complete(catalog, uuid, {"worker": "w", "results": {"rows": 1},
                                     "products": [str(made / "table.csv")],
                                     "plots": [str(made / "plot.png")],
                                     "logs": [str(made / "stdout.txt")]})
    job = catalog.get_job(uuid)
    assert (state, job.state, job.results) == ("FINISHED", "FINISHED", {"rows": 1})
    files = {record["path"].rsplit("/", 2)[-2] + "/" + record["name"]: record
             for record in catalog.find_files(job=uuid).items}
    assert set(files) == {"products/table.csv", "plots/plot.png", "attempt-1/stdout.txt"}
    assert files["plots/plot.png"]["kind"] == "plot"
    assert files["products/table.csv"]["kind"] == "product"
    assert files["products/table.csv"]["generated_by"] == [uuid]
    assert files["products/table.csv"]["status"] == "ok"
    assert set(files["products/table.csv"]["checksums"]) == {"xxh3_128", "sha256"}
    assert (made / "table.csv").exists()  # copied, as the queue's "products" mode says
    up = catalog.lineage(files["products/table.csv"]["uuid"], "up")
    assert uuid in {node["uuid"] for node in up["nodes"]}


def test_products_that_cannot_be_archived_fail_the_attempt_naming_them(
        catalog: Catalog, tmp_path: Path) -> None:
    from catalog.queue.archive import complete

    uuid = submit(catalog, work(1, retries=1)).uuid
    assert withdraw(catalog, {"pipelines": ["reduce"]}, "w") is not None
    (tmp_path / "ok.csv").write_text("x\n")
    assert complete(catalog, uuid, {"worker": "w", "products": [
        str(tmp_path / "ok.csv"), "../../etc/passwd", str(tmp_path / "missing.csv"),
        "/etc/hostname"]}) == "FAILED"
    job = catalog.get_job(uuid)
    assert job.state == "FAILED" and job.queue is not None and job.queue.reason is not None
    reason = job.queue.reason
    assert "'../../etc/passwd': names '..'" in reason
    assert "missing.csv': no such file" in reason
    assert "'/etc/hostname': is outside the archive root and every product root" in reason
    assert "ok.csv'" not in reason
    assert job.results is None
    assert catalog.find_files(job=uuid).items == []


def test_the_servers_sweeper_fails_expired_leases_on_its_own(catalog: Catalog) -> None:
    from catalog.queue.sweeper import Sweeper

    uuid = submit(catalog, work(1)).uuid
    assert withdraw(catalog, {"pipelines": ["reduce"]}, "gone", lease=1) is not None
    sweeper = Sweeper(catalog, 0.05).start()
    try:
        deadline = time.monotonic() + 10
        while catalog.get_job(uuid).state != "QUEUED":
            assert time.monotonic() < deadline, "the sweeper did not sweep"
            time.sleep(0.05)
    finally:
        sweeper.stop()
    assert [e.name for e in catalog.get_job(uuid).history][-2:] == ["fail", "retry"]
