"""``catalog run --engine docker``: the dispatcher driving containers of a dockerd of the tests'
own (tests/dockerimage.py): results and a product indexed with fixity, each way a container
ends (exit code, OOM, timeout, removed outside the catalog), resources reaching docker, cancel
from the catalog, a dispatcher SIGKILLed and restarted (every job ends once, no container
started twice), the intent recorded before ``docker run`` and found again, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dockerimage
import pytest
from dockerimage import DockerDaemon
from test_web_e2e import CATALOG, Server

from catalog import Catalog
from catalog.engines.docker import LABEL
from catalog.engines.docker_fleet import DISPATCHER_LABEL
from catalog.models import Job
from catalog.queue.models import WorkFilter
from catalog.worker import LocalQueue

pytestmark = pytest.mark.slow
docker_daemon = dockerimage.docker_daemon  # the session's fixture, used by name
IMAGE = dockerimage.IMAGE


@pytest.fixture
def home(tmp_path: Path, docker_daemon: DockerDaemon,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    server = Server.init(tmp_path)
    server.env["DOCKER_HOST"] = docker_daemon.host
    server.cli("pipeline", "add", "--name", "demo")
    monkeypatch.chdir(tmp_path)
    yield server


@pytest.fixture
def catalog(home: Server) -> Iterator[Catalog]:
    with Catalog.open(home.env["CATALOG_DB"]) as opened:
        yield opened


def dispatcher(home: Server, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(CATALOG), "--json", "run", "demo", "--engine", "docker", "--sleep", "0.2",
         "--workdir", str(home.directory / "docker-work"), *args], cwd=home.directory,
        env=home.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"dispatcher {process.pid} did not end in {timeout} s: {err}")
    assert process.returncode == 0, err
    return dict(json.loads(out))


def docker(*args: str) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def containers() -> dict[str, str]:
    """The catalog's containers on the daemon: name -> state."""
    lines = docker("ps", "--all", "--filter", f"label={LABEL}", "--format",
                   "{{.Names}}\t{{.State}}").splitlines()
    return dict(line.split("\t", 1) for line in lines)


def starts_since(since: str, names: list[str]) -> list[str]:
    """Which of ``names`` (containers of the catalog's) started since ``since``, once per start
    (docker's events). ``since`` is in whole seconds, a second early: a container the test
    before started in that second is not one of ``names``, and is left out."""
    out = docker("events", "--since", since, "--until", str(int(time.time()) + 1),
                 "--filter", "event=start", "--filter", f"label={LABEL}",
                 "--format", "{{.Actor.Attributes.name}}")
    return [name for name in out.split() if name in names]


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def errors(job: Job) -> list[str]:
    return [str(entry.data.get("error")) for entry in job.history if entry.name == "fail"]


