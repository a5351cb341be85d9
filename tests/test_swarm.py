"""The Swarm surface in process (httpx's ASGI transport): tokens, the wire shapes the client
reads, refusals that store nothing, and jobs spawned into a dockerd of the tests' own
(tests/dockerimage.py). The unmodified client runs in test_swarm_client.py."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import dockerimage
import httpx
import pytest
from dockerimage import DockerDaemon

from catalog import Catalog
from catalog.compat.swarm import STATUS_OF_STATE, WITHHELD
from catalog.queue.waits import wait
from catalog.states import STATES
from catalog.tokens import Keys
from catalog.web import create_app

KEYS = Keys(b"s" * 32, b"w" * 32)
WORKER = {"authorization": KEYS.worker_token()}
docker_daemon = dockerimage.docker_daemon  # the session's fixture, used by name
CLIENT_STATUSES = {"new", "pending", "running", "completed", "failed", "shutdown", "rejected"}


def spawn_payload(**fields: Any) -> dict[str, Any]:
    """What chime-frb-api 3.4's ``spawn_job`` sends (every field, its defaults)."""
    return {"image_name": dockerimage.IMAGE, "command": ["sh", "-c"],
            "arguments": ["echo hello $WHO; echo oops >&2"], "job_name": "hello-1",
            "mount_archiver": True, "swarm_network": True, "job_mem_reservation": 268435456,
            "job_mem_limit": 4294967296, "job_cpu_limit": 1, "job_cpu_reservation": 1,
            "environment": {"WHO": "world"}, **fields}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Catalog]:
    monkeypatch.chdir(tmp_path)
    opened = Catalog.open(f"sqlite:///{tmp_path}/c.db", keys=KEYS, sqlite_synchronous="NORMAL")
    yield opened
    opened.close()


@pytest.fixture
async def client(catalog: Catalog) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(catalog)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as opened:
        yield opened
    app.state.swarm.close()


def swarm_jobs(catalog: Catalog) -> list[dict[str, Any]]:
    return [job for job in catalog.find_jobs(limit=1000).items
            if "job_name" in (job.get("data") or {})]


def test_every_state_has_a_status_the_client_knows() -> None:
    assert set(STATUS_OF_STATE) == set(STATES)
    assert set(STATUS_OF_STATE.values()) <= CLIENT_STATUSES


@pytest.mark.anyio
@pytest.mark.parametrize(("headers", "status", "code"), [
    ({}, 401, "token_required"),
    ({"authorization": "not-a-token"}, 403, "token_invalid"),
])
async def test_a_missing_or_wrong_token_is_refused_and_counted(
        catalog: Catalog, client: httpx.AsyncClient, headers: dict[str, str], status: int,
        code: str) -> None:
    for method, path in (("GET", "/auth/verify"), ("POST", "/auth/refresh"),
                         ("GET", "/v1/swarm/jobs"), ("POST", "/v1/swarm/spawn-job"),
                         ("GET", "/v1/swarm/job-status/x"), ("GET", "/v1/swarm/logs/x"),
                         ("GET", "/v1/swarm/kill-job/x"), ("GET", "/v1/swarm/prune-job/x")):
        answer = await client.request(method, path, headers=headers,
                                      json=spawn_payload() if method == "POST" else None)
        assert answer.status_code == status, (path, answer.text)
        assert answer.json() == {"error": {"code": code, "message": answer.json()["error"][
            "message"]}}
    assert catalog.flush_refusals() >= 1  # counted in the audit log, as every refusal
    assert swarm_jobs(catalog) == []


