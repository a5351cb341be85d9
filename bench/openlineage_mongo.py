"""OpenLineage ingestion on a MongoDB-wire server: round trips per event and events/s.

A SecantusDB server (tests/mongowire.py) is started on 127.0.0.1 and stopped by its pid; a
catalog on it takes START + COMPLETE pairs (2 inputs, 2 outputs, the runs chained as in
bench/openlineage.py) through ``catalog.openlineage.ingest``, one thread, and pymongo's command
monitoring counts the commands each event sends (each a round trip). In the same run the same
pairs go to a SQLite catalog (``synchronous=FULL``) as the baseline of ``ratio``. Prints one
JSON document; no target (the wire server is a test server written in Python, not mongod).

Usage: ``python bench/openlineage_mongo.py [--pairs N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pymongo import monitoring

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))  # the wire server's start and stop

from mongowire import start_wire_server, stop_wire_server  # noqa: E402
from openlineage import KEY, lineage_event  # noqa: E402


class Commands(monitoring.CommandListener):
    """Counts the commands sent (by name), from when ``counting`` is set."""

    def __init__(self) -> None:
        self.counting = False
        self.sent: Counter[str] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.counting:
            self.sent[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def ingest_pairs(url: str, pairs: int, commands: Commands | None) -> dict[str, Any]:
    from catalog import Catalog
    from catalog.openlineage import ingest

    catalog, _ = Catalog.init(url, openlineage_key=KEY)
    try:
        for pair in range(5):  # warm-up: another thread's runs
            for kind, second in (("START", 0), ("COMPLETE", 1)):
                ingest(catalog, lineage_event(kind, 1, pair, second), KEY)
        per_kind: dict[str, list[int]] = {"START": [], "COMPLETE": []}
        started = time.perf_counter()
        for pair in range(pairs):
            for kind, second in (("START", 0), ("COMPLETE", 1)):
                if commands is not None:
                    commands.sent.clear()
                    commands.counting = True
                ingest(catalog, lineage_event(kind, 0, pair, second), KEY)
                if commands is not None:
                    commands.counting = False
                    per_kind[kind].append(sum(commands.sent.values()))
        seconds = time.perf_counter() - started
    finally:
        catalog.close()
    figures: dict[str, Any] = {"events_per_s": round(2 * pairs / seconds, 1)}
    if commands is not None:
        figures["round_trips_per_event"] = {
            kind: round(statistics.fmean(counts), 2) for kind, counts in per_kind.items()}
        figures["last_event_commands"] = dict(commands.sent)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100, help="START + COMPLETE pairs")
    args = parser.parse_args()
    commands = Commands()
    monitoring.register(commands)  # before any client: every client of the process reports
    with tempfile.TemporaryDirectory(prefix="bench-openlineage-mongo-") as tmp:
        os.chdir(tmp)
        (Path(tmp) / "wire").mkdir()
        uri, process = start_wire_server(Path(tmp) / "wire", Path(tmp) / "wire.log")
        try:
            wire = ingest_pairs(f"{uri.rstrip('/')}/bench_openlineage", args.pairs, commands)
        finally:
            stop_wire_server(process)
        sqlite = ingest_pairs(f"sqlite:///{tmp}/catalog.db", args.pairs, None)
    print(json.dumps({
        "benchmark": "openlineage_mongo",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_avg_1m": round(os.getloadavg()[0], 2)},
        "n": {"pairs": args.pairs, "threads": 1},
        "mongowire": wire, "sqlite": sqlite,
        "ratio": {"wire_over_sqlite_events_per_s": round(
            wire["events_per_s"] / sqlite["events_per_s"], 3)},
    }, indent=2))


if __name__ == "__main__":
    main()
