"""OpenLineage that joins into one graph: the real ``openlineage-python`` client against a real
``catalog serve`` (chains, every event order, concurrent senders, gzip, DAGs, facets, JobEvents
and DatasetEvents), then the migration of split datasets and refusals in process."""

from __future__ import annotations

import gzip
import itertools
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from openlineage.client.event_v2 import (
    DatasetEvent,
    InputDataset,
    Job,
    JobEvent,
    OutputDataset,
    Run,
    RunEvent,
    RunState,
    StaticDataset,
)
from openlineage.client.facet_v2 import (
    error_message_run,
    ownership_job,
    parent_run,
    schema_dataset,
    source_code_location_job,
    sql_job,
)
from openlineage.client.transport.http import HttpCompression
from test_openlineage import (  # the real server and client of the ingestion tests
    KEY,
    PRODUCER,
    openlineage_client,
    server,
)

from catalog import Catalog
from catalog.identifiers import UUIDType, typed_uuid
from catalog.openlineage import MAX_FACET_BYTES, ingest
from catalog.openlineage_views import get_dataset, get_run
from catalog.store.mongo import MongoStore
from catalog.store.sqlite import MIGRATIONS, SQLiteStore

__all__ = ["server"]  # a fixture, imported to be used here

NS = "airflow://lab"
T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def when(seconds: int) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def event(state: RunState, run_id: str, job: str, seconds: int = 0,
          inputs: list[str] | None = None, outputs: list[str] | None = None,
          run_facets: dict[str, Any] | None = None, **fields: Any) -> RunEvent:
    return RunEvent(
        eventType=state, eventTime=when(seconds), producer=PRODUCER,
        run=Run(runId=run_id, facets=run_facets or {}), job=Job(namespace=NS, name=job),
        inputs=[InputDataset(namespace="s3://lake", name=n) for n in inputs or []],
        outputs=[OutputDataset(namespace="s3://lake", name=n) for n in outputs or []],
        **fields)


def dataset(name: str, namespace: str = "s3://lake") -> str:
    return typed_uuid(UUIDType.reference, f"{namespace}/{name}")


def run_view(base_url: str, run_id: str) -> dict[str, Any]:
    reply = httpx.get(f"{base_url}/api/v1/openlineage/runs/{run_id}")
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def emit_all(base_url: str, events: list[Any], **config: Any) -> None:
    client = openlineage_client(base_url, **config)
    try:
        for each in events:
            client.emit(each)
    finally:
        client.close()


# -- the real client against a real server -----------------------------------------------------


