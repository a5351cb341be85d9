"""The real CHIME/FRB clients, unmodified, against ``catalog serve`` on 127.0.0.1.

chime-frb-api 3.4.0 (pydantic 1) and workflow-core 1.12.x (pydantic 2) each live in a virtual
environment of their own, built once per machine under ``.venv-clients/`` (or
``$CATALOG_CLIENTS_DIR``) and reused while the pinned requirement is the same. Each flow is
checked on the catalog's side: the job's history and results, its products with fixity, and
lineage from a product up to the work's observation event. Every process is stopped by its PID.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_web_e2e import Server

from catalog.identifiers import UUIDType, upstream_uuids

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CLIENTS = {"chime-frb-api": "chime-frb-api==3.4.0",
           "workflow-core": "workflow-core>=1.12,<1.13"}
INSTALL_TIMEOUT_S = 900
RUN_TIMEOUT_S = 120
FUNCTIONS = '''
import os, time

def add(a, b, out):
    path = os.path.join(out, f"sum-{a}-{b}.csv")
    with open(path, "w") as handle:
        handle.write(f"a,b,sum\\n{a},{b},{a + b}\\n")
    return {"sum": a + b}, [path], []

def boom(x):
    raise RuntimeError(f"boom {x}")

def nap(seconds):
    time.sleep(seconds)
    return {"slept": seconds}, [], []
'''
# chime-frb-api 3.4: the Python API, one call per line of JSON on stdin.
LEGACY_API = '''
import json, sys
from chime_frb_api.workflow import Work

url = sys.argv[1]
for line in sys.stdin:
    call = json.loads(line)
    if call["op"] == "deposit":
        answer = Work(**call["work"]).deposit(return_ids=True, base_url=url)
    elif call["op"] == "withdraw":
        work = Work.withdraw(pipeline=call["pipeline"], site="local", base_url=url)
        answer = None if work is None else work.payload
        if work is not None and call.get("results") is not None:
            work.results = call["results"]
            work.status = "success"
            work.update(base_url=url)
    print(json.dumps(answer), flush=True)
'''
LEGACY_TRANSFER = '''
import json, sys
from chime_frb_api.workflow.daemons.transfer import transfer_work
from chime_frb_api.modules.results import Results

outcome = transfer_work.main(["-b", sys.argv[1], "-r", sys.argv[2], "--test-mode", "True"],
                             standalone_mode=False)
results = Results(base_url=sys.argv[2], debug=True)
count = results.count(pipeline=sys.argv[3], query={})
print(json.dumps({"outcome": outcome, "count": count}))
'''
CORE_API = '''
import json, sys
from workflow.definitions.work import Work

for line in sys.stdin:
    print(json.dumps(Work(**json.loads(line)).deposit(return_ids=True)), flush=True)
'''
CORE_WORKSPACE = '''
workspace: catalog-test
sites:
  - local
http:
  baseurls:
    buckets: {base}/buckets
    results: {base}/results
'''


def client_venv(name: str) -> Path:
    """The virtual environment of one client, built if it is missing or out of date."""
    directory = Path(os.environ.get("CATALOG_CLIENTS_DIR", REPO / ".venv-clients"))
    directory.mkdir(parents=True, exist_ok=True)
    venv = directory / name
    marker = venv / ".installed"
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two suites at once build it once
        if marker.exists() and marker.read_text() == CLIENTS[name]:
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install",
                               "--quiet", "--disable-pip-version-check", CLIENTS[name]],
                              capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        assert done.returncode == 0, f"pip install {CLIENTS[name]} failed:\n{done.stderr}"
        marker.write_text(CLIENTS[name])
    return venv


class Client:
    """One client's environment (its venv, a HOME of its own, the functions to run)."""

    def __init__(self, venv: Path, server: Server, home: Path) -> None:
        self.venv = venv
        self.server = server
        self.home = home
        self.out = home / "out"  # products are written here (a product root: the temp dir)
        self.out.mkdir(parents=True, exist_ok=True)
        (home / "chimework.py").write_text(textwrap.dedent(FUNCTIONS))
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("CATALOG_", "WORKFLOW_", "VIRTUAL_ENV", "PYTHON"))}
        self.env.update(HOME=str(home), PYTHONPATH=str(home), NO_COLOR="1",
                        PATH=f"{venv / 'bin'}:{self.env.get('PATH', '')}")

    @property
    def buckets(self) -> str:
        return f"{self.server.base_url}/buckets"

    def run(self, *args: str, stdin: str = "", timeout: float = RUN_TIMEOUT_S) -> str:
        """A client program, waited for (killed by its PID if it overruns)."""
        process = subprocess.Popen([str(self.venv / "bin" / args[0]), *args[1:]],
                                   cwd=self.home, env=self.env, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = process.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"{args} did not end in {timeout} s:\n{err[-4000:]}")
        assert process.returncode == 0, f"{args} exited {process.returncode}:\n{err[-4000:]}"
        return out

    def python(self, script: str, *args: str, stdin: str = "") -> list[Any]:
        out = self.run("python", "-c", script, *args, stdin=stdin)
        return [json.loads(line) for line in out.splitlines() if line.strip()]


