"""SQLite keeps a record's link lists in ``links`` alone (migration 16, ``sqlite_links``): its
row weighs the same however many links it has, its lists read back in the order written then
added (the added ones from an index of their own, migration 18), and a database written before
either migration answers the same lists after it."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from test_store_contract import (
    EXPERIMENT,
    FILE_JOB,
    PRODUCT,
    SAMPLE,
    make_entity,
    make_file,
    make_job,
    ref,
)

from catalog.identifiers import UUIDType, typed_uuid
from catalog.store import sqlite
from catalog.store.sqlite import SQLiteStore
from catalog.store.sqlite_links import ADDED_FROM
from catalog.store.values import Doc


def row_size(path: Path, table: str, uuid: str) -> int:
    with closing(sqlite3.connect(path)) as conn:
        row = conn.execute(f"SELECT length(doc) FROM {table} WHERE uuid = ?", (uuid,)).fetchone()
    assert row is not None
    return int(row[0])


def runs(count: int, prefix: str = "run") -> list[str]:
    return [typed_uuid(UUIDType.pipelinejob, f"{prefix}-{n}") for n in range(count)]


def test_a_records_row_stays_the_same_size_as_its_links_grow(tmp_path: Path) -> None:
    path = tmp_path / "links.db"
    store = SQLiteStore(path)
    try:
        store.upsert_entities([make_entity("s3://bucket/cube.fits", generated_by=runs(3, "own"))])
        job = make_job("reader", child_of=(EXPERIMENT,))
        store.insert_job(job)
        record = make_file("/products/v2/a.csv")
        store.upsert_files([record])
        before = {table: row_size(path, table, uuid) for table, uuid in (
            ("entities", PRODUCT), ("jobs", job["uuid"]), ("files", record["uuid"]))}
        sizes = []
        for step in range(4):  # 0, 1,000, 2,000, 3,000 links added to each
            if step:
                added = runs(1000, f"step-{step}")
                store.add_links(PRODUCT, "generated_by", added)
                store.add_links(job["uuid"], "acted_on", [ref(f"{step}-{n}") for n in range(1000)])
                store.add_links(record["uuid"], "derived_from", added)
            sizes.append({table: row_size(path, table, uuid) for table, uuid in (
                ("entities", PRODUCT), ("jobs", job["uuid"]), ("files", record["uuid"]))})
        assert sizes == [before] * 4
        product = store.get_entity(PRODUCT)
        assert product is not None
        assert product["generated_by"] == [*runs(3, "own"), *(
            uuid for step in (1, 2, 3) for uuid in runs(1000, f"step-{step}"))]
        stored_job = store.get_job(job["uuid"], history=False)
        assert stored_job is not None and len(stored_job["acted_on"]) == 3000
        assert stored_job["child_of"] == [EXPERIMENT]
    finally:
        store.close()


def test_lists_read_back_in_the_order_written_then_added(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "order.db")
    try:
        written = [ref("z"), ref("a"), ref("m")]  # not in uuid order
        job = {**make_job("ordered", child_of=(SAMPLE, EXPERIMENT)), "acted_on": written}
        store.insert_job(job)
        store.add_links(job["uuid"], "acted_on", [ref("y"), ref("a"), ref("b")])
        store.add_links(job["uuid"], "acted_on", [ref("c")])
        expected = [*written, ref("y"), ref("b"), ref("c")]
        stored = store.get_job(job["uuid"])
        assert stored is not None
        assert stored["acted_on"] == expected
        assert stored["child_of"] == [SAMPLE, EXPERIMENT]
        assert store.get_jobs([job["uuid"]])[job["uuid"]]["acted_on"] == expected
        # A file record's upsert replaces its lists whole, in the order of the new doc.
        record = make_file("/products/v2/b.csv", derived_from=(ref("q"), ref("b")))
        store.upsert_files([record])
        store.add_links(record["uuid"], "derived_from", [ref("r")])
        assert store.get_file(record["uuid"]) == {
            **record, "derived_from": [ref("q"), ref("b"), ref("r")]}
        store.upsert_files([record])
        assert store.get_file(record["uuid"]) == record
        assert store.find_files(child_of=FILE_JOB).items == [record]
    finally:
        store.close()


def pre_16_database(path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Doc]:
    """A catalog made by the migrations before 16, with records as the code before it wrote
    them: each record's lists in its JSON row and in ``links`` (no ``pos``)."""
    with monkeypatch.context() as patched:
        patched.setattr(sqlite, "MIGRATIONS", tuple(
            migration for migration in sqlite.MIGRATIONS if migration[0] < 16))
        SQLiteStore(path).close()
    owners = runs(5, "old")
    product = make_entity("s3://bucket/cube.fits", generated_by=[owners[3], owners[0]],
                          derived_from=[ref("raw")])
    job = {**make_job("old", child_of=(SAMPLE, EXPERIMENT)),
           "acted_on": [ref("z"), ref("a")], "generated_by": [owners[4]]}
    deleted = {**make_job("deleted", child_of=(EXPERIMENT,)), "acted_on": [ref("k")]}
    record = make_file("/products/v2/old.csv", derived_from=(ref("y"), ref("x")))
    head = ("uuid", "pipeline_uuid", "state", "version", "last_event", "created", "updated")
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("INSERT INTO entities (uuid, kind, created, doc) VALUES (?, ?, ?, ?)",
                     (product["uuid"], product["kind"], product["created"], json.dumps(product)))
        body = {k: v for k, v in job.items() if k not in head and k != "history"}
        conn.execute(f"INSERT INTO jobs ({', '.join(head)}, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (*(job[k] for k in head), json.dumps(body)))
        conn.execute("INSERT INTO tombstones (uuid, deleted, doc) VALUES (?, ?, ?)",
                     (deleted["uuid"], deleted["created"], json.dumps(
                         {**deleted, "deleted": {"date": deleted["created"]}})))
        conn.execute("INSERT INTO files (uuid, path, storage_system, status, kind, level, "
                     "media_type, created, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (record["uuid"], record["path"], record["storage_system"], record["status"],
                      record["kind"], record["level"], record["media_type"], record["created"],
                      json.dumps(record)))
        links = [(doc["uuid"], relation, target, key) for doc, key, relations in (
            (product, None, ("generated_by", "derived_from")),
            (job, job["created"], ("child_of", "acted_on", "generated_by")),
            (deleted, deleted["created"], ("child_of", "acted_on")),
            (record, record["path"], ("child_of", "generated_by", "derived_from")))
            for relation in relations for target in doc.get(relation) or ()]
        conn.executemany("INSERT INTO links (src, relation, dst, src_key) VALUES (?, ?, ?, ?)",
                         links)
    return {"product": product, "job": job, "deleted": deleted, "record": record}


