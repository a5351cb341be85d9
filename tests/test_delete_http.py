"""Delete and purge over HTTP (in-process, every store) and on the command line (exit codes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from catalog import Catalog, ManagedPipelineJob
from catalog.tokens import Keys, keys_from_env_or_file

KEYS = Keys(b"h" * 32, b"i" * 32)
SCRIPT = Path(sys.executable).parent / "catalog"


@pytest.fixture
def catalog(queue_catalog: Callable[..., Catalog]) -> Catalog:
    return queue_catalog(KEYS, "step")


def make_job(catalog: Catalog, n: int) -> ManagedPipelineJob:
    job = ManagedPipelineJob(catalog, "step", {"n": n}, measurement_id="measurement.http.1")
    job.setup()
    return job


def admin(catalog: Catalog) -> dict[str, str]:
    return {"authorization": f"Bearer {catalog.admin_token()}"}


def code(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return response.status_code, body["error"]["code"]


@pytest.mark.anyio
async def test_delete_then_every_read_answers_gone(catalog: Catalog,
                                                   client: httpx.AsyncClient) -> None:
    job, kept = make_job(catalog, 1), make_job(catalog, 2)

    deleted = await client.delete(f"/jobs/{job.uuid}", headers=admin(catalog))

    assert (deleted.status_code, deleted.json()) == (200, {"uuid": job.uuid, "deleted": True})
    assert code(await client.get(f"/jobs/{job.uuid}")) == (410, "job_deleted")
    assert code(await client.get(f"/jobs/{job.uuid}/history")) == (410, "job_deleted")
    event = await client.post(f"/jobs/{job.uuid}/events", json={"name": "run"},
                              headers={"authorization": f"Bearer {job.token}"})
    assert code(event) == (410, "job_deleted")
    assert code(await client.delete(f"/jobs/{job.uuid}", headers=admin(catalog))) == (
        410, "job_deleted")
    listing = (await client.get("/jobs")).json()
    assert [row["uuid"] for row in listing["jobs"]] == [kept.uuid]
    audit = (await client.get(f"/jobs/{job.uuid}/audit", headers=admin(catalog))).json()
    assert {entry["code"] for entry in audit["audit"]} == {"deleted", "job_deleted"}


@pytest.mark.anyio
async def test_refusals(catalog: Catalog, client: httpx.AsyncClient) -> None:
    job = make_job(catalog, 1)
    queued = catalog.submit("step", {"n": 2})
    unknown = job.uuid[:-1] + ("1" if job.uuid[-1] != "1" else "2")
    purge = f"/jobs/{job.uuid}/purge"
    bearer = {"authorization": f"Bearer {job.token}"}

    assert code(await client.delete(f"/jobs/{job.uuid}", headers=bearer)) == (
        403, "admin_required")
    assert code(await client.post(purge, json={"confirm": job.uuid}, headers=bearer)) == (
        403, "admin_required")
    assert code(await client.delete(f"/jobs/{unknown}", headers=admin(catalog))) == (
        404, "job_not_found")
    assert code(await client.post(f"/jobs/{unknown}/purge", json={"confirm": unknown},
                                  headers=admin(catalog))) == (404, "job_not_found")
    assert code(await client.delete(f"/jobs/{queued.uuid}", headers=admin(catalog))) == (
        409, "job_active")
    for body in (None, {}, {"confirm": queued.uuid}, {"files": True}):
        refused = await client.post(purge, json=body, headers=admin(catalog))
        assert code(refused) == (400, "confirmation_required"), body
    assert code(await client.post(purge, json={"confirm": job.uuid, "everything": True},
                                  headers=admin(catalog))) == (422, "schema_violation")
    assert catalog.get_job(job.uuid).state == "CREATED"  # nothing of it changed
    assert catalog.get_job(queued.uuid).state == "QUEUED"


@pytest.mark.anyio
async def test_purge(catalog: Catalog, client: httpx.AsyncClient) -> None:
    job = make_job(catalog, 1)

    purged = await client.post(f"/jobs/{job.uuid}/purge", json={"confirm": job.uuid},
                               headers=admin(catalog))

    assert (purged.status_code, purged.json()) == (
        200, {"uuid": job.uuid, "purged": True, "files_removed": None})
    assert code(await client.get(f"/jobs/{job.uuid}")) == (404, "job_not_found")
    assert [(e.name, e.code, e.source) for e in reversed(catalog.audit_log(job.uuid))] == [
        ("delete", "deleted", "api"), ("purge", "purged", "api")]


# the command line ---------------------------------------------------------------------------
def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
    env["CATALOG_DB"] = f"sqlite:///{cwd}/c.db"
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


def document(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def failure(done: subprocess.CompletedProcess[str]) -> tuple[int, str]:
    assert done.stdout == ""
    return done.returncode, json.loads(done.stderr)["error"]["code"]


def test_the_command_line(tmp_path: Path) -> None:
    document(run(tmp_path, "init", "--json"))
    document(run(tmp_path, "pipeline", "add", "--name", "step", "--json"))
    job = document(run(tmp_path, "job", "create", "--pipeline", "step", "--data", '{"n": 1}',
                       "--json"))
    token = keys_from_env_or_file(tmp_path / ".catalog" / "secret.json").admin_token()
    uuid = job["uuid"]
    archive = tmp_path / "archive" / job["archive_path"].lstrip("/")

    refused = run(tmp_path, "job", "delete", uuid, "--token", job["token"], "--json")
    assert failure(refused) == (3, "admin_required")
    assert document(run(tmp_path, "job", "delete", uuid, "--token", token, "--json")) == {
        "uuid": uuid, "deleted": True}
    shown = run(tmp_path, "job", "show", uuid, "--json")
    again = run(tmp_path, "job", "delete", uuid, "--token", token, "--json")
    unconfirmed = run(tmp_path, "job", "purge", uuid, "--token", token, "--json")
    assert [failure(done) for done in (shown, again, unconfirmed)] == [
        (4, "job_deleted"), (4, "job_deleted"), (2, "confirmation_required")]
    archive.mkdir(parents=True)
    (archive / "out.txt").write_text("x")
    purged = document(run(tmp_path, "job", "purge", uuid, "--yes", "--files", "--token", token,
                          "--json"))
    assert purged == {"uuid": uuid, "purged": True, "files_removed": 1}
    assert not (archive / "out.txt").exists()
    assert failure(run(tmp_path, "job", "show", uuid, "--json")) == (4, "job_not_found")
    human = run(tmp_path, "job", "purge", uuid, "--yes", "--token", token)
    assert (human.returncode, human.stdout) == (4, "") and uuid in human.stderr
