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

``--flood N`` measures instead the catalog alone, its webhook throughput (the same load) in
alternating rounds without and with N anonymous clients flooding it (each on one keep-alive
connection, POSTing events without a token to made-up job UUIDs as fast as it is answered,
ignoring Retry-After), and reports the ratio (target >= 0.8), what the flood was answered and
how many audit rows it added. ``--rate-limit-delay S`` sets the server's ``rate_limit_delay_s``
(how long a 429 is held back; 0 measures the counting of refusals alone).
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
import uuid
from collections import Counter
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


def update_event(t: int, i: int, prefix: str = "") -> bytes:
    return json.dumps({"name": "update", "data": {"thread": t, "i": i},
                       "event_id": f"{prefix}t{t}-e{i}"}).encode()


class Flood:
    """Anonymous clients sending events without a token to made-up jobs, until stopped."""

    def __init__(self, port: int, clients: int) -> None:
        self.port, self.clients = port, clients
        self.statuses: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _client(self) -> None:
        body = json.dumps({"name": "run"}).encode()
        conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
        seen: Counter[int] = Counter()
        while not self._stop.is_set():
            job = "107" + str(uuid.uuid5(uuid.NAMESPACE_URL, str(uuid.uuid4())))[3:]  # no job
            try:
                conn.request("POST", f"/jobs/{job}/events", body, JSON)
                answer = conn.getresponse()
                answer.read()
                seen[answer.status] += 1
            except (OSError, http.client.HTTPException):
                seen[0] += 1
                conn.close()
                conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
        conn.close()
        with self._lock:
            self.statuses.update(seen)

    def __enter__(self) -> Flood:
        self._stop.clear()
        self._threads = [threading.Thread(target=self._client) for _ in range(self.clients)]
        for thread in self._threads:
            thread.start()
        time.sleep(0.5)  # under way before the measured load starts
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def audit_rows(database: Path) -> int:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM audit").fetchone()[0])


def flood_main(args: argparse.Namespace) -> dict[str, Any]:
    """Legitimate throughput without and with ``args.flood`` anonymous flooding clients."""
    env = {"CATALOG_RATE_LIMIT_DELAY_S": str(args.rate_limit_delay)}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        quiet, job_uuid = start_catalog(stack, Path(tmp), env)
        flooded = Target(quiet.port, quiet.path, lambda t, i: update_event(t, i, "flood-"))
        quiet.warm_up(WARMUP)
        flood = Flood(quiet.port, args.flood)
        audit_before = audit_rows(Path(tmp) / "catalog.db")
        flood_seconds = 0.0
        for round_ in range(args.rounds):
            quiet.load(args.threads, args.events, round_)
            started = time.perf_counter()
            with flood:
                flooded.load(args.threads, args.events, round_)
            flood_seconds += time.perf_counter() - started
        # The counts held are written at the next refusal past the flush interval, or at exit.
        audit_after = audit_rows(Path(tmp) / "catalog.db")
        status, history = call(quiet.port, "GET", f"/jobs/{job_uuid}/history")
    sent = 2 + WARMUP + 2 * args.rounds * args.threads * args.events
    entries = history["history"]
    without, with_flood = quiet.figures(), flooded.figures()
    with_flood["history_ok"] = (
        status == 200 and len(entries) == sent - without["errors"] - with_flood["errors"]
        and len({e["event_id"] for e in entries}) == len(entries))
    flood_requests = sum(flood.statuses.values())
    return {
        "benchmark": "webhooks",
        "mode": "flood",
        "machine": machine(),
        "n": {"threads": args.threads, "events_per_thread": args.events, "rounds": args.rounds,
              "flooding_clients": args.flood, "warmup": WARMUP},
        "setup": {"flood": "anonymous POST /jobs/<made-up uuid>/events, keep-alive, no token, "
                           "Retry-After ignored",
                  "rate_limit_delay_s": args.rate_limit_delay},
        "without_flood": without,
        "with_flood": with_flood,
        "flood": {"requests": flood_requests,
                  "per_s": round(flood_requests / flood_seconds, 1) if flood_seconds else 0,
                  "statuses": {str(k): v for k, v in sorted(flood.statuses.items())},
                  "audit_rows_added": audit_after - audit_before},
        "ratio": {"events_per_s": round(with_flood["events_per_s"] / without["events_per_s"], 3)},
        "target": {"events_per_s_ratio": ">= 0.8"},
    }


def start_catalog(stack: ExitStack, tmp: Path,
                  extra_env: dict[str, str] | None = None) -> tuple[Target, str]:
    """``catalog serve`` on a fresh catalog, and one RUNNING job to send events to."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
    env["CATALOG_DB"] = f"sqlite:///{tmp}/catalog.db"
    env.update(extra_env or {})
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


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "cpus": os.cpu_count(),
            "platform": platform.platform(), "sqlite": sqlite3.sqlite_version,
            "load_avg_1m": round(os.getloadavg()[0], 2),
            **versions("uvicorn", "fastapi", "starlette", "uvloop", "httptools")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=500, help="Events per client thread.")
    parser.add_argument("--threads", type=int, default=4, help="Client threads.")
    parser.add_argument("--rounds", type=int, default=1, help="Alternating rounds per server.")
    parser.add_argument("--flood", type=int, default=0,
                        help="Anonymous flooding clients (see above); 0: the usual benchmark.")
    parser.add_argument("--rate-limit-delay", type=float, default=1.0,
                        help="The server's rate_limit_delay_s in --flood mode.")
    args = parser.parse_args()
    if args.flood:
        print(json.dumps(flood_main(args), indent=2))
        return
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
        "machine": machine(),
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
