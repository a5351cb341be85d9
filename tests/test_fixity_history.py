"""A file record's fixity history out of the record (issue 20): on every store (SQLite,
mongomock, the MongoDB-wire server) a record checked 1,000 times stays the size it was after
its first check, the history is read a page at a time in order, and databases written before
(the whole log in the record) are moved on open, idempotently. Readers: the Python API, HTTP
(GET /files/{uuid}/fixity), the file page and ``catalog file show``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bson
import httpx
import pytest
from sqlite_shapes import files_before_17

from catalog import Catalog
from catalog.errors import FileNotFound, InvalidInput
from catalog.identifiers import UUIDType, typed_uuid
from catalog.models import FileRecord, FixityCheck
from catalog.store import Store, open_store
from catalog.store.mongo import MongoStore
from catalog.store.sqlite import SQLiteStore
from catalog.store.values import Doc
from catalog.tokens import Keys
from catalog.web import create_app

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
KEYS = Keys(b"f" * 32, b"g" * 32)
SCRIPT = Path(sys.executable).parent / "catalog"


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def make_file(path: str, fixity: list[Doc] | None = None) -> Doc:
    return FileRecord(
        uuid=typed_uuid(UUIDType.file, f"local:{path}"), storage_system="local", path=path,
        name=path.rpartition("/")[2], size=1, mtime=at(0), media_type="text/csv",
        kind="product", checksums={"sha256": "ab" * 32}, fixity=fixity or [],
        created=at(0), updated=at(0)).model_dump(mode="json")


def make_check(seconds: float, outcome: str = "ok") -> Doc:
    return FixityCheck(date=at(seconds), outcome=outcome, size=1,
                       checksums={"sha256": "ab" * 32}).model_dump(mode="json")


def stored_size(store: Store, uuid: str) -> int:
    """The bytes the record takes in the database: its SQLite row's doc, its BSON document."""
    if isinstance(store, SQLiteStore):
        (size,) = store._connection().execute(
            "SELECT length(doc) FROM files WHERE uuid = ?", (uuid,)).fetchone()
        return int(size)
    assert isinstance(store, MongoStore)
    raw = store._files.find_one({"uuid": uuid})
    assert raw is not None
    return len(bson.encode(raw))


def history(store: Store, uuid: str, limit: int) -> list[Doc]:
    checks: list[Doc] = []
    cursor = None
    while True:
        page = store.fixity_checks(uuid, limit, cursor)
        assert len(page.items) <= limit
        checks += page.items
        if page.next is None:
            return checks
        cursor = page.next


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()


def test_a_thousand_checks_leave_the_record_the_same_size(store: Store) -> None:
    record = make_file("/products/nightly.csv")
    store.upsert_files([record])
    store.record_fixity([(record["uuid"], make_check(0), "ok")])
    size = stored_size(store, record["uuid"])
    checks = [make_check(0)]
    for day in range(1, 1000, 50):  # a verify of many files is one call: 50 checks a call
        batch = [make_check(seconds) for seconds in range(day, min(day + 50, 1000))]
        store.record_fixity([(record["uuid"], check, "ok") for check in batch])
        checks += batch
    assert len(checks) == 1000
    assert stored_size(store, record["uuid"]) == size
    assert store.get_file(record["uuid"])["fixity"] == [checks[-1]]
    # an index re-reading it: the doc's log joins the history, the record keeps its last check
    reindexed = make_check(5000, "indexed")
    store.upsert_files([{**record, "fixity": [checks[-1], reindexed]}])
    assert store.get_file(record["uuid"])["fixity"] == [reindexed]
    indexed_size = stored_size(store, record["uuid"])
    again = [make_check(6000 + n, "indexed") for n in range(20)]
    for check in again:  # indexed again and again: the same size each time
        store.upsert_files([{**record, "fixity": [check]}])
        assert stored_size(store, record["uuid"]) == indexed_size
    assert history(store, record["uuid"], 137) == [*checks, reindexed, *again]
    assert store.fixity_checks(record["uuid"], 1000).items == checks  # the 1,000 first
    with pytest.raises(InvalidInput):
        store.fixity_checks(record["uuid"], 10, "not a cursor")
    with pytest.raises(InvalidInput):
        store.fixity_checks(record["uuid"], 0)


