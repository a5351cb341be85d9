"""Marquez's reads a Marquez client needs: namespaces, a namespace's jobs and datasets, a job,
its runs and a run, paged with ``limit`` and ``offset`` as Marquez's. In process on every store,
then over HTTP on a real ``catalog serve`` fed by the real ``openlineage-python`` client.

An unknown namespace, job or run answers 404 in the project's error shape
(``{"error": {"code": "entity_not_found", ...}}``, catalog.errors) rather than Marquez's ``{"code",
"message"}``: every route of the catalog answers one shape, and Marquez's clients act on the
status (``raise_for_status``), not on the body."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from test_openlineage import KEY, PRODUCER, catalog, openlineage_client, server

from catalog import Catalog
from catalog.compat.marquez import (
    marquez_datasets,
    marquez_job,
    marquez_jobs,
    marquez_namespace,
    marquez_namespaces,
    marquez_runs,
)
from catalog.errors import EntityNotFound
from catalog.openlineage import ingest

__all__ = ["catalog", "server"]  # fixtures, imported to be used here

NS = "airflow://lab"
LAKE = "s3://lake"
RUNS = ["3f2504e0-4f89-41d3-9a0c-0305e82c3301", "0189c6e2-5b7e-7c3a-9d3e-1f2a3b4c5d6e",
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8"]


def at(second: int) -> str:
    return f"2026-11-21T12:00:{second:02d}Z"


def raw(kind: str, run_id: str, job: str, second: int, inputs: list[str],
        outputs: list[str]) -> dict[str, Any]:
    return {"eventType": kind, "eventTime": at(second), "producer": PRODUCER,
            "run": {"runId": run_id},
            "job": {"namespace": NS, "name": job,
                    "facets": {"sql": {"query": f"SELECT * -- {job}"}}},
            "inputs": [{"namespace": LAKE, "name": n} for n in inputs],
            "outputs": [{"namespace": LAKE, "name": n} for n in outputs]}


def three_runs(catalog: Catalog) -> None:
    """``extract`` writes a; ``load`` reads a and writes b, twice (runs 1 then 2)."""
    for number, (run_id, job, reads, writes) in enumerate([
            (RUNS[0], "extract", [], ["a"]), (RUNS[1], "load", ["a"], ["b"]),
            (RUNS[2], "load", ["a"], ["b"])]):
        for kind, second in (("START", number * 10), ("COMPLETE", number * 10 + 5)):
            ingest(catalog, raw(kind, run_id, job, second, reads, writes), KEY)


def test_namespaces_jobs_datasets_and_runs_paged_on_every_store(catalog: Catalog) -> None:
    three_runs(catalog)
    listed = marquez_namespaces(catalog)
    assert (listed["totalCount"], [n["name"] for n in listed["namespaces"]]) == (2, [NS, LAKE])
    assert [n["name"] for n in marquez_namespaces(catalog, 1, 1)["namespaces"]] == [LAKE]
    assert marquez_namespaces(catalog, 10, 5)["namespaces"] == []
    one = marquez_namespace(catalog, NS)
    assert (one["name"], one["isHidden"]) == (NS, False)
    assert one["createdAt"] <= one["updatedAt"]

    jobs = marquez_jobs(catalog, NS)
    assert (jobs["totalCount"], [j["name"] for j in jobs["jobs"]]) == (2, ["extract", "load"])
    assert [j["name"] for j in marquez_jobs(catalog, NS, 1, 1)["jobs"]] == ["load"]
    load = marquez_job(catalog, NS, "load")
    assert (load["id"], load["inputs"], load["outputs"]) == (
        {"namespace": NS, "name": "load"}, [{"namespace": LAKE, "name": "a"}],
        [{"namespace": LAKE, "name": "b"}])
    assert load["facets"]["sql"] == {"query": "SELECT * -- load"}
    assert (load["latestRun"]["id"], load["latestRun"]["state"]) == (RUNS[2], "COMPLETED")
    assert [r["id"] for r in load["latestRuns"]] == [RUNS[2], RUNS[1]]

    runs = marquez_runs(catalog, NS, "load", 1, 1)
    assert (runs["totalCount"], [r["id"] for r in runs["runs"]]) == (2, [RUNS[1]])
    datasets = marquez_datasets(catalog, LAKE, 1, 1)
    assert (datasets["totalCount"], [d["name"] for d in datasets["datasets"]]) == (2, ["b"])
    assert marquez_datasets(catalog, LAKE, 5, 2)["datasets"] == []


@pytest.mark.parametrize("read", [
    lambda c: marquez_namespace(c, "nowhere://x"),
    lambda c: marquez_jobs(c, "nowhere://x"),
    lambda c: marquez_datasets(c, "nowhere://x"),
    lambda c: marquez_job(c, NS, "never-ran"),
    lambda c: marquez_runs(c, NS, "never-ran"),
])
def test_unknown_names_are_not_found(catalog: Catalog, read: Any) -> None:
    three_runs(catalog)
    with pytest.raises(EntityNotFound):
        read(catalog)


@pytest.mark.slow
def test_a_marquez_client_reads_namespaces_jobs_and_runs_over_http(server: str) -> None:
    tag = uuid.uuid4().hex[:8]
    namespace = f"airflow://{tag}"
    runs = [str(uuid.uuid4()) for _ in range(3)]
    client = openlineage_client(server)
    try:
        for number, run_id in enumerate(runs):
            for state, second in ((RunState.START, number * 10),
                                  (RunState.COMPLETE, number * 10 + 5)):
                client.emit(RunEvent(
                    eventType=state, eventTime=at(second), producer=PRODUCER,
                    run=Run(runId=run_id), job=Job(namespace=namespace, name=f"job{number % 2}"),
                    inputs=[InputDataset(namespace=LAKE, name=f"{tag}/in")],
                    outputs=[OutputDataset(namespace=LAKE, name=f"{tag}/out{number}")]))
    finally:
        client.close()
    quoted = namespace.replace("/", "%2F")
    api = f"{server}/api/v1"

    names = [n["name"] for n in httpx.get(f"{api}/namespaces", params={"limit": 1000})
             .json()["namespaces"]]
    assert {namespace, LAKE} <= set(names) and names == sorted(names)
    assert httpx.get(f"{api}/namespaces/{quoted}").json()["name"] == namespace
    jobs = httpx.get(f"{api}/namespaces/{quoted}/jobs").json()
    assert (jobs["totalCount"], [j["name"] for j in jobs["jobs"]]) == (2, ["job0", "job1"])
    second = httpx.get(f"{api}/namespaces/{quoted}/jobs",
                       params={"limit": 1, "offset": 1}).json()
    assert [j["name"] for j in second["jobs"]] == ["job1"]
    job0 = httpx.get(f"{api}/namespaces/{quoted}/jobs/job0").json()
    assert [r["id"] for r in job0["latestRuns"]] == [runs[2], runs[0]]
    assert job0["outputs"] == [{"namespace": LAKE, "name": f"{tag}/out0"},
                               {"namespace": LAKE, "name": f"{tag}/out2"}]
    paged = httpx.get(f"{api}/namespaces/{quoted}/jobs/job0/runs",
                      params={"limit": 1, "offset": 1}).json()
    assert (paged["totalCount"], [r["id"] for r in paged["runs"]]) == (2, [runs[0]])
    run = httpx.get(f"{api}/runs/{runs[1]}").json()
    assert (run["id"], run["state"], run["jobVersion"]) == (
        runs[1], "COMPLETED", {"namespace": namespace, "name": "job1"})

    for path in ("/namespaces/nowhere:%2F%2Fx", "/namespaces/nowhere:%2F%2Fx/jobs",
                 "/namespaces/nowhere:%2F%2Fx/datasets", f"/namespaces/{quoted}/jobs/nojob",
                 f"/namespaces/{quoted}/jobs/nojob/runs", f"/runs/{uuid.uuid4()}"):
        missing = httpx.get(f"{api}{path}")
        code = missing.json()["error"]["code"]
        assert (missing.status_code, code.endswith("not_found")) == (404, True), path
    for path, params in (("/namespaces", {"offset": "-1"}),
                         ("/namespaces", {"offset": str(2**63)}),
                         (f"/namespaces/{quoted}/jobs", {"offset": str(2**63)}),
                         (f"/namespaces/{quoted}/jobs", {"offset": "x"}),
                         (f"/namespaces/{quoted}/jobs", {"limit": "1001"})):
        bad = httpx.get(f"{api}{path}", params=params)
        assert bad.status_code in (400, 422), (path, bad.text)
        assert "error" in bad.json(), bad.text
    bad_run = httpx.get(f"{api}/runs/not-a-uuid")
    assert (bad_run.status_code, bad_run.json()["error"]["code"]) == (400, "invalid_input")
