"""The service tried as an attacker would (issue 20, items 3 and 4), in process on both stores.

Anonymous refusals are counted, not written one by one, and rate-limited per address; text no
store can keep is refused with 400 naming the field wherever it enters; the access log cannot
be forged; an applied event is answered as applied; tokens are never echoed, logged or stored.
What was refused can be read over HTTP: a job's audit log, and the counted refusals.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
import uuid as uuid_module
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from catalog import Catalog, ManagedPipelineJob
from catalog.errors import RateLimited, TokenRequired
from catalog.reactor import process_lines
from catalog.refusals import ANONYMOUS, OTHER_ADDRESS, AnonymousRefusals
from catalog.tokens import WITHHELD_TOKEN, Keys
from catalog.web import create_app
from catalog.web.accesslog import WITHHELD, printable

KEYS = Keys(b"x" * 32, b"y" * 32)
SURROGATE = "x\ud800"
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", "mongomock"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Catalog]:
    for name in list(os.environ):
        if name.startswith("CATALOG_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    url = (f"sqlite:///{tmp_path}/c.db" if request.param == "sqlite"
           else f"mongomock://{uuid_module.uuid4().hex}")
    # A flush interval no test reaches: what is written is what the tests flush.
    opened = Catalog.open(url, keys=KEYS, refusal_flush_s=3600, rate_limit_delay_s=0,
                          **getattr(request, "overrides", {}))
    opened.add_pipeline("align", "1.0", [{"image": "align:1.0"}])
    yield opened
    opened.close()


@pytest.fixture
def job(catalog: Catalog) -> ManagedPipelineJob:
    made = ManagedPipelineJob(catalog, "align", {"n": 1}, measurement_id="measurement.lab.1")
    made.setup()
    return made


@pytest.fixture
async def client(catalog: Catalog) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(catalog), client=("203.0.113.7", 4711))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as opened:
        yield opened


def count_audit_writes(catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every audit entry the store is asked to write, from now on."""
    written: list[Any] = []
    real = catalog.store.append_audit

    def append(entry: Any) -> None:
        written.append(entry)
        real(entry)

    monkeypatch.setattr(catalog.store, "append_audit", append)
    return written


def limited(catalog: Catalog, burst: int, rate: float = 0.001) -> None:
    """Give ``catalog`` a refusal budget of ``burst`` (hardly refilled) per address."""
    catalog.__dict__["refusals"] = AnonymousRefusals(3600, 1000, rate, burst)


# -- anonymous refusals: counted, batched, bounded, rate-limited -----------------------------


async def test_anonymous_refusals_are_counted_not_written_one_by_one(
        catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob,
        monkeypatch: pytest.MonkeyPatch) -> None:
    limited(catalog, burst=10_000)
    written = count_audit_writes(catalog, monkeypatch)
    missing = str(job.uuid)[:-4] + "beef"  # a job that does not exist
    for number in range(60):
        await client.post(f"/jobs/{job.uuid}/events", json={"name": "run"})  # no token
        await client.post(f"/jobs/{missing}/events?token={'0' * 64}", json={"name": "run"})
        answered = await client.post(f"/jobs/{job.uuid}/events", json={"name": "run"},
                                     headers={"Authorization": f"Bearer {number:064x}"})
        assert answered.status_code == 403
    assert written == []  # not one write for 180 refusals

    counts = {(e.source, e.code, e.data["address"]): e.data["count"]
              for e in catalog.anonymous_refusals()}
    assert counts == {("webhook", "token_required", "203.0.113.7"): 60,
                      ("webhook", "token_invalid", "203.0.113.7"): 120}
    assert len(written) == 2  # one row per (address, source, reason), written together
    assert catalog.audit_log(job.uuid) == []
    assert all(e.job_uuid == ANONYMOUS for e in catalog.audit_log(limit=1000))


async def test_authenticated_refusals_stay_audited_one_by_one(
        catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob) -> None:
    for _ in range(3):
        answered = await client.post(f"/jobs/{job.uuid}/events?token={job.token}",
                                     json={"name": "reset", "data": {"why": "test"}})
        assert answered.status_code == 403
    audit = catalog.audit_log(job.uuid)
    assert [(e.code, e.data) for e in audit] == [("admin_required", {"why": "test"})] * 3
    assert catalog.anonymous_refusals() == []


