"""The queue over HTTP (in process, httpx's ASGI transport): who may do what, and the answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from catalog import Catalog
from catalog.tokens import Keys

KEYS = Keys(b"h" * 32, b"k" * 32)
WORK = {"pipeline": "reduce", "data": {"function": "pkg.mod.f", "parameters": {"n": 1}}}
FILTER = {"filter": {"pipelines": ["reduce"]}, "worker": "w1", "lease": 30}


@pytest.fixture
def catalog(queue_catalog: Callable[..., Catalog]) -> Catalog:
    return queue_catalog(KEYS, "reduce")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_code(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


@pytest.mark.anyio
async def test_a_job_goes_round_the_queue_over_http(catalog: Catalog,
                                                    client: httpx.AsyncClient) -> None:
    admin, worker = KEYS.admin_token(), KEYS.worker_token()
    submitted = await client.post("/queue/jobs", json=WORK, headers=bearer(admin))
    assert submitted.status_code == 201 and submitted.json()["state"] == "QUEUED"
    uuid = submitted.json()["uuid"]
    again = await client.post("/queue/jobs", json={**WORK, "priority": 5},
                              headers=bearer(admin))
    assert (again.status_code, again.json()["uuid"], again.json()["queued"]) == (200, uuid,
                                                                                 False)
    status = await client.get("/queue/status")
    assert status.json()["pipelines"] == {"reduce": {"QUEUED": 1}}

    got = await client.post("/queue/withdraw", json=FILTER, headers=bearer(worker))
    assert got.status_code == 200
    body = got.json()
    assert (body["uuid"], body["attempt"], body["token"]) == (uuid, 1, KEYS.job_token(uuid))
    assert (await client.post("/queue/withdraw", json=FILTER,
                              headers=bearer(worker))).json() is None

    beat = await client.post(f"/jobs/{uuid}/heartbeat", json={"worker": "w1", "lease": 60},
                             headers=bearer(worker))
    assert beat.status_code == 200 and beat.json()["lease_expiry"] > body["lease_expiry"]
    done = await client.post(f"/jobs/{uuid}/complete", json={
        "worker": "w1", "results": {"answer": 42}}, headers=bearer(admin))
    assert done.status_code == 200
    assert (done.json()["state"], done.json()["results"]) == ("FINISHED", {"answer": 42})
    # nothing reported, nothing to index
    assert [e.name for e in catalog.get_job(uuid).history] == ["create", "queue", "run",
                                                                "finish"]


@pytest.mark.anyio
async def test_each_route_wants_its_token(catalog: Catalog, client: httpx.AsyncClient) -> None:
    uuid = catalog.submit("reduce", WORK["data"]).uuid
    job_token, worker = KEYS.job_token(uuid), KEYS.worker_token()
    refusals: list[tuple[str, dict[str, Any], dict[str, str], tuple[int, str]]] = [
        ("/queue/jobs", WORK, {}, (401, "token_required")),
        ("/queue/jobs", WORK, bearer(worker), (403, "admin_required")),
        ("/queue/jobs", WORK, bearer(job_token), (403, "admin_required")),
        ("/queue/withdraw", FILTER, {}, (401, "token_required")),
        ("/queue/withdraw", FILTER, bearer(job_token), (403, "token_invalid")),
        ("/queue/sweep", {}, bearer(job_token), (403, "token_invalid")),
        (f"/jobs/{uuid}/heartbeat", {"worker": "w1"}, bearer(job_token), (403, "token_invalid")),
        (f"/jobs/{uuid}/complete", {"worker": "w1"}, bearer(job_token), (403, "token_invalid")),
        (f"/jobs/{uuid}/cancel", {}, bearer(worker), (403, "token_invalid")),
        (f"/jobs/{uuid}/retry", {}, {}, (401, "token_required")),
    ]
    for path, body, headers, expected in refusals:
        response = await client.post(path, json=body, headers=headers)
        assert error_code(response) == expected, path
        assert KEYS.admin_token() not in response.text and worker not in response.text
    job = catalog.get_job(uuid)
    assert (job.state, job.version) == ("QUEUED", 2)
    # refusals of senders without a valid token are counted, not written one by one
    assert catalog.audit_log(uuid) == []
    assert catalog.flush_refusals() >= 1


@pytest.mark.anyio
async def test_a_worker_acts_only_on_what_it_holds(catalog: Catalog,
                                                   client: httpx.AsyncClient) -> None:
    worker = bearer(KEYS.worker_token())
    uuid = catalog.submit("reduce", WORK["data"]).uuid
    for path in (f"/jobs/{uuid}/heartbeat", f"/jobs/{uuid}/complete"):
        response = await client.post(path, json={"worker": "w1"}, headers=worker)
        assert error_code(response) == (409, "lease_not_held")
    assert (await client.post("/queue/withdraw", json=FILTER, headers=worker)).json()
    stranger = await client.post(f"/jobs/{uuid}/complete", json={"worker": "w2"},
                                 headers=worker)
    assert error_code(stranger) == (409, "lease_not_held")
    assert catalog.get_job(uuid).state == "RUNNING"


@pytest.mark.anyio
async def test_cancel_and_retry_with_the_jobs_token(catalog: Catalog,
                                                    client: httpx.AsyncClient) -> None:
    uuid = catalog.submit("reduce", WORK["data"], retries=1).uuid
    token = bearer(KEYS.job_token(uuid))
    cancelled = await client.post(f"/jobs/{uuid}/cancel", json={"reason": "wrong input"},
                                  headers=token)
    assert (cancelled.status_code, cancelled.json()["state"]) == (200, "CANCELLED")
    assert catalog.get_job(uuid).history[-1].data == {"reason": "wrong input"}
    refused = await client.post(f"/jobs/{uuid}/retry", headers=token)
    assert error_code(refused) == (409, "event_not_allowed")
    catalog.submit("reduce", WORK["data"], retries=1)
    worker = bearer(KEYS.worker_token())
    assert (await client.post("/queue/withdraw", json=FILTER, headers=worker)).json()
    failed = await client.post(f"/jobs/{uuid}/complete", json={"worker": "w1",
                                                              "error": "bad"}, headers=worker)
    assert failed.json()["state"] == "FAILED"
    again = await client.post(f"/jobs/{uuid}/retry", headers=token)
    assert (again.status_code, again.json()["state"]) == (200, "QUEUED")


@pytest.mark.anyio
@pytest.mark.parametrize(("path", "body", "code"), [
    ("/queue/jobs", {**WORK, "priority": 9}, "schema_violation"),
    ("/queue/jobs", {**WORK, "retries": 6}, "schema_violation"),
    ("/queue/jobs", {**WORK, "timeout": 0}, "schema_violation"),
    ("/queue/jobs", {**WORK, "data": {"function": "a.b", "command": ["c"]}}, "schema_violation"),
    ("/queue/withdraw", {**FILTER, "filter": {"pipelines": []}}, "schema_violation"),
    ("/queue/withdraw", {**FILTER, "filter": {"pipelines": ["reduce"], "$where": 1}},
     "schema_violation"),
    ("/queue/withdraw", {**FILTER, "lease": 1}, "schema_violation"),
])
async def test_malformed_requests_are_refused(catalog: Catalog, client: httpx.AsyncClient,
                                              path: str, body: dict[str, Any],
                                              code: str) -> None:
    response = await client.post(path, json=body, headers=bearer(KEYS.admin_token()))
    assert error_code(response) == (422, code)
    assert catalog.find_jobs().items == []


@pytest.mark.anyio
async def test_results_over_4_mb_are_refused_and_change_nothing(
        catalog: Catalog, client: httpx.AsyncClient) -> None:
    uuid = catalog.submit("reduce", WORK["data"]).uuid
    worker = bearer(KEYS.worker_token())
    assert (await client.post("/queue/withdraw", json=FILTER, headers=worker)).json()
    version = catalog.get_job(uuid).version
    catalog.settings = catalog.settings.model_copy(update={"max_body_bytes": 8 * 1024 * 1024})
    big = {"worker": "w1", "results": {"blob": "x" * (4 * 1024 * 1024 + 1)}}
    from catalog.errors import BodyTooLarge
    from catalog.queue.archive import complete

    with pytest.raises(BodyTooLarge, match="at most 4194304"):
        complete(catalog, uuid, big)
    assert catalog.get_job(uuid).version == version
