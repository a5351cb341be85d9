"""The HTTP service in process (httpx's ASGI transport): every status code, one error shape.

Every refusal is checked three ways: the exact status and ``{"error": {"code", "message"}}``
body, the job document (history and version included) unchanged, and the audit log grown by
exactly one entry with the refusal's code where the request reached a job.
"""

from __future__ import annotations

import ast
import inspect
import json
import logging
import os
import textwrap
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import MONGO_BACKENDS
from fastapi.routing import APIRoute

from catalog import Catalog, ManagedPipelineJob, __version__
from catalog import tokens as tokens_module
from catalog.identifiers import UUIDType
from catalog.models import Pipeline
from catalog.tokens import Keys
from catalog.web import create_app

KEYS = Keys(b"x" * 32, b"y" * 32)
BOGUS_TOKEN = "0123456789abcdef" * 4  # the shape of a token, valid for nothing
DATA = {"parameters": {"window": 5}, "inputs": ["file://raw/a.fits"]}
BACKENDS = ["sqlite", *MONGO_BACKENDS]
CREATED_ALLOWED = "cancel, create, fail, queue, reset, resource, run, update, wait"
TAPIS_STATUSES = (
    "ARCHIVING, ARCHIVING_FAILED, ARCHIVING_FINISHED, BLOCKED, CLEANING_UP, FAILED, FINISHED, "
    "HEARTBEAT, KILLED, PAUSED, PENDING, PROCESSING_INPUTS, QUEUED, RUNNING, STAGED, "
    "STAGING_INPUTS, STAGING_JOB, STOPPED, SUBMITTING"
)
KNOWN_EVENTS = (
    "cancel, create, fail, finalize, finish, index, indexed, queue, ready, reject, reset, "
    "resource, retire, retry, run, update, validate, validated, wait"
)
# FastAPI warns while building /openapi.json because GET and HEAD of /version and /health share
# one operationId; test_openapi_operation_ids_are_unique shows that bug, the others look past it.
DUPLICATE_OPERATION_ID = "ignore:Duplicate Operation ID:UserWarning"

Send = Callable[[], Awaitable[httpx.Response]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_catalog(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    database_url: Callable[[str], str],
) -> Iterator[Callable[..., Catalog]]:
    """Open catalogs on the test's backend (archive root under ``tmp_path``); all closed after."""
    for name in list(os.environ):
        if name.startswith("CATALOG_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    opened: list[Catalog] = []

    def open_one(**overrides: Any) -> Catalog:
        catalog = Catalog.open(database_url(backend), keys=KEYS, **overrides)
        opened.append(catalog)
        return catalog

    yield open_one
    for catalog in opened:
        catalog.close()


@pytest.fixture
def catalog(open_catalog: Callable[..., Catalog]) -> Catalog:
    return open_catalog()


def asgi_client(catalog: Catalog) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(catalog)),
                             base_url="http://test")


@pytest.fixture
async def client(catalog: Catalog) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(catalog) as opened:
        yield opened


@pytest.fixture
def pipeline(catalog: Catalog) -> Pipeline:
    added, _ = catalog.add_pipeline("align", "1.0", [{"image": "align:1.0"}])
    return added


def make_job(catalog: Catalog, pipeline: str = "align", data: dict[str, Any] | None = None,
             **options: Any) -> ManagedPipelineJob:
    job = ManagedPipelineJob(catalog, pipeline, DATA if data is None else data,
                             measurement_id=options.pop("measurement_id", "measurement.lab.1"),
                             **options)
    job.setup()
    return job


@pytest.fixture
def job(catalog: Catalog, pipeline: Pipeline) -> ManagedPipelineJob:
    """A job in state CREATED."""
    return make_job(catalog)


@pytest.fixture
def other_job(catalog: Catalog, pipeline: Pipeline) -> ManagedPipelineJob:
    return make_job(catalog, data={"other": True})


def events_url(uuid: str, token: str | None = None, **query: str) -> str:
    params = ({"token": token} if token is not None else {}) | query
    return f"/jobs/{uuid}/events" + (f"?{httpx.QueryParams(params)}" if params else "")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def snapshot(catalog: Catalog, uuid: str) -> dict[str, Any]:
    """The job document (history and version included) a refused request must leave alone."""
    return catalog.get_job(uuid).model_dump()


def audit_codes(catalog: Catalog, uuid: str) -> Counter[str]:
    return Counter(entry.code for entry in catalog.audit_log(uuid, limit=1000))


def all_job_uuids(catalog: Catalog) -> list[str]:
    return sorted(doc["uuid"] for doc in catalog.find_jobs(limit=1000).items)


def anonymous_counts(catalog: Catalog) -> Counter[str]:
    """Refusals of senders without a valid token, counted by code (``catalog.refusals``)."""
    counts: Counter[str] = Counter()
    for entry in catalog.anonymous_refusals(limit=1000):
        counts[entry.code] += entry.data["count"]
    return counts


ANONYMOUS_CODES = {"token_required", "token_invalid"}


async def assert_refused(catalog: Catalog, uuid: str, send: Send, status: int, code: str,
                         message: str, audited: bool = True) -> httpx.Response:
    """Send a request that must be refused and check the refusal changed nothing.

    A refusal of a sender without a valid token is counted with the others of its address,
    not written to the job's audit log one by one; every other refusal is written there."""
    before, audit_before = snapshot(catalog, uuid), audit_codes(catalog, uuid)
    anonymous_before = anonymous_counts(catalog)
    response = await send()
    assert (response.status_code, response.json()) == (status, error(code, message))
    assert snapshot(catalog, uuid) == before
    added = audit_codes(catalog, uuid) - audit_before
    counted = anonymous_counts(catalog) - anonymous_before
    if audited and code in ANONYMOUS_CODES:
        assert (added, counted) == (Counter(), Counter({code: 1}))
    else:
        assert (added, counted) == (Counter({code: 1}) if audited else Counter(), Counter())
    return response


# -- webhook: accepted events ------------------------------------------------------------------


