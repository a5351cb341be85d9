"""Every benchmark still runs end to end and prints its JSON document (at toy sizes).

The figures at these sizes mean nothing; what is checked is that a benchmark has not rotted
(bench/jobs.py once broke silently when a migration added a column to jobs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run(script: str, *args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    document: dict[str, Any] = json.loads(done.stdout)
    return document


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "args", "ratios"),
    [
        pytest.param("jobs.py", ("--jobs", "10", "--events", "10"), "ratio", id="jobs"),
        pytest.param("webhooks.py", ("--events", "5", "--rounds", "1"), "ratio", id="webhooks"),
        pytest.param("webhooks.py", ("--events", "5", "--rounds", "1", "--flood", "2"), "ratio",
                     id="webhooks-flood"),
        pytest.param("fixity.py", ("--size-mib", "2", "--files", "40", "--rounds", "1"), "ratio",
                     id="fixity"),
        pytest.param("lineage.py", ("--sizes", "400,800", "--queries", "3"), "ratios",
                     id="lineage"),
        pytest.param("work_queue.py", ("--jobs", "20", "--http-jobs", "3", "--sweep-jobs",
                                       "2000", "--expired", "20"), "ratio", id="work_queue"),
        pytest.param("conditions.py", ("--fanout", "200", "--graph", "16", "--waits", "3"),
                     "ratio", id="conditions"),
        pytest.param("openlineage.py", ("--events", "6", "--threads", "2", "--rounds", "1",
                                        "--runs", "20", "--queries", "2"), "ratio",
                     id="openlineage"),
        pytest.param("pages.py", ("--history", "300", "--files", "300", "--jobs", "5",
                                  "--rounds", "1"), "figures", id="pages"),
    ],
)
def test_the_benchmark_runs_and_prints_its_document(script: str, args: tuple[str, ...],
                                                     ratios: str) -> None:
    document = run(script, *args)
    assert document["benchmark"] == script.removesuffix(".py")
    assert document[ratios] and all(isinstance(value, float | int | dict)
                                    for value in document[ratios].values())
    if script == "webhooks.py" and "--flood" in args:
        assert document["with_flood"]["history_ok"] is True
        assert document["flood"]["requests"] > 0
    elif script == "webhooks.py":  # every acknowledged event is in the history exactly once
        assert document["catalog"]["history_ok"] is True
        assert document["catalog"]["errors"] == document["baseline"]["errors"] == 0
    if script == "openlineage.py":  # every event acknowledged, the runs joined 10 deep
        ingestion = document["ingestion"]
        assert ingestion["openlineage"]["errors"] == ingestion["webhook"]["errors"] == 0
        assert ingestion["openlineage"]["last_run_linked"] is True
        assert document["deep_lineage"]["runs_deep"] == 10


@pytest.mark.slow
def test_the_store_scale_benchmark_counts_the_pages_each_tree_dirtied() -> None:
    document = run("fixity_store_scale.py", "--files", "600", "--tree-files", "200",
                   "--chunk", "100", "--window", "1", "--pages")
    assert document["benchmark"] == "fixity_store_scale"
    assert isinstance(document["ratio"], float) and document["ratio"] > 0
    dirtied = document["pages_dirtied_by_chunk"]
    assert set(dirtied) == {"200", "600"}
    # Migration 18: a file record's own links are not in the index of added links.
    assert all("links" in trees and not {"links_added", "links_ordered"} & set(trees)
               for trees in dirtied.values())