def start_server(directory: Path, **env: str) -> Server:
    server = Server.init(directory)
    server.env.update(env)
    server.worker_token = json.loads(server.cli("token", "worker", "--json"))["token"]
    server.start()
    return server


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """chime-frb-api 3.4 sends no token: this catalog takes anonymous CHIME writes."""
    venv = client_venv("chime-frb-api")
    server = start_server(tmp_path_factory.mktemp("legacy-catalog"),
                          CATALOG_CHIME_ANONYMOUS_WRITES="true")
    try:
        yield Client(venv, server, tmp_path_factory.mktemp("legacy-home"))
    finally:
        server.stop()


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """workflow-core sends the worker key as x-access-token; anonymous writes are off."""
    venv = client_venv("workflow-core")
    server = start_server(tmp_path_factory.mktemp("core-catalog"))
    try:
        client = Client(venv, server, tmp_path_factory.mktemp("core-home"))
        workspace = client.home / ".config" / "workflow" / "workspace.yml"
        workspace.parent.mkdir(parents=True)
        workspace.write_text(CORE_WORKSPACE.format(base=server.base_url))
        client.env.update(WORKFLOW_WORKSPACE=str(workspace),
                          WORKFLOW_HTTP_WORKSPACE=str(workspace),
                          WORKFLOW_HTTP_TOKEN=server.worker_token)
        client.workspace = workspace
        yield client
    finally:
        server.stop()


def legacy_work(pipeline: str, **fields: Any) -> dict[str, Any]:
    return {"pipeline": pipeline, "site": "local", "user": "tester",
            "config": {"archive": {"products": "pass", "plots": "pass"}}, **fields}


