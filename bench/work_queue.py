"""The work queue's throughput and its sweep, each against a floor measured in the same run.
(Named work_queue.py: a bench/queue.py would stand in for the standard library's queue module
in every script of this directory.)

Prints one JSON document:
(a) ``library``: no-op jobs deposited, withdrawn and completed by 4 worker threads through the
    library on durable SQLite (WAL, synchronous=FULL), against 4 threads claiming rows of a
    plain table with one ``UPDATE ... RETURNING`` and marking them done with a second
    ``UPDATE`` (same durability, rows deposited one transaction each as well);
(b) ``http``: jobs/s end to end through ``catalog serve`` and 2 ``catalog run --url`` workers
    (a no-op function each), against a bare loop running the same function in a fresh child
    process per job;
(c) ``sweep``: the sweep of a catalog of ``--sweep-jobs`` jobs of which ``--running`` are
    RUNNING and ``--expired`` of those hold an expired lease (each failed, then queued again),
    against the same writes in bare SQL on a copy of the same database (``floor_seconds``);
    ``sweep_all_running`` is the worst case, where every job of the catalog is RUNNING.
Usage: ``python bench/work_queue.py [--jobs N] [--http-jobs N] [--sweep-jobs N] [--expired N]
[--running N] [--only sweep|library]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

from catalog import Catalog
from catalog.models import format_date, utc_now
from catalog.queue import submit, sweep, withdraw
from catalog.queue.archive import complete
from catalog.tokens import Keys

KEYS = Keys(b"bench-secret", b"bench-admin")
THREADS = 4
NOOP = "def noop(i=0):\n    return {}\n"


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else float("inf")


# (a) ----------------------------------------------------------------------------------------
class _TimedSQL(sqlite3.Connection):
    """A connection that adds up the time its statements of write transactions take (BEGIN to
    COMMIT: what the store's write lock serialises), for ``bench_library_sql``."""

    lock = threading.Lock()
    seconds = 0.0

    def _timed(self, call: Any, sql: str, *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return call(sql, *args)
        finally:
            if self.in_transaction or sql in ("COMMIT", "ROLLBACK"):
                with _TimedSQL.lock:
                    _TimedSQL.seconds += time.perf_counter() - started

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        cursor: sqlite3.Cursor = self._timed(super().execute, sql, *args)
        return cursor

    def executemany(self, sql: str, *args: Any) -> sqlite3.Cursor:
        cursor: sqlite3.Cursor = self._timed(super().executemany, sql, *args)
        return cursor


def bench_library_sql(directory: Path, jobs: int) -> dict[str, Any]:
    """The library's run again, timing the SQL of its write transactions (BEGIN to COMMIT).
    The deposits run in one thread, one transaction each: ``deposit_sql_ms_per_job`` is what
    a deposit's statements take in SQLite alone, exactly. The withdraws and completions of 4
    threads hold the write lock in turn, but a statement's time there also counts its wait for
    the GIL when it returns: ``withdraw_complete_sql_s`` is an upper bound."""
    from catalog.store.sqlite import SQLiteStore

    SQLiteStore.connection_factory = _TimedSQL
    _TimedSQL.seconds = 0.0
    marks: list[float] = []
    try:
        run = bench_library(directory, jobs, "queue_sql.db", marks)
    finally:
        SQLiteStore.connection_factory = sqlite3.Connection
    deposit_sql, total_sql = marks
    return {"deposit_sql_s": round(deposit_sql, 3),
            "deposit_sql_ms_per_job": round(deposit_sql / jobs * 1000, 3),
            "withdraw_complete_sql_s": round(total_sql - deposit_sql, 3),
            "jobs_per_s_timed_run": run["jobs_per_s"]}


def bench_library(directory: Path, jobs: int, name: str = "queue.db",
                  sql_marks: list[float] | None = None) -> dict[str, Any]:
    catalog = Catalog.open(f"sqlite:///{directory}/{name}", keys=KEYS)
    try:
        catalog.add_pipeline("bench")
        started = time.perf_counter()
        for i in range(jobs):
            submit(catalog, {"pipeline": "bench", "data": {"function": "m.noop",
                                                           "parameters": {"i": i}}})
        deposited = time.perf_counter()
        if sql_marks is not None:
            sql_marks.append(_TimedSQL.seconds)
        done: list[int] = []

        def work(name: str) -> None:
            count = 0
            while (job := withdraw(catalog, {"pipelines": ["bench"]}, name, 60)) is not None:
                complete(catalog, job.uuid, {"worker": name, "results": {}})
                count += 1
            done.append(count)

        threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        finished = time.perf_counter()
        if sql_marks is not None:
            sql_marks.append(_TimedSQL.seconds)
        assert sum(done) == jobs, done
        counts = catalog.store.queue_counts()
        assert counts == [(counts[0][0], "FINISHED", jobs)], counts
    finally:
        catalog.close()
    return {"jobs_per_s": _rate(jobs, finished - started),
            "deposit_per_s": _rate(jobs, deposited - started),
            "withdraw_complete_per_s": _rate(jobs, finished - deposited)}


def bench_floor(directory: Path, jobs: int) -> dict[str, Any]:
    path = directory / "floor.db"

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, timeout=60,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    setup = connect()
    setup.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, state TEXT NOT NULL, priority INTEGER "
                  "NOT NULL, worker TEXT, body TEXT NOT NULL)")
    setup.execute("CREATE INDEX q_claim ON q (priority DESC, id) WHERE state = 'queued'")
    started = time.perf_counter()
    for i in range(jobs):
        setup.execute("INSERT INTO q (state, priority, body) VALUES ('queued', 3, ?)",
                      (json.dumps({"function": "m.noop", "parameters": {"i": i}}),))
    deposited = time.perf_counter()
    done: list[int] = []

    def work(name: str) -> None:
        conn = connect()
        count = 0
        while True:
            row = conn.execute(
                "UPDATE q SET state = 'running', worker = ? WHERE id = (SELECT id FROM q "
                "WHERE state = 'queued' ORDER BY priority DESC, id LIMIT 1) RETURNING id, body",
                (name,)).fetchone()
            if row is None:
                break
            conn.execute("UPDATE q SET state = 'done' WHERE id = ?", (row[0],))
            count += 1
        conn.close()
        done.append(count)

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    finished = time.perf_counter()
    setup.close()
    assert sum(done) == jobs, done
    return {"jobs_per_s": _rate(jobs, finished - started),
            "deposit_per_s": _rate(jobs, deposited - started),
            "withdraw_complete_per_s": _rate(jobs, finished - deposited)}


# (b) ----------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (loopback)
        return json.loads(response.read())


def bench_http(directory: Path, jobs: int) -> dict[str, Any]:
    catalog_bin = str(Path(sys.executable).parent / "catalog")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
    env["CATALOG_DB"] = f"sqlite:///{directory}/http.db"
    (directory / "benchwork.py").write_text(NOOP)

    def cli(*args: str) -> str:
        return subprocess.run([catalog_bin, *args], cwd=directory, env=env, check=True,
                              capture_output=True, text=True).stdout

    cli("init")
    cli("pipeline", "add", "--name", "noop")
    key = json.loads(cli("--json", "token", "worker"))["token"]
    catalog = Catalog.open(env["CATALOG_DB"], secret_file=str(directory / ".catalog/secret.json"),
                           archive_root=str(directory / "archive"))
    for i in range(jobs):
        submit(catalog, {"pipeline": "noop", "data": {"function": "benchwork.noop",
                                                      "parameters": {"i": i}}})
    catalog.close()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (directory / "server.log").open("wb")
    server = subprocess.Popen([catalog_bin, "serve", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _get(f"{url}/health")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        started = time.perf_counter()
        workers = [subprocess.Popen(
            [catalog_bin, "run", "noop", "--url", url, "--sleep", "0.05"], cwd=directory,
            env={**env, "CATALOG_WORKER_KEY": key}, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL) for _ in range(2)]
        while _get(f"{url}/queue/status")["total"].get("FINISHED", 0) < jobs:
            if time.perf_counter() - started > 600:
                raise TimeoutError("the workers did not finish in 600 s")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        for process in [*workers, server]:
            process.terminate()
        for process in [*workers, server]:
            process.wait(timeout=60)
        log.close()
    started = time.perf_counter()
    for i in range(jobs):
        subprocess.run([sys.executable, "-c", f"import benchwork; benchwork.noop({i})"],
                       cwd=directory, check=True)
    bare = time.perf_counter() - started
    return {"catalog_jobs_per_s": _rate(jobs, elapsed), "bare_loop_jobs_per_s": _rate(jobs, bare)}


# (c) ----------------------------------------------------------------------------------------
def bench_sweep(directory: Path, name: str, jobs: int, expired: int, running: int
                ) -> dict[str, Any]:
    """A catalog of ``jobs`` jobs written straight into its tables (the library would take an
    hour to make a million), created over 30 days: ``running`` of them RUNNING (``expired`` of
    those with a lease past its expiry, spread evenly through the catalog, claimed within the
    last hour), the rest FINISHED. ``running == jobs`` is the worst case: every row in the
    RUNNING ranges of the state indexes, so each expired job's index entries sit on pages of
    their own."""
    running = max(min(running, jobs), expired)
    url = f"sqlite:///{directory}/{name}.db"
    catalog = Catalog.open(url, keys=KEYS)
    pipeline, _ = catalog.add_pipeline("sweep")
    now = utc_now()
    past, future = format_date(now - timedelta(minutes=5)), format_date(now + timedelta(days=1))
    claimed = format_date(now - timedelta(minutes=30))
    catalog.close()
    conn = sqlite3.connect(directory / f"{name}.db", isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    body = json.dumps({"data": {}, "child_of": [], "generated_by": [], "acted_on": [],
                       "acted_using": [], "archive_system": "local",
                       "archive_path": "/products/v2/sweep", "archive_patterns": [],
                       "product_patterns": []})
    expired_every, running_every = jobs // expired, jobs // running

    def rows() -> Any:
        for i in range(jobs):
            created = format_date(now - timedelta(days=30) * (1 - i / jobs))
            if i % expired_every == 0 and i // expired_every < expired:
                expiry: str | None = past
            elif i % running_every == 0 or running == jobs:
                expiry = future
            else:
                expiry = None
            if expiry is None:
                yield (f"107{i:05x}-0000-5000-8000-{i:012x}", pipeline.uuid, "FINISHED", 5,
                       "finish", created, created, body, json.dumps({
                           "priority": 3, "timeout": 3600, "retries": 2, "attempt": 1,
                           "queued": created, "start": created}), None)
                continue
            queue = json.dumps({"priority": 3, "timeout": 3600, "retries": 2, "attempt": 1,
                                "queued": created, "start": claimed, "lease": {
                                    "worker": "gone", "attempt": 1, "start": claimed,
                                    "expiry": expiry}})
            yield (f"107{i:05x}-0000-5000-8000-{i:012x}", pipeline.uuid, "RUNNING", 3, "run",
                   created, claimed, body, queue, expiry)

    conn.executemany(
        "INSERT INTO jobs (uuid, pipeline_uuid, state, version, last_event, created, updated, "
        "doc, queue, priority, queued, lease_expiry) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 3, "
        "NULL, ?)", rows())
    conn.execute("COMMIT")
    running = conn.execute("SELECT count(*) FROM jobs WHERE state = 'RUNNING'").fetchone()[0]
    conn.close()
    shutil.copy(directory / f"{name}.db", directory / f"floor_{name}.db")
    catalog = Catalog.open(url, keys=KEYS)
    try:
        started, cpu = time.perf_counter(), time.process_time()
        outcome = sweep(catalog)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        catalog.close()
    assert outcome == {"expired": expired, "failed": expired, "retried": expired}, outcome
    floor, floor_cpu = _sweep_floor(directory / f"floor_{name}.db", expired)
    # CPU seconds too: on a machine shared with other work the wall times of two runs can
    # differ twofold, the CPU time each spent far less.
    return {"jobs": jobs, "running": running, "expired": expired,
            "seconds": round(elapsed, 3), "floor_seconds": round(floor, 3),
            "cpu_seconds": round(cpu, 3), "floor_cpu_seconds": round(floor_cpu, 3)}


def _sweep_floor(path: Path, expired: int) -> tuple[float, float]:
    """The same writes in bare SQL, on a copy of the same database, same durability: the
    expired leases read from their index, each job's head moved by one UPDATE and its two
    history rows (fail, retry) inserted, in one transaction; like the catalog's bulk writes,
    its COMMIT leaves the checkpoint for later (``catalog.store.sqlite_checkpoint``)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    now = format_date(utc_now())
    started, cpu = time.perf_counter(), time.process_time()
    conn.execute("BEGIN IMMEDIATE")
    rows = conn.execute("SELECT uuid, version FROM jobs WHERE lease_expiry IS NOT NULL AND "
                        "lease_expiry < ? ORDER BY lease_expiry", (now,)).fetchall()
    conn.executemany(
        "UPDATE jobs SET state = 'QUEUED', version = version + 2, last_event = 'retry', "
        "updated = ?1, queue = json_set(queue, '$.lease', NULL, '$.queued', ?1), "
        "queued = ?1, lease_expiry = NULL WHERE uuid = ?2 AND version = ?3",
        [(now, uuid, version) for uuid, version in rows])
    conn.executemany(
        "INSERT INTO history (job_uuid, seq, uuid, event_id, doc) VALUES (?, ?, ?, ?, ?)",
        [(uuid, version + k, f"{uuid}:{k}", f"{uuid}:{k}", json.dumps({"name": name}))
         for uuid, version in rows for k, name in ((1, "fail"), (2, "retry"))])
    conn.execute("COMMIT")
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    conn.close()
    assert len(rows) == expired, len(rows)
    return elapsed, cpu


def _library_ratios(floor: dict[str, Any], library: dict[str, Any],
                    library_sql: dict[str, Any]) -> dict[str, float]:
    floor_job_ms = 1000 / floor["jobs_per_s"]
    return {"library_vs_floor": round(library["jobs_per_s"] / floor["jobs_per_s"], 3),
            # Above 1: a deposit's write transaction alone, without a line of Python, takes
            # longer than the floor's whole job (its deposit, claim and completion).
            "deposit_sql_vs_floor_job": round(library_sql["deposit_sql_ms_per_job"]
                                              / floor_job_ms, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--http-jobs", type=int, default=500)
    parser.add_argument("--sweep-jobs", type=int, default=1_000_000)
    parser.add_argument("--expired", type=int, default=10_000)
    parser.add_argument("--running", type=int, default=20_000)
    parser.add_argument("--only", choices=["sweep", "library"],
                        help="measure the sweeps alone, or (a) alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        os.chdir(directory)  # the default archive root lives under the working directory
        if args.only == "library":
            floor = bench_floor(directory, args.jobs)
            library = bench_library(directory, args.jobs)
            library_sql = bench_library_sql(directory, args.jobs)
            print(json.dumps({"benchmark": "work_queue", "n": {"jobs": args.jobs},
                              "floor_sqlite": floor, "library_sqlite": library,
                              "library_sql_alone": library_sql,
                              "ratio": _library_ratios(floor, library, library_sql),
                              "target": {"library_vs_floor": ">= 0.5"}}, indent=2))
            return
        swept = bench_sweep(directory, "sweep", args.sweep_jobs, args.expired,
                            args.running)
        worst = bench_sweep(directory, "sweep_all_running", args.sweep_jobs, args.expired,
                            args.sweep_jobs)
        if args.only != "sweep":
            floor = bench_floor(directory, args.jobs)
            library = bench_library(directory, args.jobs)
            library_sql = bench_library_sql(directory, args.jobs)
            http = bench_http(directory, args.http_jobs)
    sweeps: dict[str, Any] = {
        "sweep": swept, "sweep_all_running": worst,
        "ratio": {
            "sweep_vs_bare_sql": round(swept["seconds"] / swept["floor_seconds"], 3),
            "sweep_all_running_vs_bare_sql": round(worst["seconds"] / worst["floor_seconds"],
                                                   3),
            "sweep_cpu_vs_bare_sql": round(swept["cpu_seconds"] / swept["floor_cpu_seconds"],
                                           3)},
        "target": {"sweep.seconds": "<= 1 for 1,000,000 jobs, 10,000 expired"}}
    if args.only == "sweep":
        print(json.dumps({"benchmark": "work_queue", "n": {
            "sweep_jobs": args.sweep_jobs, "expired": args.expired, "running": args.running},
            **sweeps}, indent=2))
        return
    result: dict[str, Any] = {
        "benchmark": "work_queue",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "n": {"jobs": args.jobs, "http_jobs": args.http_jobs, "sweep_jobs": args.sweep_jobs,
              "expired": args.expired, "running": args.running},
        "floor_sqlite": floor,
        "library_sqlite": library,
        "library_sql_alone": library_sql,
        "http": http,
        "sweep": swept,
        "sweep_all_running": worst,
        "ratio": {
            **_library_ratios(floor, library, library_sql),
            "http_vs_bare_loop": round(http["catalog_jobs_per_s"]
                                       / http["bare_loop_jobs_per_s"], 3),
            **sweeps["ratio"],
        },
        "target": {"library_vs_floor": ">= 0.5", "http_vs_bare_loop": ">= 0.5",
                   **sweeps["target"]},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