def test_every_way_a_container_ends_reaches_the_catalog(home: Server, catalog: Catalog) -> None:
    writes = ("echo a,b > /work/out.csv; echo done; "
              "echo \"({'rows': 1}, ['/work/out.csv'], [])\"")
    told = ("echo \"{'job': '$CATALOG_JOB_UUID', 'attempt': '$CATALOG_JOB_ATTEMPT', "
            "'db': '${CATALOG_DB:-none}', 'archive': '${CATALOG_ARCHIVE_PATH:-none}'}\"")
    works: dict[str, tuple[dict[str, Any], dict[str, Any] | None, int]] = {
        "product": ({"image": IMAGE, "command": ["sh", "-c", writes]}, None, 0),
        "default_image": ({"command": ["echo", "{'n': 2}"]}, None, 0),
        # told its job; not this host's paths, which mean nothing in a container
        "told": ({"image": IMAGE, "command": ["sh", "-c", told]}, None, 0),
        "exits": ({"image": IMAGE, "command": ["sh", "-c", "exit 3"]}, None, 0),
        "hog": ({"image": IMAGE, "command": ["dd", "if=/dev/zero", "of=/dev/null", "bs=256M",
                                             "count=1"]}, {"memory": 8}, 0),
        "slow": ({"image": IMAGE, "command": ["sleep", "300"]}, None, 0),
        "unknown_image": ({"image": "not-here/nothing:1", "command": ["true"]}, None, 0),
        "function": ({"image": IMAGE, "function": "work.jobs.add"}, None, 0),
        "too_many_cores": ({"image": IMAGE, "command": ["true", "cores"]},
                           {"cores": (os.cpu_count() or 1) + 1}, 0),
    }
    uuids = {key: catalog.submit("demo", work, retries=retries, resources=resources,
                                 timeout=2 if key == "slow" else 3600).uuid
             for key, (work, resources, retries) in works.items()}
    report = finish(dispatcher(home, "--lives", str(len(works)), "--lease", "10",
                               "--image", IMAGE))
    assert sorted(a["uuid"] for a in report["attempts"]) == sorted(uuids.values())
    assert report["worker"].startswith("docker:")
    jobs = {key: catalog.get_job(uuid) for key, uuid in uuids.items()}

    product = jobs["product"]
    assert (product.state, product.results) == ("FINISHED", {"rows": 1})
    files = {str(f["name"]): f for f in catalog.find_files(job=product.uuid).items}
    assert files["out.csv"]["kind"] == "product" and files["out.csv"]["checksums"]
    assert files["out.csv"]["generated_by"] == [product.uuid]
    assert "stdout.txt" in files  # the container's output, archived and indexed
    assert jobs["default_image"].results == {"n": 2}
    assert jobs["told"].results == {"job": uuids["told"], "attempt": "1", "db": "none",
                                    "archive": "none"}
    assert errors(jobs["exits"]) == ["docker FAILED: the command exited with code 3"]
    assert errors(jobs["hog"])[0].startswith("docker OOMKILLED: the container went past its "
                                             "memory limit")
    assert errors(jobs["slow"]) == ["docker TIMEOUT: the container ran past the job's 2 s "
                                    "and was stopped"]
    assert "image 'not-here/nothing:1' is not on this machine" in errors(
        jobs["unknown_image"])[0]
    assert "names no command" in errors(jobs["function"])[0]
    assert "CPU limit" in errors(jobs["too_many_cores"])[0]
    assert all(job.state == "FAILED" for key, job in jobs.items()
               if key not in ("product", "default_image", "told"))
    assert containers() == {}  # every container removed once its attempt was reported
    assert not any((home.directory / "docker-work").iterdir())


def test_resources_reach_docker_and_a_cancel_removes_the_container(
        home: Server, catalog: Catalog) -> None:
    uuid = catalog.submit("demo", {"image": IMAGE, "command": ["sleep", "300"]},
                          resources={"cores": 1, "memory": 64}).uuid
    process = dispatcher(home, "--lives", "1", "--lease", "6")
    wait_for(lambda: containers().get(uuid) == "running", 60, "the container to run")
    found = json.loads(docker("inspect", uuid))[0]
    assert found["HostConfig"]["NanoCpus"] == 1_000_000_000
    assert found["HostConfig"]["Memory"] == 64 * 2**20
    assert found["Config"]["Labels"][DISPATCHER_LABEL].startswith("docker:")
    assert found["Config"]["WorkingDir"] == "/work"
    catalog.cancel(uuid, "not needed after all", source="test")
    report = finish(process, timeout=60)
    assert report["attempts"] == [{"uuid": uuid, "state": "abandoned",
                                   "error": "the lease was lost"}]
    assert uuid not in containers()
    assert catalog.get_job(uuid).state == "CANCELLED"


def test_a_container_removed_outside_the_catalog_cancels_its_job(
        home: Server, catalog: Catalog) -> None:
    uuid = catalog.submit("demo", {"image": IMAGE, "command": ["sleep", "300"]}).uuid
    process = dispatcher(home, "--lives", "1")
    wait_for(lambda: containers().get(uuid) == "running", 60, "the container to run")
    docker("rm", "--force", uuid)
    report = finish(process, timeout=60)
    assert report["attempts"][0]["state"] == "CANCELLED"
    job = catalog.get_job(uuid)
    assert job.state == "CANCELLED"
    assert job.history[-1].data == {
        "reason": "docker REMOVED: the container was removed outside the catalog"}