@pytest.mark.slow
def test_a_chain_of_three_runs_joins_end_to_end(server: str) -> None:
    tag = uuid.uuid4().hex[:8]
    raw, x, y, z = (f"{tag}/{name}" for name in ("raw", "x", "y", "z"))
    runs = [str(uuid.uuid4()) for _ in range(3)]
    steps = [(runs[0], raw, x), (runs[1], x, y), (runs[2], y, z)]
    events = []
    for number, (run_id, read, written) in enumerate(steps):
        events.append(event(RunState.START, run_id, f"step{number}", number * 10, [read]))
        events.append(event(RunState.COMPLETE, run_id, f"step{number}", number * 10 + 5,
                            outputs=[written]))
    emit_all(server, events)
    jobs = [run_view(server, run_id)["job_uuid"] for run_id in runs]

    up = httpx.get(f"{server}/lineage/{dataset(z)}", params={"depth": 10}).json()
    assert {node["uuid"] for node in up["nodes"]} >= {*jobs, dataset(raw), dataset(x),
                                                       dataset(y)}
    down = httpx.get(f"{server}/lineage/{dataset(x)}",
                     params={"direction": "down", "depth": 10}).json()
    assert {node["uuid"] for node in down["nodes"]} >= {jobs[1], jobs[2], dataset(y),
                                                         dataset(z)}
    first = next(node for node in up["nodes"] if node["uuid"] == jobs[0])
    assert (first["startTime"], first["endTime"], first["ol_state"]) == (
        when(0), when(5), "COMPLETED")

    prov = httpx.get(f"{server}/lineage/{dataset(z)}",
                     params={"depth": 10, "format": "prov-json"}).json()
    informed = {(r["prov:informed"], r["prov:informant"])
                for r in prov["wasInformedBy"].values()}
    assert informed == {(f"catalog:{jobs[1]}", f"catalog:{jobs[0]}"),
                        (f"catalog:{jobs[2]}", f"catalog:{jobs[1]}")}
    activity = prov["activity"][f"catalog:{jobs[0]}"]
    assert activity["prov:startTime"].startswith("2026-11-21T12:00:00")
    assert activity["prov:endTime"].startswith("2026-11-21T12:00:05")

    # Marquez's view of the same graph: dataset y between step1 and step2.
    graph = httpx.get(f"{server}/api/v1/lineage",
                      params={"nodeId": f"dataset:s3://lake:{y}", "depth": 5}).json()["graph"]
    ids = {node["id"] for node in graph}
    assert {f"job:{NS}:step0", f"job:{NS}:step1", f"job:{NS}:step2",
            f"dataset:s3://lake:{x}", f"dataset:s3://lake:{z}"} <= ids
    node_y = next(node for node in graph if node["id"] == f"dataset:s3://lake:{y}")
    assert node_y["inEdges"] == [{"origin": f"job:{NS}:step1",
                                  "destination": f"dataset:s3://lake:{y}"}]
    assert node_y["outEdges"] == [{"origin": f"dataset:s3://lake:{y}",
                                   "destination": f"job:{NS}:step2"}]

    around_job = httpx.get(f"{server}/api/v1/lineage",
                           params={"nodeId": f"job:{NS}:step1", "depth": 1}).json()["graph"]
    step1 = next(node for node in around_job if node["id"] == f"job:{NS}:step1")
    assert step1["inEdges"] == [{"origin": f"dataset:s3://lake:{x}",
                                 "destination": f"job:{NS}:step1"}]
    assert step1["data"]["latestRuns"][0]["id"] == runs[1]

    found = httpx.get(f"{server}/api/v1/openlineage/datasets",
                      params={"namespace": "s3://lake", "name": y}).json()
    assert (found["written_by"], found["read_by"]) == ([jobs[1]], [jobs[2]])


ORDERS = list(itertools.permutations(["START", "RUNNING", "COMPLETE", "FAIL"]))


@pytest.mark.slow
def test_every_order_of_start_running_complete_and_fail(server: str) -> None:
    """Each of the 24 orders ends in the state of the first terminal event received, the other
    recorded as a disagreement, with every event's datasets linked; none is refused."""
    runs = {order: str(uuid.uuid4()) for order in ORDERS}
    events = []
    # The eventTimes follow the lifecycle; the events are sent in the permuted order.
    times = {"START": 0, "RUNNING": 1, "COMPLETE": 2, "FAIL": 3}
    for order, run_id in runs.items():
        for kind in order:
            events.append(event(RunState[kind], run_id, "permuted", times[kind],
                                [f"{run_id}/in-{kind}"], [f"{run_id}/out-{kind}"]))
    emit_all(server, events)
    for order, run_id in runs.items():
        view = run_view(server, run_id)
        first_end = next(kind for kind in order if kind in ("COMPLETE", "FAIL"))
        assert view["state"] == {"COMPLETE": "COMPLETED", "FAIL": "FAILED"}[first_end], order
        assert view["state_in_catalog"] == {"COMPLETE": "FINISHED", "FAIL": "FAILED"}[first_end]
        assert [t["eventType"] for t in view["terminal"]] == [
            kind for kind in order if kind in ("COMPLETE", "FAIL")]
        assert view["disagreement"] is True
        assert (view["startedAt"], view["endedAt"]) == (when(0), when(times[first_end]))
        assert {d["name"] for d in view["inputs"]} == {f"{run_id}/in-{k}" for k in order}
        assert {d["name"] for d in view["outputs"]} == {f"{run_id}/out-{k}" for k in order}
        job = httpx.get(f"{server}/jobs/{view['job_uuid']}").json()
        assert sorted(job["acted_on"]) == sorted(dataset(f"{run_id}/in-{k}") for k in order)


