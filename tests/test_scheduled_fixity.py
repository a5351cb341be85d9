"""Verify's verdicts (ignored, uncatalogued), scheduled fixity (oldest checks first, a bounded
number per run, on a schedule), on local storage and S3 and every store."""
# ruff: noqa: F811  (tests take the imported fixtures as parameters)

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
from test_indexer import (  # noqa: F401  (the indexing tests' fixtures, used by name)
    FILES,
    KEYS,
    archive_root,
    catalog,
    finished_job,
    records,
)

from catalog import Catalog, ManagedPipelineJobInstance
from catalog.config import load_settings
from catalog.errors import ConfigurationError, InvalidInput
from catalog.fixity_schedule import FixitySchedule, parse_duration, verify_oldest
from catalog.verify import verify


@pytest.mark.parametrize(("text", "seconds"), [
    ("0", 0), ("90s", 90), ("15m", 900), ("12h", 43200), ("7d", 604800), ("2w", 1209600),
    ("1d12h", 129600), (" 1H ", 3600),
])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "7", "d", "7x", "-1d", "1.5h", "1d 2h", "h1"])
def test_what_is_no_duration_is_refused(text: str) -> None:
    with pytest.raises(InvalidInput, match="not a duration"):
        parse_duration(text)


def test_the_schedule_settings_are_checked() -> None:
    settings = load_settings(fixity_interval="6h", fixity_batch="50")
    assert (settings.fixity_interval, settings.fixity_batch) == ("6h", 50)
    assert load_settings().fixity_interval == "0"  # off unless asked for
    with pytest.raises(ConfigurationError, match="fixity_interval"):
        load_settings(fixity_interval="often")
    with pytest.raises(ConfigurationError, match="fixity_batch"):
        load_settings(fixity_batch=0)


def age(catalog: Catalog, job: Any, days: dict[str, int]) -> dict[str, str]:
    """Give files a last check ``days`` ago (an ok check, as a verify then would have
    recorded); their uuids by name."""
    found = records(catalog, job)
    checks = []
    for name, ago in days.items():
        record = found[name]
        date = f"2020-01-{ago:02d}T00:00:00.000Z"
        checks.append((record["uuid"], {"date": date, "outcome": "ok", "size": record["size"],
                                        "checksums": record["checksums"], "changed": []}, "ok"))
    catalog.store.record_fixity(checks)
    return {name: found[name]["uuid"] for name in days}


def test_scheduled_verify_takes_the_oldest_checks_first_and_stops_at_its_limit(
        catalog: Catalog) -> None:
    job = finished_job(catalog)
    ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    # b.csv was checked longest ago, then p.png, then a.csv; summary.pdf just now (indexed).
    age(catalog, job, {"data/b.csv": 1, "plots/p.png": 2, "data/a.csv": 3})
    flipped = bytearray(FILES["data/b.csv"])
    flipped[7] ^= 0x10
    catalog.storage.write(f"{job.archive_path}/data/b.csv", bytes(flipped))

    first = verify_oldest(catalog, timedelta(days=1), limit=2)
    assert [v.path.rpartition("/")[2] for v in first.report.files] == ["b.csv", "p.png"]
    assert [v.outcome for v in first.report.files] == ["changed", "ok"]
    summary = first.to_dict()
    assert (summary["checked"], summary["limit"], summary["ok"]) == (2, 2, False)
    assert summary["counts"] == {"ok": 1, "changed": 1, "missing": 0, "unreadable": 0}
    assert summary["problems"] == [f"changed {job.archive_path}/data/b.csv"]
    assert summary["older_than_s"] == 86400

    # The next run goes on from where that one stopped: checked files are not old any more,
    # and summary.pdf, indexed just now, is not older than a day. (Its checks are a
    # millisecond later than the first run's, so that the rolling re-check below finds b.csv
    # and p.png older than a.csv, not at the same date.)
    time.sleep(0.002)
    second = verify_oldest(catalog, timedelta(days=1), limit=10, trigger="cli")
    assert [v.path.rpartition("/")[2] for v in second.report.files] == ["a.csv"]
    assert verify_oldest(catalog, timedelta(days=1), limit=10).report.files == []
    # Each check is on its record, and the record's last-check date moved on.
    found = records(catalog, job)
    assert [c["outcome"] for c in found["data/b.csv"]["fixity"]][-1] == "changed"
    assert found["data/b.csv"]["checked"] > "2020-01-31"

    runs = catalog.store.find_fixity_runs(10)
    assert [r["checked"] for r in runs] == [0, 1, 2]  # most recent first
    assert runs[1]["trigger"] == "cli" and runs[0]["started"] >= runs[2]["finished"]

    # With no age, everything is due again, oldest first: a bounded, rolling re-check.
    rolling = [v.path.rpartition("/")[2]
               for v in verify_oldest(catalog, timedelta(0), limit=3).report.files]
    # (b.csv and p.png were checked in one page, at one date: either may come first)
    assert rolling[0] == "summary.pdf" and sorted(rolling[1:]) == ["b.csv", "p.png"]
    with pytest.raises(InvalidInput):
        verify_oldest(catalog, timedelta(0), limit=0)


