"""OpenLineage records of concurrent callers committed together in SQLite
(catalog.store.openlineage_sqlite): each kept once, each caller answered with its own outcome,
a refused record undone alone while the others of its transaction are kept."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from catalog.errors import CatalogError
from catalog.identifiers import UUIDType, typed_uuid
from catalog.store.sqlite import SQLiteStore


def record(n: int, run: str = "r") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    uuid = typed_uuid(UUIDType.reference, f"s3://lake/{run}{n}")
    doc = {"event_id": f"openlineage:{run}{n}", "run_id": f"{run}{n}", "datasets": [uuid],
           "kind": "run"}
    entity = {"uuid": uuid, "kind": "reference", "name": f"{run}{n}", "namespace": "s3://lake",
              "created": "2026-11-21T12:00:00+00:00"}
    return doc, [entity]


@pytest.fixture
def store(tmp_path: Path) -> Any:
    opened = SQLiteStore(f"{tmp_path}/group.db")
    yield opened
    opened.close()


def test_queued_records_share_one_transaction_and_keep_their_own_outcomes(store: Any) -> None:
    bad_source = typed_uuid(UUIDType.reference, "s3://lake/nowhere")  # no such entity
    group = store._ol_group()
    calls: list[Any] = []
    for n in range(12):
        doc, entities = record(n)
        links = [(bad_source, "generated_by", ["x"])] if n == 5 else []
        calls.append((doc, entities, links))
    calls.append(calls[0][:2] + ([],))  # a retry of record 0, in the same transaction
    with ThreadPoolExecutor(len(calls)) as pool:
        with group.lock:  # every caller queues while the lock is held: one batch for all
            futures = [pool.submit(store.add_lineage_event, *call) for call in calls]
            while group.queue.qsize() < len(calls):
                threading.Event().wait(0.01)
        outcomes: list[Any] = []
        for future in futures:
            try:
                outcomes.append(future.result())
            except CatalogError as exc:
                outcomes.append(type(exc).__name__)
    assert outcomes[5] in ("NotFound", "EntityNotFound")
    assert outcomes[:5] + outcomes[6:12] == [True] * 11
    assert outcomes[12] is False  # the duplicate, answered as such
    kept = store._connection().execute("SELECT event_id FROM ol_events ORDER BY seq").fetchall()
    assert [row[0] for row in kept] == [f"openlineage:r{n}" for n in range(12) if n != 5]
    assert store.get_entity(record(5)[1][0]["uuid"]) is None  # the refused record, undone
    assert store.get_entity(record(6)[1][0]["uuid"]) is not None


def test_many_threads_each_record_kept_once(store: Any) -> None:
    def send(thread: int) -> list[bool]:
        return [store.add_lineage_event(*record(n, f"t{thread}-")) for n in range(25)
                for _ in range(2)]  # each sent twice: the second is a duplicate

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(8)))
    assert all(a == [True, False] * 25 for a in answers)
    count = store._connection().execute("SELECT COUNT(*) FROM ol_events").fetchone()[0]
    assert count == 8 * 25
    assert len(store.lineage_events(dataset=record(3, "t7-")[1][0]["uuid"])) == 1