def test_a_dispatcher_killed_and_restarted_ends_every_job_once(
        home: Server, catalog: Catalog) -> None:
    since = str(int(time.time()) - 1)
    uuids = [catalog.submit("demo", {"image": IMAGE, "command": [
        "sh", "-c", f"sleep 3; echo \"{{'i': {i}}}\""]}).uuid for i in range(4)]
    first = dispatcher(home, "--lives", "4", "--lease", "30", "--name", "docker-test")
    wait_for(lambda: all(containers().get(u) == "running" for u in uuids), 60,
             "four containers")
    os.kill(first.pid, signal.SIGKILL)
    first.communicate()
    time.sleep(3.5)  # some end while no dispatcher follows them
    report = finish(dispatcher(home, "--lives", "0", "--lease", "30", "--name",
                               "docker-test"), timeout=60)
    assert sorted(a["uuid"] for a in report["attempts"]) == sorted(uuids)
    for i, uuid in enumerate(uuids):
        job = catalog.get_job(uuid)
        assert (job.state, job.results, job.queue.attempt if job.queue else None) == (
            "FINISHED", {"i": i}, 1)
        assert [e.name for e in job.history].count("finish") == 1
    started = starts_since(since, uuids)
    assert sorted(started) == sorted(uuids)  # none started twice
    assert containers() == {}


def test_an_intent_that_never_reached_docker_is_started_on_restart(
        home: Server, catalog: Catalog) -> None:
    """Killed after writing the intent: before ``docker run`` (no container), and inside it
    (created, never started). The restarted dispatcher runs both, once."""
    since = str(int(time.time()) - 1)
    queue = LocalQueue(catalog)
    root = home.directory / "docker-work"
    held = []
    for i, create in enumerate((False, True)):
        catalog.submit("demo", {"image": IMAGE, "command": ["echo", f"{{'i': {i}}}"]})
        job = queue.withdraw(WorkFilter(pipelines=["demo"]), "docker-test", 30)
        assert job is not None
        workdir = root / job.uuid
        workdir.mkdir(parents=True)
        (workdir / ".intent").write_text(json.dumps({
            "work": job.work(), "timeout": job.timeout, "token": job.token, "attempt": 1}))
        if create:
            docker("create", "--name", job.uuid, "--label", f"{LABEL}={job.uuid}",
                   "--mount", f"type=bind,source={workdir},target=/work", "--workdir", "/work",
                   IMAGE, "echo", f"{{'i': {i}}}")
        held.append(job.uuid)
    report = finish(dispatcher(home, "--lives", "0", "--name", "docker-test"), timeout=60)
    assert sorted(a["uuid"] for a in report["attempts"]) == sorted(held)
    assert [catalog.get_job(uuid).results for uuid in held] == [{"i": 0}, {"i": 1}]
    assert sorted(starts_since(since, held)) == sorted(held)


BAD_RUNS = [
    (["--engine", "kubernetes"], {}, "unknown engine 'kubernetes': local, slurm or docker"),
    (["--engine", "docker", "--image", "not-here/nothing:1"], {},
     "--image 'not-here/nothing:1' is not on this machine"),
    (["--engine", "docker", "--report-url", "http://127.0.0.1:9"], {},
     "--report-url is for --engine slurm"),
    (["--image", IMAGE], {}, "--image is for --engine docker"),
    (["--engine", "docker", "--command", "true"], {},
     "--engine docker runs each job's own function or command"),
    (["--engine", "docker"], {"DOCKER_HOST": "unix:///nonexistent/docker.sock"},
     "--engine docker: the docker daemon does not answer"),
]


def test_bad_input_is_refused_clearly(home: Server, catalog: Catalog) -> None:
    uuid = catalog.submit("demo", {"image": IMAGE, "command": ["true"]}).uuid
    for args, env, message in BAD_RUNS:
        done = subprocess.run([str(CATALOG), "run", "demo", "--lives", "1", *args],
                              cwd=home.directory, env={**home.env, **env},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and message in done.stderr, (args, done.stderr)
    assert catalog.get_job(uuid).state == "QUEUED"  # nothing was taken
