"""The real QCG-PilotJob client, unmodified, against ``catalog serve --qcg-address``.

qcg-pilotjob 0.14.2 lives in a virtual environment of its own under ``.venv-clients/`` (the
helper of tests/test_chime_clients.py builds it once per machine). The server runs the jobs on
its own worker threads; each flow is checked through the client and on the catalog's side
(the jobs, their conditions, their cancellation reasons). Every process is stopped by its PID.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_chime_clients
import zmq
from test_chime_clients import client_venv
from test_web_e2e import CATALOG, START_TIMEOUT_S, Server, free_port

from catalog.compat.qcg_wire import check_address
from catalog.errors import ConfigurationError

pytestmark = pytest.mark.slow

CLIENT = "qcg-pilotjob==0.14.2"
CORES = 2
RUN_TIMEOUT_S = 120
# A client program: ``m`` is a Manager on argv[1], ``out`` prints one JSON line.
PRELUDE = '''
import json, sys, time
from qcg.pilotjob.api.manager import Manager
from qcg.pilotjob.api.job import Jobs

def out(value):
    print(json.dumps(value, default=str), flush=True)

m = Manager(sys.argv[1], {"log_file": sys.argv[2]})
'''


class QcgServer(Server):
    """``catalog serve`` with the QCG surface on a free port of 127.0.0.1."""

    qcg_address: str = ""

    def start(self) -> None:
        port, qcg_port = free_port(), free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self.qcg_address = f"tcp://127.0.0.1:{qcg_port}"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(CATALOG), "serve", "--host", "127.0.0.1", "--port", str(port),
                 "--qcg-address", self.qcg_address, "--qcg-cores", str(CORES)],
                cwd=self.directory, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self.process.poll() is None, f"the server exited:\n{self.output()}"
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the server did not come up:\n{self.output()}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def venv() -> Path:
    test_chime_clients.CLIENTS.setdefault("qcg-pilotjob", CLIENT)
    return client_venv("qcg-pilotjob")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QcgServer]:
    server = QcgServer.init(tmp_path_factory.mktemp("qcg-catalog"))
    server.start()
    try:
        yield server
    finally:
        assert server.stop() == 0, server.output()[-3000:]


def client(venv: Path, server: QcgServer, tmp_path: Path, body: str) -> list[Any]:
    """Run a client program to its end (killed by its PID if it overruns): its JSON lines."""
    process = subprocess.Popen(
        [str(venv / "bin" / "python"), "-c", PRELUDE + body, server.qcg_address,
         str(tmp_path / "api.log")], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        pytest.fail(f"the client did not end in {RUN_TIMEOUT_S} s:\n{stderr[-4000:]}\n"
                    f"{server.output()[-3000:]}")
    assert process.returncode == 0, f"{stderr[-4000:]}\n{server.output()[-3000:]}"
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def catalog_job(server: QcgServer, uuid: str) -> dict[str, Any]:
    answer = httpx.get(f"{server.base_url}/jobs/{uuid}", timeout=30)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def history(info: dict[str, Any]) -> list[tuple[datetime, str]]:
    """QCG's history lines (``YYYY-MM-DD HH:MM:SS.ffffff: STATE``) parsed."""
    lines = [line for line in info["history"].splitlines() if line]
    return [(datetime.strptime(line[:26], "%Y-%m-%d %H:%M:%S.%f"), line[28:]) for line in lines]