@pytest.mark.slow
def test_start_and_complete_sent_together_from_many_threads_lose_nothing(server: str) -> None:
    runs = [str(uuid.uuid4()) for _ in range(24)]
    clients = [openlineage_client(server) for _ in range(8)]
    barrier = threading.Barrier(2)

    def pair(number: int) -> None:
        run_id = runs[number // 2]
        kind = RunState.START if number % 2 == 0 else RunState.COMPLETE
        if number % 8 < 2:
            barrier.wait(timeout=10)  # some pairs leave at the very same moment
        clients[number % 8].emit(event(kind, run_id, "together", number % 2,
                                       [f"{run_id}/in", f"{run_id}/in2"] if number % 2 == 0
                                       else [], [f"{run_id}/out"] if number % 2 else []))

    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(pair, range(len(runs) * 2)))
    finally:
        for client in clients:
            client.close()
    for run_id in runs:
        view = run_view(server, run_id)
        assert (view["state"], view["state_in_catalog"]) == ("COMPLETED", "FINISHED")
        assert {d["name"] for d in view["inputs"]} == {f"{run_id}/in", f"{run_id}/in2"}
        assert [d["name"] for d in view["outputs"]] == [f"{run_id}/out"]
        assert (view["startedAt"], view["endedAt"]) == (when(0), when(1))


@pytest.mark.slow
def test_gzip_bodies_are_read_and_a_large_schema_passes(server: str) -> None:
    run_id = str(uuid.uuid4())
    columns = [schema_dataset.SchemaDatasetFacetFields(name=f"column_{n:05d}", type="double",
                                                       description="flux " * 10)
               for n in range(8000)]  # ~1.4 MB of JSON: over the plain body limit of 1 MiB
    schema = schema_dataset.SchemaDatasetFacet(fields=columns)
    start = event(RunState.START, run_id, "gzipped")
    start.outputs = [OutputDataset(namespace="s3://lake", name=f"{run_id}/wide",
                                   facets={"schema": schema})]
    emit_all(server, [start], compression=HttpCompression.GZIP)
    found = httpx.get(f"{server}/api/v1/openlineage/datasets",
                      params={"namespace": "s3://lake", "name": f"{run_id}/wide"}).json()
    assert len(found["facets"]["schema"]["fields"]) == 8000
    assert run_view(server, run_id)["state"] == "RUNNING"


@pytest.mark.slow
def test_a_gzip_bomb_is_a_413_after_decompression(server: str) -> None:
    body = gzip.compress(b'{"eventTime": "' + b" " * (9 * 1024 * 1024) + b'"}')
    reply = httpx.post(f"{server}/api/v1/lineage", content=body, headers={
        "Authorization": f"Bearer {KEY}", "Content-Encoding": "gzip",
        "Content-Type": "application/json"})
    assert (reply.status_code, reply.json()["error"]["code"]) == (413, "body_too_large")
    assert "decompressed" in reply.json()["error"]["message"]
    broken = httpx.post(f"{server}/api/v1/lineage", content=b"not gzip", headers={
        "Authorization": f"Bearer {KEY}", "Content-Encoding": "gzip"})
    assert (broken.status_code, broken.json()["error"]["code"]) == (400, "invalid_data")


@pytest.mark.slow
def test_a_dags_task_runs_are_found_under_their_parent(server: str) -> None:
    dag_run, tasks = str(uuid.uuid4()), [str(uuid.uuid4()) for _ in range(3)]
    parent = parent_run.ParentRunFacet(
        run=parent_run.Run(runId=dag_run), job=parent_run.Job(namespace=NS, name="dag"),
        root=parent_run.Root(run=parent_run.RootRun(runId=dag_run),
                             job=parent_run.RootJob(namespace=NS, name="dag")))
    events = [event(RunState.START, dag_run, "dag")]
    events += [event(RunState.COMPLETE, task, f"dag.task{n}", n + 1,
                     run_facets={"parent": parent}) for n, task in enumerate(tasks)]
    events.append(event(RunState.COMPLETE, dag_run, "dag", 9))
    emit_all(server, events)
    assert sorted(run_view(server, dag_run)["children"]) == sorted(tasks)
    child = run_view(server, tasks[1])
    assert (child["parent"], child["root"]) == (dag_run, dag_run)
    node = httpx.get(f"{server}/lineage/{child['job_uuid']}", params={"depth": 0}).json()
    assert node["nodes"][0]["parent_run_id"] == dag_run


