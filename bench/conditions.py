"""Dependencies at scale (issue 16's benchmark), each figure measured in this run.

Prints one JSON document:
(a) ``fanout``: one job with ``--fanout`` WAITING dependents (and the same with a tenth as
    many): seconds from its ``finish`` (the worker's report) to every dependent QUEUED, and
    the ratio of the two, which proportionality puts near 10. The dependents are written
    straight into the tables (the library would take minutes to submit 50,000); the release
    under test is the library's.
(b) ``graph``: a graph of ``--graph`` jobs (chains of 4 whose heads fan out into diamonds)
    submitted through ``catalog.queue.submit``, each with its condition: jobs/s.
(c) ``wait``: ``--waits`` times, a waiter on one running job and the worker's ``finish``:
    milliseconds from the ending event's commit to the waiter's return, p50 and p99, in
    process (``Catalog.wait``) and over HTTP (``GET /jobs/wait`` on ``catalog serve``, the
    event applied by this process: the server is woken by the database's files).
Usage: ``python bench/conditions.py [--full]`` (``--full``: 50,000 dependents, 100,000 jobs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from catalog import Catalog
from catalog.models import format_date, utc_now
from catalog.queue import end_attempt, submit, withdraw
from catalog.store.values import Applied
from catalog.tokens import Keys

KEYS = Keys(b"bench-secret", b"bench-admin")


def _open(url: str) -> Catalog:
    return Catalog.open(url, keys=KEYS)


# (a) ----------------------------------------------------------------------------------------
def _waiting_dependents(path: Path, pipeline: str, root: str, count: int) -> None:
    """``count`` WAITING jobs whose condition is ``root`` finished, in the reverse index."""
    created = format_date(utc_now())
    body = json.dumps({"data": {}, "child_of": [], "generated_by": [], "acted_on": [],
                       "acted_using": [], "archive_system": "local",
                       "archive_path": "/products/v2/fanout", "archive_patterns": [],
                       "product_patterns": []})
    queue = json.dumps({"priority": 3, "timeout": 3600, "retries": 0, "attempt": 0,
                        "queued": None, "when": {"job": root, "is": "finished"}})
    prefix = root[3:8]
    uuids = [f"107{prefix}-0000-5000-8000-{i:012x}" for i in range(count)]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO jobs (uuid, pipeline_uuid, state, version, last_event, created, updated, "
        "doc, queue, priority, queued, lease_expiry) VALUES (?, ?, 'WAITING', 2, 'wait', ?, ?, "
        "?, ?, 3, NULL, NULL)", ((u, pipeline, created, created, body, queue) for u in uuids))
    conn.executemany("INSERT INTO dependencies (dependency, dependent) VALUES (?, ?)",
                     ((root, u) for u in uuids))
    conn.execute("COMMIT")
    conn.close()


def fanout(directory: Path, count: int) -> dict[str, Any]:
    path = directory / f"fanout{count}.db"
    catalog = _open(f"sqlite:///{path}")
    try:
        pipeline, _ = catalog.add_pipeline("fanout")
        root = submit(catalog, {"pipeline": "fanout", "data": {"root": count}}).uuid
        _waiting_dependents(path, pipeline.uuid, root, count)
        job = withdraw(catalog, {"pipelines": ["fanout"]}, "bench")
        assert job is not None and job.uuid == root
        started = time.perf_counter()
        end_attempt(catalog, root, "bench", None)  # the finish, then the release
        elapsed = time.perf_counter() - started
        counts = dict((state, n) for _, state, n in catalog.store.queue_counts())
    finally:
        catalog.close()
    assert counts == {"FINISHED": 1, "QUEUED": count}, counts
    return {"dependents": count, "seconds": round(elapsed, 3)}


# (b) ----------------------------------------------------------------------------------------
def graph(directory: Path, jobs: int) -> dict[str, Any]:
    """Units of 8 jobs: a chain a → b → c → d, then a diamond d → (e, f) → g, and h after
    g or a failure of c."""
    catalog = _open(f"sqlite:///{directory}/graph.db")
    try:
        catalog.add_pipeline("graph")
        started = time.perf_counter()
        submitted = 0
        unit = 0
        while submitted < jobs:
            made: list[str] = []

            def add(n: int, when: dict[str, Any] | None, made: list[str] = made,
                    unit: int = unit) -> None:
                request: dict[str, Any] = {"pipeline": "graph", "data": {"u": unit, "n": n}}
                if when is not None:
                    request["when"] = when
                made.append(submit(catalog, request).uuid)

            def done(i: int, made: list[str] = made) -> dict[str, Any]:
                return {"job": made[i], "is": "finished"}

            add(0, None)
            for i in range(1, 4):
                add(i, done(i - 1))
            add(4, done(3))
            add(5, done(3))
            add(6, {"all": [done(4), done(5)]})
            add(7, {"any": [done(6), {"job": made[2], "is": "failed"}]})
            submitted += len(made)
            unit += 1
        elapsed = time.perf_counter() - started
    finally:
        catalog.close()
    return {"jobs": submitted, "seconds": round(elapsed, 3),
            "jobs_per_s": round(submitted / elapsed, 1)}


def graph_many(directory: Path, jobs: int, batch: int = 1000) -> dict[str, Any]:
    """The same graph through ``Catalog.submit_many``, ``batch`` jobs a call, the
    conditions naming earlier items by local keys."""
    catalog = _open(f"sqlite:///{directory}/graph-many.db")
    try:
        catalog.add_pipeline("graph")
        started = time.perf_counter()
        submitted = 0
        unit = 0
        while submitted < jobs:
            items: list[dict[str, Any]] = []
            while len(items) < batch and submitted + len(items) < jobs:
                def add(n: int, when: dict[str, Any] | None, unit: int = unit,
                        items: list[dict[str, Any]] = items) -> None:
                    item: dict[str, Any] = {"pipeline": "graph", "data": {"u": unit, "n": n},
                                            "key": f"{unit}.{n}"}
                    if when is not None:
                        item["when"] = when
                    items.append(item)

                def done(i: int, unit: int = unit) -> dict[str, Any]:
                    return {"job": f"{unit}.{i}", "is": "finished"}

                add(0, None)
                for i in range(1, 4):
                    add(i, done(i - 1))
                add(4, done(3))
                add(5, done(3))
                add(6, {"all": [done(4), done(5)]})
                add(7, {"any": [done(6), {"job": f"{unit}.2", "is": "failed"}]})
                unit += 1
            submitted += len(catalog.submit_many(items))
        elapsed = time.perf_counter() - started
    finally:
        catalog.close()
    return {"jobs": submitted, "batch": batch, "seconds": round(elapsed, 3),
            "jobs_per_s": round(submitted / elapsed, 1)}


def bare_inserts(directory: Path, rows: int, batch: int = 1000) -> dict[str, Any]:
    """The baseline of the same run: ``rows`` rows of a job's size inserted with plain
    ``executemany``, one transaction per ``batch``, WAL with synchronous NORMAL."""
    conn = sqlite3.connect(directory / "bare.db", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE jobs (uuid TEXT PRIMARY KEY, state TEXT, doc TEXT)")
        doc = json.dumps({"pipeline": "graph", "data": {"u": 0, "n": 0}, "queue": {
            "priority": 3, "retries": 2, "timeout": 3600}, "history": [{"name": "create"}]})
        started = time.perf_counter()
        for first in range(0, rows, batch):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO jobs VALUES (?, ?, ?)",
                             [(f"job-{i}", "WAITING", doc)
                              for i in range(first, min(rows, first + batch))])
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return {"rows": rows, "seconds": round(elapsed, 3), "rows_per_s": round(rows / elapsed, 1)}


# (c) ----------------------------------------------------------------------------------------
def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
            "max_ms": round(ordered[-1] * 1000, 2), "n": len(ordered)}


class _CommitClock:
    """The moment the store last committed an event that ended a job."""

    def __init__(self, catalog: Catalog) -> None:
        self.at = 0.0
        store: Any = catalog.store
        apply_event = store.apply_event

        def timed(uuid: str, event_id: str | None, decide: Any) -> Applied:
            applied: Applied = apply_event(uuid, event_id, decide)
            if applied.entry["state"] == "FINISHED":
                self.at = time.perf_counter()
            return applied

        store.apply_event = timed


def _latencies(catalog: Catalog, count: int, waiter: Any, kind: str) -> list[float]:
    clock = _CommitClock(catalog)
    samples: list[float] = []
    for i in range(count):
        uuid = submit(catalog, {"pipeline": "wait", "data": {"i": i, "kind": kind}}).uuid
        job = withdraw(catalog, {"pipelines": ["wait"]}, "bench")
        assert job is not None and job.uuid == uuid
        returned: list[float] = []
        ready = threading.Event()

        def wait(uuid: str = uuid, ready: threading.Event = ready,
                 returned: list[float] = returned) -> None:
            ready.set()
            waiter(uuid)
            returned.append(time.perf_counter())

        thread = threading.Thread(target=wait)
        thread.start()
        ready.wait()
        threading.Event().wait(0.02)  # the waiter is asleep on its watch by now
        end_attempt(catalog, uuid, "bench", None)
        thread.join(timeout=60)
        assert returned, "the waiter did not return"
        samples.append(max(0.0, returned[0] - clock.at))
    return samples


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_latency(directory: Path, count: int) -> dict[str, Any]:
    url = f"sqlite:///{directory}/wait.db"
    catalog = _open(url)
    catalog.add_pipeline("wait")
    try:
        in_process = _latencies(
            catalog, count, lambda uuid: catalog.wait([uuid], timeout=30), "in_process")
    finally:
        catalog.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
    env["CATALOG_DB"] = url
    port = _free_port()
    log = (directory / "server.log").open("wb")
    script = str(Path(sys.executable).parent / "catalog")
    subprocess.run([script, "init"], cwd=directory, env=env, check=True, capture_output=True)
    server = subprocess.Popen(
        [script, "serve", "--host", "127.0.0.1",
         "--port", str(port)], cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=5).read()  # noqa: S310
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                threading.Event().wait(0.05)
        catalog = _open(url)
        try:
            def over_http(uuid: str) -> None:
                with urllib.request.urlopen(  # noqa: S310 (loopback)
                        f"{base}/jobs/wait?uuid={uuid}&timeout=30", timeout=60) as response:
                    assert json.loads(response.read())["jobs"][uuid] == "FINISHED"

            http = _latencies(catalog, count, over_http, "http")
        finally:
            catalog.close()
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    return {"in_process": _percentiles(in_process), "http": _percentiles(http)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true",
                        help="the issue's sizes: 50,000 dependents, a 100,000-job graph")
    parser.add_argument("--fanout", type=int)
    parser.add_argument("--graph", type=int)
    parser.add_argument("--waits", type=int, default=100)
    args = parser.parse_args()
    fan = args.fanout or (50_000 if args.full else 10_000)
    jobs = args.graph or (100_000 if args.full else 1_000)
    with tempfile.TemporaryDirectory(prefix="bench-conditions-") as tmp:
        directory = Path(tmp)
        os.chdir(directory)  # the default archive root lives under the working directory
        small = fanout(directory, fan // 10)
        large = fanout(directory, fan)
        built = graph(directory, jobs)
        many = graph_many(directory, jobs)
        bare = bare_inserts(directory, jobs)
        waits = wait_latency(directory, args.waits)
    result: dict[str, Any] = {
        "benchmark": "conditions",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "n": {"fanout": fan, "graph": jobs, "waits": args.waits},
        "fanout": {"small": small, "large": large},
        "graph": built,
        "graph_many": many,
        "bare_inserts": bare,
        "load": [round(x, 2) for x in os.getloadavg()],
        "wait": waits,
        "ratio": {"fanout_large_vs_small": round(large["seconds"] / small["seconds"], 2),
                  "graph_many_vs_single": round(many["jobs_per_s"] / built["jobs_per_s"], 2),
                  "graph_many_vs_bare_inserts": round(many["jobs_per_s"]
                                                      / bare["rows_per_s"], 4)},
        "target": {"fanout.large.seconds": "<= 5 for 50,000",
                   "ratio.fanout_large_vs_small": "8 to 12 for 50,000 / 5,000",
                   "graph.jobs_per_s": ">= 2,000",
                   "graph_many.jobs_per_s": ">= 2,000", "wait.*.p99_ms": "<= 50"},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
