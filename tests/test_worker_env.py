"""What a job's work is told in its environment: which job it is, and where its catalog is.

The work runs in a directory of its own, so a catalog named by relative paths (the default
``sqlite:///catalog.db``, an ``archive_root`` of ``archive``, ``catalog.toml`` read from the
working directory) is not found from there unless the worker says where it is. Real
``catalog run`` processes, stopped by their process ids.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_web_e2e import CATALOG, Server

from catalog.engines import LocalEngine

pytestmark = pytest.mark.slow

FUNCTIONS = '''
import json, os, subprocess

def whoami(catalog):
    """What this job was told, and whether ``catalog`` finds the job from here."""
    told = {k: v for k, v in os.environ.items() if k.startswith("CATALOG_")}
    shown = subprocess.run([catalog, "--json", "job", "show", os.environ["CATALOG_JOB_UUID"]],
                           capture_output=True, text=True, timeout=60)
    state = json.loads(shown.stdout)["state"] if shown.returncode == 0 else shown.stderr
    return {"told": told, "cwd": os.getcwd(), "code": shown.returncode, "state": state}
'''


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Path]:
    """A catalog as ``catalog init`` makes it with relative settings: no ``CATALOG_*`` in the
    environment, ``catalog.toml`` in the directory, pipeline ``demo``, package ``work``."""
    (tmp_path / "catalog.toml").write_text('[catalog]\narchive_root = "archive"\n')
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "__init__.py").write_text("")
    (tmp_path / "work" / "jobs.py").write_text(textwrap.dedent(FUNCTIONS))
    for args in (["init"], ["pipeline", "add", "--name", "demo"]):
        run(tmp_path, *args)
    yield tmp_path


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}


def run(directory: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(CATALOG), *args], cwd=directory, env=env or clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def submit(directory: Path, data: dict[str, Any], *options: str) -> str:
    out = run(directory, "--json", "submit", "--pipeline", "demo", "--data", json.dumps(data),
              *options)
    return str(json.loads(out)["uuid"])


def job(directory: Path, uuid: str) -> dict[str, Any]:
    return dict(json.loads(run(directory, "--json", "job", "show", uuid)))


def test_a_function_finds_its_own_job_in_a_catalog_named_by_relative_paths(
        directory: Path) -> None:
    uuid = submit(directory, {"function": "work.jobs.whoami",
                              "parameters": {"catalog": str(CATALOG)}})
    run(directory, "--json", "run", "demo", "--lives", "1", "--sleep", "0.1",
        env={**clean_env(), "CATALOG_TOKEN": "the-user-s-own-token"})
    done = job(directory, uuid)
    assert done["state"] == "FINISHED", done["history"]
    results = done["results"]
    assert results["code"] == 0, results["state"]
    assert results["state"] == "RUNNING"  # it asked while it ran
    assert Path(results["cwd"]) != directory
    told = results["told"]
    assert told["CATALOG_JOB_UUID"] == uuid
    assert told["CATALOG_PIPELINE"] == "demo"
    assert told["CATALOG_JOB_ATTEMPT"] == "1"
    assert told["CATALOG_ARCHIVE_PATH"] == done["archive_path"]
    assert told["CATALOG_DB"] == f"sqlite:///{directory / 'catalog.db'}"
    assert told["CATALOG_ARCHIVE_ROOT"] == str(directory / "archive")
    assert told["CATALOG_CONFIG"] == str(directory / "catalog.toml")
    assert "CATALOG_URL" not in told
    assert "CATALOG_TOKEN" not in told  # whoever started the worker keeps their token
    # Nothing was made where the function ran: it found the catalog, not a new one.
    assert not list(Path(results["cwd"]).parent.glob(f"{Path(results['cwd']).name}/*.db"))


def test_the_work_s_own_environment_is_kept_and_cannot_claim_another_job(
        directory: Path) -> None:
    printer = ("import os; print({'greeting': os.environ['GREETING'], "
               "'uuid': os.environ['CATALOG_JOB_UUID']})")
    uuid = submit(directory, {"command": ["python3", "-c", printer],
                              "environment": {"GREETING": "hello",
                                              "CATALOG_JOB_UUID": "someone-else"}})
    run(directory, "--json", "run", "demo", "--lives", "1", "--sleep", "0.1")
    assert job(directory, uuid)["results"] == {"greeting": "hello", "uuid": uuid}


@pytest.mark.parametrize(("environment", "named"), [
    ({"1BAD": "x"}, "'1BAD'"), ({"OK": 1}, "'OK'"), ("PATH=/x", "not a JSON object")])
def test_a_malformed_environment_is_refused_at_submit_and_by_the_engine(
        directory: Path, environment: Any, named: str) -> None:
    data = {"command": ["true"], "environment": environment}
    done = subprocess.run([str(CATALOG), "submit", "--pipeline", "demo", "--data",
                           json.dumps(data)], cwd=directory, env=clean_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and named in done.stderr, done.stderr
    assert json.loads(run(directory, "--json", "job", "list"))["jobs"] == []
    # A job that reached a worker some other way is refused before anything starts.
    with pytest.raises(ValueError, match=named):
        LocalEngine().start(data, directory / "w", 5)
    assert not (directory / "w").exists()


def test_a_worker_over_http_tells_the_work_the_server_s_url(tmp_path: Path) -> None:
    server = Server.init(tmp_path)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "__init__.py").write_text("")
    (tmp_path / "work" / "jobs.py").write_text(textwrap.dedent(FUNCTIONS))
    server.cli("pipeline", "add", "--name", "demo")
    server.start()
    try:
        key = json.loads(server.cli("--json", "token", "worker"))["token"]
        out = server.cli("--json", "submit", "--pipeline", "demo", "--data", json.dumps(
            {"function": "work.jobs.whoami", "parameters": {"catalog": str(CATALOG)}}))
        uuid = json.loads(out)["uuid"]
        worker = subprocess.Popen(
            [str(CATALOG), "--json", "run", "demo", "--url", server.base_url, "--lives", "1",
             "--sleep", "0.1"], cwd=tmp_path, env={**server.env, "CATALOG_WORKER_KEY": key},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _, err = worker.communicate(timeout=120)
        finally:
            if worker.poll() is None:
                os.kill(worker.pid, signal.SIGKILL)
                worker.wait()
        assert worker.returncode == 0, err
        results = json.loads(server.cli("--json", "job", "show", uuid))["results"]
        assert results["told"]["CATALOG_URL"] == server.base_url
        assert results["told"]["CATALOG_JOB_UUID"] == uuid
        assert "CATALOG_WORKER_KEY" not in results["told"]  # it stays with the worker
        assert key not in json.dumps(results)
    finally:
        server.stop()