@pytest.mark.anyio
async def test_a_catalog_token_is_verified_and_refreshed(client: httpx.AsyncClient) -> None:
    assert (await client.get("/auth/verify", headers=WORKER)).json() == {"valid": True}
    admin = {"authorization": KEYS.admin_token()}
    assert (await client.get("/auth/verify", headers=admin)).json() == {"valid": True}
    refreshed = await client.post("/auth/refresh", headers=WORKER, json={"refresh_token": None})
    assert refreshed.status_code == 200
    assert refreshed.json()["access_token"] == KEYS.worker_token()
    odd = await client.post("/auth/refresh", headers=WORKER, json={"refresh": "x"})
    assert odd.status_code == 422 and odd.json()["error"]["code"] == "schema_violation"
    assert (await client.get("/version")).json()["name"] == "catalog"


@pytest.mark.anyio
@pytest.mark.parametrize(("path", "status", "code"), [
    ("/v1/swarm/job-status/(a", 400, "invalid_pattern"),
    ("/v1/swarm/prune-job/[z-a]", 400, "invalid_pattern"),
    ("/v1/swarm/job-status/(a|aa)%2Bb(?V1)", 400, "invalid_pattern"),
    ("/v1/swarm/kill-job/no-such-job", 404, "not_found"),
    ("/v1/swarm/logs/no-such-job", 404, "not_found"),
    ("/v1/swarm/kill-job/bad%20name!", 400, "invalid_input"),
])
async def test_bad_patterns_names_and_unknown_jobs_are_refused(
        catalog: Catalog, client: httpx.AsyncClient, path: str, status: int,
        code: str) -> None:
    answer = await client.get(path, headers=WORKER)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code