def test_counts_are_flushed_when_due_and_bounded_in_keys() -> None:
    now = [0.0]
    refusals = AnonymousRefusals(flush_s=10, max_keys=3, rate=1, burst=100,
                                 clock=lambda: now[0])
    error = TokenRequired("a token is required")
    for address in ("10.0.0.1", "10.0.0.2", "10.0.0.1"):
        refusals.refuse(address, "webhook", error)
    assert not refusals.due()
    for number in range(3, 50):  # far more addresses than keys
        refusals.refuse(f"10.0.0.{number}", "webhook", error)
    assert refusals.due()  # the table is full: written now, not at the interval
    entries = refusals.take()
    assert {(e.data["address"], e.data["count"]) for e in entries} == {
        ("10.0.0.1", 2), ("10.0.0.2", 1), ("10.0.0.3", 1), (OTHER_ADDRESS, 46)}
    assert refusals.take() == [] and not refusals.due()

    refusals.refuse("10.0.0.1", "webhook", error)
    assert not refusals.due()
    now[0] = 10.5
    assert refusals.due()  # the interval has passed


def test_the_budget_refills_at_the_rate() -> None:
    now = [0.0]
    refusals = AnonymousRefusals(flush_s=10, max_keys=10, rate=2, burst=3, clock=lambda: now[0])
    error = TokenRequired("a token is required")
    answers = [refusals.refuse("10.0.0.9", "webhook", error) for _ in range(5)]
    assert [type(a) for a in answers] == [TokenRequired] * 3 + [RateLimited] * 2
    assert isinstance(answers[-1], RateLimited) and answers[-1].retry_after == 1
    assert refusals.refuse("10.0.0.8", "webhook", error) is error  # another address
    now[0] = 1.0  # two refills
    assert [type(refusals.refuse("10.0.0.9", "webhook", error)) for _ in range(3)] == [
        TokenRequired, TokenRequired, RateLimited]


async def test_an_address_over_its_budget_is_answered_429_and_valid_tokens_still_pass(
        catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob) -> None:
    limited(catalog, burst=3)
    statuses = [(await client.post(f"/jobs/{job.uuid}/events", json={"name": "update"}))
                for _ in range(5)]
    assert [r.status_code for r in statuses] == [401, 401, 401, 429, 429]
    assert statuses[-1].json()["error"]["code"] == "rate_limited"
    assert int(statuses[-1].headers["retry-after"]) >= 1
    # The same address with the job's token: served (a sender behind the attacker's NAT).
    accepted = await client.post(f"/jobs/{job.uuid}/events?token={job.token}",
                                 json={"name": "run"})
    assert accepted.status_code == 200
    # Every route that takes a token counts against the same budget.
    for method, path in (("POST", "/jobs"), ("POST", "/pipelines"),
                         ("POST", f"/jobs/{job.uuid}/index"), ("DELETE", f"/jobs/{job.uuid}"),
                         ("POST", f"/jobs/{job.uuid}/events?status=RUNNING&mapping=tapis")):
        answered = await client.request(method, path, json={})
        assert answered.status_code == 429, (method, path, answered.text)
    counts = {e.code: e.data["count"] for e in catalog.anonymous_refusals()
              if e.source == "webhook"}
    assert counts == {"token_required": 3, "rate_limited": 3}


