"""Jobs created/s and events applied/s through the library, against raw sqlite3 writes.

Prints one JSON document. The baseline is measured in the same run with the same pragmas
(WAL, synchronous=FULL) and the same rows (a job row plus its first history row; an UPDATE of
the job plus one history row per event, one transaction each), so the ratio is meaningful on a
shared, noisy machine. Usage: ``python bench/jobs.py [--jobs N] [--events N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from catalog import Catalog, ManagedPipelineJob
from catalog.store import sqlite_file_keys
from catalog.store.sqlite import MIGRATIONS
from catalog.tokens import Keys

KEYS = Keys(b"bench-secret", b"bench-admin")
# Columns named: migrations add columns (jobs.agent in 4), and a positional INSERT breaks.
_JOB_COLUMNS = "uuid, pipeline_uuid, state, version, last_event, created, updated, doc"
_INSERT_HISTORY_ROW = ("INSERT INTO history (job_uuid, seq, uuid, event_id, doc) "
                       "VALUES (?, ?, ?, ?, ?)")


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else float("inf")


def bench_library(url: str, jobs: int, events: int) -> dict[str, float]:
    catalog = Catalog.open(url, keys=KEYS)
    try:
        catalog.add_pipeline("bench", "1")
        start = time.perf_counter()
        for i in range(jobs):
            ManagedPipelineJob(catalog, "bench", {"i": i}, measurement_id="measurement.b.1").setup()
        created = time.perf_counter() - start
        target = ManagedPipelineJob(catalog, "bench", {"target": True})
        target.setup()
        token = target.token
        target.run()
        start = time.perf_counter()
        for i in range(events):
            catalog.handle_event(target.uuid, {"name": "update", "data": {"i": i},
                                               "event_id": f"e{i}"}, token)
        applied = time.perf_counter() - start
        history = len(catalog.get_job(target.uuid).history)
        assert history == events + 2, history
    finally:
        catalog.close()
    return {"jobs_per_s": _rate(jobs, created), "events_per_s": _rate(events, applied)}


def bench_raw_sqlite(path: Path, jobs: int, events: int) -> dict[str, float]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    sqlite_file_keys.register(conn)  # migration 17 computes digest keys in SQL through it
    for _, _, script in MIGRATIONS:
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)
    body = json.dumps({"data": {}, "child_of": [], "archive_path": "/products/v2/x"})
    now = "2026-01-01T00:00:00.000Z"
    start = time.perf_counter()
    for _ in range(jobs):
        job = str(uuid.uuid4())
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES (?, 'p', 'CREATED', 1, 'create', "
                     "?, ?, ?)", (job, now, now, body))
        conn.execute(_INSERT_HISTORY_ROW,
                     (job, 1, str(uuid.uuid4()), "create", json.dumps({"name": "create"})))
        conn.execute("COMMIT")
    created = time.perf_counter() - start
    job = "target"
    conn.execute(f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES (?, 'p', 'RUNNING', 1, 'run', ?, ?, ?)",
                 (job, now, now, body))
    start = time.perf_counter()
    for i in range(events):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE jobs SET state = 'RUNNING', version = version + 1, "
                     "last_event = 'update', updated = ? WHERE uuid = ? AND version = ?",
                     (now, job, i + 1))
        conn.execute(_INSERT_HISTORY_ROW,
                     (job, i + 2, str(uuid.uuid4()), f"e{i}",
                      json.dumps({"name": "update", "data": {"i": i}})))
        conn.execute("COMMIT")
    applied = time.perf_counter() - start
    conn.close()
    return {"jobs_per_s": _rate(jobs, created), "events_per_s": _rate(events, applied)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the default archive root lives under the working directory
        raw = bench_raw_sqlite(Path(tmp) / "raw.db", args.jobs, args.events)
        sqlite = bench_library(f"sqlite:///{tmp}/catalog.db", args.jobs, args.events)
        mongomock = bench_library(f"mongomock://bench{uuid.uuid4().hex}", args.jobs,
                                  args.events)
    result: dict[str, Any] = {
        "benchmark": "jobs",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "n": {"jobs": args.jobs, "events": args.events},
        "raw_sqlite": raw,
        "catalog_sqlite": sqlite,
        "catalog_mongomock": mongomock,
        "ratio": {
            "sqlite_events_vs_raw": round(sqlite["events_per_s"] / raw["events_per_s"], 3),
            "sqlite_jobs_vs_raw": round(sqlite["jobs_per_s"] / raw["jobs_per_s"], 3),
        },
        "target": {"sqlite_events_vs_raw": ">= 0.5"},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