@pytest.mark.anyio
async def test_without_a_docker_daemon_spawn_says_why_and_stores_nothing(
        catalog: Catalog, client: httpx.AsyncClient, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-daemon.sock")
    answer = await client.post("/v1/swarm/spawn-job", headers=WORKER, json=spawn_payload())
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "engine_unavailable"
    assert "docker cannot run here" in answer.json()["error"]["message"]
    assert swarm_jobs(catalog) == []


@pytest.mark.anyio
@pytest.mark.parametrize(("fields", "status", "says"), [
    ({"job_name": "bad name"}, 400, "job name"),
    ({"job_name": "-starts-with-dash"}, 400, "job name"),
    ({"image_name": "Upper/Case"}, 422, "image_name"),
    ({"command": []}, 422, "command"),
    ({"job_mem_limit": 100}, 422, "job_mem_limit"),
    ({"job_mem_reservation": 2**40}, 422, "job_mem_reservation"),
    ({"environment": {"A B": "x"}}, 400, "environment variable"),
    ({"job_cpu_limit": 0}, 422, "job_cpu_limit"),
])
async def test_a_bad_spawn_is_refused_and_stores_nothing(
        catalog: Catalog, client: httpx.AsyncClient, fields: dict[str, Any], status: int,
        says: str) -> None:
    answer = await client.post("/v1/swarm/spawn-job", headers=WORKER,
                               json=spawn_payload(**fields))
    assert answer.status_code == status, answer.text
    assert says in answer.json()["error"]["message"]
    assert swarm_jobs(catalog) == []


@pytest.mark.anyio
async def test_an_image_not_here_is_refused_before_anything_runs(
        docker_daemon: DockerDaemon, catalog: Catalog, client: httpx.AsyncClient) -> None:
    answer = await client.post("/v1/swarm/spawn-job", headers=WORKER,
                               json=spawn_payload(image_name="chimefrb/not-here:latest"))
    assert answer.status_code == 400, answer.text
    assert "is not on this machine" in answer.json()["error"]["message"]
    assert swarm_jobs(catalog) == []


@pytest.mark.anyio
async def test_a_spawned_job_runs_in_docker_and_is_a_catalog_job(
        docker_daemon: DockerDaemon, catalog: Catalog, client: httpx.AsyncClient) -> None:
    answer = await client.post("/v1/swarm/spawn-job", headers=WORKER, json=spawn_payload(
        environment={"WHO": "world", "FRB_MASTER_ACCESS_TOKEN": "t0ken"}))
    assert answer.status_code == 200, answer.text
    uuid = answer.json()["uuid"]
    taken = await client.post("/v1/swarm/spawn-job", headers=WORKER, json=spawn_payload())
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "job_name_taken"
    assert STATUS_OF_STATE[wait(catalog, [uuid], timeout=60).jobs[uuid]] == "completed"

    assert (await client.get("/v1/swarm/jobs", headers=WORKER)).json() == ["hello-1"]
    status = await client.get("/v1/swarm/job-status/hel+o", headers=WORKER)
    assert status.json() == {"hello-1": "completed"}
    logs = (await client.get("/v1/swarm/logs/hello-1", headers=WORKER)).json()
    assert logs == {"hello-1": "hello world\noops\n"}

    job = catalog.get_job(uuid)
    assert job.data["image"] == dockerimage.IMAGE
    assert job.data["command"] == ["sh", "-c", "echo hello $WHO; echo oops >&2"]
    assert job.data["environment"] == {"WHO": "world", "FRB_MASTER_ACCESS_TOKEN": WITHHELD}
    assert job.data["limits"]["memory"] == 4294967296
    names = [entry.name for entry in job.history]
    assert names.index("queue") < names.index("run") < names.index("finish")
    assert "t0ken" not in str(catalog.store.get_job(uuid))
    # the container's output, archived and indexed by the worker right after the job's
    # finish, which is what woke the wait
    deadline = time.monotonic() + 30
    while len(logged := catalog.find_files(job=uuid).items) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(str(f["path"]).rsplit("/", 1)[-1] for f in logged) == ["stderr.txt",
                                                                         "stdout.txt"]
    assert all(f["checksums"]["sha256"] and f["generated_by"] == [uuid] for f in logged)

    pruned = await client.get("/v1/swarm/prune-job/^hello", headers=WORKER)
    assert pruned.json() == {"hello-1": True}
    assert (await client.get("/v1/swarm/jobs", headers=WORKER)).json() == []
    # hidden here, its provenance whole
    assert STATUS_OF_STATE[catalog.get_job(uuid).state] == "completed"
    again = await client.post("/v1/swarm/spawn-job", headers=WORKER, json=spawn_payload())
    assert again.status_code == 200 and again.json()["uuid"] != uuid  # the name is free
    ended = wait(catalog, [again.json()["uuid"]], timeout=60).jobs[again.json()["uuid"]]
    assert STATUS_OF_STATE[ended] == "completed"


@pytest.mark.anyio
async def test_kill_cancels_the_job_and_removes_its_container(
        docker_daemon: DockerDaemon, catalog: Catalog, client: httpx.AsyncClient) -> None:
    spawned = await client.post("/v1/swarm/spawn-job", headers=WORKER, json=spawn_payload(
        job_name="sleeper", command=["sleep"], arguments=["300"]))
    uuid = spawned.json()["uuid"]
    engine = client._transport.app.state.swarm.engine  # type: ignore[attr-defined]
    for _ in range(300):  # until the container runs
        if engine.state(uuid).get("Running"):
            break
        wait(catalog, [uuid], timeout=0.1)
    assert (await client.get("/v1/swarm/job-status/sleeper", headers=WORKER)).json() == {
        "sleeper": "running"}
    not_yet = await client.get("/v1/swarm/prune-job/sleep", headers=WORKER)
    assert not_yet.json() == {"sleeper": False}  # a running job is not pruned
    killed = await client.get("/v1/swarm/kill-job/sleeper", headers=WORKER)
    assert killed.json() == {"sleeper": True}
    assert catalog.get_job(uuid).state == "CANCELLED"
    assert engine.state(uuid) == {}
    assert (await client.get("/v1/swarm/job-status/sleeper", headers=WORKER)).json() == {
        "sleeper": "shutdown"}


@pytest.mark.anyio
async def test_a_failing_container_is_a_failed_job_with_its_logs(
        docker_daemon: DockerDaemon, catalog: Catalog, client: httpx.AsyncClient) -> None:
    spawned = await client.post("/v1/swarm/spawn-job", headers=WORKER, json=spawn_payload(
        job_name="fails", arguments=["echo going down; exit 3"]))
    uuid = spawned.json()["uuid"]
    assert wait(catalog, [uuid], timeout=60).jobs[uuid] == "FAILED"
    assert (await client.get("/v1/swarm/job-status/fails", headers=WORKER)).json() == {
        "fails": "failed"}
    assert (await client.get("/v1/swarm/logs/fails", headers=WORKER)).json() == {
        "fails": "going down\n"}
    assert catalog.get_job(uuid).history[-1].data.get("error") == \
        "the container exited with code 3"


@pytest.mark.anyio
async def test_a_stopping_server_stops_its_containers_and_fails_their_jobs(
        docker_daemon: DockerDaemon, catalog: Catalog, client: httpx.AsyncClient) -> None:
    spawned = await client.post("/v1/swarm/spawn-job", headers=WORKER, json=spawn_payload(
        job_name="orphan", command=["sleep"], arguments=["300"]))
    uuid = spawned.json()["uuid"]
    runner = client._transport.app.state.swarm  # type: ignore[attr-defined]
    for _ in range(300):
        if uuid in runner.runs:
            break
        wait(catalog, [uuid], timeout=0.1)
    runner.close()
    job = catalog.get_job(uuid)
    assert job.state == "FAILED"
    assert job.history[-1].data.get("error") == "the catalog server stopped"
    assert runner.engine.state(uuid) == {}


@pytest.mark.anyio
async def test_a_queued_job_and_its_withheld_values_survive_a_restart(
        docker_daemon: DockerDaemon, catalog: Catalog, tmp_path: Path) -> None:
    """A server that acknowledged a spawn and died before its thread withdrew it: the next
    server finds the job queued, its withheld value kept apart (mode 0600), and runs it."""
    first = create_app(catalog)
    first.state.swarm.stop.set()  # this server withdraws nothing: it "dies" after answering
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=first),
                                 base_url="http://test") as opened:
        answer = await opened.post("/v1/swarm/spawn-job", headers=WORKER, json=spawn_payload(
            arguments=["echo hello $MY_TOKEN"], environment={"MY_TOKEN": "t0ken"}))
    assert answer.status_code == 200, answer.text
    uuid = answer.json()["uuid"]
    for thread in first.state.swarm.threads:
        thread.join(30)
    assert catalog.get_job(uuid, history=False).state == "QUEUED"
    kept = tmp_path / ".catalog" / "swarm-secrets" / f"{uuid}.json"
    assert kept.stat().st_mode & 0o777 == 0o600
    assert kept.parent.stat().st_mode & 0o777 == 0o700
    assert "t0ken" not in str(catalog.store.get_job(uuid))

    second = create_app(catalog)  # the restarted server
    try:
        assert STATUS_OF_STATE[wait(catalog, [uuid], timeout=60).jobs[uuid]] == "completed"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=second),
                                     base_url="http://test") as opened:
            logs = (await opened.get("/v1/swarm/logs/hello-1", headers=WORKER)).json()
        assert logs == {"hello-1": "hello t0ken\n"}
        assert not kept.exists()  # removed once the job ended
    finally:
        second.state.swarm.close()


