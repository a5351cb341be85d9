"""POST /queue/jobs/batch (issue 16): a whole graph over HTTP, in process."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from catalog import Catalog
from catalog.tokens import Keys

KEYS = Keys(b"h" * 32, b"k" * 32)


def work(n: int, **extra: object) -> dict[str, object]:
    return {"pipeline": "reduce", "data": {"command": ["reduce", str(n)]}, **extra}


@pytest.fixture
def catalog(queue_catalog: Callable[..., Catalog]) -> Catalog:
    return queue_catalog(KEYS, "reduce")


@pytest.mark.anyio
async def test_a_graph_over_http(catalog: Catalog, client: httpx.AsyncClient) -> None:
    admin = {"Authorization": f"Bearer {KEYS.admin_token()}"}
    body = {"jobs": [work(0, key="a"), work(1, when={"job": "a", "is": "finished"})]}
    done = await client.post("/queue/jobs/batch", json=body, headers=admin)
    assert done.status_code == 200, done.text
    assert [j["state"] for j in done.json()["jobs"]] == ["QUEUED", "WAITING"]
    count = len(catalog.find_jobs(limit=100).items)
    bad = {"jobs": [work(2), work(3, when={"job": "b", "is": "finished"})]}
    refused = await client.post("/queue/jobs/batch", json=bad, headers=admin)
    assert refused.status_code in (400, 422)
    assert refused.json()["error"]["code"] == "invalid_condition"
    assert "items[1]" in refused.json()["error"]["message"]
    assert len(catalog.find_jobs(limit=100).items) == count
    anonymous = await client.post("/queue/jobs/batch", json=body)
    assert anonymous.status_code == 401
    empty = await client.post("/queue/jobs/batch", json={"jobs": []}, headers=admin)
    assert empty.status_code in (400, 422)
