"""The slurm engine and ``catalog run --engine slurm`` against a real one-node cluster started by
this module (tests/slurmcluster.py): results and products indexed with fixity, exit codes,
TIMEOUT, memory limits, cancellation from the catalog, 200 jobs, a dispatcher SIGKILLed and
restarted, a job that dies without a word, and bad input.

Without Slurm (or root) the tests are skipped, saying why; under ``CI=true`` that is a failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import slurmcluster
from test_web_e2e import CATALOG, Server

from catalog import Catalog
from catalog.engines.slurm import SlurmEngine, check_name
from catalog.engines.slurm_client import SlurmClient

pytestmark = pytest.mark.slow

FUNCTIONS = '''
import os

def add(a, b):
    with open("sum.csv", "w") as handle:
        handle.write(f"a,b,sum\\n{a},{b},{a + b}\\n")
    return {"sum": a + b, "token_seen": bool(os.environ.get("CATALOG_JOB_TOKEN"))}, \\
        ["sum.csv"], []
'''


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[slurmcluster.Cluster]:
    reason = slurmcluster.why_not()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and no Slurm cluster can be started: {reason}")
        pytest.skip(reason)
    started = slurmcluster.start(tmp_path_factory.mktemp("slurm"))
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(started.conf)
    try:
        yield started
    finally:
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
        started.stop()
        for pid in started.pids.values():
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


@pytest.fixture
def home(tmp_path: Path, cluster: slurmcluster.Cluster) -> Iterator[Server]:
    tmp_path.chmod(0o755)
    server = Server.init(tmp_path)
    server.env["SLURM_CONF"] = str(cluster.conf)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "__init__.py").write_text("")
    (tmp_path / "work" / "jobs.py").write_text(textwrap.dedent(FUNCTIONS))
    server.cli("pipeline", "add", "--name", "demo")
    yield server


def submit(home: Server, data: dict[str, Any], *options: str) -> str:
    out = home.cli("--json", "submit", "--pipeline", "demo", "--data", json.dumps(data),
                   *options)
    return str(json.loads(out)["uuid"])


def job(home: Server, uuid: str) -> dict[str, Any]:
    return dict(json.loads(home.cli("--json", "job", "show", uuid)))


def fails(home: Server, uuid: str) -> list[str]:
    return [e["data"]["error"] for e in job(home, uuid)["history"] if e["name"] == "fail"]


def dispatcher(home: Server, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(CATALOG), "--json", "run", "demo", "--engine", "slurm", "--sleep", "0.2",
         "--workdir", str(home.directory / "slurm-work"), *args], cwd=home.directory,
        env=home.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"dispatcher {process.pid} did not end in {timeout} s")
    assert process.returncode == 0, err
    return dict(json.loads(out))


def squeue_names(cluster: slurmcluster.Cluster) -> dict[str, str]:
    return {s.name: s.state for s in SlurmClient(cluster.env).states().values()}


def jobcomp_names(cluster: slurmcluster.Cluster) -> list[str]:
    return [s.name for s in SlurmClient(cluster.env).ended_from_log().values()]


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_every_end_state_reaches_the_catalog_with_its_reason(
        home: Server, cluster: slurmcluster.Cluster) -> None:
    # resources inside data (their former place) are taken as the queue attribute
    added = submit(home, {"function": "work.jobs.add", "parameters": {"a": 2, "b": 3},
                          "resources": {"cores": 1, "memory": "200M", "time": 120}})
    printed = submit(home, {"command": ["python3", "-c", "print({'n': 1})"]})
    exits = submit(home, {"command": ["sh", "-c", "exit 3"]}, "--retries", "1")
    silent = submit(home, {"command": ["sh", "-c", "kill -9 $$"]}, "--retries", "1")
    hog = submit(home, {"command": ["python3", "-c", "x = bytearray(400 << 20); "
                                    "import time; time.sleep(5)"]}, "--memory", "30M",
                 "--retries", "1")
    slow = submit(home, {"command": ["sleep", "300"]}, "--time", "1m", "--retries", "1")
    # Resources are no part of a job's identity: the two need different data to be two jobs.
    too_big = submit(home, {"command": ["true", "big"]}, "--cores", "64", "--retries", "1")
    too_long = submit(home, {"command": ["true", "long"]}, "--time", "2h", "--retries", "1")
    report = finish(dispatcher(home, "--lives", "8", "--lease", "30"), timeout=150)
    assert len(report["attempts"]) == 8

    done = job(home, added)
    assert done["state"] == "FINISHED"
    assert done["results"] == {"sum": 5, "token_seen": True}  # the token, in its environment
    files = json.loads(home.cli("--json", "file", "list", "--job", added))["files"]
    product = next(f for f in files if f["name"] == "sum.csv")
    assert (product["kind"], product["status"], product["generated_by"]) == (
        "product", "ok", [added])
    assert product["checksums"]  # indexed with fixity
    assert job(home, printed)["results"] == {"n": 1}
    assert fails(home, exits) == ["Slurm FAILED: the command exited with code 3"]
    assert fails(home, silent) == ["Slurm FAILED: the job was killed by signal 9"]
    assert fails(home, hog) == ["Slurm OUT_OF_MEMORY: the job went past its --mem and was "
                                "killed"]
    assert fails(home, slow) == ["Slurm TIMEOUT: the job ran past its --time and was killed"]
    assert fails(home, too_big)[0].startswith(
        "could not start: Requested node configuration is not available: 64 cores")
    assert "exceeds partition MaxTime" in fails(home, too_long)[0]
    names = squeue_names(cluster)
    assert too_big not in names and too_long not in names  # refused before sbatch
    assert names.get(slow, "TIMEOUT") == "TIMEOUT"


def test_cancelling_in_the_catalog_scancels(home: Server, cluster: slurmcluster.Cluster
                                            ) -> None:
    uuid = submit(home, {"command": ["sleep", "120"]})
    process = dispatcher(home, "--lives", "1", "--lease", "6")
    wait_for(lambda: squeue_names(cluster).get(uuid) == "RUNNING", 30, "the job to run")
    home.cli("cancel", uuid, "--reason", "not needed")
    report = finish(process, timeout=30)
    assert report["attempts"][0]["state"] == "abandoned"
    assert job(home, uuid)["state"] == "CANCELLED"
    wait_for(lambda: squeue_names(cluster).get(uuid, "CANCELLED") == "CANCELLED", 15,
             "Slurm to cancel it")


def test_a_dispatcher_killed_and_restarted_ends_every_job_once(
        home: Server, cluster: slurmcluster.Cluster) -> None:
    uuids = [submit(home, {"command": ["sh", "-c", f"sleep 3; echo \"{{'i': {i}}}\""]})
             for i in range(6)]
    first = dispatcher(home, "--lives", "6", "--lease", "30", "--name", "slurm-test")
    wait_for(lambda: all(u in squeue_names(cluster) for u in uuids), 30, "six submissions")
    os.kill(first.pid, signal.SIGKILL)
    first.communicate()
    report = finish(dispatcher(home, "--lives", "0", "--lease", "30", "--name",
                               "slurm-test"), timeout=60)
    assert sorted(a["uuid"] for a in report["attempts"]) == sorted(uuids)
    for i, uuid in enumerate(uuids):
        done = job(home, uuid)
        assert (done["state"], done["results"], done["queue"]["attempt"]) == (
            "FINISHED", {"i": i}, 1)
    logged = jobcomp_names(cluster)
    assert all(logged.count(uuid) == 1 for uuid in uuids)  # none submitted twice


def test_two_hundred_trivial_jobs(home: Server, cluster: slurmcluster.Cluster) -> None:
    with Catalog.open(home.env["CATALOG_DB"]) as catalog:
        uuids = [catalog.submit("demo", {"command": ["echo", f"{{'i': {i}}}"]}).uuid
                 for i in range(200)]
    report = finish(dispatcher(home, "--lives", "200", "--max-in-flight", "64"), timeout=120)
    assert len(report["attempts"]) == 200
    assert {a["state"] for a in report["attempts"]} == {"FINISHED"}
    status = json.loads(home.cli("--json", "queue", "status"))["pipelines"]["demo"]
    assert status.get("FINISHED") == 200
    assert len(set(uuids)) == 200


def test_bad_input_is_refused_clearly(home: Server, cluster: slurmcluster.Cluster,
                                      tmp_path: Path) -> None:
    done = subprocess.run([str(CATALOG), "run", "demo", "--engine", "kubernetes"],
                          cwd=home.directory, env=home.env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0 and "unknown engine 'kubernetes'" in done.stderr
    with pytest.raises(ValueError, match="not one Slurm keeps"):
        check_name("no spaces please")
    engine = SlurmEngine(SlurmClient(cluster.env))
    for work, message in [({"command": ["true"], "resources": {"memory": "64G"}},
                           "65536 MB asked"),
                          ({"command": ["true"], "resources": {"gpus": 1}},
                           "unknown resources"),
                          ({"command": ["true"]}, "not one Slurm keeps")]:
        with pytest.raises(ValueError, match=message):
            engine.start(work, tmp_path / "w", 60, name="bad/name" if not work.get(
                "resources") else "fine")
    assert "fine" not in squeue_names(cluster)
