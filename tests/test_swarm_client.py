"""The unmodified chime-frb-api 3.4.0 Swarm client (``FRBMaster(base_url, access_token).swarm``)
against ``catalog serve`` on 127.0.0.1, in the client's own virtual environment (built once,
see test_chime_clients.py). With the tests' own dockerd (tests/dockerimage.py): spawn, list,
status by pattern, logs, kill and prune, checked on the catalog's side too. Without docker the
server's clear refusal is what the client sees. A wrong token is refused either way."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dockerimage
import pytest
from dockerimage import DockerDaemon
from test_chime_clients import Client, client_venv, start_server

from catalog.engines.docker import LABEL

pytestmark = pytest.mark.slow
docker_daemon = dockerimage.docker_daemon  # the session's fixture, used by name

# The client's calls, one JSON line each on stdin; each answer (or the HTTP error) a line.
SWARM = '''
import json, os, sys, time
import requests
from chime_frb_api.backends.frb_master import FRBMaster

# 3.4.0 reads its token from the environment, over the access_token argument (set to None
# when the variable is missing): users set CHIME_FRB_ACCESS_TOKEN.
os.environ["CHIME_FRB_ACCESS_TOKEN"] = sys.argv[2]
swarm = FRBMaster(base_url=sys.argv[1], access_token=sys.argv[2]).swarm
for line in sys.stdin:
    call = json.loads(line)
    op, args = call["op"], call.get("args", [])
    try:
        if op == "until_ended":  # the client's own helper, polled for a bounded time
            deadline = time.monotonic() + 60
            while swarm.jobs_running(args) and time.monotonic() < deadline:
                time.sleep(0.2)
            answer = swarm.get_job_status(args[0])
        else:
            answer = getattr(swarm, op)(*args, **call.get("kwargs", {}))
        print(json.dumps({"ok": answer}), flush=True)
    except requests.exceptions.HTTPError as exc:
        print(json.dumps({"status": exc.response.status_code,
                          "body": exc.response.json()}), flush=True)
'''


def calls(client: Client, token: str, *ops: dict[str, Any]) -> list[dict[str, Any]]:
    return client.python(SWARM, client.server.base_url, token,
                         stdin="".join(json.dumps(op) + "\n" for op in ops))


@pytest.fixture(scope="module")
def venv() -> Path:
    return client_venv("chime-frb-api")


@pytest.fixture
def no_docker(venv: Path, tmp_path: Path) -> Iterator[Client]:
    (tmp_path / "catalog").mkdir()
    server = start_server(tmp_path / "catalog", DOCKER_HOST=f"unix://{tmp_path}/none.sock")
    try:
        yield Client(venv, server, tmp_path / "home")
    finally:
        server.stop()


@pytest.fixture
def with_docker(venv: Path, docker_daemon: DockerDaemon, tmp_path: Path) -> Iterator[Client]:
    (tmp_path / "catalog").mkdir()
    server = start_server(tmp_path / "catalog", DOCKER_HOST=docker_daemon.host)
    try:
        yield Client(venv, server, tmp_path / "home")
    finally:
        server.stop()


def test_without_docker_the_client_gets_the_refusals(no_docker: Client) -> None:
    token = no_docker.server.worker_token  # type: ignore[attr-defined]
    spawned, listed, status, unknown = calls(
        no_docker, token,
        {"op": "spawn_job", "args": [dockerimage.IMAGE, ["echo"], ["hi"], "nodocker-1"]},
        {"op": "get_jobs"}, {"op": "get_job_status", "args": ["nodocker"]},
        {"op": "kill_job", "args": ["nodocker-1"]})
    assert spawned["status"] == 503
    assert spawned["body"]["error"]["code"] == "engine_unavailable"
    assert "docker cannot run here" in spawned["body"]["error"]["message"]
    assert listed == {"ok": []} and status == {"ok": {}}
    assert unknown["status"] == 404


def test_a_wrong_token_is_refused(no_docker: Client) -> None:
    refused, = calls(no_docker, "not-a-catalog-token", {"op": "get_jobs"})
    # /auth/verify said no: the client sends no token, and the call is refused.
    assert refused["status"] == 401 and refused["body"]["error"]["code"] == "token_required"
    log = no_docker.server.output()
    assert "/auth/verify" in log and "not-a-catalog-token" not in log


def test_spawn_list_status_logs_kill_and_prune(with_docker: Client) -> None:
    server = with_docker.server
    token = server.worker_token  # type: ignore[attr-defined]
    hello, sleeper = calls(
        with_docker, token,
        {"op": "spawn_job", "args": [dockerimage.IMAGE, ["sh", "-c"], ["echo hi from $WHO"],
                                     "client-hello"],
         "kwargs": {"environment": {"WHO": "swarm"}, "job_mem_limit": 64 * 2**20,
                    "job_mem_reservation": 16 * 2**20, "job_cpu_limit": 0.5}},
        {"op": "spawn_job", "args": [dockerimage.IMAGE, ["sleep"], ["300"],
                                     "client-sleeper"]})
    assert hello["ok"]["job_name"] == "client-hello", hello
    assert sleeper["ok"]["job_name"] == "client-sleeper", sleeper
    ended, listed, status, logs, killed, after_kill, pruned, after_prune = calls(
        with_docker, token,
        {"op": "until_ended", "args": ["client-hello"]},
        {"op": "get_jobs"},
        {"op": "get_job_status", "args": ["^client-"]},
        {"op": "get_logs", "args": ["client-hello"]},
        {"op": "kill_job", "args": ["client-sleeper"]},
        {"op": "get_job_status", "args": ["sleeper$"]},
        {"op": "prune_jobs", "args": ["client-"]},
        {"op": "get_jobs"})
    assert ended == {"ok": {"client-hello": "completed"}}
    assert listed == {"ok": ["client-hello", "client-sleeper"]}
    assert status["ok"]["client-hello"] == "completed"
    assert status["ok"]["client-sleeper"] in ("pending", "running")
    assert logs == {"ok": {"client-hello": "hi from swarm\n"}}
    assert killed == {"ok": {"client-sleeper": True}}
    assert after_kill == {"ok": {"client-sleeper": "shutdown"}}
    assert pruned == {"ok": {"client-hello": True, "client-sleeper": True}}
    assert after_prune == {"ok": []}

    # On the catalog's side: two jobs, their histories whole after the prune.
    with server.client() as http:
        done = http.get(f"/jobs/{hello['ok']['uuid']}/history").json()["history"]
        cancelled = http.get(f"/jobs/{sleeper['ok']['uuid']}/history").json()["history"]
        job = http.get(f"/jobs/{hello['ok']['uuid']}").json()
    names = [entry["name"] for entry in done]
    assert "run" in names and "finish" in names
    assert "cancel" in [entry["name"] for entry in cancelled]
    assert job["data"]["limits"]["memory"] == 64 * 2**20
    assert job["data"]["job_name"] == "client-hello"


def _containers(host: str) -> dict[str, str]:
    """The catalog's containers on the daemon at ``host``: name -> state."""
    done = subprocess.run(["docker", "ps", "--all", "--filter", f"label={LABEL}", "--format",
                           "{{.Names}}\t{{.State}}"], capture_output=True, text=True,
                          env={**os.environ, "DOCKER_HOST": host}, timeout=60, check=True)
    return dict(line.split("\t", 1) for line in done.stdout.splitlines())


