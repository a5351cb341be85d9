"""Lineage and checksum lookups on synthetic SQLite catalogs of growing size.

Prints one JSON document. For each size a fresh catalog is bulk-loaded through the library
(``add_pipeline``, ``ManagedPipelineJob.setup``, ``add_links``, ``store.upsert_files``) at
synchronous=NORMAL, then reopened at the default durability and queried: lineage up at depth 5
from files of second-stage jobs, lineage down at depth 5 from measurements, and
``find_files(checksum="sha256:...")`` of random files. Every answer is checked, so a fast wrong
answer fails the run instead of being measured.

In the same run, on the same database and samples, each lineage query is also answered by a
bare SQL recursive CTE over the ``links`` table (the edges alone, no node read or described, no
limit): the baseline of ``ratio_to_sql_cte`` (catalog p95 / CTE p95). Every node the catalog's
answer holds must be among the CTE's.

Proportions are the same at every size, so each query's answer has the same size and only the
catalog grows: 20 files per job, 5 jobs per measurement, 1 pipeline per 50,000 files (at least
2). About 30% of jobs are second stage: they act on 2-4 files of an earlier first-stage job of
the same measurement, and every file they write is derived from those inputs.

Usage: ``python bench/lineage.py [--sizes 10000,1000000] [--queries 300] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catalog import Catalog, ManagedPipelineJob
from catalog.indexer import file_uuid
from catalog.models import FileRecord, format_date, utc_now
from catalog.tokens import Keys

KEYS = Keys(b"s" * 32, b"a" * 32)
SEED = 20260101
FILES_PER_JOB = 20
JOBS_PER_MEASUREMENT = 5
FILES_PER_PIPELINE = 50_000
# Every job but a measurement's first may be second stage: 4/5 * 0.375 = 30% of jobs.
SECOND_STAGE_CHANCE = 0.375
INPUTS = (2, 4)
BATCH_FILES = 10_000
DEPTH = 5
WARMUP = 10  # untimed queries of each kind before the timed ones
PROGRESS_EVERY = 10.0  # seconds between progress lines on stderr
TARGET_P95_MS = 20.0
TARGET_P95_RATIO = 2.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else float("inf")


# --- the plan: what the catalog holds, decided before anything is written -------------------


@dataclass
class PlannedJob:
    """A job of the synthetic catalog; ``inputs`` name files of ``upstream`` (second stage)."""

    number: int
    measurement: int
    pipeline: int
    upstream: int | None = None
    inputs: list[int] = field(default_factory=list)
    uuid: str = ""
    archive_path: str = ""


@dataclass
class Plan:
    files: int
    measurements: int
    pipelines: int
    jobs: list[PlannedJob]

    @property
    def second_stage(self) -> list[PlannedJob]:
        return [job for job in self.jobs if job.upstream is not None]


def make_plan(files: int, rng: random.Random) -> Plan:
    measurements = max(1, files // (FILES_PER_JOB * JOBS_PER_MEASUREMENT))
    pipelines = max(2, files // FILES_PER_PIPELINE)
    jobs: list[PlannedJob] = []
    for measurement in range(measurements):
        first_stage: list[int] = []
        for slot in range(JOBS_PER_MEASUREMENT):
            job = PlannedJob(len(jobs), measurement, rng.randrange(pipelines))
            if slot > 0 and rng.random() < SECOND_STAGE_CHANCE:
                job.upstream = rng.choice(first_stage)
                job.inputs = sorted(rng.sample(range(FILES_PER_JOB), rng.randint(*INPUTS)))
            else:
                first_stage.append(job.number)
            jobs.append(job)
    return Plan(len(jobs) * FILES_PER_JOB, measurements, pipelines, jobs)


def measurement_id(number: int) -> str:
    return f"measurement.bench.{number}"


def file_path(job: PlannedJob, index: int) -> str:
    return f"{job.archive_path}/out/{index}.dat"


# --- loading through the library ----------------------------------------------------------------


class Progress:
    """A line on stderr at most every PROGRESS_EVERY seconds, so a long load shows life."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, total
        self.start = self.last = time.perf_counter()

    def __call__(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.last >= PROGRESS_EVERY or done == self.total:
            self.last = now
            log(f"  {self.label}: {done:,}/{self.total:,} in {now - self.start:.1f} s")


def load_jobs(catalog: Catalog, plan: Plan) -> dict[str, Any]:
    """Pipelines, then every job (one ``setup()`` each), then the second stage's acted_on."""
    start = time.perf_counter()
    pipelines = [catalog.add_pipeline(f"bench-lineage-{n}", "1")[0].uuid
                 for n in range(plan.pipelines)]
    progress = Progress("jobs", len(plan.jobs))
    for job in plan.jobs:
        managed = ManagedPipelineJob(catalog, pipelines[job.pipeline], {"n": job.number},
                                     measurement_id=measurement_id(job.measurement))
        stored = managed.setup()
        assert managed.created, f"job {job.number} already existed"
        job.uuid, job.archive_path = stored.uuid, stored.archive_path
        progress(job.number + 1)
    jobs_seconds = time.perf_counter() - start
    start = time.perf_counter()
    links = 0
    for job in plan.second_stage:
        assert job.upstream is not None
        upstream = plan.jobs[job.upstream]
        inputs = [file_uuid(catalog, "local", file_path(upstream, k)) for k in job.inputs]
        catalog.add_links(job.uuid, "acted_on", inputs)
        links += len(inputs)
    links_seconds = time.perf_counter() - start
    return {
        "pipelines": plan.pipelines,
        "jobs": len(plan.jobs),
        "jobs_seconds": round(jobs_seconds, 2),
        "jobs_per_s": _rate(len(plan.jobs), jobs_seconds),
        "acted_on_jobs": len(plan.second_stage),
        "acted_on_links": links,
        "acted_on_seconds": round(links_seconds, 2),
        "acted_on_jobs_per_s": _rate(len(plan.second_stage), links_seconds),
    }


def _hex(rng: random.Random, bits: int) -> str:
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


@dataclass
class Samples:
    """What the queries start from, chosen before loading (the catalog itself is not kept).

    Files are (job number, file index); their uuids and digests are noted while loading.
    """

    up_files: list[tuple[int, int]]
    checksum_files: list[tuple[int, int]]
    measurements: list[int]
    uuids: dict[tuple[int, int], str] = field(default_factory=dict)
    sha256: dict[tuple[int, int], str] = field(default_factory=dict)


def _draw(population: int, count: int, rng: random.Random) -> list[int]:
    """``count`` numbers below ``population``, without repeats when there are enough."""
    if count <= population:
        return rng.sample(range(population), count)
    return [rng.randrange(population) for _ in range(count)]


def choose_samples(plan: Plan, queries: int, rng: random.Random) -> Samples:
    count = queries + WARMUP
    second_stage = plan.second_stage
    up = [divmod(number, FILES_PER_JOB)
          for number in _draw(len(second_stage) * FILES_PER_JOB, count, rng)]
    return Samples(
        up_files=[(second_stage[job].number, index) for job, index in up],
        checksum_files=[divmod(number, FILES_PER_JOB) for number in _draw(plan.files, count, rng)],
        measurements=_draw(plan.measurements, count, rng),
    )


def file_records(catalog: Catalog, plan: Plan, samples: Samples,
                 rng: random.Random) -> Iterator[dict[str, Any]]:
    """Every file of the plan as a FileRecord document in its JSON form, job after job."""
    stamp = format_date(utc_now())
    wanted = {*samples.up_files, *samples.checksum_files}
    for job in plan.jobs:
        derived_from: list[str] = []
        if job.upstream is not None:
            upstream = plan.jobs[job.upstream]
            derived_from = sorted(file_uuid(catalog, "local", file_path(upstream, k))
                                  for k in job.inputs)
        for index in range(FILES_PER_JOB):
            path = file_path(job, index)
            uuid = file_uuid(catalog, "local", path)
            sha256 = _hex(rng, 256)
            key = (job.number, index)
            if key in wanted:
                samples.uuids[key], samples.sha256[key] = uuid, sha256
            yield {
                "uuid": uuid, "storage_system": "local", "path": path, "name": f"{index}.dat",
                "size": rng.randrange(1, 1 << 30), "mtime": stamp, "etag": None,
                "media_type": "application/octet-stream", "kind": "product", "level": None,
                "checksums": {"xxh3_128": _hex(rng, 128), "sha256": sha256},
                "status": "ok", "fixity": [], "child_of": [job.uuid],
                "generated_by": [job.uuid], "derived_from": derived_from,
                "derived_using": [], "note": None, "created": stamp, "updated": stamp,
            }


def load_files(catalog: Catalog, plan: Plan, samples: Samples,
               rng: random.Random) -> dict[str, Any]:
    """File records in batches of BATCH_FILES through ``store.upsert_files``."""
    progress = Progress("files", plan.files)
    start = time.perf_counter()
    loaded = batches = 0
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal loaded, batches
        # The first record of every batch is held to the schema, so the bench cannot drift.
        FileRecord.model_validate(batch[0])
        catalog.store.upsert_files(batch)
        loaded += len(batch)
        batches += 1
        batch.clear()
        progress(loaded)

    for record in file_records(catalog, plan, samples, rng):
        batch.append(record)
        if len(batch) == BATCH_FILES:
            flush()
    if batch:
        flush()
    seconds = time.perf_counter() - start
    assert loaded == plan.files, (loaded, plan.files)
    return {
        "files": loaded,
        "batch_files": BATCH_FILES,
        "batches": batches,
        "files_seconds": round(seconds, 2),
        "files_per_s": _rate(loaded, seconds),
    }


# --- queries ------------------------------------------------------------------------------------


@dataclass
class Query:
    """One query kind: what it runs on each sample and how its answer is checked."""

    run: Callable[[Any], Any]
    check: Callable[[Any, Any], tuple[int, int]]  # -> (nodes, edges) of a correct answer
    samples: list[Any]
    times_ms: list[float] = field(default_factory=list)
    nodes: list[int] = field(default_factory=list)
    edges: list[int] = field(default_factory=list)


def make_queries(catalog: Catalog, plan: Plan, samples: Samples) -> dict[str, Query]:
    measurement_uuids = {m: catalog.parse_upstream(measurement_id(m))
                         for m in set(samples.measurements)}
    pipelines = {doc["uuid"] for doc in catalog.list_pipelines(limit=1000).items}
    jobs_of: dict[int, set[str]] = {}
    for job in plan.jobs:
        jobs_of.setdefault(job.measurement, set()).add(job.uuid)

    def check_up(key: tuple[int, int], graph: dict[str, Any]) -> tuple[int, int]:
        uuid = samples.uuids[key]
        job = plan.jobs[key[0]]
        assert job.upstream is not None
        upstream = plan.jobs[job.upstream]
        reached = {node["uuid"] for node in graph["nodes"]}
        expected = {uuid, job.uuid, upstream.uuid,
                    catalog.parse_upstream(measurement_id(job.measurement))}
        expected |= {file_uuid(catalog, "local", file_path(upstream, k)) for k in job.inputs}
        assert expected <= reached, f"up from {uuid}: missing {expected - reached}"
        # the rest is the pipelines of the two jobs, nothing else
        assert reached - expected <= pipelines and reached - expected, reached - expected
        return len(graph["nodes"]), len(graph["edges"])

    def check_down(measurement: int, graph: dict[str, Any]) -> tuple[int, int]:
        jobs = {node["uuid"] for node in graph["nodes"] if node["type"] == "pipelinejob"}
        assert jobs == jobs_of[measurement], f"down from measurement {measurement}: {jobs}"
        files = [node for node in graph["nodes"] if node["type"] == "file"]
        assert len(files) == JOBS_PER_MEASUREMENT * FILES_PER_JOB, len(files)
        return len(graph["nodes"]), len(graph["edges"])

    def check_checksum(key: tuple[int, int], found: Any) -> tuple[int, int]:
        uuids = [doc["uuid"] for doc in found.items]
        assert uuids == [samples.uuids[key]], f"sha256:{samples.sha256[key]} found {uuids}"
        return len(uuids), 0

    return {
        "lineage_up_depth5": Query(
            lambda key: catalog.lineage(samples.uuids[key], "up", DEPTH), check_up,
            samples.up_files),
        "lineage_down_depth5": Query(
            lambda m: catalog.lineage(measurement_uuids[m], "down", DEPTH), check_down,
            samples.measurements),
        "find_files_by_sha256": Query(
            lambda key: catalog.find_files(checksum=f"sha256:{samples.sha256[key]}"),
            check_checksum, samples.checksum_files),
    }


def percentiles(times_ms: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(times_ms, n=100, method="inclusive")
    return {
        "p50_ms": round(cuts[49], 3), "p95_ms": round(cuts[94], 3), "p99_ms": round(cuts[98], 3),
        "mean_ms": round(statistics.fmean(times_ms), 3), "max_ms": round(max(times_ms), 3),
    }


# The baseline: the same walk as bare SQL, one recursive CTE over the links table (its key
# serves up, links_reverse down).
_CTE = {
    "up": "WITH RECURSIVE walk(node, depth) AS (SELECT ?, 0 UNION SELECT links.dst, "
          "walk.depth + 1 FROM walk JOIN links ON links.src = walk.node WHERE walk.depth < ?) "
          "SELECT DISTINCT node FROM walk",
    "down": "WITH RECURSIVE walk(node, depth) AS (SELECT ?, 0 UNION SELECT links.src, "
            "walk.depth + 1 FROM walk JOIN links ON links.dst = walk.node WHERE walk.depth < ?) "
            "SELECT DISTINCT node FROM walk",
}
_BASELINES = {"lineage_up_depth5": "up", "lineage_down_depth5": "down"}


def run_queries(catalog: Catalog, plan: Plan, samples: Samples, count: int,
                database: Path) -> dict[str, Any]:
    """``count`` timed queries of each kind, the kinds taking turns (noise hits all alike);
    each lineage query followed by its SQL baseline on the same sample."""
    queries = make_queries(catalog, plan, samples)
    baseline_ms: dict[str, list[float]] = {name: [] for name in _BASELINES}
    sql = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        for turn in range(count + WARMUP):
            for name, query in queries.items():
                sample = query.samples[turn]
                start = time.perf_counter()
                answer = query.run(sample)
                elapsed = (time.perf_counter() - start) * 1000
                nodes, edges = query.check(sample, answer)
                if name in _BASELINES:
                    start = time.perf_counter()
                    reached = {node for node, in sql.execute(
                        _CTE[_BASELINES[name]], (answer["root"], DEPTH))}
                    cte_ms = (time.perf_counter() - start) * 1000
                    missing = {node["uuid"] for node in answer["nodes"]} - reached
                    assert not missing, f"the CTE from {answer['root']} misses {missing}"
                    if turn >= WARMUP:
                        baseline_ms[name].append(cte_ms)
                if turn >= WARMUP:
                    query.times_ms.append(elapsed)
                    query.nodes.append(nodes)
                    query.edges.append(edges)
    finally:
        sql.close()
    results: dict[str, Any] = {
        name: {
            "queries": len(query.times_ms),
            **percentiles(query.times_ms),
            "avg_nodes": round(statistics.fmean(query.nodes), 1),
            "avg_edges": round(statistics.fmean(query.edges), 1),
        }
        for name, query in queries.items()
    }
    for name, times in baseline_ms.items():
        baseline = percentiles(times)
        results[name]["sql_cte"] = baseline
        results[name]["ratio_to_sql_cte"] = round(
            results[name]["p95_ms"] / baseline["p95_ms"], 3)
    return results


# --- one size -----------------------------------------------------------------------------------


def database_bytes(database: Path) -> int:
    return sum(Path(f"{database}{suffix}").stat().st_size
               for suffix in ("", "-wal") if Path(f"{database}{suffix}").exists())


def table_rows(database: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("pipelines", "jobs", "history", "files", "file_checksums",
                              "links")}
    finally:
        conn.close()


def bench_size(files: int, queries: int, keep: Path | None) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix=f"bench-lineage-{files}-", dir=keep))
    database = directory / "catalog.db"
    url = f"sqlite:///{database}"
    archive_root = str(directory / "archive")
    plan = make_plan(files, random.Random(f"{SEED}:plan:{files}"))
    samples = choose_samples(plan, queries, random.Random(f"{SEED}:samples:{files}"))
    log(f"size {files:,}: {len(plan.jobs):,} jobs, {plan.measurements:,} measurements, "
        f"{plan.pipelines} pipelines in {directory}")
    try:
        catalog = Catalog.open(url, keys=KEYS, archive_root=archive_root,
                               sqlite_synchronous="NORMAL")
        try:
            assert catalog.settings.sqlite_synchronous == "NORMAL"
            start = time.perf_counter()
            load = load_jobs(catalog, plan)
            load.update(load_files(catalog, plan, samples,
                                   random.Random(f"{SEED}:checksums:{files}")))
            load["total_seconds"] = round(time.perf_counter() - start, 2)
        finally:
            catalog.close()  # the last connection closing checkpoints the WAL
        load["sqlite_synchronous"] = "NORMAL"
        rows = table_rows(database)
        size = database_bytes(database)
        log(f"size {files:,}: loaded in {load['total_seconds']} s, {size / 2**20:.0f} MiB; "
            "querying")
        # Queried through a fresh catalog at the default durability, as a reader would be.
        catalog = Catalog.open(url, keys=KEYS, archive_root=archive_root)
        try:
            results = run_queries(catalog, plan, samples, queries, database)
        finally:
            catalog.close()
    finally:
        if keep is None:
            shutil.rmtree(directory)
    for name, result in results.items():
        log(f"size {files:,}: {name} p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms")
    return {
        "files": plan.files,
        "jobs": len(plan.jobs),
        "second_stage_jobs": len(plan.second_stage),
        "measurements": plan.measurements,
        "pipelines": plan.pipelines,
        "rows": rows,
        "db_bytes": size,
        "kept_in": str(directory) if keep is not None else None,
        "load": load,
        "queries": results,
    }


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "cpus": os.cpu_count(), "platform": platform.platform()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,1000000",
                        help="comma-separated catalog sizes, in files")
    parser.add_argument("--queries", type=int, default=300, help="timed queries of each kind")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="build the catalogs under DIR and keep them")
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    if sizes[0] < FILES_PER_JOB * JOBS_PER_MEASUREMENT * 4 or args.queries < 2:
        parser.error("each size must be at least 400 files and --queries at least 2")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    by_size = {str(files): bench_size(files, args.queries, args.keep) for files in sizes}
    smallest, largest = by_size[str(sizes[0])]["queries"], by_size[str(sizes[-1])]["queries"]
    ratios = {kind: round(largest[kind]["p95_ms"] / smallest[kind]["p95_ms"], 3)
              for kind in largest}
    result: dict[str, Any] = {
        "benchmark": "lineage",
        "machine": machine(),
        "method": {
            "store": "SQLite (WAL); loaded at synchronous=NORMAL through the library "
                     "(add_pipeline, ManagedPipelineJob.setup, add_links, store.upsert_files "
                     f"in batches of {BATCH_FILES:,}), queried after reopening at the default "
                     "synchronous=FULL",
            "proportions": {"files_per_job": FILES_PER_JOB,
                            "jobs_per_measurement": JOBS_PER_MEASUREMENT,
                            "files_per_pipeline": FILES_PER_PIPELINE,
                            "second_stage_share": 0.3, "inputs_per_second_stage_job": INPUTS},
            "queries": f"{args.queries} timed of each kind after {WARMUP} untimed, kinds "
                       "taking turns; every answer checked",
            "seed": SEED,
        },
        "sizes": by_size,
        "ratios": {"p95_largest_over_smallest": ratios,
                   "p95_over_sql_cte_at_largest": {
                       kind: largest[kind]["ratio_to_sql_cte"] for kind in _BASELINES}},
        "targets": {
            "p95_le_20ms_at_largest": {kind: largest[kind]["p95_ms"] <= TARGET_P95_MS
                                       for kind in largest},
            "p95_ratio_le_2": {kind: ratio <= TARGET_P95_RATIO for kind, ratio in ratios.items()},
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
