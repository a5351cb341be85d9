"""An OpenLineage event is one transaction in SQLite, committed with whatever else is queued
(catalog.store.openlineage_write, catalog.store.openlineage_sqlite): concurrent callers' events
share a commit and keep their own outcomes, a refused write is undone alone while the others of
its transaction are kept, job events and OpenLineage events share the group commit (from
threads and from an event loop), and a failure anywhere in an event leaves nothing of it."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from catalog import Catalog
from catalog.errors import CatalogError, StoreError
from catalog.identifiers import UUIDType, typed_uuid
from catalog.messages import LineageOutcome
from catalog.models import Entity
from catalog.openlineage import ingest, ingest_async
from catalog.store.openlineage_write import LineageWrite
from catalog.store.sqlite import SQLiteStore
from catalog.store.values import Doc

KEY = "group-openlineage-key-0123456789abcdef"
RUN = "0b9c4a4e-2f55-4b7b-9a53-0c6f0b6f6a01"


def record(n: int, run: str = "r") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    uuid = typed_uuid(UUIDType.reference, f"s3://lake/{run}{n}")
    doc = {"event_id": f"openlineage:{run}{n}", "run_id": f"{run}{n}", "datasets": [uuid],
           "kind": "run"}
    entity = {"uuid": uuid, "kind": "reference", "name": f"{run}{n}", "namespace": "s3://lake",
              "created": "2026-11-21T12:00:00+00:00"}
    return doc, [entity]


def run_event(kind: str, second: int = 0, run: str = RUN) -> dict[str, Any]:
    return {"eventType": kind, "eventTime": f"2026-11-21T12:00:{second:02d}Z",
            "producer": "https://example.org/group", "run": {"runId": run},
            "job": {"namespace": "group://scheduler", "name": "step"},
            "inputs": [{"namespace": "s3://lake", "name": "raw.fits"}],
            "outputs": [{"namespace": "s3://lake", "name": "cube.fits"}]}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(f"{tmp_path}/group.db")
    yield opened
    opened.close()


@pytest.fixture
def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Catalog]:
    monkeypatch.chdir(tmp_path)
    opened, _ = Catalog.init(f"sqlite:///{tmp_path}/catalog.db", openlineage_key=KEY)
    yield opened
    opened.close()


def batches(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The kinds of what each transaction of the group commit applies, as it happens."""
    seen: list[list[str]] = []
    apply_batch = SQLiteStore._apply_batch.__func__  # type: ignore[attr-defined]

    def recording(cls: type[SQLiteStore], conn: sqlite3.Connection, batch: Any) -> None:
        seen.append(["lineage" if hasattr(item, "write") else "event" for item in batch])
        apply_batch(cls, conn, batch)

    monkeypatch.setattr(SQLiteStore, "_apply_batch", classmethod(recording))
    return seen


def counts(store: Any) -> dict[str, int]:
    conn = store._connection()
    return {table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("pipelines", "jobs", "history", "entities", "links", "audit",
                          "ol_events", "ol_event_datasets")}


