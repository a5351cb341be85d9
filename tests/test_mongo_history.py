"""The Mongo store keeps each history entry in a document of its own (not in the job's, which
MongoDB caps at 16 MB): the job's document stays small, an entry stored by a writer that
stopped before moving the head is rolled forward, histories embedded by earlier versions are
moved when the store is opened, and entries of a deleted job never reach its successor."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import mongomock
import pytest
from test_store_contract import deciding, make_entry, make_job

from catalog.identifiers import UUIDType, typed_uuid
from catalog.store.mongo import MongoStore
from catalog.store.values import Doc

Database = Any  # a mongomock database


@pytest.fixture
def database() -> Database:
    return mongomock.MongoClient()["history"]


@pytest.fixture
def store(database: Database) -> Iterator[MongoStore]:
    opened = MongoStore(database, guard=threading.Lock(), mock=True)
    yield opened
    opened.close()


def apply(store: MongoStore, uuid: str, event_id: str, state: str = "RUNNING",
          heads: list[Doc] | None = None) -> tuple[Doc, bool]:
    entry = make_entry("run", state, event_id=event_id)
    applied = store.apply_event(uuid, event_id, deciding(state, entry, heads))
    return applied.entry, applied.duplicate


def stored_entry(job: Doc, seq: int, event_id: str, state: str) -> Doc:
    """A history document as apply_event writes it, written here without moving the head."""
    return {**make_entry("run", state, event_id=event_id), "job_uuid": job["uuid"],
            "job_created": job["created"], "seq": seq}


def test_the_jobs_document_does_not_grow_with_its_history(store: MongoStore,
                                                          database: Database) -> None:
    job = make_job("long-lived")
    store.insert_job(job)
    entries = [apply(store, job["uuid"], f"e{n}")[0] for n in range(40)]
    raw = database["jobs"].find_one({"uuid": job["uuid"]})
    assert "history" not in raw and raw["version"] == 41
    assert database["history"].count_documents({"job_uuid": job["uuid"]}) == 41
    found = store.get_job(job["uuid"])
    assert found is not None
    assert found["history"] == [*job["history"], *entries]  # in order, as they were given
    assert "history" not in (store.get_job(job["uuid"], history=False) or {})


def test_an_entry_whose_head_never_moved_is_rolled_forward(store: MongoStore,
                                                           database: Database) -> None:
    job = make_job("interrupted")
    store.insert_job(job)
    apply(store, job["uuid"], "first")
    # A writer stored its entry at seq 3 and stopped before moving the head (a crash).
    orphan = stored_entry(job, 3, "stopped", "RUNNING")
    database["history"].insert_one(dict(orphan))
    seen = store.get_job(job["uuid"])
    assert seen is not None and seen["version"] == 2 and len(seen["history"]) == 2
    # Its sender resends it: the entry is the event's, now under the head.
    entry, duplicate = apply(store, job["uuid"], "stopped", state="FAILED")
    assert duplicate and entry["event_id"] == "stopped" and entry["state"] == "RUNNING"
    after = store.get_job(job["uuid"])
    assert after is not None
    assert (after["version"], after["state"], len(after["history"])) == (3, "RUNNING", 3)
    # Another stopped writer, and a different next event: decided on the rolled-forward head.
    database["history"].insert_one(stored_entry(job, 4, "stopped-too", "FINISHED"))
    heads: list[Doc] = []
    entry, duplicate = apply(store, job["uuid"], "next", state="FINISHED", heads=heads)
    assert not duplicate and heads[-1]["version"] == 4 and heads[-1]["state"] == "FINISHED"
    final = store.get_job(job["uuid"])
    assert final is not None and final["version"] == 5
    assert [e["event_id"] for e in final["history"][1:]] == ["first", "stopped", "stopped-too",
                                                             "next"]


def test_histories_embedded_by_earlier_versions_are_moved_when_opened(
        database: Database) -> None:
    job = make_job("legacy")
    job["history"] += [make_entry("run", "RUNNING", event_id="old-run")]
    job["version"] = 2
    database["jobs"].insert_one(dict(job))  # as the store of an earlier version kept it
    database["jobs"].create_index("history.event_id")
    store = MongoStore(database, mock=True)
    try:
        assert store.get_job(job["uuid"]) == job
        assert "history" not in database["jobs"].find_one({"uuid": job["uuid"]})
        assert "history.event_id_1" not in database["jobs"].index_information()
        entry, duplicate = apply(store, job["uuid"], "old-run")
        assert duplicate and entry == job["history"][1]
        entry, duplicate = apply(store, job["uuid"], "new-run")
        assert not duplicate
        found = store.get_job(job["uuid"])
        assert found is not None and found["version"] == 3
        assert found["history"] == [*job["history"], entry]
    finally:
        store.close()
    reopened = MongoStore(database, mock=True)  # moving again changes nothing
    try:
        assert reopened.get_job(job["uuid"]) == found
    finally:
        reopened.close()


def test_entries_of_a_deleted_job_never_reach_a_new_job_of_that_uuid(
        store: MongoStore, database: Database) -> None:
    first = make_job("again", seconds=0)
    store.insert_job(first)
    apply(store, first["uuid"], "e1")
    assert store.delete_job(first["uuid"])
    assert database["history"].count_documents({"job_uuid": first["uuid"]}) == 0
    # A writer that read the old head stores its entry after the delete.
    database["history"].insert_one(stored_entry(first, 3, "late", "RUNNING"))
    second = make_job("again", seconds=60)
    assert second["uuid"] == first["uuid"]
    assert store.insert_job(second) == (second, True)
    assert store.get_job(second["uuid"]) == second
    entry, duplicate = apply(store, second["uuid"], "e1")  # not a duplicate of the first job's
    assert not duplicate
    found = store.get_job(second["uuid"])
    assert found is not None and found["version"] == 2
    assert found["history"] == [*second["history"], entry]


def test_inserting_an_existing_job_again_keeps_its_history(store: MongoStore) -> None:
    job = make_job("twice")
    assert store.insert_job(job) == (job, True)
    entry, _ = apply(store, job["uuid"], "e1")
    again = make_job("twice", seconds=5)  # another first entry: refused with the job
    found, created = store.insert_job(again)
    assert not created and found["history"] == [*job["history"], entry]
    assert not store.delete_job(typed_uuid(UUIDType.pipelinejob, "never inserted"))


def test_concurrent_writers_place_every_entry_once_and_in_order(store: MongoStore) -> None:
    job = make_job("busy")
    store.insert_job(job)
    barrier = threading.Barrier(6)

    def writer(n: int) -> None:
        barrier.wait()
        for i in range(15):
            apply(store, job["uuid"], f"w{n}-{i % 10}")  # with resends of the same ids

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    found = store.get_job(job["uuid"])
    assert found is not None and found["version"] == 61
    ids = [entry["event_id"] for entry in found["history"][1:]]
    assert sorted(ids) == sorted(f"w{n}-{i}" for n in range(6) for i in range(10))