@pytest.fixture
async def networked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                    ) -> AsyncIterator[tuple[Catalog, httpx.AsyncClient]]:
    """A catalog whose Swarm networks are 'default' and 'isolated' (docker's 'none') and
    'gone' (a docker network that does not exist)."""
    monkeypatch.chdir(tmp_path)
    opened = Catalog.open(f"sqlite:///{tmp_path}/n.db", keys=KEYS, sqlite_synchronous="NORMAL",
                          swarm_networks="default=none, isolated=none, gone=no-such-net")
    app = create_app(opened)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as client:
        yield opened, client
    app.state.swarm.close()
    opened.close()


@pytest.mark.anyio
@pytest.mark.parametrize(("network", "says"), [
    ("cluster", "swarm_network 'cluster' is not a network of this catalog; its networks: "
                "default, gone, isolated"),
    ("gone", "swarm_network 'gone' is docker network 'no-such-net', which does not exist here "
              "(setting swarm_networks)"),
])
async def test_an_unknown_swarm_network_is_refused_naming_it(
        docker_daemon: DockerDaemon, networked: tuple[Catalog, httpx.AsyncClient],
        network: str, says: str) -> None:
    catalog, client = networked
    answer = await client.post("/v1/swarm/spawn-job", headers=WORKER,
                               json=spawn_payload(swarm_network=network))
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == {"code": "invalid_input", "message": says}
    assert swarm_jobs(catalog) == []


