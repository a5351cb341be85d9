"""A product linked from 500,000 runs on SQLite (issue 20), at the full count by default.

The links are seeded through the store's bulk path (``add_links``, 100,000 targets a call).
Events and links on the product and its runs keep working afterwards. A record's lists live in
``links`` alone (migration 16, ``catalog.store.sqlite_links``): the product's row weighs the
same after 500,000 runs as before (it weighed 20 MB, rewritten by every link added: a second
each), as MongoDB's document does (``tests/test_mongo_links.py``)."""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from test_store_contract import PRODUCT, deciding, make_entity, make_entry, make_job

from catalog.identifiers import UUIDType, typed_uuid
from catalog.store import open_store

RUNS = int(os.environ.get("CATALOG_TEST_RUNS", "500000"))


def row_size(path: Path, uuid: str) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT length(doc) FROM entities WHERE uuid = ?",
                                (uuid,)).fetchone()[0])


def test_a_product_of_500000_runs_takes_events_and_links(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/big.db")
    try:
        store.upsert_entities([make_entity("s3://bucket/cube.fits")])
        before = row_size(tmp_path / "big.db", PRODUCT)
        runs = [typed_uuid(UUIDType.pipelinejob, f"run-{n}") for n in range(RUNS)]
        for start in range(0, RUNS, 100_000):
            store.add_links(PRODUCT, "generated_by", runs[start:start + 100_000])
        assert row_size(tmp_path / "big.db", PRODUCT) == before < 1024
        job = make_job("still-running")
        store.insert_job(job)
        started = time.monotonic()
        store.add_links(PRODUCT, "generated_by", [job["uuid"], runs[7]])  # runs[7]: no repeat
        store.add_links(job["uuid"], "acted_on", [PRODUCT])
        entry = make_entry("run", "RUNNING", event_id="after-500000")
        applied = store.apply_event(job["uuid"], "after-500000", deciding("RUNNING", entry))
        assert (applied.duplicate, applied.entry) == (False, entry)
        assert time.monotonic() - started < 30  # a generous bound: a hang, not a benchmark
        assert row_size(tmp_path / "big.db", PRODUCT) == before
        assert len(store.edges([PRODUCT], "up", limit=10)) == 10
        assert store.edges([PRODUCT], "down") == [(job["uuid"], "acted_on", PRODUCT)]
        product = store.get_entity(PRODUCT)
        assert product is not None and len(product["generated_by"]) == RUNS + 1
    finally:
        store.close()
