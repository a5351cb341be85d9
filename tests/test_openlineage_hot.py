"""``POST /api/v1/lineage`` answered on the hot path (catalog.web.openlineage_routes.hot_post)
answers exactly as its FastAPI route does, refusals included: the same requests sent to an app
that takes the hot path and to one that does not get the same status and body."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from catalog import Catalog
from catalog.web.app import create_app

KEY = "hot-openlineage-key-0123456789abcdef"
RUN = "5d0c7a9e-1b2c-4d3e-8f4a-6b7c8d9e0f1a"


def event(kind: str = "START", second: int = 0, **changes: Any) -> dict[str, Any]:
    document = {"eventType": kind, "eventTime": f"2026-11-21T12:00:{second:02d}Z",
                "producer": "https://example.org/hot", "run": {"runId": RUN},
                "job": {"namespace": "hot://scheduler", "name": "step"},
                "inputs": [{"namespace": "s3://lake", "name": "raw.fits"}],
                "outputs": [{"namespace": "s3://lake", "name": "cube.fits"}]}
    document.update(changes)
    return document


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
# (name, path, headers, body): sent in this order to both apps.
REQUESTS: list[tuple[str, str, dict[str, str], bytes]] = [
    ("start", "/api/v1/lineage", AUTH, body(event())),
    ("retry", "/api/v1/lineage", AUTH, body(event())),
    ("complete gzip", "/api/v1/lineage", {**AUTH, "Content-Encoding": "gzip"},
     gzip.compress(body(event("COMPLETE", 1)))),
    ("late start", "/api/v1/lineage", AUTH, body(event("START", 2))),
    ("job event", "/api/v1/lineage", AUTH,
     body({"eventTime": "2026-11-21T12:00:03Z", "producer": "p",
           "job": {"namespace": "hot://scheduler", "name": "static"},
           "outputs": [{"namespace": "s3://lake", "name": "static.fits"}]})),
    ("no key", "/api/v1/lineage", {"Content-Type": "application/json"}, body(event())),
    ("wrong key", "/api/v1/lineage", {**AUTH, "Authorization": "Bearer nope"}, body(event())),
    ("key in the URL", f"/api/v1/lineage?api_key={KEY}", AUTH, body(event())),
    ("not JSON", "/api/v1/lineage", AUTH, b"{not json"),
    ("empty", "/api/v1/lineage", AUTH, b""),
    ("bad gzip", "/api/v1/lineage", {**AUTH, "Content-Encoding": "gzip"}, b"not gzip"),
    ("unknown encoding", "/api/v1/lineage", {**AUTH, "Content-Encoding": "br"}, b"x"),
    ("runId not a UUID", "/api/v1/lineage", AUTH, body(event(run={"runId": "r1"}))),
    ("cross-site", "/api/v1/lineage", {**AUTH, "Origin": "https://evil.example"},
     body(event())),
    ("too large declared", "/api/v1/lineage", {**AUTH, "Content-Length": str(10**9)}, b"{}"),
]


@pytest.fixture
def catalogs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Catalog]]:
    monkeypatch.chdir(tmp_path)
    opened = [Catalog.init(f"sqlite:///{tmp_path}/{name}.db", openlineage_key=KEY)[0]
              for name in ("hot", "framework")]
    yield opened
    for catalog in opened:
        catalog.close()


@pytest.fixture
async def clients(catalogs: list[Catalog]) -> AsyncIterator[list[httpx.AsyncClient]]:
    hot, framework = (create_app(catalog) for catalog in catalogs)
    framework.catalog = None  # type: ignore[attr-defined]  # every request through FastAPI
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hot),
                                 base_url="http://catalog.test") as first, \
            httpx.AsyncClient(transport=httpx.ASGITransport(app=framework),
                              base_url="http://catalog.test") as second:
        yield [first, second]


@pytest.mark.anyio
async def test_the_hot_path_answers_as_the_framework_route(
        clients: list[httpx.AsyncClient], catalogs: list[Catalog]) -> None:
    answers: list[list[tuple[str, int, Any]]] = [[], []]
    for name, path, headers, content in REQUESTS:
        for client, answered in zip(clients, answers, strict=True):
            reply = await client.post(path, content=content, headers=headers)
            answered.append((name, reply.status_code, reply.json()))
    assert answers[0] == answers[1]
    statuses = {name: status for name, status, _ in answers[0]}
    assert statuses == {
        "start": 200, "retry": 200, "complete gzip": 200, "late start": 200, "job event": 200,
        "no key": 401, "wrong key": 403, "key in the URL": 400, "not JSON": 400, "empty": 400,
        "bad gzip": 400, "unknown encoding": 400, "runId not a UUID": 422, "cross-site": 403,
        "too large declared": 413}
    hot, framework = catalogs
    assert [e.model_dump(exclude={"date"}) for e in hot.audit_log()] == [
        e.model_dump(exclude={"date"}) for e in framework.audit_log()]