def test_submit_with_dependencies_and_an_iteration_then_wait_info_remove_finish(
        venv: Path, server: QcgServer, tmp_path: Path) -> None:
    wd = tmp_path / "wd"
    body = f'''
wd = {str(wd)!r}
out(m.resources())
jobs = Jobs()
jobs.add_std({{"name": "prep", "execution": {{
    "exec": "/bin/sh", "args": ["-c", "echo prep $GREETING; sleep 0.5"],
    "env": {{"GREETING": "hello"}}, "wd": wd, "stdout": "prep.out"}}}})
jobs.add(name="sim", exec="/bin/sh", args=["-c", "echo sim ${{it}} > sim-${{it}}.txt"],
         iteration={{"start": 1, "stop": 4}}, after="prep", wd=wd)
jobs.add(name="post", exec="/bin/sh", args=["-c", "exit 0"], after=["sim"], wd=wd)
out(m.submit(jobs))
out(m.wait4_any_job_finish(60))
out(m.wait4("sim:2", timeout=60))
m.wait4all(60)
out(m.status(["prep", "sim", "sim:3", "post"]))
out(m.list())
out(m.info(["prep", "sim", "sim:1", "post"], withChilds=True))
m.remove("post")
out(sorted(m.list()))
m.finish()
'''
    resources, submitted, first, sim2, status, listed, info, after_remove = client(
        venv, server, tmp_path, body)
    assert resources == {"total_nodes": 1, "total_cores": CORES, "used_cores": 0,
                         "free_cores": CORES}
    assert submitted == ["prep", "sim", "post"]
    assert first == ["prep", "SUCCEED"]  # everything else waits on it
    assert sim2 == {"sim:2": "SUCCEED"}
    assert {name: s["data"]["status"] for name, s in status["jobs"].items()} == {
        "prep": "SUCCEED", "sim": "SUCCEED", "sim:3": "SUCCEED", "post": "SUCCEED"}
    assert listed == {name: {"status": "SUCCEED"} for name in ("prep", "sim", "post")}
    assert after_remove == ["prep", "sim"]
    # The work was done as described: environment, working directory, stdout, ${it}.
    assert (wd / "prep.out").read_text() == "prep hello\n"
    assert sorted(p.name for p in wd.glob("sim-*.txt")) == ["sim-1.txt", "sim-2.txt",
                                                            "sim-3.txt"]
    assert (wd / "sim-2.txt").read_text() == "sim 2\n"
    # info: the history with timestamps, the working directory, the exit code, the run time.
    prep = info["jobs"]["prep"]["data"]
    assert prep["status"] == "SUCCEED"
    assert prep["runtime"]["wd"] == str(wd) and prep["runtime"]["exit_code"] == 0
    assert 0.5 <= datetime.strptime(prep["runtime"]["rtime"], "%H:%M:%S.%f").second + \
        datetime.strptime(prep["runtime"]["rtime"], "%H:%M:%S.%f").microsecond / 1e6 < 30
    prep_history = history(prep)
    assert [state for _, state in prep_history] == ["QUEUED", "EXECUTING", "SUCCEED"]
    assert [t for t, _ in prep_history] == sorted(t for t, _ in prep_history)
    sim = info["jobs"]["sim"]["data"]
    assert sim["iterations"] == {"start": 1, "stop": 4, "total": 3, "finished": 3, "failed": 0}
    assert [c["iteration"] for c in sim["childs"]] == [1, 2, 3]
    assert all(c["state"] == "SUCCEED" and c["runtime"]["exit_code"] == 0
               for c in sim["childs"])
    sim1 = info["jobs"]["sim:1"]["data"]
    started = next(t for t, state in history(sim1) if state == "EXECUTING")
    assert started >= prep_history[-1][0]  # it ran once prep had succeeded
    # On the catalog's side: catalog jobs with the dependencies as their conditions.
    prep_job = catalog_job(server, prep["runtime"]["job"])
    sim1_job = catalog_job(server, sim1["runtime"]["job"])
    post_job = catalog_job(server, info["jobs"]["post"]["data"]["runtime"]["job"])
    assert prep_job["state"] == sim1_job["state"] == post_job["state"] == "FINISHED"
    assert sim1_job["queue"]["when"] == {"all": [{"job": prep_job["uuid"], "is": "finished"}]}
    assert {atom["job"] for atom in post_job["queue"]["when"]["all"]} == {
        c["runtime"]["job"] for c in sim["childs"]}
    assert sim1_job["data"]["command"] == ["/bin/sh", "-c", "echo sim 1 > sim-1.txt"]


