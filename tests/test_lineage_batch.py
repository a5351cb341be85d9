"""The batched reads lineage describes its nodes with (issue 18): ``get_jobs`` and
``lineage_events_of_runs`` answer what one-at-a-time reads answer, on every store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from catalog import Catalog
from catalog.identifiers import UUIDType, uuid_type
from catalog.lineage import lineage
from catalog.openlineage import ingest
from catalog.openlineage_views import run_times, runs_times

KEY = "ol-batch-key-0123456789abcdef0123"
RUNS = [str(uuid.UUID(int=n, version=4)) for n in (1, 2, 3)]


def event(event_type: str, run_id: str, second: int) -> dict[str, Any]:
    return {
        "eventType": event_type, "eventTime": f"2026-11-21T12:00:{second:02d}.000Z",
        "producer": "https://example.org/batch-test",
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
        "run": {"runId": run_id, "facets": {}},
        "job": {"namespace": "batch://lab", "name": f"job-{run_id[-1]}", "facets": {}},
        "inputs": [{"namespace": "batch://lab", "name": "raw"}],
        "outputs": [{"namespace": "batch://lab", "name": f"out-{run_id[-1]}"}],
    }


@pytest.fixture
def catalog(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[Catalog]:
    monkeypatch.chdir(tmp_path)
    opened, _ = Catalog.init(store_url, openlineage_key=KEY)
    for second, run_id in enumerate(RUNS):
        ingest(opened, event("START", run_id, second), KEY)
        if run_id != RUNS[2]:  # the last run is still going
            ingest(opened, event("COMPLETE", run_id, second + 10), KEY)
    yield opened
    opened.close()


def _job_uuids(catalog: Catalog) -> list[str]:
    events = catalog.store.lineage_events_of_runs(RUNS)
    return [events[run_id][-1]["job_uuid"] for run_id in RUNS]


def test_get_jobs_reads_the_heads_one_reads_and_leaves_out_unknown_ones(
        catalog: Catalog) -> None:
    jobs = _job_uuids(catalog)
    unknown = jobs[0][:-4] + "ffff"
    found = catalog.store.get_jobs([jobs[2], unknown, jobs[0], jobs[2]])
    assert list(found) == [jobs[2], jobs[0]]
    for uuid_ in jobs[0], jobs[2]:
        one = catalog.store.get_job(uuid_, history=False)
        assert one is not None
        for key in ("state", "pipeline_uuid", "version", "created", "archive_path", "data"):
            assert found[uuid_][key] == one[key]
    assert catalog.store.get_jobs([]) == {}


def test_events_of_runs_match_the_events_of_each_run(catalog: Catalog) -> None:
    other = str(uuid.UUID(int=99, version=4))
    batched = catalog.store.lineage_events_of_runs([*RUNS, other])
    assert set(batched) == set(RUNS)  # a run without events is left out
    for run_id in RUNS:
        assert batched[run_id] == catalog.store.lineage_events(run_id=run_id)
    last = catalog.store.lineage_events_of_runs(RUNS, limit=1)
    assert [e["event_type"] for e in last[RUNS[0]]] == ["COMPLETE"]
    assert [e["event_type"] for e in last[RUNS[2]]] == ["START"]
    assert runs_times(catalog, [*RUNS, other]) == {
        **{run_id: run_times(catalog, run_id) for run_id in RUNS}, other: {}}
    assert runs_times(catalog, RUNS)[RUNS[0]]["ol_state"] == "COMPLETED"


def test_lineage_shows_each_jobs_run_from_the_batched_reads(catalog: Catalog) -> None:
    jobs = _job_uuids(catalog)
    # raw, the dataset all three read: what came from it is the three jobs, in one batch.
    (raw,) = {edge["to"] for edge in lineage(catalog, jobs[0], depth=1)["edges"]
              if uuid_type(edge["to"]) is UUIDType.reference}
    graph = lineage(catalog, raw, direction="down", depth=2)
    shown = {node["uuid"]: node for node in graph["nodes"]}
    assert set(jobs) <= set(shown)
    for run_id, job in zip(RUNS, jobs, strict=True):
        assert shown[job]["run_id"] == run_id
        assert shown[job]["ol_state"] == ("RUNNING" if run_id == RUNS[2] else "COMPLETED")
        assert shown[job]["state"] == catalog.store.get_job(job, history=False)["state"]
