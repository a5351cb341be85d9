"""OpenLineage ingestion: POST /api/v1/lineage in process on every store, then the real client
(``openlineage-python``) against a real ``catalog serve`` process, retries included."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import nominal_time_run
from openlineage.client.serde import Serde
from openlineage.client.transport.http import (
    ApiKeyTokenProvider,
    HttpCompression,
    HttpConfig,
    HttpTransport,
)

from catalog import Catalog
from catalog.errors import ConfigurationError, EntityNotFound, TokenInvalid
from catalog.identifiers import UUIDType, job_uuid, pipeline_uuid, typed_uuid
from catalog.openlineage import event_id, ingest
from catalog.web.app import create_app

KEY = "ol-ingestion-key-0123456789abcdef"
RUN = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
OTHER_RUN = "0189c6e2-5b7e-7c3a-9d3e-1f2a3b4c5d6e"
PRODUCER = "https://github.com/example/pipelines/tree/1.0"
NAMESPACE, NAME = "airflow://lab", "nightly.reduce"
PARENT = {"run": {"runId": OTHER_RUN}, "job": {"namespace": NAMESPACE, "name": "nightly"}}
NOMINAL = {"nominalStartTime": "2026-11-21T00:00:00Z"}


def at(second: int) -> str:
    return f"2026-11-21T12:00:{second:02d}.000Z"


def run_event(event_type: str | None, second: int = 0, run_id: str = RUN, **fields: Any) -> Any:
    """A RunEvent as a client serialises it, facets and all."""
    event: dict[str, Any] = {
        "eventTime": at(second), "producer": PRODUCER,
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
        "run": {"runId": run_id, "facets": {}},
        "job": {"namespace": NAMESPACE, "name": NAME,
                "facets": {"jobType": {"jobType": "TASK", "integration": "AIRFLOW"}}},
        "inputs": [], "outputs": [],
    }
    if event_type is not None:
        event["eventType"] = event_type
    event.update(fields)
    return event


def dataset(namespace: str, name: str) -> dict[str, Any]:
    return {"namespace": namespace, "name": name,
            "facets": {"schema": {"fields": [{"name": "flux", "type": "double"}]}}}


def the_pipeline() -> str:
    return pipeline_uuid(f"{NAMESPACE}/{NAME}", None,
                         [{"openlineage": {"namespace": NAMESPACE, "name": NAME}}])


def the_job(run_id: str = RUN) -> str:
    return job_uuid(the_pipeline(), [], {"openlineage": {"runId": run_id}})


def reference(uri: str) -> str:
    return typed_uuid(UUIDType.reference, uri)


def product(uri: str) -> str:
    return typed_uuid(UUIDType.product, uri)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- in process, every store ------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def catalog(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Catalog]:
    for name in list(os.environ):
        if name.startswith("CATALOG_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    opened, _ = Catalog.init(store_url, openlineage_key=KEY)
    yield opened
    opened.close()


@pytest.fixture
async def client(catalog: Catalog) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(catalog))
    async with httpx.AsyncClient(transport=transport, base_url="http://catalog.test") as opened:
        yield opened


async def send(client: httpx.AsyncClient, event: Any, token: str | None = KEY) -> httpx.Response:
    headers = bearer(token) if token is not None else {}
    return await client.post("/api/v1/lineage", json=event, headers=headers)


def snapshot(catalog: Catalog) -> dict[str, Any]:
    """Everything a refused request must leave as it was."""
    return {
        "pipelines": catalog.list_pipelines(limit=1000).items,
        "jobs": catalog.find_jobs(limit=1000).items,
        "histories": [catalog.get_job(j["uuid"]).model_dump()["history"]
                      for j in catalog.find_jobs(limit=1000).items],
        "audit": [entry.model_dump() for entry in catalog.audit_log(limit=1000)],
    }


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("event_types", "events", "state"),
    [
        (["START"], ["run"], "RUNNING"),
        (["START", "RUNNING"], ["run", "update"], "RUNNING"),
        (["START", "OTHER"], ["run", "update"], "RUNNING"),
        (["START", "RUNNING", "COMPLETE"], ["run", "update", "finish"], "FINISHED"),
        (["START", "FAIL"], ["run", "fail"], "FAILED"),
        (["START", "ABORT"], ["run", "fail"], "FAILED"),
        ([None], ["update"], "CREATED"),
        (["RUNNING"], ["run"], "RUNNING"),
        # A run whose START never came still ends: COMPLETE and FAIL imply that it ran...
        (["COMPLETE"], ["run", "finish"], "FINISHED"),
        (["FAIL"], ["run", "fail"], "FAILED"),
        (["RUNNING", "COMPLETE"], ["run", "finish"], "FINISHED"),
        # ...an ABORT does not: the run may have been stopped before it started.
        (["ABORT"], ["fail"], "FAILED"),
    ],
)
async def test_each_event_type_maps_to_its_event(
    client: httpx.AsyncClient, catalog: Catalog, event_types: list[str | None],
    events: list[str], state: str,
) -> None:
    replies = []
    for second, event_type in enumerate(event_types):
        reply = await send(client, run_event(event_type, second))
        assert reply.status_code == 200, reply.text
        replies.append(reply.json())

    job = catalog.get_job(the_job())
    assert [entry.name for entry in job.history] == ["create", *events]
    assert job.state == state
    assert job.pipeline_uuid == the_pipeline()
    assert len({entry.event_id for entry in job.history}) == len(job.history)
    last_type = event_types[-1] or "OTHER"
    assert replies[-1] == {
        "uuid": the_job(), "state": state, "last_event": events[-1],
        "event_id": event_id(RUN, last_type, at(len(event_types) - 1)), "duplicate": False,
        "pipeline_uuid": the_pipeline(), "applied": True,
    }
    assert job.history[-1].data == {"eventType": last_type, "eventTime": at(len(event_types) - 1),
                                    "producer": PRODUCER}
    assert {entry.source for entry in job.history} == {"api"}


@pytest.mark.anyio
async def test_the_job_is_a_pipeline_and_the_run_a_job(
    client: httpx.AsyncClient, catalog: Catalog
) -> None:
    first = (await send(client, run_event("START", run_id=RUN.upper()))).json()
    second = (await send(client, run_event("START", run_id=OTHER_RUN))).json()

    pipeline = catalog.get_pipeline(the_pipeline())
    assert (pipeline.name, pipeline.version) == (f"{NAMESPACE}/{NAME}", None)
    assert pipeline.components == [{"openlineage": {"namespace": NAMESPACE, "name": NAME}}]
    assert catalog.list_pipelines().items == [pipeline.model_dump(mode="json")]
    # One spelling per runId: the upper-case runId is the same run as its lower-case form.
    assert (first["uuid"], second["uuid"]) == (the_job(RUN), the_job(OTHER_RUN))
    job = catalog.get_job(the_job())
    assert job.data == {"openlineage": {"runId": RUN}}
    assert (job.agent, job.generated_by) == (PRODUCER, [the_pipeline()])
    assert {j["uuid"] for j in catalog.find_jobs(pipeline=f"{NAMESPACE}/{NAME}").items} == {
        the_job(RUN), the_job(OTHER_RUN)}


@pytest.mark.anyio
async def test_history_keeps_little_of_the_event(
    client: httpx.AsyncClient, catalog: Catalog
) -> None:
    facets = {"nominalTime": NOMINAL, "parent": PARENT,
              "spark_properties": {"properties": {"spark.master": "local"}}}
    event = run_event("START", run={"runId": RUN, "facets": facets},
                      inputs=[dataset("s3://raw", "night/1.fits")])
    assert (await send(client, event)).status_code == 200
    assert catalog.get_job(the_job()).history[-1].data == {
        "eventType": "START", "eventTime": at(0), "producer": PRODUCER,
        "nominalTime": NOMINAL, "parent": PARENT,
    }


@pytest.mark.anyio
@pytest.mark.parametrize(
    "event_types", [["START"], ["START", "RUNNING"], ["COMPLETE"], ["START", "COMPLETE"], [None]]
)
async def test_a_retried_event_is_applied_once(
    client: httpx.AsyncClient, catalog: Catalog, event_types: list[str | None]
) -> None:
    for second, event_type in enumerate(event_types):
        first = await send(client, run_event(event_type, second))
        before = catalog.get_job(the_job())
        again = await send(client, run_event(event_type, second))
        assert again.status_code == 200
        assert again.json() == {**first.json(), "duplicate": True}
        assert catalog.get_job(the_job()) == before


@pytest.mark.anyio
async def test_one_instant_spelled_two_ways_is_one_event(
    client: httpx.AsyncClient, catalog: Catalog
) -> None:
    await send(client, run_event("START", eventTime="2026-11-21T12:00:00Z"))
    again = await send(client, run_event("START", eventTime="2026-11-21T13:00:00.000+01:00"))
    assert again.json()["duplicate"] is True
    assert [e.name for e in catalog.get_job(the_job()).history] == ["create", "run"]


@pytest.mark.anyio
async def test_datasets_are_linked_to_the_run(client: httpx.AsyncClient, catalog: Catalog) -> None:
    inputs = [dataset("s3://raw", "night/1.fits"), dataset("postgres://db:5432", "lab.flats")]
    outputs = [dataset("s3://products", "night/1.cube")]
    await send(client, run_event("START", inputs=inputs[:1]))
    await send(client, run_event("COMPLETE", 1, inputs=inputs, outputs=outputs))
    # Another run writing the same dataset: the dataset was generated by both.
    await send(client, run_event("COMPLETE", 2, run_id=OTHER_RUN, outputs=outputs))

    job = catalog.get_job(the_job())
    assert job.acted_on == [reference("s3://raw/night/1.fits"),
                            reference("postgres://db:5432/lab.flats")]
    assert job.version == len(job.history) == 3
    cube = catalog.get_entity(reference("s3://products/night/1.cube"))
    assert (cube.kind, cube.namespace, cube.name, cube.uri) == (
        "reference", "s3://products", "night/1.cube", "s3://products/night/1.cube")
    assert cube.generated_by == [the_job(RUN), the_job(OTHER_RUN)]
    flats = catalog.get_entity(reference("postgres://db:5432/lab.flats"))
    assert (flats.kind, flats.uri, flats.generated_by) == (
        "reference", "postgres://db:5432/lab.flats", [])
    assert catalog.get_job(the_job(OTHER_RUN)).acted_on == []
    with pytest.raises(EntityNotFound):  # one record per dataset: never a product beside it
        catalog.get_entity(product("s3://products/night/1.cube"))


@pytest.mark.anyio
async def test_a_start_after_complete_is_merged_not_refused(
    client: httpx.AsyncClient, catalog: Catalog
) -> None:
    await send(client, run_event("START"))
    await send(client, run_event("COMPLETE", 1))
    late = run_event("START", 2, outputs=[dataset("s3://products", "late.cube")])

    reply = await send(client, late)

    assert reply.status_code == 200, reply.text
    assert (reply.json()["state"], reply.json()["applied"]) == ("FINISHED", False)
    assert catalog.get_job(the_job()).state == "FINISHED"
    (refusal,) = catalog.audit_log(the_job())
    assert (refusal.name, refusal.code, refusal.event_id) == (
        "run", "event_not_allowed", event_id(RUN, "START", at(2)))
    late_cube = catalog.get_entity(reference("s3://products/late.cube"))
    assert late_cube.generated_by == [the_job()]


@pytest.mark.anyio
async def test_other_after_complete_links_its_datasets_and_leaves_the_job_as_it_is(
    client: httpx.AsyncClient, catalog: Catalog
) -> None:
    """OpenLineage lets OTHER add metadata after a run ended; the state machine takes no update
    then, so the job stays as it is, the event goes to the audit log and its datasets are
    linked, and the producer is answered 200 (applied: false); a resend is a duplicate."""
    await send(client, run_event("COMPLETE"))
    before = catalog.get_job(the_job())
    late = run_event("OTHER", 1, inputs=[dataset("s3://raw", "late.fits")],
                     outputs=[dataset("s3://products", "late.cube")])

    replies = [await send(client, late) for _ in range(2)]

    for reply, duplicate in zip(replies, (False, True), strict=True):
        assert reply.status_code == 200, reply.text
        assert reply.json() == {
            "uuid": the_job(), "state": "FINISHED", "last_event": "finish",
            "event_id": event_id(RUN, "OTHER", at(1)), "duplicate": duplicate,
            "pipeline_uuid": the_pipeline(), "applied": False}
    after = catalog.get_job(the_job())
    assert (after.state, after.version, after.history) == (
        before.state, before.version, before.history)
    assert after.acted_on == [reference("s3://raw/late.fits")]
    assert catalog.get_entity(reference("s3://products/late.cube")).generated_by == [the_job()]
    refusals = catalog.audit_log(the_job())
    assert [(r.name, r.code, r.data["eventType"]) for r in refusals] == [
        ("update", "event_not_allowed", "OTHER")] * 2


@pytest.mark.anyio
async def test_running_after_complete_is_kept_and_the_state_stays(
    client: httpx.AsyncClient, catalog: Catalog
) -> None:
    await send(client, run_event("COMPLETE"))
    reply = await send(client, run_event("RUNNING", 1))
    assert (reply.status_code, reply.json()["state"], reply.json()["applied"]) == (
        200, "FINISHED", False)


def _malformed(**changes: Any) -> Any:
    event = run_event("START", outputs=[dataset("s3://products", "x")])
    for path, value in changes.items():
        target = event
        *parents, last = path.split("__")
        for parent in parents:
            target = target[parent]
        if value is ...:
            del target[last]
        else:
            target[last] = value
    return event


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("event", "token", "status", "code"),
    [
        (run_event("START"), None, 401, "token_required"),
        (run_event("START"), "", 401, "token_required"),
        (run_event("START"), "not-the-key", 403, "token_invalid"),
        (run_event("START"), KEY + "x", 403, "token_invalid"),
        ("not an object", KEY, 422, "schema_violation"),
        ([run_event("START")], KEY, 422, "schema_violation"),
        (_malformed(run=...), KEY, 422, "schema_violation"),
        (_malformed(job=...), KEY, 422, "schema_violation"),
        (_malformed(eventTime=...), KEY, 422, "schema_violation"),
        (_malformed(eventTime="yesterday"), KEY, 422, "schema_violation"),
        (_malformed(eventTime="2026-11-21"), KEY, 422, "schema_violation"),
        (_malformed(eventTime=1763726400), KEY, 422, "schema_violation"),
        (_malformed(eventTime="0001-01-01T00:00:00+05:00"), KEY, 422, "schema_violation"),
        (_malformed(eventTime="2026-11-21T12:00:00+25:00"), KEY, 422, "schema_violation"),
        (_malformed(eventType="FINISHED"), KEY, 422, "schema_violation"),
        (_malformed(eventType="start"), KEY, 422, "schema_violation"),
        (_malformed(run__runId="run-1"), KEY, 422, "schema_violation"),
        (_malformed(run__runId=12), KEY, 422, "schema_violation"),
        (_malformed(run__facets=[]), KEY, 422, "schema_violation"),
        (_malformed(job__name=""), KEY, 422, "schema_violation"),
        (_malformed(job__namespace=None), KEY, 422, "schema_violation"),
        (_malformed(job__name="x" * 300), KEY, 422, "schema_violation"),
        (_malformed(inputs={"namespace": "s3://raw", "name": "a"}), KEY, 422,
         "schema_violation"),
        (_malformed(outputs=[{"namespace": "s3://products"}]), KEY, 422, "schema_violation"),
        (_malformed(outputs=["s3://products/x"]), KEY, 422, "schema_violation"),
    ],
)
async def test_refused_requests_change_nothing(
    client: httpx.AsyncClient, catalog: Catalog, event: Any, token: str | None, status: int,
    code: str,
) -> None:
    await send(client, run_event("START", run_id=OTHER_RUN))  # something to leave unchanged
    before = snapshot(catalog)
    reply = await send(client, event, token)
    assert reply.status_code == status, reply.text
    assert reply.json() == {"error": {"code": code, "message": reply.json()["error"]["message"]}}
    assert KEY not in reply.text
    assert snapshot(catalog) == before
    with pytest.raises(EntityNotFound):
        catalog.get_entity(reference("s3://products/x"))
    assert catalog.store.lineage_events(run_id=RUN) == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "status", "code"),
    [(b"{not json", 400, "invalid_data"), (b"", 400, "invalid_data"),
     (b'{"eventTime": NaN}', 400, "invalid_data")],
)
async def test_a_body_that_is_not_json_is_a_400(
    client: httpx.AsyncClient, catalog: Catalog, body: bytes, status: int, code: str
) -> None:
    before = snapshot(catalog)
    reply = await client.post("/api/v1/lineage", content=body, headers=bearer(KEY))
    assert (reply.status_code, reply.json()["error"]["code"]) == (status, code)
    assert snapshot(catalog) == before


@pytest.mark.anyio
async def test_the_admin_token_is_accepted_too(client: httpx.AsyncClient, catalog: Catalog) -> None:
    reply = await send(client, run_event("START"), catalog.admin_token())
    assert reply.status_code == 200
    job_token = catalog.job_token(the_job())
    refused = await send(client, run_event("COMPLETE", 1), job_token)  # a job's token is not
    assert refused.status_code == 403
    assert catalog.get_job(the_job()).state == "RUNNING"


@pytest.mark.anyio
async def test_without_an_ingestion_key_only_the_admin_token_is_accepted(
    catalog: Catalog,
) -> None:
    keyless = Catalog(catalog.store, catalog.settings.model_copy(update={"openlineage_key": ""}))
    transport = httpx.ASGITransport(app=create_app(keyless))
    async with httpx.AsyncClient(transport=transport, base_url="http://catalog.test") as client:
        assert (await send(client, run_event("START"), "")).status_code == 401
        assert (await send(client, run_event("START"), KEY)).status_code == 403
        assert (await send(client, run_event("START"), catalog.admin_token())).status_code == 200


def test_a_short_ingestion_key_is_a_configuration_error(catalog: Catalog) -> None:
    with pytest.raises(ConfigurationError) as refused:
        Catalog.open(catalog.settings.db, openlineage_key="short")
    assert "short" not in refused.value.message


@pytest.mark.parametrize("token", [12, ["a"], "\ud800"], ids=["number", "list", "surrogate"])
def test_a_token_that_is_not_text_is_refused(catalog: Catalog, token: Any) -> None:
    with pytest.raises(TokenInvalid):
        ingest(catalog, run_event("START"), token)
    assert catalog.find_jobs().items == []


def test_the_library_call_audits_a_refused_event(catalog: Catalog) -> None:
    ingest(catalog, run_event("ABORT"), KEY, source="python")
    assert ingest(catalog, run_event("RUNNING", 1), KEY, source="python")["applied"] is False
    (refusal,) = catalog.audit_log(the_job())
    assert (refusal.name, refusal.source, refusal.data["eventType"]) == ("update", "python",
                                                                         "RUNNING")


# -- end to end: the real client against a real server ---------------------------------------

CATALOG_SCRIPT = Path(sys.executable).parent / "catalog"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``catalog serve`` on a fresh catalog with an ingestion key; stopped by its PID."""
    directory = tmp_path_factory.mktemp("openlineage-server")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
    env["CATALOG_OPENLINEAGE_KEY"] = KEY
    subprocess.run([str(CATALOG_SCRIPT), "init"], cwd=directory, env=env, check=True,
                   capture_output=True, timeout=60)
    base_url = f"http://127.0.0.1:{free_port()}"
    with (directory / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [str(CATALOG_SCRIPT), "serve", "--port", base_url.rsplit(":", 1)[1]],
            cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (directory / "server.log").read_text()
            try:
                if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        yield base_url
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


class LossyProxy:
    """Forwards every POST to the server, but answers the first ``lose`` of them with a 503, as
    if the server's reply had been lost: the event is applied, and the client must retry."""

    def __init__(self, upstream: str, lose: int) -> None:
        self.lose = lose
        self.replies: list[tuple[int, Any]] = []  # what the server answered, each attempt
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() in ("authorization", "content-type")}
                answer = httpx.post(upstream + self.path, content=body, headers=headers)
                proxy.replies.append((answer.status_code, answer.json()))
                status, payload = answer.status_code, answer.content
                if proxy.lose > 0:
                    proxy.lose -= 1
                    status, payload = 503, b'{"error": "reply lost"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                       kwargs={"poll_interval": 0.05})
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def openlineage_client(url: str, key: str = KEY,
                       compression: HttpCompression | None = None) -> OpenLineageClient:
    """The real client, over HTTP, retrying 5xx replies quickly (urllib3's Retry settings)."""
    retry = {"total": 3, "connect": 3, "read": 3, "status": 3, "backoff_factor": 0.01,
             "status_forcelist": [500, 502, 503, 504], "allowed_methods": ["POST"]}
    config = HttpConfig(url=url, endpoint="api/v1/lineage", timeout=10.0,
                        auth=ApiKeyTokenProvider({"apiKey": key}), retry=retry,
                        compression=compression)
    return OpenLineageClient(transport=HttpTransport(config))