def test_an_iteration_over_values(venv: Path, server: QcgServer, tmp_path: Path) -> None:
    """QCG's ``iteration: {"values": [...]}`` (the client's ``iteration=[...]``): one job per
    value, numbered from 0, ``${itval}`` the value (quotes and all) and ``${it}`` its index."""
    wd = tmp_path / "wd"
    body = f'''
wd = {str(wd)!r}
jobs = Jobs()
jobs.add(name="prep", exec="/bin/true", wd=wd)
jobs.add(name="scan", exec="/bin/sh", args=["-c", "printf %s \\"$0\\" > scan-${{it}}.txt",
                                             "${{itval}}"], iteration=["H2O", "CO 2", 'say "hi"'],
         after="prep", wd=wd)
jobs.add(name="tail", exec="/bin/true", after="scan:${{it}}", iteration={{"values": ["a", "b"]}},
         wd=wd)
out(m.submit(jobs))
m.wait4all(60)
out(m.info(["scan", "scan:2", "tail"], withChilds=True))
m.finish()
'''
    submitted, info = client(venv, server, tmp_path, body)
    assert submitted == ["prep", "scan", "tail"]
    scan = info["jobs"]["scan"]["data"]
    assert scan["iterations"] == {"start": 0, "stop": 3, "total": 3, "finished": 3, "failed": 0}
    assert [c["iteration"] for c in scan["childs"]] == [0, 1, 2]
    assert [(wd / f"scan-{i}.txt").read_text() for i in range(3)] == ["H2O", "CO 2",
                                                                     'say "hi"']
    scan2 = catalog_job(server, info["jobs"]["scan:2"]["data"]["runtime"]["job"])
    assert scan2["data"]["command"][-1] == 'say "hi"'
    assert scan2["data"]["qcg"]["iteration"] == 2
    tail = info["jobs"]["tail"]["data"]
    assert tail["iterations"]["total"] == 2 and tail["iterations"]["finished"] == 2
    # each tail iteration waits on the scan iteration of its own index
    tails = [catalog_job(server, c["runtime"]["job"]) for c in tail["childs"]]
    scans = [c["runtime"]["job"] for c in scan["childs"]]
    assert [t["queue"]["when"] for t in tails] == [
        {"all": [{"job": scans[i], "is": "finished"}]} for i in range(2)]


def test_a_failing_dependency_leaves_its_dependents_omitted(
        venv: Path, server: QcgServer, tmp_path: Path) -> None:
    body = f'''
wd = {str(tmp_path / "wd")!r}
jobs = Jobs()
jobs.add(name="bad", exec="/bin/sh", args=["-c", "exit 3"], wd=wd)
jobs.add(name="child", exec="/bin/sh", args=["-c", "touch child-ran"], after="bad", wd=wd)
jobs.add(name="grandchild", exec="/bin/true", after="child", wd=wd)
jobs.add(name="sweep", exec="/bin/true", iteration={{"stop": 2}}, after="bad", wd=wd)
m.submit(jobs)
out(m.wait4(["bad", "child", "grandchild", "sweep", "sweep:1"], timeout=60))
out(m.info(["bad", "child"]))
m.finish()
'''
    waited, info = client(venv, server, tmp_path, body)
    assert waited == {"bad": "FAILED", "child": "OMITTED", "grandchild": "OMITTED",
                      "sweep": "OMITTED", "sweep:1": "OMITTED"}
    assert not (tmp_path / "wd" / "child-ran").exists()
    bad = info["jobs"]["bad"]["data"]
    assert bad["runtime"]["exit_code"] == 3 and bad["messages"] == \
        "the command exited with code 3"
    child = info["jobs"]["child"]["data"]
    assert [state for _, state in history(child)] == ["QUEUED", "OMITTED"]
    job = catalog_job(server, child["runtime"]["job"])
    assert job["state"] == "CANCELLED"
    assert bad["runtime"]["job"] in job["queue"]["reason"] and "FAILED" in job["queue"]["reason"]