@pytest.mark.anyio
async def test_event_answers_exactly_the_outcome(
    catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob
) -> None:
    response = await client.post(events_url(job.uuid, job.token), json={"name": "run"})

    history = catalog.get_job(job.uuid).history
    assert response.status_code == 200
    assert response.json() == {"uuid": job.uuid, "state": "RUNNING", "last_event": "run",
                               "event_id": history[-1].event_id, "duplicate": False}
    assert [(e.name, e.state, e.source) for e in history] == [
        ("create", "CREATED", "python"), ("run", "RUNNING", "webhook")]


@pytest.mark.anyio
async def test_token_in_the_authorization_header(
    catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob
) -> None:
    await client.post(events_url(job.uuid, job.token), json={"name": "run"})
    response = await client.post(events_url(job.uuid), headers=bearer(job.token),
                                 json={"name": "finish", "data": {"exit": 0}})

    assert response.status_code == 200
    assert response.json()["state"] == "FINISHED"
    assert catalog.get_job(job.uuid).history[-1].data == {"exit": 0}


@pytest.mark.anyio
async def test_build_webhook_url_works_verbatim(
    catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob
) -> None:
    url = urlsplit(job.build_webhook())
    response = await client.post(f"{url.path}?{url.query}", json={"name": "run"})

    assert url.path == f"/jobs/{job.uuid}/events"
    assert response.status_code == 200
    assert response.json()["state"] == "RUNNING"


@pytest.mark.anyio
async def test_webhook_url_from_post_jobs_works_verbatim(
    catalog: Catalog, client: httpx.AsyncClient, pipeline: Pipeline
) -> None:
    created = await client.post("/jobs", headers=bearer(catalog.admin_token()),
                                json={"pipeline": "align", "data": {"n": 1}})
    url = urlsplit(created.json()["webhook"])
    response = await client.post(f"{url.path}?{url.query}", json={"name": "run"})

    assert (response.status_code, response.json()["state"]) == (200, "RUNNING")


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["body", "idempotency-key"])
async def test_event_id_applies_once(
    catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob, where: str
) -> None:
    def send(name: str) -> Awaitable[httpx.Response]:
        if where == "body":
            return client.post(events_url(job.uuid, job.token),
                               json={"name": name, "event_id": "delivery-1"})
        return client.post(events_url(job.uuid, job.token), json={"name": name},
                           headers={"Idempotency-Key": "delivery-1"})

    first = await send("run")
    after_first = snapshot(catalog, job.uuid)
    again = await send("run")
    # A retry answers the first outcome, even when the sender changed its mind meanwhile.
    changed = await send("fail")

    outcome = {"uuid": job.uuid, "state": "RUNNING", "last_event": "run",
               "event_id": "delivery-1"}
    assert (first.status_code, first.json()) == (200, outcome | {"duplicate": False})
    assert (again.status_code, again.json()) == (200, outcome | {"duplicate": True})
    assert (changed.status_code, changed.json()) == (200, outcome | {"duplicate": True})
    assert snapshot(catalog, job.uuid) == after_first
    assert [e["event_id"] for e in after_first["history"]].count("delivery-1") == 1
    assert len(after_first["history"]) == 2


# -- webhook: refusals ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """A webhook request to the fixture job and how it must be refused."""

    request: Callable[[ManagedPipelineJob, ManagedPipelineJob, str], dict[str, Any]]
    status: int
    code: str
    message: str  # formatted with uuid=<the job's UUID>


