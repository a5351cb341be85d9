"""The slurm engine and ``catalog run --engine slurm`` against a real one-node cluster started by
this module (tests/slurmcluster.py): results and products indexed with fixity, exit codes,
TIMEOUT, memory limits, cancellation from the catalog, 200 jobs, a dispatcher SIGKILLed and
restarted, a job that dies without a word, a result file lost (the node's report taken), and
bad input.

The slow jobs (TIMEOUT lands 60-90 s after start: slurmctld checks time limits every 30 s) are
submitted by a module fixture before the first test and checked by the last one, so that they
run while the other tests do: the module takes about as long as its TIMEOUT.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import slurmcluster
from test_web_e2e import CATALOG, Server, free_port

from catalog import Catalog
from catalog.engines import node
from catalog.engines.slurm import SlurmEngine, check_name
from catalog.engines.slurm_client import SlurmClient
from catalog.errors import CatalogError
from catalog.worker import HTTPQueue

pytestmark = pytest.mark.slow

FUNCTIONS = '''
import os

def add(a, b):
    with open("sum.csv", "w") as handle:
        handle.write(f"a,b,sum\\n{a},{b},{a + b}\\n")
    return {"sum": a + b, "token_seen": bool(os.environ.get("CATALOG_JOB_TOKEN")),
            "job": os.environ.get("CATALOG_JOB_UUID"),
            "key_seen": bool(os.environ.get("CATALOG_WORKER_KEY"))}, ["sum.csv"], []
'''


def told(total: int, uuid: str) -> dict[str, Any]:
    """What ``add`` answers when run as job ``uuid``: told its job and its token, not the
    dispatcher's worker key."""
    return {"sum": total, "token_seen": True, "job": uuid, "key_seen": False}


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


def make_home(directory: Path, cluster: slurmcluster.Cluster) -> Server:
    directory.chmod(0o755)
    server = Server.init(directory)
    server.env["SLURM_CONF"] = str(cluster.conf)
    (directory / "work").mkdir()
    (directory / "work" / "__init__.py").write_text("")
    (directory / "work" / "jobs.py").write_text(textwrap.dedent(FUNCTIONS))
    server.cli("pipeline", "add", "--name", "demo")
    return server


@pytest.fixture
def home(tmp_path: Path, cluster: slurmcluster.Cluster) -> Server:
    return make_home(tmp_path, cluster)


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


@dataclass
class EndStates:
    home: Server
    uuids: dict[str, str]
    process: subprocess.Popen[str]


@pytest.fixture(scope="module", autouse=True)
def end_states(tmp_path_factory: pytest.TempPathFactory, cluster: slurmcluster.Cluster
               ) -> Iterator[EndStates]:
    """One job per way of ending, submitted and dispatched before the first test runs."""
    home = make_home(tmp_path_factory.mktemp("ends"), cluster)
    works = {  # the slowest first: TIMEOUT comes 60-90 s after it starts
        "slow": ({"command": ["sleep", "300"]}, {"time": 60}, 1),
        # resources inside data (their former place) are taken as the queue attribute
        "added": ({"function": "work.jobs.add", "parameters": {"a": 2, "b": 3},
                   "resources": {"cores": 1, "memory": "200M", "time": 120}}, None, 2),
        "printed": ({"command": ["python3", "-c", "print({'n': 1})"]}, None, 2),
        "exits": ({"command": ["sh", "-c", "exit 3"]}, None, 1),
        "silent": ({"command": ["sh", "-c", "kill -9 $$"]}, None, 1),
        "hog": ({"command": ["python3", "-c", "x = bytearray(400 << 20); "
                             "import time; time.sleep(5)"]}, {"memory": "30M"}, 1),
        # resources are no part of a job's identity: two jobs need different data
        "too_big": ({"command": ["true", "big"]}, {"cores": 64}, 1),
        "too_long": ({"command": ["true", "long"]}, {"time": 7200}, 1)}
    with Catalog.open(home.env["CATALOG_DB"]) as catalog:
        uuids = {key: catalog.submit("demo", work, retries=retries, resources=resources).uuid
                 for key, (work, resources, retries) in works.items()}
    process = dispatcher(home, "--lives", "8", "--lease", "30")
    try:
        yield EndStates(home, uuids, process)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def squeue_names(cluster: slurmcluster.Cluster) -> dict[str, str]:
    return {s.name: s.state for s in SlurmClient(cluster.env).states().values()}