def test_migration_16_moves_the_lists_out_and_answers_them_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "old.db"
    old = pre_16_database(path, monkeypatch)
    heavy = row_size(path, "entities", PRODUCT)
    store = SQLiteStore(path)
    try:
        assert 16 in [version for version, _ in store.migrations()]
        assert store.get_entity(PRODUCT) == old["product"]
        job = old["job"]
        assert store.get_job(job["uuid"], history=False) == {
            k: v for k, v in job.items() if k != "history"}
        assert store.get_file(old["record"]["uuid"]) == old["record"]
        tombstone = store.get_tombstone(old["deleted"]["uuid"])
        assert tombstone is not None
        assert (tombstone["child_of"], tombstone["acted_on"]) == ([EXPERIMENT], [ref("k")])
        assert store.find_files(child_of=FILE_JOB).items == [old["record"]]
        # The rows keep an empty list in place of each of theirs, and nothing more.
        with closing(sqlite3.connect(path)) as conn:
            doc = json.loads(conn.execute("SELECT doc FROM entities WHERE uuid = ?",
                                          (PRODUCT,)).fetchone()[0])
        assert doc["generated_by"] == doc["derived_from"] == []
        assert row_size(path, "entities", PRODUCT) < heavy
        # Links added afterwards come after those written, and the row stays as it is.
        light = row_size(path, "entities", PRODUCT)
        store.add_links(PRODUCT, "generated_by", [runs(1, "new")[0], old["product"][
            "generated_by"][0]])
        product = store.get_entity(PRODUCT)
        assert product is not None
        assert product["generated_by"] == [*old["product"]["generated_by"], runs(1, "new")[0]]
        assert row_size(path, "entities", PRODUCT) == light
    finally:
        store.close()
    again = SQLiteStore(path)  # opened once more, the migration does not run again
    try:
        assert again.get_entity(PRODUCT) == product
    finally:
        again.close()


