"""OpenLineage ingestion against the webhook on the same ``catalog serve``, and the lineage of a
dataset deep in a large graph. Prints one JSON document.

1. Events/s: 8 client threads (one keep-alive ``http.client`` connection each) send START and
   COMPLETE pairs, each event with 2 input and 2 output datasets (a run's datasets are shared
   with the run before it, so runs join), to ``POST /api/v1/lineage``; in the same run, on the
   same server, the same threads send ``update`` events to one RUNNING job's webhook (the
   baseline of bench/webhooks.py). Rounds alternate, webhook first; figures pool every round.
2. Lineage: a catalog of ``--runs`` runs (SQLite with ``synchronous=OFF``) holding a chain of
   10 runs sent through ``ingest``, the others loaded through the store (``bulk_runs``);
   ``catalog.lineage`` upstream of the chain's last dataset (depth 20: 10 runs) and Marquez's
   graph of it (depth 10), ``--queries`` times each: p50 and p95 in ms.
3. Per event, in-process (``per_event``): the CPU and the SQL statements of one event through
   ``ingest_async`` and through the webhook's ``handle_event_async``, the same load on one
   event loop with no HTTP: where the time goes, apart from the server's.

Usage: ``python bench/openlineage.py [--events N] [--threads N] [--rounds N] [--runs N]
[--per-event-only]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from webhooks import CATALOG, HOST, call, free_port, running, versions

KEY = "bench-openlineage-key-0123456789abcdef"
NS = "bench://scheduler"
PRODUCER = "https://example.org/bench"


def process_cpu(pid: int) -> float:
    """Seconds of CPU (user + system, every thread) the process ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2)


class Load:
    """Requests from ``threads`` keep-alive connections; pooled figures."""

    def __init__(self, port: int, path: str, headers: dict[str, str],
                 body: Callable[[int, int], bytes], server_pid: int | None = None) -> None:
        self.port, self.path, self.headers, self.body = port, path, headers, body
        self.server_pid = server_pid
        self.latencies: list[float] = []
        self.seconds = 0.0
        self.server_cpu = 0.0  # the server's CPU seconds while this load ran
        self.errors = 0

    def run(self, threads: int, events: int, round_: int) -> None:
        latencies: list[list[float]] = [[] for _ in range(threads)]
        errors = [0] * threads
        barrier = threading.Barrier(threads + 1)

        def client(t: int) -> None:
            conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
            conn.connect()
            barrier.wait()
            for i in range(events):
                body = self.body(t, round_ * events + i)
                started = time.perf_counter()
                try:
                    conn.request("POST", self.path, body, self.headers)
                    answer = conn.getresponse()
                    answer.read()
                    errors[t] += answer.status != 200
                except (OSError, http.client.HTTPException):
                    errors[t] += 1
                    conn.close()
                    conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
                latencies[t].append(time.perf_counter() - started)
            conn.close()

        workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
        for worker in workers:
            worker.start()
        barrier.wait()
        started = time.perf_counter()
        cpu = process_cpu(self.server_pid) if self.server_pid else 0.0
        for worker in workers:
            worker.join()
        self.seconds += time.perf_counter() - started
        if self.server_pid:
            self.server_cpu += process_cpu(self.server_pid) - cpu
        self.latencies += [x for per_thread in latencies for x in per_thread]
        self.errors += sum(errors)

    def figures(self) -> dict[str, Any]:
        return {"events_per_s": round(len(self.latencies) / self.seconds, 1),
                "p50_ms": percentile(self.latencies, 0.5),
                "p99_ms": percentile(self.latencies, 0.99), "errors": self.errors,
                "events": len(self.latencies),
                "server_cpu_ms_per_event": round(self.server_cpu / len(self.latencies) * 1000, 3)}