@pytest.mark.slow
def test_facets_are_kept_and_the_standard_ones_read_as_fields(server: str) -> None:
    run_id = str(uuid.uuid4())
    job_facets = {
        "sql": sql_job.SQLJobFacet(query="SELECT * FROM flats"),
        "sourceCodeLocation": source_code_location_job.SourceCodeLocationJobFacet(
            type="git", url="https://example.org/repo.git"),
        "ownership": ownership_job.OwnershipJobFacet(
            owners=[ownership_job.Owner(name="team:astro")]),
    }
    fail = event(RunState.FAIL, run_id, "facetted", 5, run_facets={
        "errorMessage": error_message_run.ErrorMessageRunFacet(
            message="disk full", programmingLanguage="python", stackTrace="Traceback ..."),
        "custom": {"_producer": PRODUCER, "_schemaURL": "https://example.org/x", "k": [1, 2]}})
    fail.job = Job(namespace=NS, name="facetted", facets=job_facets)
    emit_all(server, [event(RunState.START, run_id, "facetted"), fail])
    view = run_view(server, run_id)
    standard = view["standard"]
    assert (standard["errorMessage"], standard["stackTrace"], standard["sql"]) == (
        "disk full", "Traceback ...", "SELECT * FROM flats")
    assert standard["sourceCodeLocation"]["url"] == "https://example.org/repo.git"
    assert standard["ownership"]["owners"] == [{"name": "team:astro"}]
    assert view["facets"]["run"]["custom"]["k"] == [1, 2]  # an unknown facet, kept as sent
    assert view["state"] == "FAILED"


@pytest.mark.slow
def test_job_and_dataset_events_are_applied(server: str) -> None:
    tag = uuid.uuid4().hex[:8]
    schema = schema_dataset.SchemaDatasetFacet(
        fields=[schema_dataset.SchemaDatasetFacetFields(name="flux", type="double")])
    emit_all(server, [
        JobEvent(eventTime=when(0), producer=PRODUCER,
                 job=Job(namespace=NS, name=f"static-{tag}"),
                 inputs=[InputDataset(namespace="s3://lake", name=f"{tag}/a")],
                 outputs=[OutputDataset(namespace="s3://lake", name=f"{tag}/b")]),
        DatasetEvent(eventTime=when(1), producer=PRODUCER, dataset=StaticDataset(
            namespace="s3://lake", name=f"{tag}/c", facets={"schema": schema})),
    ])
    b = httpx.get(f"{server}/api/v1/openlineage/datasets",
                  params={"namespace": "s3://lake", "name": f"{tag}/b"}).json()
    pipeline = httpx.get(f"{server}/pipelines", params={"name": f"{NS}/static-{tag}"}).json()
    assert b["written_by"] == [pipeline["pipelines"][0]["uuid"]]
    c = httpx.get(f"{server}/api/v1/openlineage/datasets",
                  params={"namespace": "s3://lake", "name": f"{tag}/c"}).json()
    assert [f["name"] for f in c["facets"]["schema"]["fields"]] == ["flux"]
    assert [v["role"] for v in c["versions"]] == ["dataset"]
    listed = httpx.get(f"{server}/api/v1/openlineage/datasets",
                       params={"namespace": "s3://lake", "limit": 1000}).json()["datasets"]
    assert {f"{tag}/a", f"{tag}/b", f"{tag}/c"} <= {d["name"] for d in listed}


@pytest.mark.slow
def test_marquez_listings_read_the_graph(server: str) -> None:
    tag = uuid.uuid4().hex[:8]
    run_id = str(uuid.uuid4())
    nominal = {"nominalTime": {"_producer": PRODUCER, "_schemaURL": "https://example.org/n",
                               "nominalStartTime": when(0)}}
    schema = schema_dataset.SchemaDatasetFacet(
        fields=[schema_dataset.SchemaDatasetFacetFields(name="flux", type="double")])
    complete = event(RunState.COMPLETE, run_id, f"m-{tag}", 7)
    complete.outputs = [OutputDataset(namespace="s3://lake", name=f"{tag}/out",
                                      facets={"schema": schema})]
    emit_all(server, [event(RunState.START, run_id, f"m-{tag}", 2, [f"{tag}/in"],
                            run_facets=nominal), complete])
    quoted = "s3:%2F%2Flake"
    listed = httpx.get(f"{server}/api/v1/namespaces/{quoted}/datasets",
                       params={"limit": 1000}).json()
    names = {d["name"] for d in listed["datasets"]}
    assert {f"{tag}/in", f"{tag}/out"} <= names
    one = httpx.get(f"{server}/api/v1/namespaces/{quoted}/datasets/{tag}%2Fout").json()
    assert (one["id"], [f["name"] for f in one["fields"]]) == (
        {"namespace": "s3://lake", "name": f"{tag}/out"}, ["flux"])
    runs = httpx.get(f"{server}/api/v1/namespaces/airflow:%2F%2Flab/jobs/m-{tag}/runs").json()
    (run,) = runs["runs"]
    assert (run["id"], run["state"], run["startedAt"], run["endedAt"], run["durationMs"]) == (
        run_id, "COMPLETED", when(2), when(7), 5000)
    assert run["nominalStartTime"] == when(0)
    assert httpx.get(f"{server}/api/v1/jobs/runs/{run_id}").json()["id"] == run_id
    missing = httpx.get(f"{server}/api/v1/namespaces/{quoted}/nothing")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
    bad = httpx.get(f"{server}/api/v1/namespaces/{quoted}/datasets", params={"limit": "0"})
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_input")


