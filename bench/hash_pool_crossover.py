"""Where hashing in worker processes starts to pay: `catalog index` with and without them.

Prints one JSON document: for trees of several sizes (files of 4 KiB, as bench/fixity.py's
tree), the files/s of ``index_job`` hashing on a thread (``catalog.hash_pool.POOL_FILES`` set
above the tree) and in worker processes (set to 0), alternately, best of ``--rounds`` each,
with their ratio; and the CPU seconds (this process and its children) each used. The smallest
size whose ratio is >= 1 is the crossover that ``POOL_FILES`` is taken from. Wall-clock ratios
on a loaded machine say little: the CPU columns say what each way costs.
Usage: ``python bench/hash_pool_crossover.py [--sizes 1000,2000,...] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import fixity as tree_bench

from catalog import hash_pool


def _cpu() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _timed(tree_dir: Path, files: int, pool: bool) -> tuple[float, float]:
    hash_pool.POOL_FILES = 0 if pool else files + 1
    cpu = _cpu()
    seconds = tree_bench.bench_index_tree(tree_dir, files)
    return seconds, _cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,2000,5000,10000,20000")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-hash-pool-") as temporary:
        for files in (int(size) for size in args.sizes.split(",")):
            tree_dir = Path(temporary) / f"tree-{files}"
            tree_bench.write_tree(tree_dir, files)
            tree_bench._settle(tree_dir)
            best = {True: (float("inf"), 0.0), False: (float("inf"), 0.0)}
            for _ in range(args.rounds):
                for pool in (False, True):  # alternately: drift hits both
                    timed = _timed(tree_dir, files, pool)
                    best[pool] = min(best[pool], timed)
            shutil.rmtree(tree_dir)
            rows.append({
                "files": files,
                "thread_files_s": round(files / best[False][0], 1),
                "pool_files_s": round(files / best[True][0], 1),
                "ratio": round(best[False][0] / best[True][0], 3),
                "thread_cpu_s": round(best[False][1], 2),
                "pool_cpu_s": round(best[True][1], 2),
            })
    print(json.dumps({"benchmark": "hash_pool_crossover", "workers": hash_pool.pool_workers(),
                      "rounds": args.rounds, "started": time.strftime("%H:%M:%S"),
                      "load": os.getloadavg(), "sizes": rows}, indent=2))


if __name__ == "__main__":
    main()