def client_event(state: RunState, run_id: str, **fields: Any) -> RunEvent:
    """A RunEvent built with the client's own classes."""
    nominal = nominal_time_run.NominalTimeRunFacet(nominalStartTime=at(0))
    return RunEvent(eventType=state, eventTime=datetime.now(UTC).isoformat(), producer=PRODUCER,
                    run=Run(runId=run_id, facets={"nominalTime": nominal}),
                    job=Job(namespace=NAMESPACE, name=NAME), **fields)


def job_of_run(base_url: str, run_id: str) -> dict[str, Any]:
    """The run's job, found as a user would: by pipeline name, then by UUID."""
    jobs = httpx.get(f"{base_url}/jobs", params={"pipeline": f"{NAMESPACE}/{NAME}",
                                                 "limit": 1000}).json()["jobs"]
    (uuid_of_run,) = [j["uuid"] for j in jobs if j["data"] == {"openlineage": {"runId": run_id}}]
    assert uuid_of_run == the_job(run_id)
    reply = httpx.get(f"{base_url}/jobs/{uuid_of_run}")
    assert reply.status_code == 200
    return dict(reply.json())


@pytest.mark.slow
def test_the_real_client_drives_a_run(server: str) -> None:
    run_id = str(uuid.uuid4())
    client = openlineage_client(server)
    try:
        client.emit(client_event(RunState.START, run_id, inputs=[
            InputDataset(namespace="s3://raw", name="night/1.fits")]))
        running = client_event(RunState.RUNNING, run_id)
        client.emit(running)
        client.emit(running)  # the same event again: applied once
        client.emit(client_event(RunState.COMPLETE, run_id, outputs=[
            OutputDataset(namespace="s3://products", name="night/1.cube")]))
    finally:
        client.close()

    job = job_of_run(server, run_id)
    assert job["state"] == "FINISHED"
    assert [entry["name"] for entry in job["history"]] == ["create", "run", "update", "finish"]
    assert [entry["data"]["eventType"] for entry in job["history"][1:]] == [
        "START", "RUNNING", "COMPLETE"]
    assert job["history"][1]["data"]["nominalTime"]["nominalStartTime"] == at(0)
    assert job["agent"] == PRODUCER
    assert job["acted_on"] == [reference("s3://raw/night/1.fits")]
    assert len({entry["event_id"] for entry in job["history"]}) == 4