def run_id(t: int, pair: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench/{t}/{pair}"))


def lineage_event(kind: str, t: int, pair: int, seconds: int) -> dict[str, Any]:
    """One event of run (t, pair): it reads the datasets run (t, pair - 1) wrote."""
    def datasets(of: int) -> list[dict[str, str]]:
        return [{"namespace": "s3://bench", "name": f"t{t}/run{of}/part{n}"} for n in (0, 1)]

    return {"eventType": kind, "eventTime": f"2026-11-21T12:00:{seconds:02d}Z",
            "producer": PRODUCER, "run": {"runId": run_id(t, pair)},
            "job": {"namespace": NS, "name": f"step{t}"},
            "inputs": datasets(pair - 1), "outputs": datasets(pair)}


def openlineage_body(t: int, i: int) -> bytes:
    kind = "START" if i % 2 == 0 else "COMPLETE"
    return json.dumps(lineage_event(kind, max(t, 0) + (100 if t < 0 else 0), i // 2,
                                    i % 2)).encode()


def webhook_body(t: int, i: int) -> bytes:
    return json.dumps({"name": "update", "data": {"thread": t, "i": i},
                       "event_id": f"t{t}-e{i}"}).encode()


def ingestion(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
    env["CATALOG_DB"] = f"sqlite:///{tmp}/catalog.db"
    env["CATALOG_OPENLINEAGE_KEY"] = KEY
    subprocess.run([str(CATALOG), "init"], cwd=tmp, env=env, check=True, capture_output=True)
    admin = json.loads(subprocess.run([str(CATALOG), "token", "admin", "--json"], cwd=tmp,
                                      env=env, check=True, capture_output=True).stdout)["token"]
    port = free_port()
    with ExitStack() as stack:
        server = stack.enter_context(running(
            [str(CATALOG), "serve", "--host", HOST, "--port", str(port)], tmp, env,
            f"http://{HOST}:{port}/health", tmp / "catalog.log"))
        call(port, "POST", "/pipelines", {"name": "bench"}, admin)
        _, job = call(port, "POST", "/jobs", {"pipeline": "bench"}, admin)
        path = f"/jobs/{job['uuid']}/events?token={job['token']}"
        call(port, "POST", path, {"name": "run"})
        json_type = {"Content-Type": "application/json"}
        webhook = Load(port, path, json_type, webhook_body, server.pid)
        lineage = Load(port, "/api/v1/lineage", {**json_type, "Authorization": f"Bearer {KEY}"},
                       openlineage_body, server.pid)
        for target in (webhook, lineage):  # warm-up: 50 requests each
            target.run(1, 50, -1)
            target.latencies, target.seconds, target.server_cpu = [], 0.0, 0.0
        for round_ in range(args.rounds):
            for target in (webhook, lineage):
                target.run(args.threads, args.events, round_)
        # Every run's datasets are linked: the last run of thread 0 reads what the one before
        # wrote, and the whole chain is upstream of its outputs.
        pairs = args.rounds * args.events // 2
        _, view = call(port, "GET", f"/api/v1/openlineage/runs/{run_id(0, pairs - 1)}")
        linked = view.get("state") == "COMPLETED" and len(view.get("inputs", [])) == 2
    hook, ol = webhook.figures(), lineage.figures()
    return {"openlineage": {**ol, "last_run_linked": linked}, "webhook": hook,
            "ratio": round(ol["events_per_s"] / hook["events_per_s"], 3),
            # The server's CPU per webhook event over its CPU per OpenLineage event: what the
            # ratio of events/s would be if CPU alone bounded both (2 cores shared with the
            # clients and, here, with whatever else runs).
            "server_cpu_ratio": round(hook["server_cpu_ms_per_event"]
                                      / ol["server_cpu_ms_per_event"], 3)
            if ol["server_cpu_ms_per_event"] else None}  # a run too short for a clock tick


class _CountedSQL(sqlite3.Connection):
    """A connection counting the statements it runs (each row of an ``executemany`` too), and
    the CPU its thread spent inside SQLite running them (the store commits by ``COMMIT``
    statements; ``thread_time``: an fsync's wait is not CPU)."""

    statements = 0
    sql_cpu = 0.0
    _lock = threading.Lock()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.set_trace_callback(_CountedSQL._count)

    @staticmethod
    def _count(_: str) -> None:
        _CountedSQL.statements += 1

    def _timed(self, run: Callable[[], Any]) -> Any:
        began = time.thread_time()
        try:
            return run()
        finally:
            with _CountedSQL._lock:
                _CountedSQL.sql_cpu += time.thread_time() - began

    def execute(self, *args: Any) -> Any:
        return self._timed(lambda: super(_CountedSQL, self).execute(*args))

    def executemany(self, *args: Any) -> Any:
        return self._timed(lambda: super(_CountedSQL, self).executemany(*args))


def per_event(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The library alone, no HTTP: ``args.threads`` tasks on one event loop each send
    ``args.events`` events (the pairs above through ``ingest_async``; webhook ``update``
    events to one RUNNING job through ``handle_event_async``), on a durable SQLite catalog
    as ``catalog serve`` has it. The process's CPU and SQL statements (every connection's)
    per event, after a first pass that warms the caches and starts the WAL sync helper."""
    from catalog.store.sqlite import SQLiteStore

    # Every connection the store opens counts, the event loop's (opened on first use) too.
    SQLiteStore.connection_factory = _CountedSQL
    try:
        return _per_event(args, tmp)
    finally:
        SQLiteStore.connection_factory = sqlite3.Connection


def _per_event(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import asyncio

    from catalog import Catalog
    from catalog.jobs import ManagedPipelineJob
    from catalog.openlineage import ingest_async

    catalog, _ = Catalog.init(f"sqlite:///{tmp}/per-event.db", openlineage_key=KEY)
    pipeline, _ = catalog.add_pipeline("bench")
    job = ManagedPipelineJob(catalog, pipeline, data={"per_event": True}).setup()
    token = catalog.job_token(job.uuid)
    catalog.handle_event(job.uuid, {"name": "run"}, token)
    figures: dict[str, Any] = {}

    async def lineage(t: int, offset: int) -> None:
        for i in range(offset, offset + args.events):
            event = lineage_event(("START", "COMPLETE")[i % 2], t, i // 2, i % 2)
            await ingest_async(catalog, event, KEY)

    async def webhook(t: int, offset: int) -> None:
        for i in range(offset, offset + args.events):
            document = {"name": "update", "data": {"thread": t, "i": i},
                        "event_id": f"per-event-{t}-{i}"}
            await catalog.handle_event_async(job.uuid, document, token)

    async def measure(name: str, send: Callable[[int, int], Any]) -> None:
        await asyncio.gather(*(send(t, 0) for t in range(args.threads)))  # warm-up
        statements, cpu = _CountedSQL.statements, time.process_time()
        sql_cpu = _CountedSQL.sql_cpu
        began = time.perf_counter()
        await asyncio.gather(*(send(t, args.events) for t in range(args.threads)))
        seconds = time.perf_counter() - began
        events = args.threads * args.events
        figures[name] = {
            "cpu_ms_per_event": round((time.process_time() - cpu) / events * 1000, 3),
            "statements_per_event": round((_CountedSQL.statements - statements) / events, 2),
            # Rows are fetched lazily, outside execute: the figure is a floor, not all of SQL.
            "sql_cpu_ms_per_event": round((_CountedSQL.sql_cpu - sql_cpu) / events * 1000, 3),
            "events_per_s": round(events / seconds, 1)}

    asyncio.run(measure("webhook", webhook))
    asyncio.run(measure("openlineage", lineage))
    catalog.close()
    figures["cpu_ratio"] = round(figures["webhook"]["cpu_ms_per_event"]
                                 / figures["openlineage"]["cpu_ms_per_event"], 3)
    return figures


def bulk_runs(catalog: Any, chain: int) -> None:
    """The 10 runs of one chain loaded through the store, not ``ingest``: each run's job stored
    (CREATED) and one COMPLETE event kept with its datasets and links in one write, as
    ``ingest`` keeps them; no state machine, audit or HTTP, so 100,000 runs load in minutes."""
    from catalog.jobs import ManagedPipelineJob
    from catalog.openlineage import RunEvent, _lineage, _pipeline, _record

    pipeline = _pipeline(catalog, NS, f"step{chain}")
    for pair in range(10):
        event = lineage_event("COMPLETE", chain, pair, 1)
        parsed = RunEvent.model_validate(event)
        job = ManagedPipelineJob(catalog, pipeline.uuid,
                                 data={"openlineage": {"runId": parsed.run.runId}})
        job.setup()
        inputs, outputs, stored, links = _lineage(catalog, job.uuid, parsed)
        _record(catalog, f"bulk:{parsed.run.runId}", "run", event, parsed.eventTime,
                inputs + outputs, stored, links, event_type="COMPLETE",
                run_id=parsed.run.runId, job=pipeline.uuid, job_uuid=job.uuid,
                job_namespace=NS, job_name=f"step{chain}", applied=True,
                inputs=[e["uuid"] for e in inputs], outputs=[e["uuid"] for e in outputs])


def deep_lineage(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from catalog import Catalog
    from catalog.compat.marquez import lineage_graph
    from catalog.openlineage import ingest
    from catalog.openlineage_views import dataset_uuid

    os.chdir(tmp)
    catalog, _ = Catalog.init(f"sqlite:///{tmp}/deep.db", openlineage_key=KEY,
                              sqlite_synchronous="OFF")
    started = time.perf_counter()
    chains = max(1, args.runs // 10)
    for pair in range(10):  # the chain queried: by ingest, as a sender's events would be
        for kind, second in (("START", 0), ("COMPLETE", 1)):
            ingest(catalog, lineage_event(kind, 0, pair, second), KEY)
    for chain in range(1, chains):
        bulk_runs(catalog, chain)
    load_seconds = time.perf_counter() - started
    last = dataset_uuid(catalog, "s3://bench", "t0/run9/part0")
    times: dict[str, list[float]] = {"lineage": [], "marquez": []}
    nodes = 0
    for _ in range(args.queries):
        began = time.perf_counter()
        graph = catalog.lineage(last, "up", 20)
        times["lineage"].append(time.perf_counter() - began)
        nodes = len(graph["nodes"])
        began = time.perf_counter()
        lineage_graph(catalog, "dataset:s3://bench:t0/run9/part0", 10)
        times["marquez"].append(time.perf_counter() - began)
    runs_deep = sum(1 for n in graph["nodes"] if n["type"] == "pipelinejob")
    catalog.close()
    return {"runs": chains * 10, "load_seconds": round(load_seconds, 1),
            "runs_deep": runs_deep, "nodes": nodes,
            **{f"{name}_p50_ms": percentile(values, 0.5) for name, values in times.items()},
            **{f"{name}_p95_ms": percentile(values, 0.95) for name, values in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200, help="Events per thread per round.")
    parser.add_argument("--threads", type=int, default=8, help="Client threads.")
    parser.add_argument("--rounds", type=int, default=2, help="Alternating rounds.")
    parser.add_argument("--runs", type=int, default=100_000, help="Runs in the deep graph.")
    parser.add_argument("--queries", type=int, default=50, help="Lineage queries timed.")
    parser.add_argument("--per-event-only", action="store_true",
                        help="Measure only the in-process CPU and statements per event (3.).")
    args = parser.parse_args()
    args.events -= args.events % 2  # whole START + COMPLETE pairs
    with tempfile.TemporaryDirectory() as tmp:
        if args.per_event_only:
            print(json.dumps({"benchmark": "openlineage",
                              "load_avg_1m": round(os.getloadavg()[0], 2),
                              "per_event": per_event(args, Path(tmp))}, indent=2))
            return
        ingest = ingestion(args, Path(tmp))
        library = per_event(args, Path(tmp))
        deep = deep_lineage(args, Path(tmp))
    result = {
        "benchmark": "openlineage",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "sqlite": sqlite3.sqlite_version,
                    "load_avg_1m": round(os.getloadavg()[0], 2),
                    **versions("uvicorn", "fastapi", "openlineage-python")},
        "n": {"threads": args.threads, "events_per_thread": args.events, "rounds": args.rounds},
        "ingestion": ingest,
        "per_event": library,
        "deep_lineage": deep,
        "ratio": {"events_per_s": ingest["ratio"],
                  "lineage_p95_ms": deep["lineage_p95_ms"]},
        "target": {"events_per_s": ">= 0.5", "lineage_p95_ms": "<= 50"},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
