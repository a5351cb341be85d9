"""The webhook's hot path (catalog.web.webhook) at the ASGI level: what httpx cannot send."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from catalog import Catalog, ManagedPipelineJob
from catalog.tokens import Keys
from catalog.web import create_app

KEYS = Keys(b"w" * 32, b"a" * 32)
EVENT = json.dumps({"name": "update", "data": {"n": 1}, "event_id": "hot-1"}).encode()


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    opened = Catalog.open(f"sqlite:///{tmp_path / 'catalog.db'}", keys=KEYS,
                          archive_root=str(tmp_path / "archive"))
    yield opened
    opened.close()


@pytest.fixture
def job(catalog: Catalog) -> ManagedPipelineJob:
    catalog.add_pipeline("hot", "1")
    created = ManagedPipelineJob(catalog, "hot", {})
    created.setup()
    created.run()
    return created


async def post(catalog: Catalog, job: ManagedPipelineJob,
               messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """POST the job's webhook with the given ASGI receive messages; what the app sent."""
    app = create_app(catalog)
    incoming = iter(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(incoming, {"type": "http.disconnect"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": f"/jobs/{job.uuid}/events",
             "raw_path": f"/jobs/{job.uuid}/events".encode(), "root_path": "",
             "query_string": f"token={job.token}".encode(),
             "headers": [(b"host", b"test"), (b"content-type", b"application/json")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {}}
    await app(scope, receive, send)
    return sent


def updates(catalog: Catalog, job: ManagedPipelineJob) -> list[str]:
    return [e.event_id for e in catalog.get_job(job.uuid).history if e.name == "update"]


@pytest.mark.anyio
async def test_a_body_in_several_chunks_is_read_whole(catalog: Catalog,
                                                      job: ManagedPipelineJob) -> None:
    sent = await post(catalog, job, [
        {"type": "http.request", "body": EVENT[:10], "more_body": True},
        {"type": "http.request", "body": EVENT[10:], "more_body": False}])
    assert sent[0]["status"] == 200
    assert json.loads(sent[1]["body"])["event_id"] == "hot-1"
    assert updates(catalog, job) == ["hot-1"]


@pytest.mark.anyio
async def test_a_client_gone_before_its_body_is_answered_nothing_and_changes_nothing(
        catalog: Catalog, job: ManagedPipelineJob, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="catalog.web"):
        sent = await post(catalog, job, [
            {"type": "http.request", "body": EVENT[:10], "more_body": True}])
    assert sent == []
    assert updates(catalog, job) == []
    assert any(" 499 " in record.getMessage() for record in caplog.records)


@pytest.mark.anyio
async def test_an_unexpected_failure_is_a_500_in_the_one_error_shape(
        catalog: Catalog, job: ManagedPipelineJob, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(catalog, "handle_event_async", broken)
    with caplog.at_level("INFO", logger="catalog.web"):
        sent = await post(catalog, job, [{"type": "http.request", "body": EVENT}])
    assert sent[0]["status"] == 500
    assert json.loads(sent[1]["body"]) == {"error": {"code": "internal_error",
                                                     "message": "internal error"}}
    assert "boom" not in sent[1]["body"].decode()
    assert job.token not in caplog.text
    assert any(" 500 " in record.getMessage() for record in caplog.records)