WEBHOOK_REFUSALS = {
    "no-token": Refusal(
        lambda job, other, admin: {"url": events_url(job.uuid), "json": {"name": "run"}},
        401, "token_required", "a token is required to act on job {uuid}"),
    "empty-bearer": Refusal(
        lambda job, other, admin: {"url": events_url(job.uuid), "json": {"name": "run"},
                                   "headers": {"Authorization": "Bearer "}},
        401, "token_required", "a token is required to act on job {uuid}"),
    "wrong-token": Refusal(
        lambda job, other, admin: {"url": events_url(job.uuid, BOGUS_TOKEN),
                                   "json": {"name": "run"}},
        403, "token_invalid", "the token given is not valid for job {uuid}"),
    "wrong-bearer": Refusal(
        lambda job, other, admin: {"url": events_url(job.uuid), "json": {"name": "run"},
                                   "headers": bearer(BOGUS_TOKEN)},
        403, "token_invalid", "the token given is not valid for job {uuid}"),
    "token-of-another-job": Refusal(
        lambda job, other, admin: {"url": events_url(job.uuid, other.token),
                                   "json": {"name": "run"}},
        403, "token_invalid", "the token given is not valid for job {uuid}"),
    "admin-event-with-job-token": Refusal(
        lambda job, other, admin: {"url": events_url(job.uuid, job.token),
                                   "json": {"name": "reset"}},
        403, "admin_required", "the admin token is required to send 'reset'"),
    "not-allowed-in-state": Refusal(
        lambda job, other, admin: {"url": events_url(job.uuid, job.token),
                                   "json": {"name": "finish"}},
        409, "event_not_allowed",
        "event 'finish' is not allowed for job {uuid} in state CREATED; "
        f"allowed events: {CREATED_ALLOWED}"),
    "not-allowed-even-for-admin": Refusal(
        lambda job, other, admin: {"url": events_url(job.uuid, admin),
                                   "json": {"name": "ready"}},
        409, "event_not_allowed",
        "event 'ready' is not allowed for job {uuid} in state CREATED; "
        f"allowed events: {CREATED_ALLOWED}"),
    "unknown-field": Refusal(
        lambda job, other, admin: {"url": events_url(job.uuid, job.token),
                                   "json": {"name": "run", "colour": "red"}},
        422, "schema_violation", "invalid event: colour: Extra inputs are not permitted"),
    "name-not-a-string": Refusal(
        lambda job, other, admin: {"url": events_url(job.uuid, job.token), "json": {"name": 5}},
        422, "schema_violation", "invalid event: name: Input should be a valid string"),
    "data-not-an-object": Refusal(
        lambda job, other, admin: {"url": events_url(job.uuid, job.token),
                                   "json": {"name": "run", "data": [1]}},
        422, "schema_violation", "invalid event: data: Input should be a valid dictionary"),
    "body-not-an-object": Refusal(
        lambda job, other, admin: {"url": events_url(job.uuid, job.token), "json": ["run"]},
        422, "schema_violation", "event must be a JSON object"),
    "unknown-event": Refusal(
        lambda job, other, admin: {"url": events_url(job.uuid, job.token),
                                   "json": {"name": "teleport"}},
        422, "unknown_event", f"unknown event 'teleport'; known events: {KNOWN_EVENTS}"),
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", list(WEBHOOK_REFUSALS), ids=list(WEBHOOK_REFUSALS))
async def test_webhook_refusals_change_nothing_and_are_audited(
    catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob,
    other_job: ManagedPipelineJob, case: str,
) -> None:
    refusal = WEBHOOK_REFUSALS[case]
    request = refusal.request(job, other_job, catalog.admin_token())

    await assert_refused(catalog, job.uuid, lambda: client.post(**request), refusal.status,
                         refusal.code, refusal.message.format(uuid=job.uuid))


@pytest.mark.anyio
async def test_admin_event_is_accepted_with_the_admin_token(
    catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob
) -> None:
    refused = await client.post(events_url(job.uuid, job.token), json={"name": "reset"})
    accepted = await client.post(events_url(job.uuid), headers=bearer(catalog.admin_token()),
                                 json={"name": "reset"})

    assert refused.status_code == 403
    assert accepted.status_code == 200
    assert accepted.json()["state"] == "RESET"
    assert catalog.get_job(job.uuid).state == "RESET"


BAD_BODIES = {
    "malformed-json": (b'{"name": "run",', "body: not valid JSON (Expecting property name "
                       "enclosed in double quotes: line 1 column 16 (char 15))"),
    "empty-body": (b"", "request body is empty: a JSON document is required"),
    "blank-body": (b" \n", "request body is empty: a JSON document is required"),
    "nan": (b'{"name": "run", "data": {"x": NaN}}', "body: NaN is not allowed in JSON"),
    "infinity": (b'{"name": "run", "data": {"x": 1e999}}', "body: 1e999 overflows to infinity"),
    # MongoDB keeps 64-bit integers: one past them was a 500 there, and is refused everywhere
    "int64-over": (b'{"name": "run", "data": {"n": [9223372036854775808]}}',
                   "event.data.n[0]: integer out of the 64-bit range (-9223372036854775808 to "
                   "9223372036854775807)"),
    "nul-in-key": (b'{"name": "run", "data": {"a": {"b\\u0000c": 1}}}',
                   "event.data.a: key 'b\\x00c' contains a NUL character"),
    "int64-under": (b'{"name": "run", "data": {"n": -9223372036854775809}}',
                    "event.data.n: integer out of the 64-bit range (-9223372036854775808 to "
                    "9223372036854775807)"),
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", list(BAD_BODIES), ids=list(BAD_BODIES))
async def test_bad_json_is_400_and_changes_nothing(
    catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob, case: str
) -> None:
    body, message = BAD_BODIES[case]
    before = snapshot(catalog, job.uuid)

    response = await client.post(events_url(job.uuid, job.token), content=body,
                                 headers={"Content-Type": "application/json"})

    assert (response.status_code, response.json()) == (400, error("invalid_data", message))
    assert snapshot(catalog, job.uuid) == before  # the audit: test_bad_json_..._is_audited


@pytest.mark.anyio
@pytest.mark.parametrize("case", ["malformed-json", "empty-body", "nan", "int64-over"])
async def test_bad_json_on_the_webhook_is_audited(
    catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob, case: str
) -> None:
    """DESIGN §4: every event received is recorded, refused ones in the audit log.

    The Python entry point audits NaN data (handle_event refuses it inside its audited block);
    over HTTP the route parses the body before handing it to the catalog, so nothing is kept.
    """
    body, _ = BAD_BODIES[case]
    before = audit_codes(catalog, job.uuid)

    response = await client.post(events_url(job.uuid, job.token), content=body)

    assert response.status_code == 400
    assert audit_codes(catalog, job.uuid) - before == Counter({"invalid_data": 1})


@pytest.mark.anyio
async def test_unknown_job_is_404_and_audited(
    catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob
) -> None:
    missing = catalog.typed_uuid(UUIDType.pipelinejob, "never created")
    jobs_before = all_job_uuids(catalog)

    for token in (catalog.job_token(missing), catalog.admin_token()):
        before = audit_codes(catalog, missing)
        response = await client.post(events_url(missing, token), json={"name": "run"})
        assert (response.status_code, response.json()) == (
            404, error("job_not_found", f"no job {missing}"))
        assert audit_codes(catalog, missing) - before == Counter({"job_not_found": 1})

    lookup = await client.get(f"/jobs/{missing}")
    assert (lookup.status_code, lookup.json()) == (404, error("job_not_found", f"no job {missing}"))
    assert all_job_uuids(catalog) == jobs_before


@pytest.mark.anyio
async def test_unknown_job_with_a_wrong_token_is_403(
    catalog: Catalog, client: httpx.AsyncClient
) -> None:
    missing = catalog.typed_uuid(UUIDType.pipelinejob, "never created")

    response = await client.post(events_url(missing, BOGUS_TOKEN), json={"name": "run"})

    assert (response.status_code, response.json()) == (
        403, error("token_invalid", f"the token given is not valid for job {missing}"))


@pytest.mark.anyio
async def test_malformed_or_mistyped_uuid_in_the_path_is_400(
    catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob
) -> None:
    pipeline_uuid = job.pipeline.uuid
    before, jobs_before = snapshot(catalog, job.uuid), all_job_uuids(catalog)

    malformed = await client.post(events_url("not-a-uuid", job.token), json={"name": "run"})
    mistyped = await client.post(events_url(pipeline_uuid, job.token), json={"name": "run"})

    assert (malformed.status_code, malformed.json()) == (
        400, error("malformed_uuid", "'not-a-uuid' is not a UUID"))
    assert (mistyped.status_code, mistyped.json()) == (
        400, error("wrong_uuid_type",
                   f"{pipeline_uuid} is a pipeline UUID, expected pipelinejob"))
    assert snapshot(catalog, job.uuid) == before
    assert all_job_uuids(catalog) == jobs_before


@pytest.mark.anyio
async def test_body_over_the_limit_is_413(open_catalog: Callable[..., Catalog]) -> None:
    catalog = open_catalog(max_body_bytes=2048)
    catalog.add_pipeline("align", "1.0")
    job = make_job(catalog)
    too_big = json.dumps({"name": "run", "data": {"blob": "x" * 4096}}).encode()
    just_fits = json.dumps({"name": "run", "data": {"blob": "x" * 1900}}).encode()
    message = "request body is larger than 2048 bytes"

    async def streamed() -> AsyncIterator[bytes]:
        for start in range(0, len(too_big), 512):
            yield too_big[start:start + 512]

    async with asgi_client(catalog) as client:
        declared = await assert_refused(
            catalog, job.uuid, lambda: client.post(events_url(job.uuid, job.token),
                                                   content=too_big),
            413, "body_too_large", message, audited=False)
        chunked = await assert_refused(
            catalog, job.uuid, lambda: client.post(events_url(job.uuid, job.token),
                                                   content=streamed()),
            413, "body_too_large", message, audited=False)
        accepted = await client.post(events_url(job.uuid, job.token), content=just_fits)

    assert "content-length" not in chunked.request.headers
    assert chunked.request.headers["transfer-encoding"] == "chunked"
    assert declared.request.headers["content-length"] == str(len(too_big))
    assert (accepted.status_code, accepted.json()["state"]) == (200, "RUNNING")


# -- status callbacks ---------------------------------------------------------------------------


def status_url(job: ManagedPipelineJob, status: str, mapping: str | None = "tapis") -> str:
    return events_url(job.uuid, job.token, status=status,
                      **({"mapping": mapping} if mapping is not None else {}))


@pytest.mark.anyio
@pytest.mark.parametrize("running, finished", [("RUNNING", "FINISHED"),
                                               ("running", "finished"),
                                               ("Running", "Finished")])
async def test_tapis_statuses_drive_the_job(
    catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob, running: str,
    finished: str,
) -> None:
    run = await client.post(status_url(job, running))
    finish = await client.post(status_url(job, finished))

    history = catalog.get_job(job.uuid).history
    assert (run.status_code, finish.status_code) == (200, 200)
    assert run.json() == {"uuid": job.uuid, "state": "RUNNING", "last_event": "run",
                          "event_id": history[1].event_id, "duplicate": False}
    assert finish.json()["state"] == "FINISHED"
    assert [(e.name, e.state, e.data) for e in history[1:]] == [
        ("run", "RUNNING", {"status": running, "mapping": "tapis"}),
        ("finish", "FINISHED", {"status": finished, "mapping": "tapis"}),
    ]


@pytest.mark.anyio
async def test_chime_statuses_drive_the_job(
    catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob,
    other_job: ManagedPipelineJob,
) -> None:
    states = []
    for status in ("created", "queued", "running", "success"):
        response = await client.post(status_url(job, status, "chime"))
        states.append((response.status_code, response.json()["state"]))
    failed = await client.post(status_url(other_job, "failure", "chime"))

    assert states == [(200, "CREATED"), (200, "CREATED"), (200, "RUNNING"), (200, "FINISHED")]
    assert [e.name for e in catalog.get_job(job.uuid).history] == [
        "create", "create", "update", "run", "finish"]
    assert (failed.status_code, failed.json()["state"]) == (200, "FAILED")


@pytest.mark.anyio
async def test_status_mapping_given_at_creation_is_the_default(
    catalog: Catalog, client: httpx.AsyncClient, pipeline: Pipeline
) -> None:
    created = await client.post("/jobs", headers=bearer(catalog.admin_token()),
                                json={"pipeline": "align", "status_mapping": "tapis"})
    uuid, token = created.json()["uuid"], created.json()["token"]

    response = await client.post(events_url(uuid, token, status="RUNNING"))

    assert created.status_code == 201
    assert (response.status_code, response.json()["state"]) == (200, "RUNNING")
    assert catalog.get_job(uuid).history[-1].data == {"status": "RUNNING", "mapping": "tapis"}


STATUS_REFUSALS = {
    "no-mapping-and-no-default": (
        {"status": "RUNNING"}, "status:RUNNING", 422, "schema_violation",
        "job {uuid} has no default status mapping: add &mapping=<name>"),
    "unmapped-status": (
        {"status": "EXPLODED", "mapping": "tapis"}, "status:EXPLODED", 422, "schema_violation",
        f"status 'EXPLODED' has no mapping in 'tapis'; known statuses: {TAPIS_STATUSES}"),
    "unknown-mapping": (
        {"status": "RUNNING", "mapping": "pbs"}, "status:RUNNING", 422, "schema_violation",
        "unknown status mapping 'pbs'; mappings: chime, docker, slurm, tapis"),
    "not-allowed-in-state": (
        {"status": "FINISHED", "mapping": "tapis"}, "finish", 409, "event_not_allowed",
        "event 'finish' is not allowed for job {uuid} in state CREATED; "
        f"allowed events: {CREATED_ALLOWED}"),
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", list(STATUS_REFUSALS), ids=list(STATUS_REFUSALS))
async def test_status_refusals_change_nothing_and_are_audited(
    catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob, case: str
) -> None:
    query, audited_name, status, code, message = STATUS_REFUSALS[case]

    await assert_refused(catalog, job.uuid,
                         lambda: client.post(events_url(job.uuid, job.token, **query)),
                         status, code, message.format(uuid=job.uuid))

    newest = [e for e in catalog.audit_log(job.uuid) if e.code == code]
    assert [(e.name, e.source) for e in newest] == [(audited_name, "webhook")]


@pytest.mark.anyio
async def test_status_without_a_token_is_401_and_audited(
    catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob
) -> None:
    await assert_refused(
        catalog, job.uuid,
        lambda: client.post(events_url(job.uuid, status="RUNNING", mapping="tapis")),
        401, "token_required", f"a token is required to act on job {job.uuid}")


@pytest.mark.anyio
async def test_status_with_a_body_keeps_its_data(
    catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob
) -> None:
    response = await client.post(status_url(job, "RUNNING"),
                                 json={"data": {"node": "c401-101", "cores": 48}})

    assert (response.status_code, response.json()["state"]) == (200, "RUNNING")
    assert catalog.get_job(job.uuid).history[-1].data == {
        "node": "c401-101", "cores": 48, "status": "RUNNING", "mapping": "tapis"}


@pytest.mark.anyio
async def test_status_with_an_idempotency_key_applies_once(
    catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob
) -> None:
    headers = {"Idempotency-Key": "tapis-notification-17"}

    first = await client.post(status_url(job, "RUNNING"), headers=headers)
    after_first = snapshot(catalog, job.uuid)
    again = await client.post(status_url(job, "RUNNING"), headers=headers)

    assert first.json() == {"uuid": job.uuid, "state": "RUNNING", "last_event": "run",
                            "event_id": "tapis-notification-17", "duplicate": False}
    assert again.json() == first.json() | {"duplicate": True}
    assert snapshot(catalog, job.uuid) == after_first
    assert len(after_first["history"]) == 2


# -- JSON API: reading ----------------------------------------------------------------------------


@pytest.fixture
def many_jobs(catalog: Catalog, pipeline: Pipeline) -> dict[str, list[str]]:
    """Seven jobs on two pipelines and four measurements; one RUNNING."""
    stack, _ = catalog.add_pipeline("stack", "2.0")
    align_jobs = [make_job(catalog, measurement_id=f"measurement.lab.{n}").uuid
                  for n in range(1, 6)]
    stack_jobs = [make_job(catalog, "stack", {"n": n}).uuid for n in range(2)]
    ManagedPipelineJob(catalog, "align", DATA, measurement_id="measurement.lab.2").run()
    return {"align": align_jobs, "stack": stack_jobs, "stack_uuid": [stack.uuid],
            "running": [align_jobs[1]]}


async def list_uuids(client: httpx.AsyncClient, **query: str) -> list[str]:
    response = await client.get("/jobs", params=query)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"jobs", "next"}
    assert body["next"] is None
    return sorted(doc["uuid"] for doc in body["jobs"])


@pytest.mark.anyio
async def test_list_jobs_filters(
    catalog: Catalog, client: httpx.AsyncClient, many_jobs: dict[str, list[str]]
) -> None:
    measurement_1 = catalog.upstream(UUIDType.measurement, "measurement.lab.1")[0]
    on_measurement_1 = sorted([many_jobs["align"][0], *many_jobs["stack"]])

    assert await list_uuids(client, state="RUNNING") == many_jobs["running"]
    assert await list_uuids(client, state="running") == many_jobs["running"]
    assert await list_uuids(client, state="FINALIZED") == []
    assert await list_uuids(client, pipeline="align") == sorted(many_jobs["align"])
    assert await list_uuids(client, pipeline=many_jobs["stack_uuid"][0]) == sorted(
        many_jobs["stack"])
    assert await list_uuids(client, child_of="measurement.lab.1") == on_measurement_1
    assert await list_uuids(client, child_of=measurement_1) == on_measurement_1
    assert await list_uuids(client, pipeline="stack", child_of="measurement.lab.1") == sorted(
        many_jobs["stack"])


@pytest.mark.anyio
async def test_list_jobs_pages_through_every_job_once(
    catalog: Catalog, client: httpx.AsyncClient, many_jobs: dict[str, list[str]]
) -> None:
    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        response = await client.get("/jobs", params={"limit": 3} | (
            {"cursor": cursor} if cursor else {}))
        assert response.status_code == 200
        body = response.json()
        seen.extend(doc["uuid"] for doc in body["jobs"])
        pages += 1
        cursor = body["next"]
        if cursor is None:
            break

    assert pages == 3
    assert len(seen) == len(set(seen)) == 7
    assert sorted(seen) == sorted(many_jobs["align"] + many_jobs["stack"])


LIST_REFUSALS = {
    "limit-zero": ({"limit": "0"}, 422, "schema_violation",
                   "query.limit: Input should be greater than or equal to 1"),
    "limit-too-big": ({"limit": "1001"}, 422, "schema_violation",
                      "query.limit: Input should be less than or equal to 1000"),
    "limit-not-a-number": ({"limit": "abc"}, 422, "schema_violation",
                           "query.limit: Input should be a valid integer, unable to parse "
                           "string as an integer"),
    "unknown-state": ({"state": "DONE"}, 400, "invalid_input",
                      "unknown state 'DONE'; states: CREATED, WAITING, QUEUED, RUNNING, FAILED, "
                      "FINISHED, INDEXING, VALIDATING, VALIDATED, REJECTED, FINALIZED, RETIRED, "
                      "CANCELLED, RESET"),
    "unknown-pipeline": ({"pipeline": "nope"}, 404, "pipeline_not_found", "no pipeline nope"),
    "bad-child-of": ({"child_of": "lab.1"}, 400, "invalid_input",
                     "'lab.1' is neither a typed UUID nor an id starting with experiment., "
                     "sample., measurement. or observation."),
    "bad-cursor": ({"cursor": "!!"}, 400, "invalid_input", "cursor '!!' is not valid"),
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", list(LIST_REFUSALS), ids=list(LIST_REFUSALS))
async def test_list_jobs_refusals(
    client: httpx.AsyncClient, job: ManagedPipelineJob, case: str
) -> None:
    query, status, code, message = LIST_REFUSALS[case]

    response = await client.get("/jobs", params=query)

    assert (response.status_code, response.json()) == (status, error(code, message))


@pytest.mark.anyio
async def test_get_job_and_history(
    catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob
) -> None:
    job.run({"host": "n1"})
    stored = catalog.get_job(job.uuid)

    document = await client.get(f"/jobs/{job.uuid}")
    history = await client.get(f"/jobs/{job.uuid.upper()}/history")

    assert (document.status_code, document.json()) == (200, stored.model_dump(mode="json"))
    assert (history.status_code, history.json()) == (200, {
        "uuid": job.uuid, "state": "RUNNING",
        "history": [entry.model_dump(mode="json") for entry in stored.history]})


@pytest.mark.anyio
async def test_get_pipelines(
    catalog: Catalog, client: httpx.AsyncClient, pipeline: Pipeline
) -> None:
    missing = catalog.typed_uuid(UUIDType.pipeline, "never registered")

    listing = await client.get("/pipelines")
    by_uuid = await client.get(f"/pipelines/{pipeline.uuid}")
    by_name = await client.get("/pipelines/align")
    not_found = await client.get(f"/pipelines/{missing}")

    expected = pipeline.model_dump(mode="json")
    assert (listing.status_code, listing.json()) == (200, {"pipelines": [expected],
                                                           "next": None})
    assert (by_uuid.status_code, by_uuid.json()) == (200, expected)
    assert (by_name.status_code, by_name.json()) == (200, expected)
    assert (not_found.status_code, not_found.json()) == (
        404, error("pipeline_not_found", f"no pipeline {missing}"))


# -- JSON API: writing (admin) ------------------------------------------------------------------


@pytest.mark.anyio
async def test_post_pipeline_creates_once(catalog: Catalog, client: httpx.AsyncClient) -> None:
    spec = {"name": "align", "version": "1.0", "components": [{"image": "align:1.0"}],
            "description": "aligns frames"}

    first = await client.post("/pipelines", headers=bearer(catalog.admin_token()), json=spec)
    again = await client.post(f"/pipelines?token={catalog.admin_token()}", json=spec)

    stored = catalog.get_pipeline("align")
    assert (first.status_code, first.json()) == (201, stored.model_dump(mode="json"))
    assert (again.status_code, again.json()) == (200, first.json())


@pytest.mark.anyio
async def test_post_pipeline_refusals(
    catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob
) -> None:
    admin = bearer(catalog.admin_token())
    spec = {"name": "stack"}
    refusals = [
        ({"json": spec}, 401, "token_required",
         "the admin token is required to register pipelines"),
        ({"json": spec, "headers": bearer(job.token)}, 403, "admin_required",
         "the admin token is required to register pipelines"),
        ({"json": spec, "headers": bearer(BOGUS_TOKEN)}, 403, "admin_required",
         "the admin token is required to register pipelines"),
        ({"json": {"name": 5}, "headers": admin}, 422, "schema_violation",
         "invalid pipeline: name: Input should be a valid string"),
        ({"json": {"name": "stack", "owner": "me"}, "headers": admin}, 422, "schema_violation",
         "invalid pipeline: owner: Extra inputs are not permitted"),
        ({"json": {"name": ""}, "headers": admin}, 422, "schema_violation",
         "invalid pipeline: name: String should have at least 1 character"),
        ({"content": b"{", "headers": admin}, 400, "invalid_data",
         "body: not valid JSON (Expecting property name enclosed in double quotes: "
         "line 1 column 2 (char 1))"),
    ]
    before = catalog.list_pipelines().items

    for request, status, code, message in refusals:
        response = await client.post("/pipelines", **request)
        assert (response.status_code, response.json()) == (status, error(code, message))

    assert catalog.list_pipelines().items == before


@pytest.mark.anyio
async def test_post_job_creates_once(
    catalog: Catalog, client: httpx.AsyncClient, pipeline: Pipeline
) -> None:
    request = {"pipeline": "align", "data": DATA, "measurement_id": "measurement.lab.9"}

    first = await client.post("/jobs", headers=bearer(catalog.admin_token()), json=request)
    uuid = first.json()["uuid"]
    stored = snapshot(catalog, uuid)
    again = await client.post(f"/jobs?token={catalog.admin_token()}", json=request)

    expected = {"uuid": uuid, "state": "CREATED", "archive_path": stored["archive_path"],
                "token": catalog.job_token(uuid), "webhook": catalog.webhook_url(uuid)}
    assert (first.status_code, first.json()) == (201, expected | {"created": True})
    assert (again.status_code, again.json()) == (200, expected | {"created": False})
    assert first.json()["webhook"] == (
        f"http://127.0.0.1:8000/jobs/{uuid}/events?token={catalog.job_token(uuid)}")
    assert snapshot(catalog, uuid) == stored
    assert [e.source for e in catalog.get_job(uuid).history] == ["api"]


POST_JOB_REFUSALS = {
    "no-token": (None, {"pipeline": "align"}, 401, "token_required",
                 "the admin token is required to create jobs"),
    "job-token": ("job", {"pipeline": "align"}, 403, "admin_required",
                  "the admin token is required to create jobs"),
    "unknown-pipeline": ("admin", {"pipeline": "nope"}, 404, "pipeline_not_found",
                         "no pipeline nope"),
    "unsafe-archive-path": ("admin", {"pipeline": "align", "archive_path": "/../x"}, 400,
                            "unsafe_path", "archive path '/../x' must not contain '..'"),
    "relative-archive-path": ("admin", {"pipeline": "align", "archive_path": "x/y"}, 400,
                              "unsafe_path",
                              "archive path 'x/y' must start with '/' (it is under the root)"),
    "unknown-field": ("admin", {"pipeline": "align", "priority": 1}, 422, "schema_violation",
                      "invalid job request: priority: Extra inputs are not permitted"),
    "data-not-an-object": ("admin", {"pipeline": "align", "data": [1]}, 422, "schema_violation",
                           "invalid job request: data: Input should be a valid dictionary"),
    "unknown-status-mapping": ("admin", {"pipeline": "align", "status_mapping": "pbs"}, 422,
                               "schema_violation",
                               "unknown status mapping 'pbs'; mappings: chime, docker, slurm, "
                               "tapis"),
    "patterns-not-a-list": ("admin", {"pipeline": "align", "archive_patterns": "*.fits"}, 422,
                            "schema_violation",
                            "invalid job request: archive_patterns: Input should be a valid list"),
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", list(POST_JOB_REFUSALS), ids=list(POST_JOB_REFUSALS))
async def test_post_job_refusals_create_nothing(
    catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob, case: str
) -> None:
    who, body, status, code, message = POST_JOB_REFUSALS[case]
    token = {"job": job.token, "admin": catalog.admin_token(), None: None}[who]
    before, jobs_before = snapshot(catalog, job.uuid), all_job_uuids(catalog)

    response = await client.post("/jobs", json=body,
                                  headers=bearer(token) if token is not None else {})

    assert (response.status_code, response.json()) == (status, error(code, message))
    assert all_job_uuids(catalog) == jobs_before
    assert snapshot(catalog, job.uuid) == before


@pytest.mark.anyio
async def test_post_job_with_a_bad_regex_is_invalid_pattern(
    catalog: Catalog, client: httpx.AsyncClient, pipeline: Pipeline
) -> None:
    """errors.py documents InvalidPattern (400 invalid_pattern) for this; it is never raised."""
    response = await client.post("/jobs", headers=bearer(catalog.admin_token()), json={
        "pipeline": "align", "archive_patterns": [{"patterns": ["(unclosed"]}]})

    assert all_job_uuids(catalog) == []
    assert (response.status_code, set(response.json()), set(response.json()["error"])) == (
        400, {"error"}, {"code", "message"})
    assert response.json()["error"]["code"] == "invalid_pattern"
    assert "'(unclosed' is not a valid regular expression" in response.json()["error"]["message"]


@pytest.mark.anyio
async def test_delete_job(
    catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob
) -> None:
    before = snapshot(catalog, job.uuid)

    refused = await client.delete(f"/jobs/{job.uuid}", headers=bearer(job.token))
    still_there = snapshot(catalog, job.uuid)
    deleted = await client.delete(f"/jobs/{job.uuid}", headers=bearer(catalog.admin_token()))
    lookup = await client.get(f"/jobs/{job.uuid}")
    again = await client.delete(f"/jobs/{job.uuid}?token={catalog.admin_token()}")

    assert (refused.status_code, refused.json()) == (
        403, error("admin_required", f"the admin token is required to delete job {job.uuid}"))
    assert still_there == before
    assert (deleted.status_code, deleted.json()) == (200, {"uuid": job.uuid, "deleted": True})
    # a tombstone (catalog.deletion): gone, since when, until purged (tests/test_delete*.py)
    assert (lookup.status_code, lookup.json()["error"]["code"]) == (410, "job_deleted")
    assert lookup.json()["error"]["message"].startswith(f"job {job.uuid} was deleted at ")
    assert (again.status_code, again.json()) == (410, lookup.json())
    assert [(e.name, e.code, e.source) for e in catalog.audit_log(job.uuid)] == [
        ("delete", "job_deleted", "api"), ("delete", "deleted", "api")]


# -- service routes, OpenAPI, the error shape ---------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/version", "/health"])
async def test_version_and_health_answer_get_and_head(
    catalog: Catalog, client: httpx.AsyncClient, path: str
) -> None:
    expected = {"/version": {"name": "catalog", "version": __version__},
                "/health": {"status": "ok", "store": catalog.store.kind}}[path]

    get = await client.get(path)
    head = await client.head(path)

    assert (get.status_code, get.json()) == (200, expected)
    assert (head.status_code, head.content) == (200, b"")


@pytest.mark.anyio
@pytest.mark.filterwarnings(DUPLICATE_OPERATION_ID)
async def test_openapi_document_lists_the_routes(catalog: Catalog) -> None:
    app = create_app(catalog)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as client:
        response = await client.get("/openapi.json")

    document = json.loads(response.content)
    documented = {(method.upper(), path) for path, item in document["paths"].items()
                  for method in item}
    # The pages for people (catalog.web.ui) are left out of the API's document.
    served = {(method, route.path) for route in app.routes if isinstance(route, APIRoute)
              and route.include_in_schema for method in route.methods}
    assert response.status_code == 200
    assert document["openapi"].startswith("3.")
    assert documented == served
    assert documented >= {
        ("GET", "/version"), ("HEAD", "/version"), ("GET", "/health"), ("HEAD", "/health"),
        ("POST", "/jobs/{uuid}/events"), ("GET", "/jobs"), ("POST", "/jobs"),
        ("GET", "/jobs/{uuid}"), ("DELETE", "/jobs/{uuid}"), ("GET", "/jobs/{uuid}/history"),
        ("GET", "/pipelines"), ("POST", "/pipelines"), ("GET", "/pipelines/{uuid}"),
        ("POST", "/queue/jobs"), ("GET", "/queue/status"), ("POST", "/queue/withdraw"),
        ("POST", "/queue/sweep"), ("POST", "/jobs/{uuid}/heartbeat"),
        ("POST", "/jobs/{uuid}/complete"), ("POST", "/jobs/{uuid}/cancel"),
        ("POST", "/jobs/{uuid}/retry"),
    }


@pytest.mark.anyio
async def test_openapi_operation_ids_are_unique(client: httpx.AsyncClient) -> None:
    """OpenAPI: operationId MUST be unique. GET and HEAD share one function and so one id."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        response = await client.get("/openapi.json")

    ids = Counter(operation["operationId"] for item in response.json()["paths"].values()
                  for operation in item.values())
    assert [str(w.message) for w in caught] == []
    assert [name for name, count in ids.items() if count > 1] == []


@pytest.mark.anyio
async def test_unknown_route_and_wrong_method_use_the_error_shape(
    client: httpx.AsyncClient, job: ManagedPipelineJob
) -> None:
    unknown = await client.get("/nowhere")
    wrong_method = await client.put(f"/jobs/{job.uuid}")
    wrong_method_events = await client.get(events_url(job.uuid, job.token))

    assert (unknown.status_code, unknown.json()) == (404, error("not_found", "Not Found"))
    for response in (wrong_method, wrong_method_events):
        assert (response.status_code, response.json()) == (
            405, error("method_not_allowed", "Method Not Allowed"))


@pytest.mark.anyio
async def test_method_not_allowed_says_which_are(
    client: httpx.AsyncClient, job: ManagedPipelineJob
) -> None:
    """RFC 9110 §15.5.6: a 405 MUST carry Allow; the custom handler drops Starlette's."""
    response = await client.put(f"/jobs/{job.uuid}")

    assert response.status_code == 405
    assert set(response.headers.get("allow", "").replace(" ", "").split(",")) == {
        "GET", "DELETE"}


# -- security -------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.filterwarnings(DUPLICATE_OPERATION_ID)
async def test_tokens_never_reach_logs_or_error_messages(
    catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob,
    other_job: ManagedPipelineJob, caplog: pytest.LogCaptureFixture,
) -> None:
    admin = catalog.admin_token()
    secrets = {"job token": job.token, "admin token": admin, "bogus token": BOGUS_TOKEN}
    # httpx's client logger prints each request URL; it is the test's client, not the service.
    # (Quieted first: caplog.set_level also sets its handler's level, so DEBUG must come last.)
    caplog.set_level(logging.WARNING, logger="httpx")
    caplog.set_level(logging.WARNING, logger="httpcore")
    caplog.set_level(logging.DEBUG)
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", events_url(job.uuid), {"json": {"name": "run"}}),
    ]
    for token in (job.token, admin, BOGUS_TOKEN, other_job.token):
        requests += [
            ("POST", events_url(job.uuid, token), {"json": {"name": "run"}}),
            ("POST", events_url(job.uuid), {"json": {"name": "update"},
                                            "headers": bearer(token)}),
            ("POST", events_url(job.uuid, token), {"json": {"name": "ready"}}),
            ("POST", events_url(job.uuid, token), {"content": b"{oops"}),
            ("POST", events_url(job.uuid, token), {"json": {"name": "run", "x": 1}}),
            ("POST", events_url(job.uuid, token, status="NOPE", mapping="tapis"), {}),
            ("POST", events_url("not-a-uuid", token), {"json": {"name": "run"}}),
            ("POST", f"/jobs?token={token}", {"json": {"pipeline": "nope"}}),
            ("POST", "/pipelines", {"json": {"name": 5}, "headers": bearer(token)}),
            ("DELETE", f"/jobs/{other_job.uuid}?token={token}", {"headers": bearer(token)}),
            ("GET", f"/jobs?limit=abc&token={token}", {}),
            ("GET", f"/nowhere?token={token}", {}),
            ("PUT", f"/version?token={token}", {}),
            ("GET", f"/openapi.json?token={token}", {}),
        ]

    statuses: Counter[int] = Counter()
    for method, url, options in requests:
        response = await client.request(method, url, **options)
        statuses[response.status_code] += 1
        if response.status_code >= 400:
            for name, secret in secrets.items():
                assert secret not in response.text, f"{name} in {method} {url.split('?')[0]}"

    assert {200, 400, 401, 403, 404, 405, 409, 422} <= set(statuses)
    served = [r for r in caplog.records if r.name == "catalog.web"]
    assert len(served) == len(requests)  # the access log saw every request
    for name, secret in secrets.items():
        assert secret not in caplog.text, f"{name} logged"
        assert all(secret not in str(r.args) for r in caplog.records), f"{name} logged"


def test_tokens_are_compared_in_constant_time() -> None:
    source = textwrap.dedent(inspect.getsource(tokens_module.Keys))
    tree = ast.parse(source)
    checks = {node.name: node for node in ast.walk(tree)
              if isinstance(node, ast.FunctionDef)
              and node.name in {"is_admin", "check_job", "check_admin"}}

    def calls(node: ast.AST) -> set[str]:
        return {ast.unparse(call.func) for call in ast.walk(node) if isinstance(call, ast.Call)}

    def equality_tests(node: ast.AST) -> list[str]:
        return [ast.unparse(compare) for compare in ast.walk(node)
                if isinstance(compare, ast.Compare)
                and any(isinstance(op, ast.Eq | ast.NotEq | ast.Is | ast.In) for op in compare.ops)]

    assert set(checks) == {"is_admin", "check_job", "check_admin"}
    assert "hmac.compare_digest" in calls(checks["is_admin"])
    assert "hmac.compare_digest" in calls(checks["check_job"])
    assert "self.is_admin" in calls(checks["check_admin"])
    assert {name: equality_tests(node) for name, node in checks.items()} == {
        "is_admin": [], "check_job": [], "check_admin": []}


# -- a job's history, streamed a page at a time ------------------------------------------------


@pytest.mark.anyio
async def test_a_job_and_its_history_are_streamed_page_by_page_as_they_were_rendered(
    catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.responses import JSONResponse

    import catalog.catalog as catalog_module

    datas = [{"é": "ünï ✓", "nested": {"list": [1, 2.5, None, True]}}, {}, {"n": -3e-7},
             {"big": 2**63 - 1, "small": -(2**63)}, {"text": "line\nbreak \"quoted\" \\ \u2028"}]
    for number, data in enumerate(datas):
        catalog.handle_event(job.uuid, {"name": "update", "data": data,
                                        "event_id": f"h-{number}"}, job.token)
    job_doc = catalog.get_job(job.uuid)
    assert len(job_doc.history) == 6  # create and the updates
    whole = JSONResponse(job_doc.model_dump(mode="json")).body
    history = JSONResponse({"uuid": job.uuid, "state": "CREATED",
                            "history": job_doc.model_dump(mode="json")["history"]}).body
    read: list[int] = []
    history_page = type(catalog.store).history_page

    def counted(store: Any, head: Any, after: int = 0, limit: int = 1000) -> Any:
        read.append(after)
        return history_page(store, head, after, limit)

    monkeypatch.setattr(type(catalog.store), "history_page", counted)
    for page in (1000, 4, 3, 1):  # one page, pages with a short last one, exact pages, ones
        monkeypatch.setattr(catalog_module, "HISTORY_PAGE", page)
        read.clear()
        shown = await client.get(f"/jobs/{job.uuid}")
        assert (shown.status_code, shown.headers["content-type"]) == (200, "application/json")
        assert shown.content == whole  # byte for byte what the whole model rendered
        assert read == list(range(0, 6 + (6 % page == 0) * page, page))
        listed = await client.get(f"/jobs/{job.uuid}/history")
        assert listed.status_code == 200 and listed.content == history
    missing = await client.get(f"/jobs/{job.uuid[:-4]}0000/history")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"
    wrong = await client.get("/jobs/not-a-uuid")
    assert wrong.status_code == 400


def test_history_pages_stop_at_the_version_the_job_was_read_at(
    catalog: Catalog, job: ManagedPipelineJob
) -> None:
    read, pages = catalog.job_and_history_pages(job.uuid, page=1)
    first = next(pages)
    catalog.handle_event(job.uuid, {"name": "run"}, job.token)  # after the job was read
    assert (read.state, read.version, [e["name"] for e in first]) == ("CREATED", 1, ["create"])
    assert list(pages) == []  # the run is not in this reading: its head said version 1
    _, again = catalog.job_and_history_pages(job.uuid, page=1)
    assert [[e["name"] for e in page] for page in again] == [["create"], ["run"]]