def test_queued_writes_share_one_transaction_and_keep_their_own_outcomes(
        store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    bad_source = typed_uuid(UUIDType.reference, "s3://lake/nowhere")  # no such entity
    calls: list[Any] = []
    for n in range(12):
        doc, entities = record(n)
        links = [(bad_source, "generated_by", ["x"])] if n == 5 else []
        calls.append((doc, entities, links))
    calls.append(calls[0][:2] + ([],))  # a retry of record 0, in the same transaction
    seen = batches(monkeypatch)
    with ThreadPoolExecutor(len(calls)) as pool:
        with store._write_lock:  # every caller queues while the lock is held: one batch
            futures = [pool.submit(store.add_lineage_event, *call) for call in calls]
            while store._queue.qsize() < len(calls):
                threading.Event().wait(0.01)
        outcomes: list[Any] = []
        for future in futures:
            try:
                outcomes.append(future.result())
            except CatalogError as exc:
                outcomes.append(type(exc).__name__)
    assert seen == [["lineage"] * len(calls)]
    assert outcomes[5] in ("NotFound", "EntityNotFound")
    assert outcomes[:5] + outcomes[6:12] == [True] * 11
    assert outcomes[12] is False  # the duplicate, answered as such
    kept = store._connection().execute("SELECT event_id FROM ol_events ORDER BY seq").fetchall()
    # In the order the threads queued them, which is not the order they were submitted in.
    assert sorted(row[0] for row in kept) == sorted(
        f"openlineage:r{n}" for n in range(12) if n != 5)
    assert store.get_entity(record(5)[1][0]["uuid"]) is None  # the refused record, undone
    assert store.get_entity(record(6)[1][0]["uuid"]) is not None


def test_many_threads_each_record_kept_once(store: SQLiteStore) -> None:
    def send(thread: int) -> list[bool]:
        return [store.add_lineage_event(*record(n, f"t{thread}-")) for n in range(25)
                for _ in range(2)]  # each sent twice: the second is a duplicate

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(8)))
    assert all(a == [True, False] * 25 for a in answers)
    count = store._connection().execute("SELECT COUNT(*) FROM ol_events").fetchone()[0]
    assert count == 8 * 25
    assert len(store.lineage_events(dataset=record(3, "t7-")[1][0]["uuid"])) == 1