async def test_malformed_job_uuids_from_a_client_count_against_its_budget(
        catalog: Catalog, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    limited(catalog, burst=2)
    written = count_audit_writes(catalog, monkeypatch)
    answers = [await client.post(f"/jobs/{bad}/events", json={"name": "run"})
               for bad in ("nope", "107" + "0" * 5, "nope", "nope")]
    assert [a.status_code for a in answers] == [400, 400, 429, 429]
    assert written == []
    counts = {e.code: e.data["count"] for e in catalog.anonymous_refusals()}
    assert counts == {"malformed_uuid": 2, "rate_limited": 2}


async def test_a_429_is_held_back(catalog: Catalog, job: ManagedPipelineJob) -> None:
    limited(catalog, burst=1)
    slow = Catalog(catalog.store, catalog.settings.model_copy(
        update={"rate_limit_delay_s": 0.3}), KEYS)
    slow.__dict__["refusals"] = catalog.refusals
    transport = httpx.ASGITransport(app=create_app(slow), client=("203.0.113.8", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        first = await client.post(f"/jobs/{job.uuid}/events", json={"name": "run"})
        started = time.perf_counter()
        second = await client.post(f"/jobs/{job.uuid}/events", json={"name": "run"})
        waited = time.perf_counter() - started
    assert (first.status_code, second.status_code) == (401, 429)
    assert waited >= 0.3


# -- text no store can keep ------------------------------------------------------------------

SURROGATE_EVENTS = {
    "name": ({"name": SURROGATE}, "event.name"),
    "event_id": ({"name": "run", "event_id": SURROGATE}, "event.event_id"),
    "data key": ({"name": "run", "data": {SURROGATE: 1}}, "event.data: key"),
    "data value": ({"name": "run", "data": {"a": [SURROGATE]}}, "event.data.a[0]"),
}


@pytest.mark.parametrize("case", list(SURROGATE_EVENTS))
async def test_a_lone_surrogate_in_an_event_is_400_naming_the_field_and_audited(
        catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob, case: str) -> None:
    event, field = SURROGATE_EVENTS[case]
    body = json.dumps(event)  # \ud800 as JSON writes it: valid JSON, not storable text
    before = catalog.get_job(job.uuid)
    answers = [
        await client.post(f"/jobs/{job.uuid}/events?token={job.token}", content=body),
        await client.post(f"/jobs/{job.uuid}/events?token={job.token}&status=RUNNING"
                          "&mapping=tapis", content=json.dumps(
                              {"event_id": SURROGATE} if case == "event_id"
                              else {"data": event.get("data", {SURROGATE: 0})})),
    ]
    for answer in answers:
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "invalid_data"
    assert field in answers[0].json()["error"]["message"]
    # The Python API and the reactor: the same refusal.
    with pytest.raises(Exception) as raised:
        catalog.handle_event(job.uuid, event, job.token)
    assert getattr(raised.value, "status", None) == 400
    line = json.dumps({"uuid": job.uuid, **event})
    assert next(process_lines(catalog, [line], job.token))["error"]["code"] == "invalid_data"
    assert catalog.get_job(job.uuid) == before
    audit = catalog.audit_log(job.uuid)
    assert len(audit) == 4 and {e.code for e in audit} == {"invalid_data"}
    if case in ("name", "event_id"):  # kept, escaped, rather than lost with the refusal
        assert "x\\ud800" in {audit[0].name, audit[0].event_id}


@pytest.mark.parametrize("path, body, field", [
    ("/jobs", {"pipeline": "align", "data": {"a": SURROGATE}}, "job_request.data.a"),
    ("/jobs", {"pipeline": SURROGATE}, "job_request.pipeline"),
    ("/pipelines", {"name": "p", "description": SURROGATE}, "pipeline.description"),
])
async def test_a_lone_surrogate_elsewhere_is_400_naming_the_field(
        catalog: Catalog, client: httpx.AsyncClient, path: str, body: Any, field: str) -> None:
    answer = await client.post(path, content=json.dumps(body),
                               headers={"Authorization": f"Bearer {catalog.admin_token()}"})
    assert answer.status_code == 400, answer.text
    assert field in answer.json()["error"]["message"]


async def test_a_lone_surrogate_in_index_options_is_400(
        catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob) -> None:
    answer = await client.post(f"/jobs/{job.uuid}/index?token={job.token}", content=json.dumps(
        {"requests": [{"patterns": [SURROGATE]}]}))
    assert answer.status_code == 400, answer.text
    assert "index_options.requests[0].patterns[0]" in answer.json()["error"]["message"]


# -- the access log --------------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "/jobs/x%0A2026-01-01 INFO catalog.web GET /admin 200/events",  # the hot path's log line
    "/jobs/x%0D%0AGET /forged 200",  # FastAPI's
    "/files/%E2%80%A8forged%1B[31m",  # a line separator and an escape sequence
])
async def test_the_access_log_escapes_control_characters(
        client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, path: str) -> None:
    method = "POST" if path.endswith("/events") else "GET"
    with caplog.at_level(logging.INFO, logger="catalog.web"):
        await client.request(method, path, json={"name": "run"})
    lines = [r.getMessage() for r in caplog.records if r.name == "catalog.web"]
    assert len(lines) == 1 and "\n" not in lines[0] and "\r" not in lines[0]
    assert all(c.isprintable() for c in lines[0]), lines
    assert "\\x0a" in lines[0] or "\\x0d" in lines[0] or "\\u2028" in lines[0]


def test_printable_escapes_only_what_is_invisible() -> None:
    assert printable("/jobs/été/ü") == "/jobs/été/ü"
    assert printable("a\nb\\c\x1b\u2028\u202e") == "a\\x0ab\\\\c\\x1b\\u2028\\u202e"


# -- an applied event is answered as applied -------------------------------------------------


async def test_a_reset_whose_clean_up_fails_is_answered_applied_with_the_failure(
        catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob) -> None:
    root = Path(catalog.settings.archive_root)
    directory = root / job.archive_path.lstrip("/")
    elsewhere = root / "elsewhere"
    elsewhere.mkdir(parents=True)
    (elsewhere / "keep.csv").write_text("x")
    directory.parent.mkdir(parents=True, exist_ok=True)
    directory.symlink_to(elsewhere)  # erasing through it could empty another job's files
    answer = await client.post(f"/jobs/{job.uuid}/events",
                               headers={"Authorization": f"Bearer {catalog.admin_token()}"},
                               json={"name": "reset", "event_id": "reset-1"})
    assert answer.status_code == 200, answer.text
    outcome = answer.json()
    assert (outcome["state"], outcome["last_event"], outcome["duplicate"]) == (
        "RESET", "reset", False)
    assert "clean-up failed" in outcome["cleanup_error"]
    assert catalog.get_job(job.uuid).state == "RESET"
    assert [(e.name, e.code) for e in catalog.audit_log(job.uuid)] == [
        ("reset", "cleanup_failed")]
    assert (elsewhere / "keep.csv").exists()

    directory.unlink()
    shutil.move(elsewhere, directory)
    again = await client.post(f"/jobs/{job.uuid}/events",
                              headers={"Authorization": f"Bearer {catalog.admin_token()}"},
                              json={"name": "reset", "event_id": "reset-1"})
    assert again.status_code == 200 and "cleanup_error" not in again.json()
    assert not (directory / "keep.csv").exists()


# -- tokens are never echoed, logged or stored -----------------------------------------------


async def test_a_token_in_the_body_is_not_stored_or_shown(
        catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob) -> None:
    admin = catalog.admin_token()
    answer = await client.post(
        f"/jobs/{job.uuid}/events?token={job.token}",
        json={"name": "run", "event_id": f"id-{job.token}",
              "data": {"token": job.token, job.token: [f"Bearer {admin}"]}})
    assert answer.status_code == 200
    shown = (await client.get(f"/jobs/{job.uuid}")).text + (
        await client.get("/jobs")).text
    assert job.token not in shown and admin not in shown
    entry = catalog.get_job(job.uuid).history[-1]
    assert entry.data == {"token": WITHHELD_TOKEN,
                          WITHHELD_TOKEN: [f"Bearer {WITHHELD_TOKEN}"]}
    assert entry.event_id == f"id-{WITHHELD_TOKEN}"
    # Nor as the Idempotency-Key standing in for an event_id.
    keyed = await client.post(f"/jobs/{job.uuid}/events?token={job.token}",
                              json={"name": "update"}, headers={"Idempotency-Key": job.token})
    assert keyed.status_code == 200 and keyed.json()["event_id"] == WITHHELD_TOKEN
    assert catalog.get_job(job.uuid).history[-1].event_id == WITHHELD_TOKEN
    # A refused event's data is audited without the token either.
    await client.post(f"/jobs/{job.uuid}/events?token={job.token}",
                      json={"name": "reset", "data": {"token": job.token}})
    assert catalog.audit_log(job.uuid)[0].data == {"token": WITHHELD_TOKEN}


@pytest.mark.parametrize("where", ["path", "query of a route without tokens", "wrong header",
                                   "scheme-less header", "other query name"])
async def test_a_token_in_the_wrong_place_is_neither_echoed_nor_logged(
        catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob,
        caplog: pytest.LogCaptureFixture, where: str) -> None:
    token = job.token
    request: dict[str, Any] = {
        "path": {"method": "GET", "url": f"/jobs/{token}"},
        "query of a route without tokens": {"method": "GET", "url": f"/files?checksum={token}"},
        "wrong header": {"method": "POST", "url": f"/jobs/{job.uuid}/events",
                         "headers": {"X-Token": token}, "json": {"name": "run"}},
        "scheme-less header": {"method": "POST", "url": f"/jobs/{job.uuid}/events",
                               "headers": {"Authorization": token}, "json": {"name": "run"}},
        "other query name": {"method": "GET", "url": f"/jobs/{job.uuid}/{token}"},
    }[where]
    with caplog.at_level(logging.DEBUG):
        answer = await client.request(**request)
    assert answer.status_code >= 400
    assert token not in answer.text
    server_side = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert server_side and all(token not in record.getMessage() for record in server_side)
    if where == "path":
        assert WITHHELD in answer.json()["error"]["message"]
    await asyncio.sleep(0)
    assert token not in json.dumps([e.model_dump(mode="json")
                                    for e in catalog.audit_log(limit=1000)])


# -- the audit log over HTTP (item 4) --------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_jobs_audit_for_its_token_or_the_admin_token(
        catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob) -> None:
    other = ManagedPipelineJob(catalog, "align", {"n": 2}, measurement_id="measurement.lab.1")
    other.setup()
    for name in ("reset", "finalize"):  # refused: admin only, not allowed from CREATED
        await client.post(f"/jobs/{job.uuid}/events?token={job.token}", json={"name": name})

    by_job = await client.get(f"/jobs/{job.uuid}/audit", headers=bearer(job.token))
    by_admin = await client.get(f"/jobs/{job.uuid.upper()}/audit?token="
                                f"{catalog.admin_token()}")
    assert by_job.status_code == by_admin.status_code == 200
    assert by_job.json() == by_admin.json()
    document = by_job.json()
    assert document["uuid"] == job.uuid
    assert [(e["name"], e["code"]) for e in document["audit"]] == [
        ("finalize", "event_not_allowed"), ("reset", "admin_required")]
    limited = await client.get(f"/jobs/{job.uuid}/audit?limit=1", headers=bearer(job.token))
    assert [e["name"] for e in limited.json()["audit"]] == ["finalize"]

    refused = {
        "no token": await client.get(f"/jobs/{job.uuid}/audit"),
        "another job's token": await client.get(f"/jobs/{job.uuid}/audit",
                                                headers=bearer(other.token)),
    }
    assert {k: (r.status_code, r.json()["error"]["code"]) for k, r in refused.items()} == {
        "no token": (401, "token_required"), "another job's token": (403, "token_invalid")}
    bad = await client.get("/jobs/not-a-uuid/audit", headers=bearer(job.token))
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "malformed_uuid")


async def test_the_refusal_counts_for_the_admin_only(
        catalog: Catalog, client: httpx.AsyncClient, job: ManagedPipelineJob) -> None:
    for _ in range(3):
        await client.post(f"/jobs/{job.uuid}/events", json={"name": "run"})
    refused = await client.get("/audit/refusals", headers=bearer(job.token))
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "admin_required")

    answered = await client.get("/audit/refusals", headers=bearer(catalog.admin_token()))
    assert answered.status_code == 200
    counts = {(e["code"], e["data"]["address"]): e["data"]["count"]
              for e in answered.json()["refusals"]}
    # The job token sent to an admin route is a refusal of the same address too.
    assert counts == {("token_required", "203.0.113.7"): 3,
                      ("admin_required", "203.0.113.7"): 1}
    assert all(e["job_uuid"] == "anonymous" for e in answered.json()["refusals"])