@pytest.mark.slow
def test_the_real_clients_retries_apply_an_event_once(server: str) -> None:
    run_id = str(uuid.uuid4())
    proxy = LossyProxy(server, lose=2)
    client = openlineage_client(proxy.url)
    try:
        start = client_event(RunState.START, run_id)
        client.emit(start)  # the server applies it; its reply is lost twice; the client retries
        assert [status for status, _ in proxy.replies] == [200, 200, 200]
        assert [reply["duplicate"] for _, reply in proxy.replies] == [False, True, True]
        assert len({reply["event_id"] for _, reply in proxy.replies}) == 1
        proxy.lose = 1
        client.emit(client_event(RunState.COMPLETE, run_id))
        assert [reply["duplicate"] for _, reply in proxy.replies[3:]] == [False, True]
        client.emit(start)  # a START after COMPLETE, but the same START: a duplicate
        assert proxy.replies[-1] == (200, {**proxy.replies[0][1], "duplicate": True})
    finally:
        client.close()
        proxy.close()

    job = job_of_run(server, run_id)
    assert [entry["name"] for entry in job["history"]] == ["create", "run", "finish"]
    assert job["state"] == "FINISHED"


@pytest.mark.slow
def test_the_real_client_with_a_wrong_key_is_refused_and_not_retried(server: str) -> None:
    run_id = str(uuid.uuid4())
    proxy = LossyProxy(server, lose=0)
    client = openlineage_client(proxy.url, key="a-key-the-server-does-not-know")
    try:
        with pytest.raises(requests.HTTPError) as refused:
            client.emit(client_event(RunState.START, run_id))
    finally:
        client.close()
        proxy.close()
    assert refused.value.response.status_code == 403
    assert proxy.replies == [(403, {"error": {"code": "token_invalid", "message": (
        "the token is neither the OpenLineage ingestion key nor the admin token")}})]
    jobs = httpx.get(f"{server}/jobs", params={"limit": 1000}).json()["jobs"]
    assert all(j["data"] != {"openlineage": {"runId": run_id}} for j in jobs)


def test_events_serialised_by_the_client_are_accepted_as_sent(catalog: Catalog) -> None:
    """What the client puts on the wire (schemaURL, _producer, empty facets...) validates."""
    event = client_event(RunState.START, RUN, inputs=[
        InputDataset(namespace="s3://raw", name="night/1.fits")])
    outcome = ingest(catalog, json.loads(Serde.to_json(event)), KEY)
    assert (outcome["uuid"], outcome["state"]) == (the_job(), "RUNNING")