# -- in process ----------------------------------------------------------------------------------

RUN_A, RUN_B = "3f2504e0-4f89-41d3-9a0c-0305e82c3301", "0189c6e2-5b7e-7c3a-9d3e-1f2a3b4c5d6e"


def raw_event(kind: str, run_id: str, seconds: int = 0, **fields: Any) -> dict[str, Any]:
    return {"eventType": kind, "eventTime": when(seconds), "producer": PRODUCER,
            "run": {"runId": run_id}, "job": {"namespace": NS, "name": "j"}, **fields}


@pytest.fixture
def catalog(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Catalog]:
    monkeypatch.chdir(tmp_path)
    opened, _ = Catalog.init(store_url, openlineage_key=KEY)
    yield opened
    opened.close()


def test_a_late_abort_is_kept_apart_from_a_fail(catalog: Catalog) -> None:
    ingest(catalog, raw_event("START", RUN_A), KEY)
    ingest(catalog, raw_event("ABORT", RUN_A, 2), KEY)
    late = ingest(catalog, raw_event("FAIL", RUN_A, 1), KEY)
    assert (late["applied"], late["state"]) == (False, "FAILED")
    view = get_run(catalog, RUN_A)
    assert (view["state"], view["endedAt"], view["disagreement"]) == ("ABORTED", when(2), True)
    assert [t["eventType"] for t in view["terminal"]] == ["ABORT", "FAIL"]


def test_a_dataset_is_found_by_its_normalised_name(catalog: Catalog) -> None:
    out = {"namespace": "S3://Lake/", "name": "/x.parquet"}
    ingest(catalog, raw_event("COMPLETE", RUN_A, outputs=[out]), KEY)
    ingest(catalog, raw_event("COMPLETE", RUN_B, inputs=[{"namespace": "s3://lake",
                                                          "name": "x.parquet"}]), KEY)
    found = get_dataset(catalog, "s3://lake", "x.parquet")
    assert (found["uuid"], found["uri"]) == (dataset("x.parquet"), "s3://lake/x.parquet")
    assert len(found["written_by"]) == len(found["read_by"]) == 1
    ingest(catalog, raw_event("START", RUN_A, outputs=[{"namespace": "file",
                                                        "name": "/data/x.fits"}]), KEY)
    assert get_dataset(catalog, "file", "/data/x.fits")["uri"] == "file:///data/x.fits"


def _old_products(catalog: Catalog) -> None:
    """What earlier versions stored: a product for a dataset written, a reference read."""
    product = typed_uuid(UUIDType.product, "s3://lake/x")
    job = "10700000-0000-5000-8000-000000000001"
    doc = {"uuid": product, "kind": "product", "name": "x", "namespace": "s3://lake",
           "uri": "s3://lake/x", "created": "2026-11-01T00:00:00.000Z", "generated_by": [job]}
    reference = {**doc, "uuid": dataset("x"), "kind": "reference", "generated_by": []}
    catalog.store.upsert_entities([doc, reference])


