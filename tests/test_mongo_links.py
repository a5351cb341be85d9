"""The Mongo store keeps the links added to a record in ``links``, not in the record's document
(which MongoDB caps at 16 MB): a product written by very many runs keeps a small document and
takes events and links as before; databases of earlier versions, whose lists grew in place, are
migrated when opened; writes over several documents run in a transaction where the server has
them. On every Mongo backend: mongomock, the wire server and (when configured) a real MongoDB."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import bson
import pytest
from conftest import MONGO_BACKENDS
from test_store_contract import (
    EXPERIMENT,
    PRODUCT,
    deciding,
    make_entity,
    make_entry,
    make_file,
    make_job,
    ref,
)

from catalog.identifiers import UUIDType, typed_uuid
from catalog.store import JobQuery, open_store
from catalog.store.mongo import MongoStore
from catalog.store.values import Doc

# The wire server stores about 750 links a second and mongomock fewer (it checks its unique
# indexes by a scan): 500,000 runs would take most of an hour there. So the default is the
# largest count that fits about 30 s a backend: 10,000 runs on the wire server (measured: 13 s
# for the test and 6 s to drop its database) and a tenth of that on mongomock (6 s). SQLite
# runs the full 500,000 by default (tests/test_big_links_sqlite.py, about 15 s). The document
# is shown not to grow at all (its size is the same after the runs as before), which holds for
# any count; CATALOG_TEST_RUNS=500000 runs the full count (on a real MongoDB, about a minute;
# on the wire server it had not finished after 29 minutes and 50 CPU-minutes of the server's,
# which slows as its collection grows: the full count there is out of reach).
RUNS = int(os.environ.get("CATALOG_TEST_RUNS", "10000"))
SMALL = 4096  # bytes: what a product's document may weigh, however many runs wrote it


@pytest.fixture(params=MONGO_BACKENDS)
def mongo_url(request: pytest.FixtureRequest, database_url: Callable[[str], str]) -> str:
    return database_url(str(request.param))


@pytest.fixture
def store(mongo_url: str) -> Iterator[MongoStore]:
    opened = open_store(mongo_url)
    assert isinstance(opened, MongoStore)
    yield opened
    opened.close()


def raw(store: MongoStore, collection: str, uuid: str) -> Doc:
    doc = store.database[collection].find_one({"uuid": uuid})
    assert doc is not None
    return doc


def size(doc: Doc) -> int:
    return len(bson.encode(doc))


def test_a_product_of_many_runs_keeps_a_small_document_and_takes_events(
        store: MongoStore, request: pytest.FixtureRequest) -> None:
    # mongomock checks its unique indexes by a scan: a tenth of the runs there.
    count = RUNS // 10 if request.node.callspec.params["mongo_url"] == "mongomock" else RUNS
    store.upsert_entities([make_entity("s3://bucket/cube.fits")])
    before = size(raw(store, "entities", PRODUCT))
    job = make_job("still-running")
    store.insert_job(job)
    runs = [typed_uuid(UUIDType.pipelinejob, f"run-{n}") for n in range(count)]
    # As OpenLineage ingestion links a product to each run that wrote it, in bulk here.
    for start in range(0, count, 100_000):
        store.add_links(PRODUCT, "generated_by", runs[start:start + 100_000])

    assert size(raw(store, "entities", PRODUCT)) == before < SMALL
    assert store.database["links"].count_documents({"src": PRODUCT}) == count
    # The events and links of a run that writes it once more still apply, each a small write.
    store.add_links(PRODUCT, "generated_by", [job["uuid"], runs[7]])
    store.add_links(job["uuid"], "acted_on", [PRODUCT])
    entry = make_entry("run", "RUNNING", event_id="after-500000")
    applied = store.apply_event(job["uuid"], "after-500000", deciding("RUNNING", entry))
    assert (applied.duplicate, applied.entry) == (False, entry)
    assert size(raw(store, "entities", PRODUCT)) == before
    assert size(raw(store, "jobs", job["uuid"])) < SMALL
    # Lineage reads from the index as far as asked, both ways.
    assert len(store.edges([PRODUCT], "up", limit=10)) == 10
    assert store.edges([PRODUCT], "down") == [(job["uuid"], "acted_on", PRODUCT)]
    assert (PRODUCT, "generated_by", job["uuid"]) in store.edges([job["uuid"]], "down")


def test_links_added_later_are_read_back_in_order_and_paged_with_the_others(
        store: MongoStore) -> None:
    jobs = [make_job(f"job-{n}", seconds=n, child_of=(EXPERIMENT,) if n % 2 else ())
            for n in range(9)]
    for job in jobs:
        store.insert_job(job)
    for job in jobs[::2]:  # the others adopted by EXPERIMENT later
        store.add_links(job["uuid"], "child_of", [EXPERIMENT])
    pages, cursor = [], None
    while True:
        page = store.find_jobs(JobQuery(child_of=EXPERIMENT, limit=2, cursor=cursor,
                                        sort="-created"))
        pages.append([job["uuid"] for job in page.items])
        assert all(job["child_of"] == [EXPERIMENT] for job in page.items)
        if page.next is None:
            break
        cursor = page.next
    assert [uuid for page in pages for uuid in page] == [job["uuid"] for job in jobs[::-1]]
    assert all(len(page) == 2 for page in pages[:-1])
    assert all(raw(store, "jobs", job["uuid"])["child_of"] == job["child_of"]
               for job in jobs)  # the documents are as written

    # A state filter still applies to the jobs linked later.
    entry = make_entry("run", "RUNNING", event_id="run-0")
    store.apply_event(jobs[0]["uuid"], "run-0", deciding("RUNNING", entry))
    running = store.find_jobs(JobQuery(child_of=EXPERIMENT, state="RUNNING")).items
    assert [job["uuid"] for job in running] == [jobs[0]["uuid"]]

    record = make_file("/products/v2/a.csv", child_of=())
    store.upsert_files([record])
    store.add_links(record["uuid"], "child_of", [jobs[3]["uuid"]])
    assert [doc["uuid"] for doc in store.find_files(child_of=jobs[3]["uuid"]).items] == [
        record["uuid"]]
    assert store.unlink_job_files(jobs[3]["uuid"]) == 1
    assert store.find_files(child_of=jobs[3]["uuid"]).items == []
    assert store.get_file(record["uuid"]) == record


def test_a_deleted_job_leaves_no_links_of_its_own(store: MongoStore) -> None:
    job = make_job("short-lived")
    store.insert_job(job)
    store.add_links(job["uuid"], "acted_on", [ref("a"), ref("b")])
    assert store.delete_job(job["uuid"]) is True
    assert store.database["links"].count_documents({"src": job["uuid"]}) == 0
    assert store.edges([ref("a")], "down") == []


def test_transactions_are_used_where_the_server_has_them(
        store: MongoStore, request: pytest.FixtureRequest) -> None:
    # The wire server is a one-member replica set, as production's should be; mongomock has none.
    backend = request.node.callspec.params["mongo_url"]
    assert store._transactions is (backend != "mongomock")


def old_database(database: Any, links: int) -> tuple[Doc, Doc]:
    """A product and a job as earlier versions stored them, ``links`` runs in their lists."""
    runs = [typed_uuid(UUIDType.pipelinejob, f"old-run-{n}") for n in range(links)]
    product = make_entity("s3://bucket/cube.fits", generated_by=runs)
    job = make_job("old", child_of=(EXPERIMENT,))
    inputs = [ref(f"input-{n}") for n in range(links)]
    database["entities"].insert_one(dict(product))
    database["jobs"].insert_one({**job, "acted_on": inputs})
    return product, {**job, "acted_on": inputs}


def test_an_earlier_database_is_migrated_when_opened(
        mongo_url: str, store: MongoStore) -> None:
    database = store.database
    database["schema_migrations"].delete_many({})  # as an earlier version left it
    product, job = old_database(database, 300)

    again = open_store(mongo_url)
    try:
        assert isinstance(again, MongoStore)
        assert again.migrations() == [(1, "history in its own collection"),
                                      (2, "links added later in their own collection"),
                                      (3, "fixity history in its own collection")]
        assert raw(again, "entities", PRODUCT)["generated_by"] == []
        assert raw(again, "jobs", job["uuid"])["acted_on"] == []
        assert raw(again, "jobs", job["uuid"])["child_of"] == [EXPERIMENT]  # its identity
        assert again.get_entity(PRODUCT) == product  # the lists read back as they were
        assert again.get_job(job["uuid"], history=False) == {
            key: value for key, value in job.items() if key != "history"}
        assert again.find_jobs(JobQuery(child_of=EXPERIMENT)).items[0]["acted_on"] == (
            job["acted_on"])
        assert len(again.edges([PRODUCT], "up")) == 300
    finally:
        again.close()
    # Opened once more, nothing runs again.
    third = open_store(mongo_url)
    try:
        assert isinstance(third, MongoStore)
        assert third.migrations()[-1][0] == 3
        assert third.get_entity(PRODUCT) == product
    finally:
        third.close()


class Interrupted(Exception):
    """A failure injected between the writes of one deletion."""


def test_a_deletion_that_fails_midway_is_undone_whole_where_there_are_transactions(
        store: MongoStore, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``delete_job`` deletes the head, then the history, then the links: it is stopped
    before the links. Over the wire (a replica set) the transaction is aborted and the job is
    whole again; on mongomock (no transactions) what the module's doc promises holds: each
    write stood alone, and only the job's own links are left."""
    backend = request.node.callspec.params["mongo_url"]
    job = make_job("interrupted")
    store.insert_job(job)
    entry = make_entry("run", "RUNNING", event_id="before-the-delete")
    store.apply_event(job["uuid"], "before-the-delete", deciding("RUNNING", entry))
    store.add_links(job["uuid"], "acted_on", [ref("a")])
    before = store.get_job(job["uuid"], history=True)
    assert before is not None

    def fail(*args: Any, **kwargs: Any) -> None:
        raise Interrupted("stopped after the head and the history were deleted")

    monkeypatch.setattr(store._links, "delete", fail)
    with pytest.raises(Interrupted):
        store.delete_job(job["uuid"])
    monkeypatch.undo()

    if backend != "mongomock":
        assert store.get_job(job["uuid"], history=True) == before  # nothing of it stood
        assert store.edges([ref("a")], "down") == [(job["uuid"], "acted_on", ref("a"))]
        assert store.delete_job(job["uuid"]) is True  # and once it is let through, all goes
        assert store.get_job(job["uuid"]) is None
        assert store.database["history"].count_documents({"job_uuid": job["uuid"]}) == 0
    else:
        assert store.get_job(job["uuid"]) is None
        assert store.database["history"].count_documents({"job_uuid": job["uuid"]}) == 0
    assert store.database["links"].count_documents({"src": job["uuid"]}) == (
        1 if backend == "mongomock" else 0)