def test_scheduled_verify_goes_a_page_at_a_time(catalog: Catalog,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import catalog.fixity_schedule as schedule_module

    job = finished_job(catalog)
    ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    asked: list[int] = []
    oldest_checks = catalog.store.oldest_checks

    def counted(system: str, before: str, limit: int) -> list[Any]:
        asked.append(limit)
        return oldest_checks(system, before, limit)

    monkeypatch.setattr(schedule_module, "PAGE", 2)
    monkeypatch.setattr(catalog.store, "oldest_checks", counted)
    run = verify_oldest(catalog, timedelta(0), limit=3)
    assert asked == [2, 1] and len(run.report.files) == 3


def test_the_schedule_runs_until_stopped(catalog: Catalog) -> None:
    job = finished_job(catalog)
    ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    schedule = FixitySchedule(catalog, timedelta(seconds=0.05), batch=2)
    schedule.start()
    deadline = time.monotonic() + 30
    while schedule.runs < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    stopping = time.monotonic()
    schedule.stop()
    assert time.monotonic() - stopping < 5  # it waits on an event, not a sleep
    assert schedule._thread is not None and not schedule._thread.is_alive()
    runs = catalog.store.find_fixity_runs(100)
    assert len(runs) == schedule.runs >= 3
    assert all(r["trigger"] == "schedule" and r["checked"] == 2 for r in runs)
    # Two files a run, oldest first: three runs went round all four files and on.
    assert sum(len(doc["fixity"]) for doc in records(catalog, job).values()) >= 4 + 6
    assert FixitySchedule.from_settings(catalog) is None  # fixity_interval 0: no schedule


def test_a_failing_run_is_logged_and_the_schedule_goes_on(
        catalog: Catalog, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    ran = threading.Event()

    def broken(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) >= 2:
            ran.set()
        raise OSError("the disk went away")

    monkeypatch.setattr(catalog.store, "oldest_checks", broken)
    schedule = FixitySchedule(catalog, timedelta(seconds=0.02), batch=5)
    schedule.start()
    assert ran.wait(30)
    schedule.stop()
    assert "scheduled fixity run failed" in caplog.text


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_fixity_runs_over_http(catalog: Catalog) -> None:
    from catalog.web import create_app

    job = finished_job(catalog)
    ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    verify_oldest(catalog, timedelta(0), limit=1)
    verify_oldest(catalog, timedelta(0), limit=3)

    async def get(path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(catalog))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path)

    answer = asyncio.run(get("/fixity/runs?limit=5"))
    assert answer.status_code == 200
    assert [r["checked"] for r in answer.json()["runs"]] == [3, 1]
    bad = asyncio.run(get("/fixity/runs?limit=0"))
    assert bad.status_code == 422


def run_cli(catalog: Catalog, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``catalog <args>`` in this process, through the entry point that renders errors."""
    from catalog.cli import main

    for name, value in (("DB", catalog.settings.db),
                        ("ARCHIVE_ROOT", catalog.settings.archive_root),
                        ("S3_ENDPOINT_URL", catalog.settings.s3_endpoint_url),
                        ("SECRET", KEYS.secret.decode()),
                        ("ADMIN_KEY", KEYS.admin_key.decode())):
        monkeypatch.setenv(f"CATALOG_{name}", value)
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_verify_on_the_command_line_ignores_scratch_and_checks_the_oldest(
        catalog: Catalog, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    job = finished_job(catalog)  # notes.txt beside the indexed files: no request selects it
    ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    code, out, _ = run_cli(catalog, monkeypatch, capsys, "verify", job.uuid)
    assert code == 0, out
    assert f"ignored  {job.archive_path}/notes.txt" in out
    code, out, _ = run_cli(catalog, monkeypatch, capsys, "--json", "verify", job.uuid)
    report = json.loads(out)
    assert (code, report["ok"], report["ignored"]) == (0, True, [f"{job.archive_path}/notes.txt"])
    assert report["counts"]["ignored"] == 1

    catalog.storage.write(f"{job.archive_path}/data/new.csv", b"x\n")  # a request selects it
    code, out, _ = run_cli(catalog, monkeypatch, capsys, "verify", job.uuid)
    assert code == 1 and f"new      {job.archive_path}/data/new.csv" in out
    code, out, _ = run_cli(catalog, monkeypatch, capsys, "verify", "--all")
    assert code == 1 and "data/new.csv" in out and "notes.txt" in out

    age(catalog, job, {"plots/p.png": 1, "data/a.csv": 2})
    code, out, _ = run_cli(catalog, monkeypatch, capsys, "--json", "verify",
                           "--older-than", "30d", "--limit", "1")
    document = json.loads(out)
    assert code == 0 and [f["path"] for f in document["files"]] == [
        f"{job.archive_path}/plots/p.png"]
    for wrong in (["verify", "--older-than", "soon"], ["verify", "--limit", "3", job.uuid],
                  ["verify", job.uuid, "--older-than", "1d"], ["verify"]):
        code, _, err = run_cli(catalog, monkeypatch, capsys, "--json", *wrong)
        assert (code, json.loads(err)["error"]["code"]) == (2, "invalid_input"), wrong


def test_verify_all_looks_listed_files_up_a_page_at_a_time(
        catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    import catalog.verify as verify_module

    jobs = [finished_job(catalog) for _ in range(2)]
    for job in jobs:
        ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    looked_up: list[int] = []
    get_files = catalog.store.get_files

    def counted(uuids: list[str]) -> dict[str, Any]:
        looked_up.append(len(uuids))
        return get_files(uuids)

    monkeypatch.setattr(verify_module, "PAGE", 2)
    monkeypatch.setattr(catalog.store, "get_files", counted)
    report = verify(catalog, None)
    assert report.ok and report.counts()["ok"] == 8
    assert sorted(report.ignored) == sorted(f"{job.archive_path}/notes.txt" for job in jobs)
    # Five files listed per job, looked up two at a time: no set of every path is held.
    assert looked_up and max(looked_up) <= 2 and sum(looked_up) == 10


def test_oldest_checks_come_never_checked_first_then_oldest_on_one_storage_system(
        store: Any) -> None:
    from test_store_contract import make_check, make_file

    never = make_file("/a/never.csv")
    old = {**make_file("/a/old.csv", fixity=(make_check(0),)), "checked": make_check(0)["date"]}
    new = {**make_file("/a/new.csv", fixity=(make_check(50),)), "checked": make_check(50)["date"]}
    elsewhere = make_file("/a/hpc.csv", storage_system="hpc")
    store.upsert_files([new, elsewhere, old, never])
    before = make_check(100)["date"]
    assert [d["path"] for d in store.oldest_checks("local", before, 10)] == [
        "/a/never.csv", "/a/old.csv", "/a/new.csv"]
    assert [d["path"] for d in store.oldest_checks("local", make_check(10)["date"], 10)] == [
        "/a/never.csv", "/a/old.csv"]
    assert [d["path"] for d in store.oldest_checks("hpc", before, 10)] == ["/a/hpc.csv"]
    store.record_fixity([(never["uuid"], make_check(200), "ok")])  # checked now: last
    assert [d["path"] for d in store.oldest_checks("local", make_check(300)["date"], 2)] == [
        "/a/old.csv", "/a/new.csv"]
    with pytest.raises(InvalidInput):
        store.oldest_checks("local", before, 0)
    store.append_fixity_run({"started": "x", "checked": 1})
    store.append_fixity_run({"started": "y", "checked": 2})
    assert store.find_fixity_runs(1) == [{"started": "y", "checked": 2}]


def test_sqlite_migration_8_takes_the_last_check_from_existing_records(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3
    from contextlib import closing

    from test_store_contract import database_at_version, make_check, make_file

    from catalog.store import sqlite

    path = tmp_path / "old.db"
    database_at_version(path, 7, monkeypatch)
    checked = make_file("/a/checked.csv", fixity=(make_check(0), make_check(30)))
    never = make_file("/a/never.csv")
    with closing(sqlite3.connect(path)) as conn, conn:
        for record in (checked, never):
            conn.execute("INSERT INTO files (uuid, path, storage_system, status, doc) "
                         "VALUES (?, ?, ?, ?, ?)", (record["uuid"], record["path"], "local",
                                                    "ok", json.dumps(record)))
    store = sqlite.SQLiteStore(path)
    try:
        assert 8 in [version for version, _ in store.migrations()]
        assert [d["path"] for d in store.oldest_checks("local", make_check(20)["date"], 5)] \
            == ["/a/never.csv"]
        assert [d["path"] for d in store.oldest_checks("local", make_check(40)["date"], 5)] \
            == ["/a/never.csv", "/a/checked.csv"]
        plan = " ".join(str(row) for row in sqlite3.connect(path).execute(
            "EXPLAIN QUERY PLAN SELECT doc FROM files WHERE storage_system = ? AND checked < ? "
            "ORDER BY checked, id LIMIT 5", ("local", "z")))  # ties by id (migration 17)
        assert "files_checked" in plan and "TEMP B-TREE" not in plan, plan
    finally:
        store.close()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("archive_root", ["local"], indirect=True)
def test_serve_runs_the_schedule_and_stops_it_with_the_server(
        catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from catalog.web import server

    job = finished_job(catalog)
    ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    scheduled = Catalog(catalog.store, catalog.settings.model_copy(
        update={"fixity_interval": "1s", "fixity_batch": 3}), KEYS)
    seen: list[int] = []

    def run_until_a_scheduled_run(self: Any) -> None:  # stands in for the server's life
        deadline = time.monotonic() + 30
        while not scheduled.store.find_fixity_runs(1) and time.monotonic() < deadline:
            time.sleep(0.05)
        seen.extend(run["checked"] for run in scheduled.store.find_fixity_runs(10))

    monkeypatch.setattr(uvicorn.Server, "run", run_until_a_scheduled_run)
    server.serve(scheduled, port=0, log_level="warning")
    assert seen and seen[0] == 3
    assert not [t for t in threading.enumerate() if t.name == "fixity-schedule"]