def test_split_datasets_of_a_sqlite_database_are_joined(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT "
                 "NULL, applied TEXT NOT NULL DEFAULT '')")
    for version, name, script in MIGRATIONS:
        if version < 9:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
                         (version, name))
    product = typed_uuid(UUIDType.product, "s3://lake/x")
    job = "10700000-0000-5000-8000-000000000001"
    doc = {"uuid": product, "kind": "product", "name": "x", "namespace": "s3://lake",
           "uri": "s3://lake/x", "created": "2026-11-01T00:00:00.000Z", "generated_by": [job]}
    reference = {**doc, "uuid": dataset("x"), "kind": "reference", "generated_by": []}
    for entity in (doc, reference):
        conn.execute("INSERT INTO entities (uuid, kind, created, doc) VALUES (?, ?, ?, ?)",
                     (entity["uuid"], entity["kind"], entity["created"], json.dumps(entity)))
    conn.execute("INSERT INTO links (src, relation, dst) VALUES (?, 'generated_by', ?)",
                 (product, job))
    conn.close()

    store = SQLiteStore(path)
    try:
        assert store.get_entity(product) is None
        joined = store.get_entity(dataset("x"))
        assert joined is not None
        assert (joined["kind"], joined["generated_by"]) == ("reference", [job])
        assert store.edges([dataset("x")], "up") == [(dataset("x"), "generated_by", job)]
        assert [d["uuid"] for d in store.find_datasets("s3://lake").items] == [dataset("x")]
        assert 9 in dict(store.migrations())
    finally:
        store.close()


def test_split_datasets_of_a_mongodb_database_are_joined() -> None:
    url = f"mongomock://split-{uuid.uuid4().hex}"
    first = MongoStore.from_url(url)
    product = typed_uuid(UUIDType.product, "s3://lake/x")
    job = "10700000-0000-5000-8000-000000000001"
    doc = {"uuid": product, "kind": "product", "name": "x", "namespace": "s3://lake",
           "uri": "s3://lake/x", "created": "2026-11-01T00:00:00.000Z", "generated_by": [job]}
    first.upsert_entities([doc, {**doc, "uuid": dataset("x"), "kind": "reference",
                                 "generated_by": []}])
    first.close()
    reopened = MongoStore.from_url(url)  # opening joins them
    try:
        assert reopened.get_entity(product) is None
        joined = reopened.get_entity(dataset("x"))
        assert joined is not None
        assert (joined["kind"], joined["generated_by"]) == ("reference", [job])
        assert reopened.edges([dataset("x")], "up") == [(dataset("x"), "generated_by", job)]
    finally:
        reopened.close()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_facet_over_the_limit_is_refused_naming_it(catalog: Catalog) -> None:
    from catalog.web.app import create_app

    big = {"namespace": "s3://lake", "name": "big",
           "facets": {"schema": {"fields": [{"name": "x" * (MAX_FACET_BYTES + 1)}]}}}
    transport = httpx.ASGITransport(app=create_app(catalog))
    async with httpx.AsyncClient(transport=transport, base_url="http://catalog.test") as client:
        body = gzip.compress(json.dumps(raw_event("START", RUN_A, outputs=[big])).encode())
        reply = await client.post("/api/v1/lineage", content=body, headers={
            "Authorization": f"Bearer {KEY}", "Content-Encoding": "gzip"})
        assert (reply.status_code, reply.json()["error"]["code"]) == (413, "body_too_large")
        assert "'schema'" in reply.json()["error"]["message"]
        assert "s3://lake/big" in reply.json()["error"]["message"]
        in_url = await client.post(f"/api/v1/lineage?token={KEY}",
                                   json=raw_event("START", RUN_A))
        assert (in_url.status_code, in_url.json()["error"]["code"]) == (400, "invalid_input")
        parent = raw_event("START", RUN_A, run={"runId": RUN_A, "facets": {"parent": {
            "run": {"runId": "not-a-uuid"}, "job": {"namespace": NS, "name": "dag"}}}})
        refused = await client.post("/api/v1/lineage", json=parent,
                                    headers={"Authorization": f"Bearer {KEY}"})
        assert refused.status_code == 422
    assert catalog.find_jobs().items == []
    assert catalog.store.lineage_events(run_id=RUN_A) == []
    assert catalog.store.find_datasets().items == []


