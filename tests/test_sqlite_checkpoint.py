"""Bulk writes on SQLite commit without checkpointing, and a thread of the store checkpoints
after them (catalog.store.sqlite_checkpoint): nothing is lost, the WAL does not stay long,
and the connection's own setting comes back."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from catalog import Catalog
from catalog.queue import submit
from catalog.states import next_state
from catalog.store.sqlite import SQLiteStore
from catalog.store.sqlite_checkpoint import BackgroundCheckpointer, deferred
from catalog.store.values import Decide, Doc
from catalog.tokens import Keys

KEYS = Keys(b"c" * 32, b"k" * 32)
JOBS = 1500  # enough pages that a COMMIT would pass SQLite's 1,000-page autocheckpoint


@pytest.fixture
def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Catalog]:
    monkeypatch.chdir(tmp_path)
    opened = Catalog.open(f"sqlite:///{tmp_path}/c.db", keys=KEYS)
    opened.add_pipeline("step")
    yield opened
    opened.close()


def _cancel(catalog: Catalog) -> Decide:
    def decide(head: Doc) -> tuple[str, Doc]:
        new = next_state(head["uuid"], head["state"], "cancel")
        return new, catalog.history_entry(head["uuid"], "cancel", {"pad": "x" * 1500}, "test",
                                          new)
    return decide


def _wal_pages(path: Path) -> tuple[int, int]:
    """(frames in the WAL, frames checkpointed), from a PASSIVE checkpoint of nothing new."""
    with sqlite3.connect(path, isolation_level=None) as conn:
        _, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return log, done


def test_a_bulk_write_is_checkpointed_after_its_commit_and_loses_nothing(
        catalog: Catalog, tmp_path: Path) -> None:
    store = catalog.store
    assert isinstance(store, SQLiteStore)
    uuids = [submit(catalog, {"pipeline": "step", "data": {"n": n}}).uuid for n in range(JOBS)]
    checkpoints = store._checkpointer.done
    outcomes = store.apply_events([(uuid, None, _cancel(catalog)) for uuid in uuids])
    assert len(outcomes) == JOBS
    deadline = time.monotonic() + 30
    while store._checkpointer.done == checkpoints and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store._checkpointer.done > checkpoints, "no checkpoint followed the bulk write"
    log, done = _wal_pages(tmp_path / "c.db")
    assert log == done  # everything in the WAL is in the database
    # the connection checkpoints at COMMIT again, as SQLite's default
    assert store._connection().execute("PRAGMA wal_autocheckpoint").fetchone() == (1000,)
    catalog.close()
    reopened = Catalog.open(f"sqlite:///{tmp_path}/c.db", keys=KEYS)
    try:
        assert {reopened.get_job(uuid, history=False).state for uuid in uuids} == {"CANCELLED"}
    finally:
        reopened.close()


def test_deferred_restores_the_setting_when_the_write_fails(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "d.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA wal_autocheckpoint = 250")
    with pytest.raises(ZeroDivisionError), deferred(conn):
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        _ = 1 / 0
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (250,)
    conn.close()


def test_a_closed_checkpointer_stops_and_takes_no_more_requests(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "e.db").close()
    checkpointer = BackgroundCheckpointer(str(tmp_path / "e.db"))
    checkpointer.request()
    deadline = time.monotonic() + 10
    while checkpointer.done == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert checkpointer.done == 1
    thread = checkpointer._thread
    checkpointer.close()
    assert thread is not None and not thread.is_alive()
    checkpointer.request()  # after close: nothing starts
    assert checkpointer._thread is None