def test_a_new_run_is_one_transaction(catalog: Catalog,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """START of a run never seen: pipeline, job, its run event and the record, one batch
    (it was three commits: the job's setup, the event, the record)."""
    seen = batches(monkeypatch)
    outcome = ingest(catalog, run_event("START"), KEY)
    assert (outcome["state"], outcome["applied"]) == ("RUNNING", True)
    assert seen == [["lineage"]]
    seen.clear()
    outcome = ingest(catalog, run_event("COMPLETE", 1, run="9f2d1c55-6d0e-4f1a-8a53-2b6f0c1d2e3f"),
                     KEY)  # a run that ends before it was seen: create, run, finish
    assert (outcome["state"], outcome["applied"]) == ("FINISHED", True)
    assert seen == [["lineage"]]
    job = catalog.get_job(outcome["uuid"])
    assert [entry.name for entry in job.history] == ["create", "run", "finish"]
    assert job.acted_on == [typed_uuid(UUIDType.reference, "s3://lake/raw.fits")]


def test_a_failing_record_leaves_nothing_of_the_event(
        catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record is written last: when it fails, the job, its pipeline, its history and the
    datasets written before it in the same event are undone with it; the resend is whole."""
    store = catalog.store
    before = counts(store)
    keep_record = SQLiteStore._keep_record.__func__  # type: ignore[attr-defined]

    def disk_full(cls: type[SQLiteStore], conn: sqlite3.Connection, doc: Doc,
                  *args: Any) -> bool:
        keep_record(cls, conn, doc, *args)  # written, then the failure: all of it undone
        raise sqlite3.OperationalError("database or disk is full")

    with monkeypatch.context() as patched:
        patched.setattr(SQLiteStore, "_keep_record", classmethod(disk_full))
        with pytest.raises(StoreError, match="disk is full"):
            ingest(catalog, run_event("COMPLETE"), KEY)
    # No job without its record, no record, no dataset: the refusal alone, in the audit log.
    assert counts(store) == {**before, "audit": 1}
    (refusal,) = catalog.audit_log()
    assert (refusal.code, refusal.name) == ("store_error", "finish")
    outcome = ingest(catalog, run_event("COMPLETE"), KEY)
    assert (outcome["state"], outcome["duplicate"]) == ("FINISHED", False)
    after = counts(store)
    assert (after["jobs"], after["history"], after["ol_events"]) == (1, 3, 1)
    assert after["entities"] == 2


def test_a_refused_job_event_writes_nothing_of_the_event(
        catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job event refused for another reason than the state (here the store's own refusal
    of the history entry) is raised, audited, and none of the event is kept."""
    store = catalog.store
    ingest(catalog, run_event("START"), KEY)
    before = counts(store)
    apply_one = SQLiteStore._apply_one

    def refuse(conn: sqlite3.Connection, uuid: str, event_id: str | None, decide: Any) -> Any:
        raise StoreError("the catalog database refused a write: CHECK constraint failed")

    with monkeypatch.context() as patched:
        patched.setattr(SQLiteStore, "_apply_one", staticmethod(refuse))
        with pytest.raises(StoreError):
            ingest(catalog, run_event("COMPLETE", 1), KEY)
    after = counts(store)
    assert after == {**before, "audit": before["audit"] + 1}  # the refusal, audited alone
    assert SQLiteStore._apply_one is apply_one
    assert ingest(catalog, run_event("COMPLETE", 1), KEY)["state"] == "FINISHED"


@pytest.mark.anyio
async def test_events_from_the_loop_share_one_commit_with_webhook_events(
        catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    """What arrives in one turn of the loop commits together, OpenLineage and job events."""
    from catalog.jobs import ManagedPipelineJob
    from catalog.models import Event

    pipeline = catalog.add_pipeline("webhooks")[0]
    job = ManagedPipelineJob(catalog, pipeline.uuid, data={"n": 1}).setup()
    job.run()
    doc, entities = record(1)
    seen = batches(monkeypatch)
    store = catalog.store
    updates = [store.apply_event_async(job.uuid, f"u{n}", catalog.decider(
        job.uuid, Event(name="update", event_id=f"u{n}"), "webhook")) for n in range(3)]
    *applied, lineage = await asyncio.gather(*updates, store.apply_lineage_async(
        LineageWrite(doc, entities)))
    assert [a.entry["state"] for a in applied] == ["RUNNING"] * 3
    assert lineage.new is True
    assert seen == [["event", "event", "event", "lineage"]]
    assert store.lineage_events(run_id="r1")[0]["event_id"] == "openlineage:r1"


@pytest.mark.anyio
async def test_the_route_answers_as_the_library_call(catalog: Catalog) -> None:
    """``ingest_async`` (the HTTP route's) answers as ``ingest`` does, late events too."""
    first = await ingest_async(catalog, run_event("COMPLETE"), KEY)
    again = await ingest_async(catalog, run_event("COMPLETE"), KEY)
    late = await ingest_async(catalog, run_event("START", 2), KEY)
    assert (first["state"], first["duplicate"], first["applied"]) == ("FINISHED", False, True)
    assert (again["state"], again["duplicate"]) == ("FINISHED", True)
    assert (late["state"], late["applied"], late["duplicate"]) == ("FINISHED", False, False)
    assert [entry.code for entry in catalog.audit_log(first["uuid"])] == ["event_not_allowed"]
    for answer in (first, again, late):  # built as dicts: exactly the model's JSON
        assert LineageOutcome.model_validate(answer).model_dump(mode="json") == answer


def test_datasets_are_stored_as_the_entity_model_makes_them(catalog: Catalog) -> None:
    """The datasets are built as documents (not models): each is what Entity would store."""
    ingest(catalog, run_event("START"), KEY)
    for name in ("raw.fits", "cube.fits"):
        doc = catalog.store.get_entity(typed_uuid(UUIDType.reference, f"s3://lake/{name}"))
        assert doc is not None
        assert Entity.model_validate(doc).model_dump(mode="json") == doc


@pytest.mark.anyio
async def test_a_write_handed_to_the_writer_thread_is_applied_whole(
        store: SQLiteStore) -> None:
    """When a thread holds the write lock, the loop's batch goes to the writer thread."""
    doc, entities = record(1)
    with store._write_lock:
        waiting = asyncio.ensure_future(store.apply_lineage_async(LineageWrite(doc, entities)))
        await asyncio.sleep(0.05)
        assert not waiting.done()
    result = await asyncio.wait_for(waiting, 30)
    assert result.new is True
    assert store.lineage_events(run_id="r1")[0]["event_id"] == "openlineage:r1"