def job(server: Server, uuid: str) -> dict[str, Any]:
    answer = httpx.get(f"{server.base_url}/jobs/{uuid}", timeout=30)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def files(server: Server, uuid: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{server.base_url}/files", params={"job": uuid}, timeout=30)
    return list(answer.json()["files"])


def check_product(server: Server, uuid: str, name: str, event: int) -> None:
    """The product is archived with fixity, generated by the job, and its lineage reaches
    the work's observation event."""
    product = next(f for f in files(server, uuid) if f["name"] == name)
    assert product["status"] == "ok" and product["checksums"]["sha256"]
    assert product["generated_by"] == [uuid] and "/products/" in product["path"]
    graph = httpx.get(f"{server.base_url}/lineage/{product['uuid']}",
                      params={"direction": "up"}, timeout=30).json()
    observation = observation_uuid(server, event)
    edges = {(e["from"], e["relation"], e["to"]) for e in graph["edges"]}
    assert {(product["uuid"], "generated_by", uuid), (uuid, "child_of", observation)} <= edges


def observation_uuid(server: Server, event: int) -> str:
    """The UUID of CHIME event ``event``'s observation (``observation.chime.N``)."""
    [uuid] = upstream_uuids(UUIDType.observation, f"observation.chime.{event}")
    return uuid


def names(document: dict[str, Any]) -> list[str]:
    return [entry["name"] for entry in document["history"]]


def legacy_run(client: Client, pipeline: str, lifetime: int) -> None:
    base = client.server.base_url
    client.run("workflow", "run", pipeline, "--site", "local", "--lifetime", str(lifetime),
               "--sleep-time", "0", "--base-url", client.buckets,
               "--loki-url", f"{base}/loki/api/v1/push", "--products-url", f"{base}/files/")


def test_chime_frb_api_3_4_deposits_runs_retries_times_out_and_transfers(
        legacy: Client) -> None:
    server = legacy.server
    out = str(legacy.out)
    calls = [
        legacy_work("fold", function="chimework.add", event=[101], tags=["t1"], priority=2,
                    parameters={"a": 2, "b": 3, "out": out}),
        legacy_work("fold", function="chimework.add", event=[101], tags=["t2"], priority=4,
                    parameters={"a": 2, "b": 3, "out": out}),
        legacy_work("fold", function="chimework.boom", parameters={"x": 7}, retries=2),
        legacy_work("fold", command=["python3", "-c", "print(({'n': 1}, [], []))"]),
        legacy_work("fold", function="chimework.nap", parameters={"seconds": 3}, timeout=1,
                    retries=1),
    ]
    answers = legacy.python(LEGACY_API, legacy.buckets, stdin="".join(
        json.dumps({"op": "deposit", "work": w}) + "\n" for w in calls))
    [added], [same], [failing], [command], [slow] = answers
    assert same == added  # priority and tags are not the work's identity

    legacy_run(legacy, "fold", 6)  # add, boom twice, the command, nap, then idle
    done = job(server, added)
    assert (done["state"], done["results"]) == ("FINISHED", {"sum": 5})
    assert names(done)[:4] == ["create", "queue", "run", "finish"]
    assert done["queue"]["priority"] == 2 and done["queue"]["tags"] == ["t1"]
    check_product(server, added, "sum-2-3.csv", 101)

    failed = job(server, failing)
    assert failed["state"] == "FAILED" and failed["queue"]["attempt"] == 2
    assert names(failed).count("fail") == 2 and names(failed).count("retry") == 1
    assert job(server, command)["state"] == "FINISHED"
    assert job(server, command)["results"] == {"n": 1}
    timed_out = job(server, slow)
    assert timed_out["state"] == "FAILED" and "timeout" in timed_out["queue"]["reason"]

    # Deposited again: the same job, and nothing runs it again.
    [again] = legacy.python(LEGACY_API, legacy.buckets, stdin=json.dumps(
        {"op": "deposit", "work": calls[0]}) + "\n")
    assert again == [added]
    legacy_run(legacy, "fold", 1)
    assert names(job(server, added)).count("run") == 1

    # Work.withdraw and Work.update by hand: a float start, then the results land.
    [manual] = legacy.python(LEGACY_API, legacy.buckets, stdin=json.dumps(
        {"op": "deposit", "work": legacy_work("by-hand", parameters={"n": 1})}) + "\n")
    [taken] = legacy.python(LEGACY_API, legacy.buckets, stdin=json.dumps(
        {"op": "withdraw", "pipeline": "by-hand", "results": {"by": "hand"}}) + "\n")
    assert taken["id"] == manual[0] and isinstance(taken["start"], float)
    assert taken["attempt"] == 1 and taken["status"] == "running"
    assert job(server, manual[0])["results"] == {"by": "hand"}

    # The transfer daemon: success and final failures go to Results and leave Buckets.
    [moved] = legacy.python(LEGACY_TRANSFER, legacy.buckets,
                            f"{server.base_url}/results", "fold")
    assert moved["count"] == 4, moved  # add, command; boom and nap failed for good
    view = httpx.post(f"{legacy.buckets}/view", json={"query": {"pipeline": "fold"}},
                      timeout=30).json()
    assert view == []
    for uuid in (added, failing, command, slow):  # provenance whole
        assert job(server, uuid)["history"]


def test_workflow_core_runs_functions_and_commands_and_transfers(core: Client) -> None:
    server = core.server
    works = [
        {"pipeline": "corefold", "site": "local", "user": "tester", "event": [202],
         "function": "chimework.add", "parameters": {"a": 4, "b": 5, "out": str(core.out)}},
        {"pipeline": "corefold", "site": "local", "user": "tester",
         "command": ["echo hello"]},
        {"pipeline": "corefold", "site": "local", "user": "tester", "retries": 1,
         "function": "chimework.boom", "parameters": {"x": 3}},
    ]
    answers = core.python(CORE_API, stdin="".join(json.dumps(w) + "\n" for w in works))
    [added], [command], [failing] = answers
    core.run("workflow", "run", "corefold", "-s", "local", "--lives", "3", "--sleep", "1",
             "-w", str(core.workspace))

    done = job(server, added)
    assert (done["state"], done["results"]) == ("FINISHED", {"sum": 9})
    check_product(server, added, "sum-4-5.csv", 202)
    echoed = job(server, command)
    assert echoed["state"] == "FINISHED" and echoed["results"]["stdout"] == ["hello"]
    failed = job(server, failing)
    assert failed["state"] == "FAILED" and failed["queue"]["attempt"] == 1
    assert names(failed).count("fail") == 1  # retries 1: one attempt in all

    core.run("workflow", "transfer", "-w", str(core.workspace), "--test-mode")
    results = httpx.post(f"{server.base_url}/results/view/count",
                         json={"query": {"pipeline": "corefold"}}, timeout=30).json()
    assert results == 3
    assert httpx.post(f"{server.base_url}/buckets/view", json={"query": {}},
                      timeout=30).json() == []
    # Without the worker key, the catalog takes no write.
    refused = httpx.post(f"{server.base_url}/buckets/work", json=[works[0]], timeout=30)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "token_required"
