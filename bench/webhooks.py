"""Webhook events/s and latency of ``catalog serve`` against a no-op FastAPI app, in one run.

Prints one JSON document. Both servers run side by side on 127.0.0.1 under the same uvicorn
settings (one worker, uvicorn's access log off, log level info; the catalog still writes its own
access line per request, the baseline none): the catalog on a fresh temp catalog with
the default durable SQLite (WAL, synchronous=FULL; once the server's loop is busy its commits
are synced by the WAL sync helper before they are answered, see ``catalog/store/sqlite_loop.py``),
the baseline from ``bench/noop_app.py``.
Each gets 50 warm-up requests, then, in alternating rounds (baseline first), 4 client threads,
each on one keep-alive ``http.client`` connection, send N events; for the catalog they are
``update`` events with unique event_ids, all to one RUNNING job (the harder case: every event
serialises on that job). Figures pool every round. Both servers are stopped by their PIDs.
Usage: ``python bench/webhooks.py [--events N] [--threads N] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.metadata
import json
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
BENCH = Path(__file__).resolve().parent
CATALOG = Path(sys.executable).parent / "catalog"
WARMUP = 50
JSON = {"Content-Type": "application/json"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def wait_until_up(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"server did not come up: {log.read_text(errors='replace')}")
        time.sleep(0.05)


@contextmanager
def running(command: list[str], cwd: Path, env: dict[str, str], health: str,
            log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A server subprocess, output to ``log``; stopped by its PID (SIGINT, then SIGKILL)."""
    with log.open("ab") as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        wait_until_up(process, health, log)
        yield process
    finally:
        os.kill(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


def call(port: int, method: str, path: str, body: Any = None,
         token: str | None = None) -> tuple[int, Any]:
    """One request on a fresh connection (setup and checks, not measured)."""
    headers = dict(JSON)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        conn.request(method, path, None if body is None else json.dumps(body).encode(), headers)
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


@dataclass
class Target:
    """A server under load: where to send, what the (t, i)-th request is, and what it measured."""

    port: int
    path: str
    body: Callable[[int, int], bytes]
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: int = 0

    def warm_up(self, count: int) -> None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
        for i in range(count):
            conn.request("POST", self.path, self.body(-1, i), JSON)
            answer = conn.getresponse()
            answer.read()
            assert answer.status == 200, answer.status
        conn.close()

    def load(self, threads: int, events: int, round_: int) -> None:
        """``threads`` keep-alive connections each sending ``events`` requests."""
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
                    conn.request("POST", self.path, body, JSON)
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
        for worker in workers:
            worker.join()
        self.seconds += time.perf_counter() - started
        self.latencies += [x for per_thread in latencies for x in per_thread]
        self.errors += sum(errors)

    def figures(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)

        def percentile(p: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2)

        return {"events_per_s": round(len(ordered) / self.seconds, 1),
                "p50_ms": percentile(0.50), "p99_ms": percentile(0.99),
                "errors": self.errors, "seconds": round(self.seconds, 3)}


def update_event(t: int, i: int) -> bytes:
    return json.dumps({"name": "update", "data": {"thread": t, "i": i},
                       "event_id": f"t{t}-e{i}"}).encode()


def start_catalog(stack: ExitStack, tmp: Path) -> tuple[Target, str]:
    """``catalog serve`` on a fresh catalog, and one RUNNING job to send events to."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
    env["CATALOG_DB"] = f"sqlite:///{tmp}/catalog.db"
    subprocess.run([str(CATALOG), "init"], cwd=tmp, env=env, check=True, capture_output=True)
    admin = json.loads(subprocess.run([str(CATALOG), "token", "admin", "--json"], cwd=tmp,
                                      env=env, check=True, capture_output=True).stdout)["token"]
    port = free_port()
    stack.enter_context(running([str(CATALOG), "serve", "--host", HOST, "--port", str(port)],
                                tmp, env, f"http://{HOST}:{port}/health", tmp / "catalog.log"))
    status, _ = call(port, "POST", "/pipelines", {"name": "bench"}, admin)
    assert status == 201, status
    status, job = call(port, "POST", "/jobs", {"pipeline": "bench"}, admin)
    assert status == 201, job
    path = f"/jobs/{job['uuid']}/events?token={job['token']}"
    status, ran = call(port, "POST", path, {"name": "run"})
    assert status == 200 and ran["state"] == "RUNNING", ran
    return Target(port, path, update_event), job["uuid"]


def start_baseline(stack: ExitStack, tmp: Path) -> Target:
    port = free_port()
    command = [sys.executable, str(BENCH / "noop_app.py"), "--host", HOST, "--port", str(port),
               "--log-level", "info"]
    stack.enter_context(running(command, tmp, dict(os.environ),
                                f"http://{HOST}:{port}/openapi.json", tmp / "baseline.log"))
    return Target(port, "/events", update_event)


def versions(*names: str) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=500, help="Events per client thread.")
    parser.add_argument("--threads", type=int, default=4, help="Client threads.")
    parser.add_argument("--rounds", type=int, default=1, help="Alternating rounds per server.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        baseline = start_baseline(stack, Path(tmp))
        catalog, job_uuid = start_catalog(stack, Path(tmp))
        for target in (baseline, catalog):
            target.warm_up(WARMUP)
        for round_ in range(args.rounds):
            for target in (baseline, catalog):
                target.load(args.threads, args.events, round_)
        status, history = call(catalog.port, "GET", f"/jobs/{job_uuid}/history")
    sent = 2 + WARMUP + args.rounds * args.threads * args.events
    entries = history["history"]
    base, cat = baseline.figures(), catalog.figures()
    # Every acknowledged event is in the history exactly once (a wrong figure is no figure).
    cat["history_ok"] = (status == 200 and len(entries) == sent - cat["errors"]
                         and len({e["event_id"] for e in entries}) == len(entries))

    def ratio(key: str) -> float:
        return round(cat[key] / base[key], 3) if base[key] else float("nan")

    result: dict[str, Any] = {
        "benchmark": "webhooks",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform(), "sqlite": sqlite3.sqlite_version,
                    "load_avg_1m": round(os.getloadavg()[0], 2),
                    **versions("uvicorn", "fastapi", "starlette", "uvloop", "httptools")},
        "n": {"threads": args.threads, "events_per_thread": args.events, "rounds": args.rounds,
              "events": args.rounds * args.threads * args.events, "warmup": WARMUP},
        "setup": {"client": "http.client, one keep-alive connection per thread",
                  "catalog_jobs": "all threads on one RUNNING job",
                  "catalog_store": "sqlite, WAL, durable (default synchronous=FULL; a busy "
                                   "loop's commits fdatasync'd by the WAL sync helper "
                                   "before each answer)",
                  "uvicorn": "1 worker, access_log=False, log_level=info"},
        "catalog": cat,
        "baseline": base,
        "ratio": {"events_per_s": ratio("events_per_s"), "p50": ratio("p50_ms"),
                  "p99": ratio("p99_ms")},
        "target": {"events_per_s_ratio": ">= 0.5"},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