@pytest.mark.slow
def test_datasets_and_runs_on_the_command_line(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from test_cli import Cli

    monkeypatch.chdir(tmp_path)  # the secret file is found where the CLI made it
    cli = Cli(tmp_path)
    assert cli("init").code == 0
    with Catalog.open(cli.db, openlineage_key=KEY) as opened:
        ingest(opened, raw_event("COMPLETE", RUN_A, outputs=[{"namespace": "s3://lake",
                                                             "name": "x"}]), KEY)
        ingest(opened, raw_event("START", RUN_B, inputs=[{"namespace": "s3://lake",
                                                         "name": "x"}]), KEY)
    listed = cli.json("openlineage", "datasets", "--namespace", "s3://lake")
    assert [(d["namespace"], d["name"]) for d in listed["datasets"]] == [("s3://lake", "x")]
    found = cli.json("openlineage", "dataset", "s3://lake", "x")
    assert len(found["written_by"]) == len(found["read_by"]) == 1
    assert cli.json("openlineage", "run", RUN_B)["state"] == "RUNNING"
    assert "s3://lake/x" in cli.human("openlineage", "run", RUN_B)
    missing = cli("openlineage", "run", "11111111-1111-1111-1111-111111111111", "--json")
    assert missing.error()["code"] == "run_not_found"
    assert cli("openlineage", "run", "not-a-uuid", "--json").error()["code"] == "invalid_input"


def test_column_lineage_is_a_derivation_in_prov(catalog: Catalog) -> None:
    from catalog.prov import to_prov

    column_lineage = {"fields": {"flux": {"inputFields": [
        {"namespace": "s3://lake", "name": "raw", "field": "counts"}]}}}
    ingest(catalog, raw_event("COMPLETE", RUN_A, inputs=[{"namespace": "s3://lake",
                                                          "name": "raw"}],
                              outputs=[{"namespace": "s3://lake", "name": "cal",
                                        "facets": {"columnLineage": column_lineage}}]), KEY)
    assert catalog.get_entity(dataset("cal")).derived_from == [dataset("raw")]
    document = json.loads(to_prov(catalog.lineage(dataset("cal"), "up", 4)).serialize(
        format="json"))
    assert [(r["prov:generatedEntity"], r["prov:usedEntity"])
            for r in document["wasDerivedFrom"].values()] == [
        (f"catalog:{dataset('cal')}", f"catalog:{dataset('raw')}")]


def test_the_store_keeps_events_once_and_pages_datasets(catalog: Catalog) -> None:
    store = catalog.store
    doc = {"event_id": "e1", "run_id": RUN_A, "parent_run_id": RUN_B, "job": "j",
           "datasets": [dataset("a")], "event": "{}"}
    assert store.add_lineage_event(doc) is True
    assert store.add_lineage_event({**doc, "run_id": RUN_B}) is False  # its event_id is kept
    assert store.add_lineage_event({**doc, "event_id": "e2"}) is True
    assert [e["event_id"] for e in store.lineage_events(run_id=RUN_A)] == ["e1", "e2"]
    assert [e["event_id"] for e in store.lineage_events(run_id=RUN_A, limit=1)] == ["e2"]
    assert [e["event_id"] for e in store.lineage_events(parent_run_id=RUN_B)] == ["e1", "e2"]
    assert [e["event_id"] for e in store.lineage_events(dataset=dataset("a"))] == ["e1", "e2"]
    assert store.lineage_events(job="other") == []
    for second, name in enumerate(("c", "a", "b")):  # three events: three times
        ingest(catalog, raw_event("START", RUN_A, second, inputs=[{"namespace": "s3://lake",
                                                                   "name": name}]), KEY)
    ingest(catalog, raw_event("START", RUN_B, inputs=[{"namespace": "gs://other",
                                                       "name": "z"}]), KEY)
    first = store.find_datasets("s3://lake", limit=2)
    assert [d["name"] for d in first.items] == ["a", "b"]
    assert first.next is not None
    rest = store.find_datasets("s3://lake", limit=2, cursor=first.next)
    assert ([d["name"] for d in rest.items], rest.next) == (["c"], None)
    assert [d["namespace"] for d in store.find_datasets().items] == [
        "gs://other", "s3://lake", "s3://lake", "s3://lake"]


def test_a_product_no_run_wrote_is_not_joined() -> None:
    url = f"mongomock://alone-{uuid.uuid4().hex}"
    product = typed_uuid(UUIDType.product, "s3://lake/alone")
    doc = {"uuid": product, "kind": "product", "name": "alone", "namespace": "s3://lake",
           "uri": "s3://lake/alone", "created": "2026-11-01T00:00:00.000Z"}
    first = MongoStore.from_url(url)
    first.upsert_entities([doc])
    first.close()
    reopened = MongoStore.from_url(url)
    try:
        assert reopened.get_entity(product) == doc
    finally:
        reopened.close()
