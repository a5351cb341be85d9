"""The CHIME/FRB Buckets and Results surfaces in process (httpx's ASGI transport): the wire
shapes both clients read, tokens, refusals that change nothing, views, hiding and transfer.
The real clients run against ``catalog serve`` in test_chime_clients.py."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from catalog import Catalog
from catalog.compat.chime import STATUS_OF_STATE
from catalog.compat.chime_query import matches, project
from catalog.states import STATES
from catalog.tokens import Keys
from catalog.web import create_app

KEYS = Keys(b"c" * 32, b"k" * 32)
WORKER = {"x-access-token": KEYS.worker_token()}


def work(**fields: Any) -> dict[str, Any]:
    """A Work payload as chime-frb-api 3.4 sends it (every field, nulls included)."""
    return {
        "pipeline": "fold", "site": "local", "user": "tester", "function": "chimework.add",
        "command": None, "parameters": {"a": 1, "b": 2}, "results": None, "products": None,
        "plots": None, "event": [9001], "tags": ["x"], "timeout": 3600, "retries": 2,
        "priority": 3, "config": {"archive": {"results": True, "products": "pass",
                                               "plots": "pass", "logs": "move"},
                                  "metrics": False, "parent": None, "orgs": ["chimefrb"],
                                  "teams": None},
        "notify": {"slack": {"channel_id": None}}, "id": None, "creation": time.time(),
        "start": None, "stop": None, "attempt": 0, "status": "created", **fields}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def catalog(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[Catalog]:
    monkeypatch.chdir(tmp_path)
    opened = Catalog.open(store_url, keys=KEYS, sqlite_synchronous="NORMAL",
                          product_roots=str(tmp_path))
    yield opened
    opened.close()


@pytest.fixture
async def client(catalog: Catalog) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(catalog)),
                                 base_url="http://test") as opened:
        yield opened


def jobs(catalog: Catalog) -> list[dict[str, Any]]:
    return catalog.find_jobs(limit=1000).items


async def deposit(client: httpx.AsyncClient, *works: dict[str, Any]) -> list[str]:
    answer = await client.post("/buckets/work?return_ids=True&return_ids=True",
                               json=list(works), headers=WORKER)
    assert answer.status_code == 200, answer.text
    return list(answer.json())


def test_every_state_has_a_work_status() -> None:
    assert set(STATUS_OF_STATE) == set(STATES)
    assert set(STATUS_OF_STATE.values()) == {"created", "queued", "running", "success",
                                               "failure"}


@pytest.mark.anyio
async def test_a_work_goes_round_buckets_into_the_catalog(
        catalog: Catalog, client: httpx.AsyncClient, tmp_path: Path) -> None:
    for base in ("/buckets", "/results"):
        assert (await client.get(f"{base}/version")).json()["version"]
        assert (await client.head(f"{base}/version")).status_code == 200
    assert (await client.get("/buckets/")).status_code == 200
    assert (await client.post("/buckets/work", json=[work()], headers=WORKER)).json() is True
    [uuid] = await deposit(client, work())
    assert (await deposit(client, work(priority=5, tags=["y"], user="other"))) == [uuid]
    assert len(jobs(catalog)) == 1

    taken = (await client.post("/buckets/work/withdraw", headers=WORKER, json={
        "pipeline": {"$in": ["fold"]}, "site": "local", "tags": {"$in": ["x"]}})).json()
    assert (taken["id"], taken["status"], taken["attempt"]) == (uuid, "running", 1)
    assert isinstance(taken["start"], float) and isinstance(taken["creation"], float)
    assert (taken["event"], taken["function"], taken["parameters"]) == (
        [9001], "chimework.add", {"a": 1, "b": 2})
    assert taken["config"]["archive"]["products"] == "pass"
    assert (await client.post("/buckets/work/withdraw", json={"pipeline": "fold"},
                              headers=WORKER)).json() is None

    product = tmp_path / "sum.csv"
    product.write_text("a,b,sum\n1,2,3\n")
    taken.update(status="success", results={"sum": 3}, products=[str(product)],
                 stop=time.time())
    assert (await client.put("/buckets/work", json=[taken], headers=WORKER)).json() is True
    job = catalog.get_job(uuid)
    assert (job.state, job.results) == ("FINISHED", {"sum": 3})
    assert [e.name for e in job.history][:4] == ["create", "queue", "run", "finish"]
    [record] = [f for f in catalog.find_files(job=uuid, limit=100).items
                if f["path"].endswith("/products/sum.csv")]
    assert record["status"] == "ok" and record["checksums"]
    graph = catalog.lineage(record["uuid"], "up")
    observation = catalog.parse_upstream("observation.chime.9001")
    assert observation in {node["uuid"] for node in graph["nodes"]}

    [seen] = (await client.post("/buckets/view", json={"query": {"id": uuid}})).json()
    assert seen["status"] == "success" and seen["products"] == [record["path"]]
    assert isinstance(seen["stop"], float) and seen["results"] == {"sum": 3}
    # Deposited again once finished: the same job, memoised, never queued again.
    assert await deposit(client, work()) == [uuid]
    assert catalog.get_job(uuid).state == "FINISHED"
    status = (await client.get("/buckets/status")).json()
    assert status == {"total": 1, "queued": 0, "running": 0, "success": 1, "failure": 0}
    assert (await client.get("/buckets/status/details/fold")).json()["success"] == 1
    assert (await client.get("/buckets/status/details/none")).json()["total"] == 0
    assert (await client.get("/buckets/status/pipelines")).json() == ["fold"]


@pytest.mark.anyio
async def test_a_failure_is_retried_then_final_and_its_report_kept(
        catalog: Catalog, client: httpx.AsyncClient) -> None:
    [uuid] = await deposit(client, work(retries=2))
    for attempt in (1, 2):
        taken = (await client.post("/buckets/work/withdraw", json={"pipeline": "fold"},
                                   headers=WORKER)).json()
        assert taken["attempt"] == attempt
        taken.update(status="failure", results={"error": f"bad {attempt}"})
        await client.put("/buckets/work", json=[taken], headers=WORKER)
    job = catalog.get_job(uuid)
    assert job.state == "FAILED" and job.queue is not None and job.queue.attempt == 2
    assert [e.data["error"] for e in job.history if e.name == "fail"] == ["bad 1", "bad 2"]
    reports = [e for e in catalog.audit_log(uuid) if e.code == "chime_report_kept"]
    assert [e.data["results"] for e in reports] == [{"error": "bad 2"}, {"error": "bad 1"}]
    # A report for an attempt that is over changes nothing, and is kept beside the job.
    late = {**taken, "status": "success", "results": {"late": True}}
    assert (await client.put("/buckets/work", json=[late], headers=WORKER)).json() is True
    assert catalog.get_job(uuid).version == job.version
    kept = next(e for e in catalog.audit_log(uuid) if e.code == "chime_report_kept")
    assert kept.data["results"] == {"late": True} and "attempt 2" in kept.reason
    final = (await client.post("/buckets/view", json={"query": {
        "status": "failure", "$expr": {"$gte": ["$attempt", "$retries"]},
        "creation": {"$gt": time.time() - 3600}}, "projection": {"id": True, "_id": False}}
    )).json()
    assert final == [{"id": uuid}]


@pytest.mark.anyio
async def test_delete_hides_and_results_mark_without_erasing(
        catalog: Catalog, client: httpx.AsyncClient) -> None:
    [uuid] = await deposit(client, work())
    taken = (await client.post("/buckets/work/withdraw", json={"pipeline": "fold"},
                               headers=WORKER)).json()
    await client.put("/buckets/work", json=[{**taken, "status": "success"}], headers=WORKER)
    [done] = (await client.post("/buckets/view", json={"query": {"status": "success"}})).json()
    queued = (await client.post("/results/results", json=[{**done, "status": "queued"}],
                                headers=WORKER))
    assert queued.json() == {"fold": 1}  # Results reads the job's own status, not the payload's
    assert (await client.post("/results/results", json=[done], headers=WORKER)).json() == {
        "fold": 1}
    count = await client.post("/results/view/count", json={"query": {"pipeline": "fold",
                                                                     "id": uuid}})
    assert count.json() == 1
    assert (await client.get("/results/status")).json() == {"fold": 1}
    assert (await client.delete(f"/buckets/work?ids={uuid}", headers=WORKER)).json() is True
    assert (await client.post("/buckets/view", json={"query": {}})).json() == []
    [kept] = (await client.post("/results/view", json={"query": {"pipeline": "fold"}})).json()
    assert kept["id"] == uuid and kept["status"] == "success"
    assert (await client.put("/results/results", json=[kept], headers=WORKER)).json() == {
        "fold": 1}
    assert (await client.delete(f"/results/results?fold={uuid}",
                                headers=WORKER)).json() == {"fold": 1}
    assert (await client.post("/results/view/count", json={"query": {"pipeline": "fold"}}
                              )).json() == 0
    job = catalog.get_job(uuid)  # provenance whole: the job, its history, its results
    assert job.state == "FINISHED" and "finish" in [e.name for e in job.history]
    # Deposited again, a hidden job is back in Buckets as it is (memoised, never rerun).
    assert await deposit(client, work()) == [uuid]
    assert catalog.get_job(uuid).version == job.version


@pytest.mark.anyio
@pytest.mark.parametrize(("change", "why"), [
    ({"priority": 6}, "priority"),
    ({"priority": 0}, "priority"),
    ({"timeout": 0}, "timeout"),
    ({"timeout": 259201}, "timeout"),
    ({"retries": 6}, "retries"),
    ({"command": ["ls"]}, "function or a command"),
    ({"pipeline": ""}, "pipeline"),
    ({"event": ["one"]}, "event"),
    ({"tags": [f"t{n}" for n in range(40)]}, "tags"),
    ({"attempt": False}, "attempt"),  # numbers are numbers, not booleans or text
    ({"priority": "3"}, "priority"),
    ({"start": True}, "start"),
])
async def test_a_malformed_work_is_refused_and_nothing_stored(
        catalog: Catalog, client: httpx.AsyncClient, change: dict[str, Any], why: str) -> None:
    answer = await client.post("/buckets/work", json=[work(pipeline="ok"), work(**change)],
                               headers=WORKER)
    assert answer.status_code in (400, 422)
    assert set(answer.json()) == {"error"} and why in answer.json()["error"]["message"]
    assert jobs(catalog) == [] and catalog.list_pipelines().items == []


@pytest.mark.anyio
@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/buckets/work/withdraw", {"pipeline": {"$regex": "f.*"}}),
    ("POST", "/buckets/work/withdraw", {"pipeline": "fold", "status": "queued"}),
    ("POST", "/buckets/work/withdraw", {"pipeline": {"$in": "fold"}}),
    ("POST", "/buckets/view", {"query": {"$where": "1"}}),
    ("POST", "/buckets/view", {"query": {"attempt": {"$size": 1}}}),
    ("POST", "/buckets/view", {"query": {"$expr": {"$gte": ["$attempt"]}}}),
    ("POST", "/buckets/view", {"query": {}, "projection": {"id": 1, "config": 0}}),
    ("POST", "/buckets/view", {"query": {}, "limit": -1}),
    ("POST", "/buckets/work", {"pipeline": "fold"}),
    ("PUT", "/buckets/work", [work()]),
    ("POST", "/results/view/count", {"query": {"tags": {"$all": ["x"]}}}),
])
async def test_unknown_operators_and_shapes_are_refused(
        catalog: Catalog, client: httpx.AsyncClient, method: str, path: str, body: Any) -> None:
    [uuid] = await deposit(client, work())
    before = catalog.get_job(uuid)
    answer = await client.request(method, path, json=body, headers=WORKER)
    assert answer.status_code in (400, 422), answer.text
    assert set(answer.json()["error"]) == {"code", "message"}
    assert catalog.get_job(uuid) == before


@pytest.mark.anyio
async def test_writes_need_the_worker_key_unless_anonymous_writes_are_on(
        catalog: Catalog, client: httpx.AsyncClient, tmp_path: Path) -> None:
    writes = [("POST", "/buckets/work", [work()]), ("POST", "/buckets/work/withdraw",
                                                    {"pipeline": "fold"}),
              ("PUT", "/buckets/work", [work(id="x")]), ("DELETE", "/buckets/work?ids=x", None),
              ("GET", "/buckets/audit/expired", None), ("POST", "/results/results", [work()])]
    for method, path, body in writes:
        answer = await client.request(method, path, json=body)
        assert (answer.status_code, answer.json()["error"]["code"]) == (401, "token_required")
        answer = await client.request(method, path, json=body,
                                      headers={"x-access-token": KEYS.job_token(
                                          "b3a0c6c2-5c9e-5d3a-9d7e-3f1f0f2b6a10")})
        assert answer.status_code == 403
    assert jobs(catalog) == []
    admin = await client.post("/buckets/work", json=[work()],
                              headers={"authorization": KEYS.admin_token()})
    assert admin.json() is True
    assert (await client.post("/buckets/view", json={"query": {}})).status_code == 200
    anonymous = Catalog.open(catalog.settings.db, keys=KEYS, chime_anonymous_writes=True)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(anonymous)),
                                     base_url="http://test") as open_client:
            taken = await open_client.post("/buckets/work/withdraw", json={"pipeline": "fold"})
            assert taken.json()["status"] == "running"
    finally:
        anonymous.close()


@pytest.mark.anyio
async def test_the_audits_are_the_queues_sweep_retry_and_cancel(
        catalog: Catalog, client: httpx.AsyncClient) -> None:
    [slow, stale] = await deposit(client, work(timeout=1, retries=1), work(function="m.other"))
    await client.post("/buckets/work/withdraw", json={"pipeline": "fold", "priority": 3},
                      headers=WORKER)
    time.sleep(1.1)
    assert (await client.get("/buckets/audit/expired", headers=WORKER)).json() == 1
    expired = catalog.get_job(slow)
    assert expired.state == "FAILED" and expired.queue is not None
    assert expired.queue.reason == "lease expired"
    assert (await client.get("/buckets/audit/failed", headers=WORKER)).json() == 0
    assert (await client.get("/buckets/audit/stale/7.0", headers=WORKER)).json() == 0
    assert (await client.get("/buckets/audit/stale/0", headers=WORKER)).json() == 1
    assert catalog.get_job(stale).state == "CANCELLED"
    assert (await client.get("/buckets/audit/stale/-1", headers=WORKER)).status_code == 400


WORK_DOC = {"id": "j1", "status": "failure", "attempt": 2, "retries": 2, "creation": 100.0,
            "tags": ["a", "b"], "config": {"parent": "p", "archive": {"results": True}},
            "results": None}


@pytest.mark.parametrize(("query", "expected"), [
    ({}, True),
    ({"status": "failure"}, True),
    ({"status": {"$in": ["success", "failure"]}}, True),
    ({"status": {"$nin": ["failure"]}}, False),
    ({"tags": "a"}, True),
    ({"tags": {"$in": ["z", "b"]}}, True),
    ({"config.parent": "p"}, True),
    ({"config.archive.results": True}, True),
    ({"results.locked": {"$ne": True}}, True),
    ({"creation": {"$gt": 99.5, "$lte": 100}}, True),
    ({"creation": {"$lt": 100}}, False),
    ({"results": {"$gt": 1}}, False),
    ({"$expr": {"$gte": ["$attempt", "$retries"]}}, True),
    ({"$expr": {"$lt": ["$attempt", "$retries"]}}, False),
])
def test_view_queries(query: dict[str, Any], expected: bool) -> None:
    assert matches(WORK_DOC, query) is expected


def test_projections() -> None:
    assert project(WORK_DOC, {}) == WORK_DOC
    assert project(WORK_DOC, {"id": True, "_id": False}) == {"id": "j1"}
    assert project(WORK_DOC, {"config.parent": 1}) == {"config": {"parent": "p"}}
    assert "config" not in project(WORK_DOC, {"config": False})
