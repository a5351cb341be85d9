"""Pages on a big catalog: time to first byte and full load of the dashboard, the jobs list and
a job's page, against ``GET /health`` on the same server in the same run.

The catalog (SQLite, in a temporary directory, deleted afterwards) holds ``--jobs`` jobs and
one big job of ``--history`` history entries (100,000 in the issue) and ``--files`` file
records (200,000). A real ``catalog serve`` process answers; each page is fetched ``--rounds``
times over one keep-alive connection after a warm-up fetch; the median is reported. "Full
load" is the page and the static files it links (what a browser fetches before it renders).
Targets (issue 21): the dashboard and the job page within 300 ms.
Usage: ``python bench/pages.py [--history N] [--files N] [--jobs N] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from catalog import Catalog, ManagedPipelineJob
from catalog.identifiers import UUIDType, typed_uuid
from catalog.models import FileRecord, utc_now

CATALOG = Path(sys.executable).parent / "catalog"
CHUNK = 5000
TARGET_MS = 300.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build(directory: Path, history: int, files: int, jobs: int) -> str:
    """The big catalog; the big job's UUID."""
    catalog, _ = Catalog.init(f"sqlite:///{directory}/c.db")
    try:
        catalog.add_pipeline("bench")
        for n in range(jobs):
            catalog.submit("bench", {"n": n})
        big = ManagedPipelineJob(catalog, "bench", {"big": True})
        big.setup()
        uuid = big.uuid

        def decide(head: dict[str, Any]) -> tuple[str, dict[str, Any]]:
            return "CREATED", catalog.history_entry(uuid, "update", {"at": head["version"]},
                                                    "bench", "CREATED")

        started = time.perf_counter()
        for first in range(0, history - 1, CHUNK):  # the job has its create entry already
            count = min(CHUNK, history - 1 - first)
            outcomes = catalog.store.apply_events([(uuid, None, decide)] * count)
            assert not any(isinstance(o, Exception) for o in outcomes), outcomes[:1]
        log(f"history: {history} entries in {time.perf_counter() - started:.1f} s")
        now = utc_now()
        started = time.perf_counter()
        for first in range(0, files, CHUNK):
            catalog.store.upsert_files([FileRecord(
                uuid=typed_uuid(UUIDType.file, f"local:/big/{n:07d}.dat"), storage_system="local",
                path=f"/big/d{n // 1000:04d}/{n:07d}.dat", name=f"{n:07d}.dat", size=n,
                mtime=now, media_type="application/octet-stream", kind="product",
                checksums={"xxh3_128": f"{n:032x}"}, child_of=[uuid], generated_by=[uuid],
                created=now, updated=now).model_dump(mode="json")
                for n in range(first, min(files, first + CHUNK))])
        log(f"files: {files} records in {time.perf_counter() - started:.1f} s")
        assert catalog.get_job(uuid, history=False).version == history
        return uuid
    finally:
        catalog.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
    env["CATALOG_DB"] = f"sqlite:///{directory}/c.db"
    process = subprocess.Popen([str(CATALOG), "serve", "--host", "127.0.0.1", "--port",
                                str(port)], cwd=directory, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited"
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError("the server did not come up")


def fetch(client: httpx.Client, path: str) -> tuple[float, float]:
    """Seconds to the first byte of the body and to the page with its static files."""
    started = time.perf_counter()
    with client.stream("GET", path) as response:
        assert response.status_code == 200, (path, response.status_code)
        chunks = response.iter_bytes()
        body = next(chunks, b"")
        first = time.perf_counter() - started
        body += b"".join(chunks)
    for asset in re.findall(rb'(?:src|href)="(/ui/static/[^"]+)"', body):
        assert client.get(asset.decode()).status_code == 200
    return first, time.perf_counter() - started


def measure(url: str, paths: dict[str, str], rounds: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        for name, path in paths.items():
            fetch(client, path)  # warm-up
            samples = [fetch(client, path) for _ in range(rounds)]
            figures[name] = {
                "ttfb_ms": round(statistics.median(s[0] for s in samples) * 1000, 2),
                "full_ms": round(statistics.median(s[1] for s in samples) * 1000, 2)}
    health = figures["health"]["full_ms"]
    for figure in figures.values():
        figure["ratio_to_health"] = round(figure["full_ms"] / health, 1) if health else None
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pages-bench-") as temporary:
        directory = Path(temporary)
        os.chdir(directory)  # the catalog's secret and archive root are made here
        big = build(directory, args.history, args.files, args.jobs)
        process, url = start(directory)
        try:
            figures = measure(url, {"health": "/health", "dashboard": "/ui/",
                                    "jobs_list": "/ui/jobs",
                                    "job_page": f"/ui/jobs/{big}"}, args.rounds)
        finally:
            os.kill(process.pid, signal.SIGINT)
            process.wait(timeout=30)
    within = {name: figures[name]["full_ms"] <= TARGET_MS for name in ("dashboard", "job_page")}
    print(json.dumps({"benchmark": "pages", "history": args.history, "files": args.files,
                      "jobs": args.jobs, "rounds": args.rounds, "target_ms": TARGET_MS,
                      "within_target": within, "figures": figures}, indent=2))


if __name__ == "__main__":
    main()