def attach_plans(store: SQLiteStore, read: object) -> list[str]:
    """The query plans of the reads of ``links`` that ``read()`` makes."""
    traced: list[str] = []
    conn = store._connection()
    conn.set_trace_callback(traced.append)
    try:
        assert read() is not None  # type: ignore[operator]
    finally:
        conn.set_trace_callback(None)
    return [" ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql))
            for sql in traced if "FROM links" in sql]


def test_a_records_added_links_are_read_from_an_index_in_their_order_without_a_sort(
        tmp_path: Path) -> None:
    """The reads ``attach`` makes, planned: the links added to a record (the lists that grow
    long) are a range of links_added, covering, with no temporary b-tree (sorting every link
    of a record of 500,000 took 1.1 s); those written with it, a range of the key, sorted."""
    store = SQLiteStore(str(tmp_path / "c.db"))
    try:
        assert store.get_entity(PRODUCT) is None
        store.upsert_entities([make_entity("s3://bucket/cube.fits", generated_by=runs(2, "w"))])
        store.add_links(PRODUCT, "generated_by", runs(3))
        written, added = attach_plans(store, lambda: store.get_entity(PRODUCT))
        assert "links_added" not in written and "PRIMARY KEY" in written, written
        assert "COVERING INDEX links_added" in added and "TEMP B-TREE" not in added, added
        product = store.get_entity(PRODUCT)
        assert product is not None and product["generated_by"] == [*runs(2, "w"), *runs(3)]
    finally:
        store.close()


def test_a_file_records_own_links_stay_out_of_the_index_of_added_links(tmp_path: Path) -> None:
    """What migration 18 is for: the links a record is written with (a file's ``child_of``
    and ``generated_by``, at each index) are not in links_added; only those added after."""
    store = SQLiteStore(str(tmp_path / "d.db"))
    try:
        record = make_file("/products/v2/a.csv", derived_from=(ref("q"),))
        store.upsert_files([record])
        conn = store._connection()
        count = "SELECT count(*) FROM links INDEXED BY links_added WHERE pos >= {} AND src = ?"
        query = count.format(ADDED_FROM)
        assert conn.execute(query, (record["uuid"],)).fetchone() == (0,)
        store.add_links(record["uuid"], "derived_from", [ref("r")])
        assert conn.execute(query, (record["uuid"],)).fetchone() == (1,)
        assert store.get_file(record["uuid"]) == {
            **record, "derived_from": [ref("q"), ref("r")]}
    finally:
        store.close()


def test_migration_18_keeps_every_list_in_its_order(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A catalog written before migration 18 (every link in links_ordered) reads the same lists
    after it, in the same order, and only the index of added links is left."""
    path = tmp_path / "pre18.db"
    with monkeypatch.context() as patched:
        patched.setattr(sqlite, "MIGRATIONS", tuple(
            migration for migration in sqlite.MIGRATIONS if migration[0] < 18))
        before = SQLiteStore(path)
        try:
            job = {**make_job("pre-18", child_of=(SAMPLE, EXPERIMENT)),
                   "acted_on": [ref("z"), ref("a")]}
            before.insert_job(job)
            before.add_links(job["uuid"], "acted_on", [ref("y"), ref("a"), ref("b")])
            before.upsert_entities([make_entity("s3://bucket/cube.fits",
                                                generated_by=runs(2, "w"))])
            before.add_links(PRODUCT, "generated_by", runs(3))
            record = make_file("/products/v2/a.csv", derived_from=(ref("q"), ref("b")))
            before.upsert_files([record])
            before.add_links(record["uuid"], "derived_from", [ref("r")])
            read = (before.get_job(job["uuid"]), before.get_entity(PRODUCT),
                    before.get_file(record["uuid"]))
        finally:
            before.close()
    assert read[0] is not None and read[0]["acted_on"] == [ref("z"), ref("a"), ref("y"),
                                                           ref("b")]
    after = SQLiteStore(path)
    try:
        assert (after.get_job(job["uuid"]), after.get_entity(PRODUCT),
                after.get_file(record["uuid"])) == read
        indexes = {name for (name,) in after._connection().execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'links'")}
        assert "links_added" in indexes and "links_ordered" not in indexes, indexes
    finally:
        after.close()
