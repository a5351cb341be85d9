"""The engines' overhead, each against a bare baseline measured in the same run.

Prints one JSON document:
(a) ``slurm_many``: ``--jobs`` trivial jobs (``true``) through the catalog and the slurm
    dispatcher (submitted from the queue, followed, reported, archived), against the same jobs
    through bare ``sbatch`` calls followed by polling ``squeue`` until all ended: wall ratio
    (target <= 1.2);
(b) ``slurm_one``: one trivial job, catalog submit -> FINISHED through the dispatcher, against
    bare sbatch -> COMPLETED with the same polling interval: the difference in s (target
    <= +0.5 s);
(c) ``local``: ``--commands`` trivial commands through the local engine, against a bare loop of
    ``subprocess.run``: rate ratio (target >= 0.5); and the same commands held to resources
    (one core, 256 MB: an affinity and a memory cgroup per job where there are cgroups),
    ``limited_ratio`` against the same bare rate.
(a) and (b) run on a one-node cluster this script starts (tests/slurmcluster.py); where none can
start they are reported as skipped, with why.
Usage: ``python bench/engines.py [--jobs N] [--commands N] [--local-only]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import slurmcluster  # noqa: E402

from catalog import Catalog  # noqa: E402
from catalog.engines import LocalEngine  # noqa: E402
from catalog.engines.dispatcher import Dispatcher, DispatchOptions  # noqa: E402
from catalog.engines.local import memory_groups  # noqa: E402
from catalog.engines.slurm import SlurmEngine, SlurmFleet  # noqa: E402
from catalog.engines.slurm_client import SlurmClient  # noqa: E402
from catalog.queue.models import WorkFilter  # noqa: E402
from catalog.tokens import Keys  # noqa: E402
from catalog.worker import LocalQueue  # noqa: E402

POLL_S = 0.1


def local(commands: int, root: Path) -> dict[str, Any]:
    started = time.perf_counter()
    for _ in range(commands):
        subprocess.run(["true"], check=True)
    bare = commands / (time.perf_counter() - started)
    engine = LocalEngine()
    started = time.perf_counter()
    for i in range(commands):
        run = engine.start({"command": ["true"]}, root / f"local-{i}", 60)
        run.wait(60)
        assert run.result().error is None
    engine_rate = commands / (time.perf_counter() - started)
    limited = {"command": ["true"], "resources": {"cores": 1, "memory": "256M"}}
    started = time.perf_counter()
    for i in range(commands):
        run = engine.start(limited, root / f"limited-{i}", 60)
        run.wait(60)
        assert run.result().error is None
    limited_rate = commands / (time.perf_counter() - started)
    return {"commands": commands, "bare_per_s": round(bare, 1),
            "engine_per_s": round(engine_rate, 1), "ratio": round(engine_rate / bare, 3),
            "target": ">= 0.5", "limited_per_s": round(limited_rate, 1),
            "limited_ratio": round(limited_rate / bare, 3),
            "memory_cgroups": memory_groups() is not None,
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def bare_slurm(client: SlurmClient, jobs: int, workdir: Path) -> float:
    """Seconds from the first sbatch until squeue shows every job ended."""
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "true.sh"
    script.write_text("#!/bin/sh\ntrue\n")
    script.chmod(0o700)
    env = dict(client.env or os.environ)
    started = time.perf_counter()
    ids = {client.sbatch([f"--job-name=bare-{i}", f"--output={workdir}/%j.out",
                          "--time=1"], script, env) for i in range(jobs)}
    while True:
        states = client.states()
        logged = client.ended_from_log()
        if all((states.get(i) or logged.get(i)) is not None and
               (states.get(i) or logged[i]).ended for i in ids):
            return time.perf_counter() - started
        time.sleep(POLL_S)


def catalog_slurm(client: SlurmClient, jobs: int, root: Path, tag: str) -> float:
    """Seconds from the dispatcher's start until every job is FINISHED in the catalog (the
    jobs were queued before)."""
    with Catalog.open(f"sqlite:///{root}/{tag}.db", keys=Keys(b"b" * 32, b"c" * 32),
                      sqlite_synchronous="NORMAL") as catalog:
        catalog.add_pipeline(tag)
        uuids = [catalog.submit(tag, {"command": ["true"], "parameters": {"i": i},
                                      "resources": {"time": 60}}).uuid
                 for i in range(jobs)]
        options = DispatchOptions(WorkFilter(pipelines=[tag]), root / f"{tag}-work",
                                  name=f"bench-{tag}", max_in_flight=max(jobs, 1), poll=POLL_S,
                                  lives=jobs, sleep=POLL_S)
        started = time.perf_counter()
        ended = Dispatcher(LocalQueue(catalog, "bench"), SlurmFleet(SlurmEngine(client)), options,
                           threading.Event()).run()
        took = time.perf_counter() - started
        assert len(ended) == jobs and {e.state for e in ended} == {"FINISHED"}, ended[:3]
        assert len(set(uuids)) == jobs
    return took


def slurm(jobs: int, root: Path) -> dict[str, Any]:
    reason = slurmcluster.why_not()
    if reason is not None:
        return {"skipped": reason}
    cluster = slurmcluster.start(root / "cluster")
    try:
        client = SlurmClient(cluster.env)
        os.environ["SLURM_CONF"] = str(cluster.conf)
        bare_one = bare_slurm(client, 1, root / "bare-one")
        catalog_one = catalog_slurm(client, 1, root, "one")
        bare_many = bare_slurm(client, jobs, root / "bare-many")
        catalog_many = catalog_slurm(client, jobs, root, "many")
    finally:
        cluster.stop()
    return {
        "slurm_many": {"jobs": jobs, "bare_s": round(bare_many, 2),
                       "catalog_s": round(catalog_many, 2),
                       "ratio": round(catalog_many / bare_many, 3), "target": "<= 1.2"},
        "slurm_one": {"bare_s": round(bare_one, 3), "catalog_s": round(catalog_one, 3),
                      "extra_s": round(catalog_one - bare_one, 3), "target": "<= +0.5 s"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--commands", type=int, default=500)
    parser.add_argument("--local-only", action="store_true",
                        help="Only (c): no Slurm cluster is started.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as directory:
        root = Path(directory)
        root.chmod(0o755)
        result: dict[str, Any] = {"machine": platform.machine(), "cpus": os.cpu_count(),
                                  "local": local(args.commands, root)}
        if not args.local_only:
            result.update(slurm(args.jobs, root))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