def _write_old_log(store: Store, uuid: str, log: list[Doc]) -> None:
    """Make ``uuid`` as an earlier version left it: its whole log in the record, no history."""
    if isinstance(store, SQLiteStore):
        with store._write() as conn:
            conn.execute("UPDATE files SET doc = json_set(doc, '$.fixity', json(?)) "
                         "WHERE uuid = ?", (json.dumps(log), uuid))
            files_before_17(conn)  # the tables migration 15 ran on, keyed by uuid
            conn.execute("DROP TABLE fixity_checks")
            conn.execute("DELETE FROM schema_migrations WHERE version = 15")
    else:
        assert isinstance(store, MongoStore)
        store._files.update_one({"uuid": uuid}, {"$set": {"fixity": log}})
        store._fixity_checks.delete_many({})
        store._schema.delete_one({"_id": 3})


def test_an_old_database_is_moved_on_open(store_url: str) -> None:
    log = [make_check(n, "indexed" if n == 0 else "ok") for n in range(5)]
    record, other = make_file("/products/old.csv"), make_file("/products/new.csv")
    store = open_store(store_url)
    try:
        store.upsert_files([record, other])
        store.record_fixity([(other["uuid"], make_check(9), "ok")])
        _write_old_log(store, record["uuid"], log)
        assert len(store.get_file(record["uuid"])["fixity"]) == 5
    finally:
        store.close()
    for _ in range(2):  # opened again (and again: the move is idempotent)
        store = open_store(store_url)
        try:
            assert store.get_file(record["uuid"])["fixity"] == [log[-1]]
            assert history(store, record["uuid"], 2) == log
            assert store.get_file(other["uuid"])["fixity"] == [make_check(9)]
            assert history(store, other["uuid"], 2) == [make_check(9)]
            versions = [version for version, _ in store.migrations()]
            assert (15 if isinstance(store, SQLiteStore) else 3) in versions
            if isinstance(store, MongoStore):  # run again by hand: nothing doubles
                store._move_fixity_logs()
                assert history(store, record["uuid"], 100) == log
        finally:
            store.close()


@pytest.fixture
def catalog(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[Catalog]:
    monkeypatch.chdir(tmp_path)
    opened = Catalog.open(store_url, keys=KEYS, sqlite_synchronous="NORMAL")
    yield opened
    opened.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(catalog: Catalog) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(catalog)),
                                 base_url="http://test") as opened:
        yield opened


def checked_record(catalog: Catalog, count: int) -> tuple[Doc, list[Doc]]:
    record = make_file("/products/checked.csv", [make_check(0, "indexed")])
    catalog.store.upsert_files([record])
    checks = [make_check(0, "indexed"), *(make_check(n) for n in range(1, count))]
    catalog.store.record_fixity([(record["uuid"], check, "ok") for check in checks[1:]])
    return record, checks


@pytest.mark.anyio
async def test_the_history_over_http_and_on_the_page(catalog: Catalog,
                                                    client: httpx.AsyncClient) -> None:
    record, checks = checked_record(catalog, 250)
    seen: list[Any] = []
    url: str | None = f"/files/{record['uuid']}/fixity?limit=100"
    while url is not None:
        answer = await client.get(url)
        assert answer.status_code == 200, answer.text
        seen += answer.json()["checks"]
        after = answer.json()["next"]
        url = None if after is None else \
            f"/files/{record['uuid']}/fixity?limit=100&cursor={after}"
    assert seen == checks
    shown = await client.get(f"/files/{record['uuid']}")
    assert shown.json()["fixity"] == [checks[-1]]
    unknown = typed_uuid(UUIDType.file, "local:/nothing")
    missing = await client.get(f"/files/{unknown}/fixity")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "file_not_found")
    bad = await client.get(f"/files/{record['uuid']}/fixity?cursor=zz")
    assert bad.status_code in (400, 422)
    page = await client.get(f"/ui/files/{record['uuid']}")
    assert page.status_code == 200
    assert page.text.count("<td>ok</td>") == 99 and "fixity_cursor=" in page.text
    with pytest.raises(FileNotFound):
        catalog.fixity_checks(unknown)


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_catalog_file_show_lists_the_history(catalog: Catalog, tmp_path: Path) -> None:
    record, checks = checked_record(catalog, 3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
    env["CATALOG_DB"] = catalog.settings.db
    shown = subprocess.run([str(SCRIPT), "file", "show", record["uuid"]], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("ok") >= 2 and "indexed" in shown.stdout
    as_json = subprocess.run([str(SCRIPT), "file", "show", record["uuid"], "--json"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert json.loads(as_json.stdout)["fixity"] == [checks[-1]]
    assert history(catalog.store, record["uuid"], 100) == checks
