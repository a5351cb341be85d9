"""What the MongoDB wire costs: the jobs and webhook benchmarks on SQLite and on a MongoDB-wire
server (SecantusDB, started here on 127.0.0.1 and stopped by its pid), in one run.

Prints one JSON document; no target (the wire server is a test server written in Python, not
mongod: its figures bound nothing in production). Usage:
``python bench/store_mongo.py [--jobs N] [--events N] [--threads N] [--webhook-events N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))  # the wire server's start and stop

from jobs import bench_library  # noqa: E402
from mongowire import start_wire_server, stop_wire_server  # noqa: E402
from webhooks import CATALOG, HOST, WARMUP, Target, call, free_port, running  # noqa: E402
from webhooks import update_event as webhook_event  # noqa: E402


def webhook(url: str, tmp: Path, threads: int, events: int) -> dict[str, Any]:
    """``catalog serve`` on ``url``, ``threads`` clients posting events to one RUNNING job."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
    env["CATALOG_DB"] = url
    subprocess.run([str(CATALOG), "init"], cwd=tmp, env=env, check=True, capture_output=True)
    admin = json.loads(subprocess.run([str(CATALOG), "token", "admin", "--json"], cwd=tmp,
                                      env=env, check=True, capture_output=True).stdout)["token"]
    port = free_port()
    with ExitStack() as stack:
        stack.enter_context(running([str(CATALOG), "serve", "--host", HOST, "--port", str(port)],
                                    tmp, env, f"http://{HOST}:{port}/health",
                                    tmp / "catalog.log"))
        status, _ = call(port, "POST", "/pipelines", {"name": "bench"}, admin)
        assert status == 201, status
        status, job = call(port, "POST", "/jobs", {"pipeline": "bench"}, admin)
        assert status == 201, job
        path = f"/jobs/{job['uuid']}/events?token={job['token']}"
        status, ran = call(port, "POST", path, {"name": "run"})
        assert status == 200 and ran["state"] == "RUNNING", ran
        target = Target(port, path, webhook_event)
        target.warm_up(WARMUP)
        target.load(threads, events, 0)
        status, history = call(port, "GET", f"/jobs/{job['uuid']}/history")
    figures = target.figures()
    entries = history["history"]
    sent = 2 + WARMUP + threads * events
    figures["history_ok"] = (status == 200 and len(entries) == sent - figures["errors"]
                             and len({e["event_id"] for e in entries}) == len(entries))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200, help="Jobs created (library).")
    parser.add_argument("--events", type=int, default=200, help="Events applied (library).")
    parser.add_argument("--threads", type=int, default=4, help="Webhook client threads.")
    parser.add_argument("--webhook-events", type=int, default=100,
                        help="Webhook events per client thread.")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        uri, server = start_wire_server(root, root / "wire.log")
        try:
            urls = {"sqlite": f"sqlite:///{root}/bench.db", "mongowire": f"{uri}bench"}
            for name, url in urls.items():
                work = root / name
                work.mkdir()
                os.chdir(work)
                library = bench_library(url, args.jobs, args.events)
                hook_url = (f"sqlite:///{work}/webhook.db" if name == "sqlite"
                            else f"{uri}bench_webhook")
                results[name] = {"library": library,
                                 "webhook": webhook(hook_url, work, args.threads,
                                                    args.webhook_events)}
        finally:
            os.chdir(BENCH)
            stop_wire_server(server)

    def ratio(part: str, key: str) -> float:
        base = results["sqlite"][part][key]
        return round(results["mongowire"][part][key] / base, 3) if base else float("nan")

    print(json.dumps({
        "benchmark": "store_mongo",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_avg_1m": round(os.getloadavg()[0], 2)},
        "n": {"jobs": args.jobs, "events": args.events, "threads": args.threads,
              "webhook_events_per_thread": args.webhook_events},
        "setup": {"sqlite": "WAL, synchronous=FULL",
                  "mongowire": "SecantusDB on 127.0.0.1, one-member replica set, its defaults"},
        **results,
        "mongowire_over_sqlite": {"jobs_per_s": ratio("library", "jobs_per_s"),
                                  "events_per_s": ratio("library", "events_per_s"),
                                  "webhook_events_per_s": ratio("webhook", "events_per_s")},
    }, indent=2))


if __name__ == "__main__":
    main()