@pytest.mark.anyio
async def test_a_swarm_network_joins_its_docker_network(
        docker_daemon: DockerDaemon, networked: tuple[Catalog, httpx.AsyncClient]) -> None:
    catalog, client = networked
    engine = client._transport.app.state.swarm.engine  # type: ignore[attr-defined]
    waits = ["trap 'exit 0' TERM; sleep 30 & wait"]
    uuids = {}
    for name, network in (("by-name", "isolated"), ("by-default", True), ("no-network", False)):
        answer = await client.post("/v1/swarm/spawn-job", headers=WORKER, json=spawn_payload(
            job_name=name, swarm_network=network, arguments=waits))
        assert answer.status_code == 200, answer.text
        uuids[name] = answer.json()["uuid"]
    modes = {}
    for name, uuid in uuids.items():
        for _ in range(300):
            if engine.state(uuid).get("Running"):
                break
            wait(catalog, [uuid], timeout=0.1)
        done = engine.call("inspect", "--format", "{{.HostConfig.NetworkMode}}", uuid)
        modes[name] = done.stdout.strip()
        await client.get(f"/v1/swarm/kill-job/{name}", headers=WORKER)
    assert modes["by-name"] == modes["by-default"] == "none"
    assert modes["no-network"] != "none"
    assert catalog.get_job(uuids["by-name"]).data["network"] == "none"
    assert "network" not in catalog.get_job(uuids["no-network"]).data


@pytest.mark.anyio
async def test_mount_archiver_puts_the_archive_path_in_the_container_and_indexes_it(
        docker_daemon: DockerDaemon, catalog: Catalog, client: httpx.AsyncClient) -> None:
    writes = ("mkdir -p /archive/tables && echo a,b > /archive/tables/t.csv && "
              "echo note > /archive/note.txt && echo written")
    mounted = await client.post("/v1/swarm/spawn-job", headers=WORKER, json=spawn_payload(
        job_name="archiver", arguments=[writes]))
    unmounted = await client.post("/v1/swarm/spawn-job", headers=WORKER, json=spawn_payload(
        job_name="no-archiver", mount_archiver=False, arguments=["[ ! -e /archive ]"]))
    uuid, other = mounted.json()["uuid"], unmounted.json()["uuid"]
    assert wait(catalog, [uuid, other], timeout=60).jobs == {uuid: "FINISHED",
                                                             other: "FINISHED"}
    job = catalog.get_job(uuid)

    def products() -> dict[str, dict[str, Any]]:
        return {str(f["path"]).removeprefix(job.archive_path + "/"): f
                for f in catalog.find_files(job=uuid).items if f["kind"] == "product"}

    deadline = time.monotonic() + 30  # indexed by the worker right after the finish
    while len(products()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(products()) == ["note.txt", "tables/t.csv"], (
        catalog.find_files(job=uuid).items, catalog.get_job(uuid).history)
    assert all(f["checksums"]["sha256"] and f["generated_by"] == [uuid]
               for f in products().values())
    assert not [f for f in catalog.find_files(job=other).items if f["kind"] == "product"]
