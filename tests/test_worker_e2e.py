"""``catalog run`` workers as real processes: functions, commands, failures, timeouts, a worker
killed with SIGKILL mid-job, SIGTERM, and workers over HTTP against ``catalog serve``.

Every process a test starts is stopped by its PID.
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
from test_web_e2e import CATALOG, Server

from catalog import Catalog

pytestmark = pytest.mark.slow

FUNCTIONS = '''
import os, time

def add(a, b):
    with open("sum.csv", "w") as handle:
        handle.write(f"a,b,sum\\n{a},{b},{a + b}\\n")
    return {"sum": a + b}, ["sum.csv"], []

def boom(x=1):
    raise RuntimeError(f"boom {x}")

def nap(seconds):
    time.sleep(seconds)
    return {"slept": seconds}

def once_slow(marker, pid_file):
    """Slow the first time (long enough to be killed), quick the next."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        with open(pid_file, "w") as handle:
            handle.write(str(os.getpid()))
        time.sleep(120)
    return {"second": True}
'''


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Server]:
    """A catalog directory with pipeline ``demo`` and the package ``work`` to run."""
    server = Server.init(tmp_path)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "__init__.py").write_text("")
    (tmp_path / "work" / "jobs.py").write_text(textwrap.dedent(FUNCTIONS))
    server.cli("pipeline", "add", "--name", "demo")
    yield server
    if server.process is not None:
        server.stop()


def submit(home: Server, data: dict[str, Any], *options: str) -> str:
    out = home.cli("--json", "submit", "--pipeline", "demo", "--data", json.dumps(data),
                   *options)
    return str(json.loads(out)["uuid"])


def job(home: Server, uuid: str) -> dict[str, Any]:
    return dict(json.loads(home.cli("--json", "job", "show", uuid)))


def worker(home: Server, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(CATALOG), "--json", "run", "demo", *args], cwd=home.directory,
                            env=home.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(process: subprocess.Popen[str], timeout: float = 60) -> dict[str, Any]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"worker {process.pid} did not end in {timeout} s")
    assert process.returncode == 0, err
    return dict(json.loads(out))


def wait_for(condition: Any, timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_worker_runs_functions_and_commands_and_reports_failures(home: Server) -> None:
    added = submit(home, {"function": "work.jobs.add", "parameters": {"a": 2, "b": 3}})
    failing = submit(home, {"function": "work.jobs.boom", "parameters": {"x": 7}},
                     "--retries", "2")
    command = submit(home, {"command": ["python3", "-c", "print({'n': 1})"]})
    slow = submit(home, {"function": "work.jobs.nap", "parameters": {"seconds": 60}},
                  "--timeout", "2", "--retries", "1")
    missing = submit(home, {"command": ["no-such-program-here"]}, "--retries", "1")
    report = finish(worker(home, "--lives", "7", "--sleep", "0.1", "--lease", "6"))
    assert len(report["attempts"]) == 6

    done = job(home, added)
    assert (done["state"], done["results"]) == ("FINISHED", {"sum": 5})
    files = json.loads(home.cli("--json", "file", "list", "--job", added))["files"]
    product = next(f for f in files if f["name"] == "sum.csv")
    assert (product["kind"], product["status"]) == ("product", "ok")
    assert product["generated_by"] == [added]

    failed = job(home, failing)
    assert failed["state"] == "FAILED" and failed["queue"]["attempt"] == 2
    errors = [e["data"]["error"] for e in failed["history"] if e["name"] == "fail"]
    assert errors == ["RuntimeError: boom 7"] * 2
    stderr = next(f for f in json.loads(home.cli("--json", "file", "list", "--job",
                                                 failing))["files"]
                  if f["name"] == "stderr.txt")
    assert stderr["kind"] == "archive"

    assert job(home, command)["results"] == {"n": 1}
    timed_out = job(home, slow)
    assert timed_out["state"] == "FAILED"
    assert timed_out["queue"]["reason"] == "timed out after 2 s"
    assert job(home, missing)["queue"]["reason"].startswith("could not start")


def test_a_worker_killed_mid_job_loses_nothing(home: Server) -> None:
    marker, pid_file = home.directory / "marker", home.directory / "pid"
    uuid = submit(home, {"function": "work.jobs.once_slow",
                         "parameters": {"marker": str(marker), "pid_file": str(pid_file)}},
                  "--retries", "3")
    first = worker(home, "--lease", "5", "--sleep", "0.2")
    try:
        wait_for(pid_file.exists, what="the first attempt to start")
        assert job(home, uuid)["state"] == "RUNNING"
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        first.stdout.close()  # type: ignore[union-attr]
        first.stderr.close()  # type: ignore[union-attr]
    work_pid = int(pid_file.read_text())
    wait_for(lambda: not _alive(work_pid), 10, "the orphaned work to die with its worker")

    second = worker(home, "--lease", "5", "--sleep", "0.5", "--lives", "40")
    try:
        wait_for(lambda: job(home, uuid)["state"] == "FINISHED", 60, "the retry to finish")
    finally:
        os.kill(second.pid, signal.SIGTERM)
        report = finish(second)
    assert [a["uuid"] for a in report["attempts"]] == [uuid]
    done = job(home, uuid)
    assert done["queue"]["attempt"] == 2 and done["results"] == {"second": True}
    steps = [(e["name"], e["data"].get("attempt"), e["data"].get("error"))
             for e in done["history"]]
    assert steps[:7] == [("create", None, None), ("queue", None, None), ("run", 1, None),
                         ("fail", 1, "lease expired"), ("retry", 1, None), ("run", 2, None),
                         ("finish", 2, None)]
    runs = [e["data"]["worker"] for e in done["history"] if e["name"] == "run"]
    assert len(set(runs)) == 2  # two workers, one attempt each


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:  # a zombie has ended
        return handle.read().split()[2] != "Z"


def test_sigterm_lets_the_job_in_hand_finish(home: Server) -> None:
    napping = submit(home, {"function": "work.jobs.nap", "parameters": {"seconds": 6}})
    waiting = submit(home, {"function": "work.jobs.nap", "parameters": {"seconds": 0}})
    running = worker(home, "--sleep", "0.1")
    with Catalog.open(home.env["CATALOG_DB"]) as catalog:  # cheaper than a CLI per look
        wait_for(lambda: catalog.get_job(napping, history=False).state == "RUNNING",
                 what="the first job to run")
    os.kill(running.pid, signal.SIGTERM)
    report = finish(running)
    assert [(a["uuid"], a["state"]) for a in report["attempts"]] == [(napping, "FINISHED")]
    assert job(home, waiting)["state"] == "QUEUED"


def test_workers_over_http_run_every_job_once(home: Server) -> None:
    home.start()
    key = json.loads(home.cli("--json", "token", "worker"))["token"]
    uuids = {submit(home, {"function": "work.jobs.nap", "parameters": {"seconds": n / 100}})
             for n in range(12)}
    env = {**home.env, "CATALOG_WORKER_KEY": key}
    workers = [subprocess.Popen(
        [str(CATALOG), "--json", "run", "demo", "--url", home.base_url, "--sleep", "0.1"],
        cwd=home.directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for _ in range(2)]
    try:
        wait_for(lambda: all(job(home, u)["state"] == "FINISHED" for u in uuids), 90,
                 "every job to finish")
    finally:
        for process in workers:
            os.kill(process.pid, signal.SIGTERM)
    reports = [finish(process) for process in workers]
    ran = [a["uuid"] for report in reports for a in report["attempts"]]
    assert sorted(ran) == sorted(uuids)
    for uuid in uuids:
        history = job(home, uuid)["history"]
        assert [e["name"] for e in history].count("run") == 1
        assert history[2]["source"] == "api"
    bad = subprocess.run([str(CATALOG), "run", "demo", "--url", home.base_url, "--lives", "1"],
                         cwd=home.directory, env={**home.env, "CATALOG_WORKER_KEY": "nope"},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "not a worker key" in bad.stderr