def jobcomp_names(cluster: slurmcluster.Cluster) -> list[str]:
    return [s.name for s in SlurmClient(cluster.env).ended_from_log().values()]


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


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


def test_a_scancel_outside_the_catalog_cancels_the_job_there(
        home: Server, cluster: slurmcluster.Cluster) -> None:
    # Its own command: a job's UUID comes from its data, and Slurm keeps the cancelling test's
    # job (the same name, were the data the same) for MinJobAge.
    uuid = submit(home, {"command": ["sleep", "119"]}, "--retries", "3")
    process = dispatcher(home, "--lives", "1", "--lease", "30")
    wait_for(lambda: squeue_names(cluster).get(uuid) == "RUNNING", 30, "the job to run")
    native = next(s.native_id for s in SlurmClient(cluster.env).states().values()
                  if s.name == uuid)
    subprocess.run(["scancel", native], env=cluster.env, check=True, timeout=30)
    report = finish(process, timeout=30)
    reason = "Slurm CANCELLED the job (scancel outside the catalog)"
    assert [(a["state"], a["error"]) for a in report["attempts"]] == [("CANCELLED", reason)]
    done = job(home, uuid)
    assert (done["state"], done["queue"]["attempt"]) == ("CANCELLED", 1)  # not retried
    assert [e["data"] for e in done["history"] if e["name"] == "cancel"] == [{"reason": reason}]
    assert not fails(home, uuid)


def node_reports(done: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["data"] for e in done["history"] if e["name"] == "update"
            and e["data"].get("stage") in ("started", "ended")]


def node_dispatcher(home: Server, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(CATALOG), "--json", "run", "demo", "--engine", "slurm", "--sleep", "0.2",
         "--url", home.base_url, "--workdir", str(home.directory / "slurm-work"), *args],
        cwd=home.directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_node_reports_through_the_webhook_and_the_dispatcher_ends_the_job(
        home: Server, cluster: slurmcluster.Cluster) -> None:
    home.start()
    env = {**home.env, "CATALOG_WORKER_KEY": json.loads(
        home.cli("--json", "token", "worker"))["token"]}
    added = submit(home, {"function": "work.jobs.add", "parameters": {"a": 2, "b": 3}})
    printed = submit(home, {"command": ["sh", "-c", "sleep 4; echo \"{'n': 1}\""]})
    process = node_dispatcher(home, env, "--lives", "2")
    wait_for(lambda: squeue_names(cluster).get(printed) == "RUNNING", 30, "the job to run")
    script = home.directory / "slurm-work" / printed / ".slurm.sh"
    assert script.stat().st_mode & 0o777 == 0o700
    native = next(s.native_id for s in SlurmClient(cluster.env).states().values()
                  if s.name == printed)
    shown = subprocess.run(["scontrol", "show", "job", "-dd", native], env=cluster.env,
                           capture_output=True, text=True, check=True).stdout
    assert "node.py" in script.read_text()

    def commands() -> str:
        return subprocess.run(["ps", "-ewwo", "args"], capture_output=True, text=True).stdout

    wait_for(lambda: f"node.py --stdout {script.parent}" in commands(), 15, "the node's work")
    running = commands()
    report = finish(process, timeout=60)
    assert {a["state"] for a in report["attempts"]} == {"FINISHED"}
    for uuid, results in ((added, told(5, added)), (printed, {"n": 1})):
        done = job(home, uuid)
        assert (done["state"], done["results"]) == ("FINISHED", results)
        started, ended = node_reports(done)
        assert started["stage"] == "started" and started["node"] == slurmcluster.NODE
        assert started["native_id"].isdigit() and ended["native_id"] == started["native_id"]
        assert (ended["stage"], ended["exit_code"], ended["results"]) == ("ended", 0, results)
        assert [e["name"] for e in done["history"]].count("finish") == 1  # one end
    token = json.loads(home.cli("--json", "token", "job", printed))["token"]
    for secret in (token, env["CATALOG_WORKER_KEY"]):
        assert secret not in shown and secret not in running
    # A report arriving after the job ended: refused once (409, in the audit log), no retry.
    late = node.report(f"{home.base_url}/jobs/{printed}/events", home.admin_token,
                       f"slurm-{native}-late", {"stage": "ended", "exit_code": 0})
    assert late is not None and late.startswith("HTTP 409")
    assert len(node_reports(job(home, printed))) == 2
    audit = json.loads(home.cli("--json", "job", "audit", printed))["audit"]
    assert any(e["event_id"] == f"slurm-{native}-late" for e in audit)

    # A node that cannot reach the catalog: the job ends all the same, through Slurm.
    cut_off = submit(home, {"function": "work.jobs.add", "parameters": {"a": 1, "b": 1}})
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    report = finish(node_dispatcher(home, env, "--lives", "1", "--report-url", nowhere),
                    timeout=60)
    assert [a["state"] for a in report["attempts"]] == ["FINISHED"]
    done = job(home, cut_off)
    assert (done["state"], done["results"]) == ("FINISHED", told(2, cut_off))
    assert node_reports(done) == []

    # Over HTTP the dispatcher cancels a job scancelled outside the catalog with its token.
    queued = submit(home, {"command": ["true"], "note": "cancelled over HTTP"})
    queue = HTTPQueue(home.base_url, env["CATALOG_WORKER_KEY"])
    with pytest.raises(CatalogError, match="the server refused"):  # a worker key cannot
        queue.cancel(queued, "stopped on the cluster", env["CATALOG_WORKER_KEY"])
    assert queue.cancel(queued, "stopped on the cluster", json.loads(
        home.cli("--json", "token", "job", queued))["token"]) == "CANCELLED"
    assert job(home, queued)["history"][-1]["data"] == {"reason": "stopped on the cluster"}
    home.stop()