def test_cancel_kills_a_running_job_and_omits_its_dependents(
        venv: Path, server: QcgServer, tmp_path: Path) -> None:
    body = f'''
wd = {str(tmp_path / "wd")!r}
jobs = Jobs()
jobs.add(name="long", exec="/bin/sh", args=["-c", "echo $$ > pid; sleep 30; touch late"],
         wd=wd)
jobs.add(name="next", exec="/bin/true", after="long", wd=wd)
m.submit(jobs)
deadline = time.time() + 30
while m.status("long")["jobs"]["long"]["data"]["status"] != "EXECUTING":
    assert time.time() < deadline, "long never started"
    time.sleep(0.1)
started = time.time()
m.cancel("long")
out(m.wait4(["long", "next"], timeout=30))
out(time.time() - started)
out(m.info("long"))
m.finish()
'''
    waited, seconds, info = client(venv, server, tmp_path, body)
    assert waited == {"long": "CANCELED", "next": "OMITTED"}
    assert seconds < 15
    long = info["jobs"]["long"]["data"]
    assert [state for _, state in history(long)] == ["QUEUED", "EXECUTING", "CANCELED"]
    job = catalog_job(server, long["runtime"]["job"])
    assert job["state"] == "CANCELLED" and "cancelJob" in job["queue"]["reason"]
    # The worker's next heartbeat finds the lease gone and kills the process group.
    pid = int((tmp_path / "wd" / "pid").read_text())
    deadline = time.monotonic() + KILL_WITHIN_S
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, f"the cancelled job's process {pid} still runs"
        time.sleep(0.1)
    assert not (tmp_path / "wd" / "late").exists()


KILL_WITHIN_S = 10  # heartbeats every 2 s, then SIGTERM


def test_jobs_hold_the_cores_they_ask_for_and_a_wall_time_ends_a_job(
        venv: Path, server: QcgServer, tmp_path: Path) -> None:
    body = f'''
wd = {str(tmp_path / "wd")!r}
jobs = Jobs()
for name in ("wide1", "wide2"):
    jobs.add(name=name, exec="/bin/sh", args=["-c", "sleep 2"], numCores={CORES}, wd=wd)
jobs.add(name="slow", exec="/bin/sh", args=["-c", "sleep 20"], wt="2s", wd=wd)
m.submit(jobs)
deadline = time.time() + 30
while m.status("wide1")["jobs"]["wide1"]["data"]["status"] != "EXECUTING":
    assert time.time() < deadline
    time.sleep(0.05)
out(m.resources())
out(m.wait4(["wide1", "wide2", "slow"], timeout=60))
out(m.info(["wide1", "wide2", "slow"]))
m.finish()
'''
    resources, waited, info = client(venv, server, tmp_path, body)
    assert resources["used_cores"] == CORES and resources["free_cores"] == 0
    assert waited == {"wide1": "SUCCEED", "wide2": "SUCCEED", "slow": "FAILED"}
    spans = {}
    for name in ("wide1", "wide2"):
        lines = dict((state, t) for t, state in history(info["jobs"][name]["data"]))
        spans[name] = (lines["EXECUTING"], lines["SUCCEED"])
    first, second = sorted(spans.values())
    assert second[0] >= first[1]  # each took every core: one after the other
    assert "timed out after 2 s" in info["jobs"]["slow"]["data"]["messages"]


def test_sessions_are_apart_and_a_finished_job_is_not_run_again(
        venv: Path, server: QcgServer, tmp_path: Path) -> None:
    body = f'''
wd = {str(tmp_path / "wd")!r}
other = Manager(sys.argv[1], {{"log_file": sys.argv[2] + ".other"}})
count = ["-c", "echo ran >> runs.txt; sleep 0.5"]
other.submit(Jobs().add(name="theirs", exec="/bin/true", wd=wd)
             .add(name="shared", exec="/bin/true", wd=wd))
m.submit(Jobs().add(name="mine", exec="/bin/sh", args=count, wd=wd)
         .add(name="shared", exec="/bin/sh", args=["-c", "exit 0"], wd=wd))
out(sorted(m.list()))
out(sorted(other.list()))
first = m.wait4_any_job_finish(60)
second = m.wait4_any_job_finish(60)
out(sorted([first, second]))
other.wait4all(60)
m.finish()
other.finish()
again = Manager(sys.argv[1], {{"log_file": sys.argv[2] + ".again"}})
again.submit(Jobs().add(name="mine", exec="/bin/sh", args=count, wd=wd))
started = time.time()
out(again.wait4("mine", timeout=60))
out(time.time() - started)
again.finish()
'''
    mine, theirs, events, again, _ = client(venv, server, tmp_path, body)
    assert mine == ["mine", "shared"] and theirs == ["shared", "theirs"]
    assert events == [["mine", "SUCCEED"], ["shared", "SUCCEED"]]  # never "theirs"
    assert again == {"mine": "SUCCEED"}  # memoised: answered, not run (runs.txt says so)
    assert (tmp_path / "wd" / "runs.txt").read_text() == "ran\n"