def _starts(host: str, since: str) -> list[str]:
    done = subprocess.run(["docker", "events", "--since", since, "--until",
                           str(int(time.time()) + 1), "--filter", "event=start", "--filter",
                           f"label={LABEL}", "--format", "{{.Actor.Attributes.name}}"],
                          capture_output=True, text=True, timeout=60, check=True,
                          env={**os.environ, "DOCKER_HOST": host})
    return done.stdout.split()


def test_jobs_running_when_the_server_is_killed_are_adopted_on_restart(
        with_docker: Client, docker_daemon: DockerDaemon) -> None:
    """``catalog serve`` SIGKILLed while two containers run, started again on the same
    database: the job that ends meanwhile is FINISHED once with its logs and exit code; the
    other is killed through the API after the restart, and its container with it."""
    server = with_docker.server
    token = server.worker_token  # type: ignore[attr-defined]
    since = str(int(time.time()) - 1)
    spawned = calls(
        with_docker, token,
        {"op": "spawn_job", "args": [dockerimage.IMAGE, ["sh", "-c"],
                                     ["echo started; sleep 3; echo ended"], "adopted-1"]},
        {"op": "spawn_job", "args": [dockerimage.IMAGE, ["sleep"], ["300"], "adopted-2"]})
    uuids = [answer["ok"]["uuid"] for answer in spawned]
    deadline = time.monotonic() + 60
    while any(_containers(docker_daemon.host).get(u) != "running" for u in uuids):
        assert time.monotonic() < deadline, "the containers did not start"
        time.sleep(0.1)
    server.kill()  # SIGKILL: no stop of any kind
    assert all(_containers(docker_daemon.host)[u] == "running" for u in uuids)
    server.start()
    ended, killed, statuses, logs = calls(
        with_docker, token,
        {"op": "until_ended", "args": ["adopted-1"]},
        {"op": "kill_job", "args": ["adopted-2"]},
        {"op": "get_job_status", "args": ["^adopted-"]},
        {"op": "get_logs", "args": ["adopted-1"]})
    assert ended == {"ok": {"adopted-1": "completed"}}
    assert killed == {"ok": {"adopted-2": True}}
    assert statuses == {"ok": {"adopted-1": "completed", "adopted-2": "shutdown"}}
    assert logs == {"ok": {"adopted-1": "started\nended\n"}}
    with server.client() as http:
        done = http.get(f"/jobs/{uuids[0]}").json()
        history = [e["name"] for e in http.get(f"/jobs/{uuids[0]}/history").json()["history"]]
    assert (done["state"], done["results"]) == ("FINISHED", {"returncode": 0})
    assert (history.count("run"), history.count("finish")) == (1, 1)
    deadline = time.monotonic() + 30
    while _containers(docker_daemon.host):
        assert time.monotonic() < deadline, "the containers were not removed"
        time.sleep(0.1)
    assert sorted(_starts(docker_daemon.host, since)) == sorted(uuids)  # none started twice