def test_a_lost_result_file_is_taken_from_the_nodes_report(
        home: Server, cluster: slurmcluster.Cluster) -> None:
    """The dispatcher, SIGKILLed while a function runs, finds its report file gone on restart
    (as on a node whose disk is not the dispatcher's): it ends the job with the results the
    node reported through the webhook, once."""
    home.start()
    env = {**home.env, "CATALOG_WORKER_KEY": json.loads(
        home.cli("--json", "token", "worker"))["token"]}
    added = submit(home, {"function": "work.jobs.add", "parameters": {"a": 4, "b": 5}})
    first = node_dispatcher(home, env, "--lives", "1", "--name", "slurm-lost")
    wait_for(lambda: added in squeue_names(cluster), 30, "the submission")
    os.kill(first.pid, signal.SIGKILL)
    first.communicate()
    wait_for(lambda: len(node_reports(job(home, added))) == 2, 60, "the node's reports")
    (home.directory / "slurm-work" / added / ".result.json").unlink()
    report = finish(node_dispatcher(home, env, "--lives", "0", "--name", "slurm-lost"),
                    timeout=60)
    assert [a["state"] for a in report["attempts"]] == ["FINISHED"]
    done = job(home, added)
    assert (done["state"], done["results"]) == ("FINISHED", told(9, added))
    assert [e["name"] for e in done["history"]].count("finish") == 1
    home.stop()


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
    done = subprocess.run([str(CATALOG), "run", "demo", "--engine", "slurm", "--report-url",
                           "ftp://example.org"], cwd=home.directory, env=home.env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "not an http:// or https:// URL" in done.stderr
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


def test_every_end_state_reaches_the_catalog_with_its_reason(
        end_states: EndStates, cluster: slurmcluster.Cluster) -> None:
    """Last in the module: its jobs ran while the other tests did."""
    home, uuids = end_states.home, end_states.uuids
    slow, added, printed, exits, silent, hog, too_big, too_long = uuids.values()
    report = finish(end_states.process, timeout=150)
    assert len(report["attempts"]) == 8

    done = job(home, added)
    assert done["state"] == "FINISHED"
    assert done["results"] == told(5, added)  # the token, in its environment
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