def request(server: QcgServer, body: bytes) -> dict[str, Any]:
    """One request on a REQ socket of this process (any bytes at all), its answer."""
    context = zmq.Context()
    socket = context.socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVTIMEO, 30_000)
    try:
        socket.connect(server.qcg_address)
        socket.send(body)
        return dict(json.loads(socket.recv()))
    finally:
        socket.close()
        context.term()


class Connection:
    """A REQ socket kept open: one QCG session."""

    def __init__(self, server: QcgServer) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.REQ)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVTIMEO, 30_000)
        self.socket.connect(server.qcg_address)

    def __call__(self, document: Any) -> dict[str, Any]:
        self.socket.send(json.dumps(document).encode())
        return dict(json.loads(self.socket.recv()))

    def close(self) -> None:
        self.socket.close()
        self.context.term()


def job(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "execution": {"exec": "/bin/true"}, **fields}


@pytest.mark.parametrize(("document", "message"), [
    ({"request": "nope"}, "Invalid request: Unknown request name: nope"),
    ([1, 2], "Invalid request: Invalid request"),
    ({"request": "submit"}, "Invalid request: Wrong submit request - missing jobs data"),
    ({"request": "submit", "jobs": [{"name": "x"}]},
     "Invalid request: Missing execution element in job description"),
    ({"request": "submit", "jobs": [job("ok"), job("y", dependencies={"after": ["ghost"]})]},
     "Job y: unknown dependency 'ghost'"),
    ({"request": "submit", "jobs": [job("twice"), job("twice")]}, "Job twice already exist"),
    ({"request": "submit", "jobs": [job("self", dependencies={"after": ["self"]})]},
     "it cannot wait on itself"),
    ({"request": "submit", "jobs": [job("loop", iteration={"stop": 3},
                                        dependencies={"after": ["loop:${it}"]})]},
     "it cannot wait on itself ('loop:0')"),
    ({"request": "submit", "jobs": [job("a:b")]}, "contains invalid characters"),
    ({"request": "submit", "jobs": [job("big", resources={"numCores": {"exact": 64}})]},
     "Not enough resources for job big"),
    ({"request": "submit", "jobs": [{"name": "m", "execution": {"exec": "/bin/true",
                                                              "modules": ["gcc"]}}]},
     "execution keys ['modules'] are not supported"),
    ({"request": "submit", "jobs": [job("it", iteration={"start": 5, "stop": 2})]},
     "Wrong format of iteration directive"),
    ({"request": "submit", "jobs": [job("vals", iteration={"values": ["a"], "stop": 1})]},
     "{'values': [strings]}, without start or stop"),
    ({"request": "submit", "jobs": [job("none", iteration={"values": []})]},
     "1 to 65536 values"),
    ({"request": "submit", "jobs": [job("w", resources={"wt": "soon"})]},
     "wt 'soon' is not a wall time"),
    ({"request": "jobStatus", "jobNames": ["ghost"]}, "Job 'ghost' doesn't exist"),
    ({"request": "jobInfo", "jobNames": []}, "missing job names"),
    ({"request": "status", "options": "all"}, "options are not an object"),
])
def test_malformed_requests_are_answered_in_qcg_shape_and_change_nothing(
        server: QcgServer, document: Any, message: str) -> None:
    before = httpx.get(f"{server.base_url}/queue/status", timeout=30).json()["total"]
    connection = Connection(server)
    try:
        reply = connection(document)
        assert reply["code"] == 1 and set(reply) == {"code", "message"}, reply
        assert message in reply["message"]
        assert connection({"request": "listJobs"}) == {
            "code": 0, "data": {"length": 0, "jobs": {}}}  # the session holds nothing
    finally:
        connection.close()
    assert httpx.get(f"{server.base_url}/queue/status", timeout=30).json()["total"] == before


def test_bytes_that_are_not_json_are_refused(server: QcgServer) -> None:
    reply = request(server, b"\xff not json")
    assert reply["code"] == 1 and reply["message"].startswith("Invalid request: not JSON")
    assert request(server, b'{"request": "resourcesInfo"}')["data"]["total_cores"] == CORES


