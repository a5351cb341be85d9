"""A condition naming a deleted job (issue 20): gone, not malformed: 410 job_deleted naming
the job and where the request named it, on every entry point (Python, HTTP, CLI; single and
batch submits) and every store; nothing is stored. A job that never existed stays a 400."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from catalog import Catalog, ManagedPipelineJob
from catalog.errors import InvalidCondition, JobDeleted
from catalog.identifiers import UUIDType, typed_uuid
from catalog.tokens import Keys

KEYS = Keys(b"q" * 32, b"r" * 32)
SCRIPT = Path(sys.executable).parent / "catalog"


@pytest.fixture
def catalog(queue_catalog: Callable[..., Catalog]) -> Catalog:
    return queue_catalog(KEYS, "step")


def deleted_job(catalog: Catalog) -> str:
    job = ManagedPipelineJob(catalog, "step", {"n": 0})
    job.setup()
    catalog.delete_job(job.uuid, catalog.admin_token())
    return job.uuid


def work(n: int, **extra: object) -> dict[str, object]:
    return {"pipeline": "step", "data": {"command": ["step", str(n)]}, **extra}


def count(catalog: Catalog) -> int:
    return len(catalog.find_jobs(limit=1000).items)


def test_python_single_and_batch(catalog: Catalog) -> None:
    gone = deleted_job(catalog)
    alive = catalog.submit("step", {"n": 1})
    before = count(catalog)
    when = {"all": [{"job": alive.uuid, "is": "ended"}, {"job": gone, "is": "finished"}]}

    with pytest.raises(JobDeleted) as refused:
        catalog.submit("step", {"n": 2}, when=when)
    assert (refused.value.status, refused.value.code) == (410, "job_deleted")
    assert refused.value.message.startswith(f"when.all[1].job: job {gone} was deleted at ")
    assert refused.value.details["uuid"] == gone
    assert refused.value.details["place"] == "when.all[1].job"

    with pytest.raises(JobDeleted) as batch:
        catalog.submit_many([work(3, key="a"), work(4, when={"all": [
            {"job": "a", "is": "finished"}, {"not": {"job": gone, "is": "failed"}}]})])
    assert batch.value.status == 410
    assert batch.value.message.startswith(f"items[1].when.all[1].not.job: job {gone} was ")
    assert count(catalog) == before  # nothing stored
    assert catalog.store.dependents(alive.uuid) == []

    never = typed_uuid(UUIDType.pipelinejob, "never-existed")
    with pytest.raises(InvalidCondition, match=f"no job {never}"):  # malformed: still 400
        catalog.submit("step", {"n": 5}, when={"job": never, "is": "ended"})
    with pytest.raises(InvalidCondition, match="neither an earlier item's key"):
        catalog.submit_many([work(6, when={"job": never, "is": "ended"})])


@pytest.mark.anyio
async def test_http_single_and_batch(catalog: Catalog, client: httpx.AsyncClient) -> None:
    gone = deleted_job(catalog)
    admin = {"Authorization": f"Bearer {KEYS.admin_token()}"}
    before = count(catalog)
    single = await client.post("/queue/jobs", headers=admin,
                               json=work(1, when={"job": gone, "is": "ended"}))
    assert single.status_code == 410, single.text
    assert single.json()["error"]["code"] == "job_deleted"
    assert single.json()["error"]["message"].startswith(f"when.job: job {gone} was deleted")
    batch = await client.post("/queue/jobs/batch", headers=admin, json={"jobs": [
        work(2), work(3, when={"any": [{"job": gone, "is": "cancelled"}]})]})
    assert batch.status_code == 410, batch.text
    assert batch.json()["error"]["code"] == "job_deleted"
    assert gone in batch.json()["error"]["message"]
    assert "items[1].when.any[0].job" in batch.json()["error"]["message"]
    assert count(catalog) == before


def test_openapi_lists_the_410() -> None:
    from catalog.web.openapi import ERRORS
    for key in (("post", "/queue/jobs"), ("post", "/queue/jobs/batch")):
        assert 410 in ERRORS[key]


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_cli_exits_as_for_other_410s(catalog: Catalog, tmp_path: Path) -> None:
    gone = deleted_job(catalog)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
    env["CATALOG_DB"] = catalog.settings.db
    shown = subprocess.run([str(SCRIPT), "job", "show", gone, "--json"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert json.loads(shown.stderr)["error"]["code"] == "job_deleted"
    before = count(catalog)
    refused = subprocess.run(
        [str(SCRIPT), "submit", "--pipeline", "step", "--data", "{}", "--when",
         json.dumps({"job": gone, "is": "ended"}), "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == shown.returncode == 4, refused.stderr
    assert json.loads(refused.stderr)["error"]["code"] == "job_deleted"
    lines = tmp_path / "graph.jsonl"
    lines.write_text(json.dumps(work(1, when={"job": gone, "is": "ended"})) + "\n")
    batch = subprocess.run([str(SCRIPT), "submit", "--batch", str(lines)], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=60)
    assert batch.returncode == 4, batch.stderr
    assert f"items[0].when.job: job {gone} was deleted at " in batch.stderr
    assert count(catalog) == before