def test_cancel_and_remove_of_what_cannot_be_answer_per_job_errors(
        server: QcgServer, tmp_path: Path) -> None:
    connection = Connection(server)
    try:
        assert connection({"request": "submit", "jobs": [
            {"name": "quick", "execution": {"exec": "/bin/true", "wd": str(tmp_path)}}]}
        )["data"] == {"submitted": 1, "jobs": ["quick"]}
        deadline = time.monotonic() + 30
        while connection({"request": "jobStatus", "jobNames": ["quick"]})[
                "data"]["jobs"]["quick"]["data"]["status"] != "SUCCEED":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        cancelled = connection({"request": "cancelJob", "jobNames": ["quick", "ghost"]})
        assert cancelled["code"] == 0 and cancelled["data"]["canceled"] == 0
        assert set(cancelled["data"]["errors"]) == {"quick", "ghost"}
        removed = connection({"request": "removeJob", "jobNames": ["quick", "ghost"]})
        assert removed["data"]["removed"] == 1 and set(removed["data"]["errors"]) == {"ghost"}
        assert connection({"request": "finish"})["code"] == 0
        assert connection({"request": "listJobs"}) == {"code": 1,
                                                        "message": "processing stopped"}
    finally:
        connection.close()


def test_the_server_stops_promptly_with_a_job_in_hand_and_its_process_goes_too(
        venv: Path, tmp_path: Path) -> None:
    (tmp_path / "catalog").mkdir()
    server = QcgServer.init(tmp_path / "catalog")
    server.start()
    try:
        body = f'''
wd = {str(tmp_path / "wd")!r}
m.submit(Jobs().add(name="long", exec="/bin/sh", args=["-c", "echo $$ > pid; sleep 60"],
                    wd=wd))
deadline = time.time() + 30
while m.status("long")["jobs"]["long"]["data"]["status"] != "EXECUTING":
    assert time.time() < deadline
    time.sleep(0.05)
'''
        client(venv, server, tmp_path, body)
        pid = int((tmp_path / "wd" / "pid").read_text())
    finally:
        code = server.stop()  # SIGINT; fails the test if it takes longer than 15 s
    assert code == 0, server.output()[-3000:]
    deadline = time.monotonic() + KILL_WITHIN_S
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, f"the job's process {pid} outlived the server"
        time.sleep(0.1)


def test_a_non_loopback_address_is_refused_without_the_explicit_flag(tmp_path: Path) -> None:
    server = Server.init(tmp_path)
    port = free_port()
    done = subprocess.run([str(CATALOG), "serve", "--port", str(free_port()),
                           "--qcg-address", f"tcp://0.0.0.0:{port}"], cwd=tmp_path,
                          env=server.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "--qcg-allow-remote" in done.stderr and "no credentials" in done.stderr


@pytest.mark.parametrize(("address", "allow", "bound"), [
    ("tcp://127.0.0.1:5555", False, ("127.0.0.1", "5555")),
    ("tcp://127.0.0.1:0", False, ("127.0.0.1", "*")),
    ("tcp://localhost:*", False, ("localhost", "*")),
    ("tcp://[::1]:5555", False, ("[::1]", "5555")),
    ("tcp://0.0.0.0:5555", True, ("0.0.0.0", "5555")),
    ("tcp://10.1.2.3:5555", True, ("10.1.2.3", "5555")),
])
def test_addresses_accepted(address: str, allow: bool, bound: tuple[str, str]) -> None:
    assert check_address(address, allow) == bound


@pytest.mark.parametrize(("address", "message"), [
    ("tcp://0.0.0.0:5555", "not on the loopback interface"),
    ("tcp://example.org:5555", "not on the loopback interface"),
    ("tcp://10.1.2.3:5555", "not on the loopback interface"),
    ("ipc:///tmp/qcg", "is not tcp://HOST:PORT"),
    ("tcp://127.0.0.1", "is not tcp://HOST:PORT"),
    ("tcp://127.0.0.1:70000", "no such port"),
])
def test_addresses_refused(address: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("/", ".")):
        check_address(address)
