"""End to end against a real ``catalog serve`` process on 127.0.0.1: races, retries, crashes.

One server runs for the whole session; the crash test starts its own, kills it with SIGKILL
mid-stream and restarts it on the same database. Every server is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

pytestmark = pytest.mark.slow

CATALOG = Path(sys.executable).parent / "catalog"
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 15
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """A ``catalog serve`` subprocess on its own catalog directory, output captured to a file."""

    directory: Path
    env: dict[str, str]
    log_path: Path
    admin_token: str = ""
    base_url: str = ""
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def init(cls, directory: Path) -> Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
        env["CATALOG_DB"] = f"sqlite:///{directory}/c.db"
        server = cls(directory, env, directory / "server.log")
        server.cli("init")
        server.admin_token = json.loads(server.cli("token", "admin", "--json"))["token"]
        return server

    def cli(self, *args: str) -> str:
        done = subprocess.run([str(CATALOG), *args], cwd=self.directory, env=self.env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    @property
    def pid(self) -> int:
        assert self.process is not None, "the server is not running"
        return self.process.pid

    def start(self) -> None:
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(CATALOG), "serve", "--host", "127.0.0.1", "--port", str(port)],
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

    def stop(self) -> int:
        """SIGINT, then SIGKILL after a timeout; the exit status (negative: killed by a signal)."""
        process = self.process
        assert process is not None
        os.kill(process.pid, signal.SIGINT)
        try:
            code = process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            code = process.wait(timeout=STOP_TIMEOUT_S)
            pytest.fail(f"the server ignored SIGINT for {STOP_TIMEOUT_S}s and was killed")
        finally:
            self.process = None
        return code

    def kill(self) -> None:
        process = self.process
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=STOP_TIMEOUT_S) == -signal.SIGKILL
        self.process = None

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def client(self) -> httpx.Client:
        """A keep-alive client; one per thread."""
        return httpx.Client(base_url=self.base_url, timeout=60)


@dataclass(frozen=True)
class RunningJob:
    uuid: str
    token: str


def stop_and_check(server: Server) -> None:
    """Stop ``server`` by its PID: it must exit, and cleanly on SIGINT."""
    assert server.stop() == 0, server.output()[-2000:]
    assert server.process is None


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The session's server (base URL in ``.base_url``, admin token in ``.admin_token``)."""
    running = Server.init(tmp_path_factory.mktemp("e2e"))
    running.start()
    try:
        yield running
    finally:
        stop_and_check(running)


@pytest.fixture
def crash_server(tmp_path: Path) -> Iterator[Server]:
    """A server of the test's own, on its own catalog, stopped at the end if still running."""
    running = Server.init(tmp_path)
    running.start()
    yield running
    if running.process is not None:
        stop_and_check(running)


def admin(server: Server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.admin_token}"}


def new_running_job(server: Server, client: httpx.Client) -> RunningJob:
    added = client.post("/pipelines", json={"name": "e2e"}, headers=admin(server))
    assert added.status_code in (200, 201), added.text
    created = client.post("/jobs", json={"pipeline": "e2e", "data": {"case": uuid.uuid4().hex}},
                          headers=admin(server))
    assert created.status_code == 201, created.text
    job = RunningJob(created.json()["uuid"], created.json()["token"])
    ran = client.post(f"/jobs/{job.uuid}/events", params={"token": job.token},
                      json={"name": "run"})
    assert ran.status_code == 200 and ran.json()["state"] == "RUNNING", ran.text
    return job


def send_update(client: httpx.Client, job: RunningJob, event_id: str,
                header: bool = False) -> httpx.Response:
    """One ``update`` event, the token in the Authorization header or in ``?token=``."""
    body = {"name": "update", "data": {"sent_as": event_id}, "event_id": event_id}
    if header:
        return client.post(f"/jobs/{job.uuid}/events", json=body,
                           headers={"Authorization": f"Bearer {job.token}"})
    return client.post(f"/jobs/{job.uuid}/events", json=body, params={"token": job.token})


def in_threads(work: list[Callable[[], T]]) -> list[T]:
    """Run each callable on its own thread, all released at once; re-raise the first error."""
    barrier = threading.Barrier(len(work))

    def start(task: Callable[[], T]) -> T:
        barrier.wait(timeout=30)
        return task()

    with ThreadPoolExecutor(max_workers=len(work)) as pool:
        futures = [pool.submit(start, task) for task in work]
        return [future.result() for future in futures]


def history(client: httpx.Client, job: RunningJob) -> list[dict[str, Any]]:
    answer = client.get(f"/jobs/{job.uuid}/history")
    assert answer.status_code == 200, answer.text
    return list(answer.json()["history"])


def version(client: httpx.Client, job: RunningJob) -> int:
    answer = client.get(f"/jobs/{job.uuid}")
    assert answer.status_code == 200, answer.text
    return int(answer.json()["version"])


def flood(server: Server, jobs: list[RunningJob], threads: int, per_thread: int) -> None:
    """``threads`` keep-alive clients, spread over ``jobs``, each sending unique updates."""

    def sender(index: int) -> list[tuple[RunningJob, str, int]]:
        job = jobs[index % len(jobs)]
        sent = []
        with server.client() as client:
            for n in range(per_thread):
                event_id = f"t{index}-e{n}-{uuid.uuid4().hex[:8]}"
                answer = send_update(client, job, event_id, header=index % 2 == 0)
                sent.append((job, event_id, answer.status_code))
                if answer.status_code == 200:
                    assert answer.json()["duplicate"] is False, answer.text
        return sent

    results = [r for batch in in_threads([lambda i=i: sender(i) for i in range(threads)])
               for r in batch]
    assert Counter(code for _, _, code in results) == {200: threads * per_thread}
    with server.client() as client:
        for job in jobs:
            acknowledged = [event_id for owner, event_id, _ in results if owner == job]
            entries = history(client, job)
            ids = Counter(entry["event_id"] for entry in entries)
            assert all(ids[event_id] == 1 for event_id in acknowledged)
            assert [e["name"] for e in entries[:2]] == ["create", "run"]
            assert len(entries) == 2 + len(acknowledged) == 2 + threads * per_thread // len(jobs)
            assert {e["event_id"] for e in entries[2:]} == set(acknowledged)
            assert version(client, job) == len(entries)


def test_eight_threads_on_one_job_lose_nothing(server: Server) -> None:
    with server.client() as client:
        job = new_running_job(server, client)
    flood(server, [job], threads=8, per_thread=250)


def test_eight_threads_on_four_jobs_lose_nothing(server: Server) -> None:
    with server.client() as client:
        jobs = [new_running_job(server, client) for _ in range(4)]
    flood(server, jobs, threads=8, per_thread=250)


def test_retries_from_two_threads_apply_each_event_once(server: Server) -> None:
    with server.client() as client:
        job = new_running_job(server, client)
    event_ids = [f"retry-{n}-{uuid.uuid4().hex[:8]}" for n in range(300)]

    def sender(header: bool) -> list[tuple[str, int, dict[str, Any]]]:
        with server.client() as client:
            return [(event_id, answer.status_code, answer.json())
                    for event_id in event_ids
                    for answer in [send_update(client, job, event_id, header)]]

    first, second = in_threads([lambda: sender(False), lambda: sender(True)])
    for (event_id, code_a, a), (_, code_b, b) in zip(first, second, strict=True):
        assert (code_a, code_b) == (200, 200), (a, b)
        assert sorted([a["duplicate"], b["duplicate"]]) == [False, True], (event_id, a, b)
        assert a["event_id"] == b["event_id"] == event_id
        assert a["state"] == b["state"] == "RUNNING"
    with server.client() as client:
        entries = history(client, job)
        assert version(client, job) == len(entries)
    assert Counter(e["event_id"] for e in entries[2:]) == Counter(set(event_ids))
    assert len(entries) == 2 + len(event_ids)


def test_acknowledged_events_survive_kill_9_and_are_not_applied_twice(
        crash_server: Server) -> None:
    server = crash_server
    with server.client() as client:
        job = new_running_job(server, client)
    threads, per_thread, kill_after = 4, 300, 300
    event_ids = [[f"crash-t{t}-e{n}" for n in range(per_thread)] for t in range(threads)]
    acknowledged: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()

    def sender(ids: list[str]) -> int:
        """Send until the server dies; the number of failed transports (0 or 1)."""
        with server.client() as client:
            for event_id in ids:
                try:
                    answer = send_update(client, job, event_id)
                except httpx.TransportError:
                    return 1
                assert answer.status_code == 200, answer.text
                with lock:
                    acknowledged.append(event_id)
                    if len(acknowledged) >= kill_after:
                        enough.set()
        return 0

    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(sender, ids) for ids in event_ids]
        assert enough.wait(timeout=60), "the stream never reached the kill point"
        server.kill()
        cut_off = sum(future.result() for future in futures)
    assert cut_off == threads, "every sender was cut off mid-stream by the kill"
    assert kill_after <= len(acknowledged) < threads * per_thread

    server.start()
    with server.client() as client:
        recovered = Counter(e["event_id"] for e in history(client, job))
    missing = [event_id for event_id in acknowledged if recovered[event_id] != 1]
    assert not missing, f"{len(missing)} acknowledged events lost in the crash"

    def resend(ids: list[str]) -> list[tuple[str, int, dict[str, Any]]]:
        with server.client() as client:
            return [(event_id, answer.status_code, answer.json())
                    for event_id in ids for answer in [send_update(client, job, event_id)]]

    resent = [r for batch in in_threads([lambda ids=ids: resend(ids) for ids in event_ids])
              for r in batch]
    assert all(code == 200 for _, code, _ in resent), [r for r in resent if r[1] != 200][:3]
    acknowledged_set = set(acknowledged)
    for event_id, _, answer in resent:
        if event_id in acknowledged_set:
            assert answer["duplicate"] is True, answer
    with server.client() as client:
        entries = history(client, job)
        assert version(client, job) == len(entries)
    all_ids = [event_id for ids in event_ids for event_id in ids]
    assert [e["name"] for e in entries[:2]] == ["create", "run"]
    assert Counter(e["event_id"] for e in entries[2:]) == Counter(all_ids)
    assert len(entries) == 2 + len(all_ids)
    stop_and_check(server)
    assert job.token not in server.output() and server.admin_token not in server.output()


def test_tokens_never_reach_the_server_output(server: Server) -> None:
    bogus = uuid.uuid4().hex * 2
    with server.client() as client:
        job = new_running_job(server, client)
        other = new_running_job(server, client)
        events = f"/jobs/{job.uuid}/events"
        answers = [
            # valid job token, in the query and in the header
            (200, client.post(events, params={"token": job.token}, json={"name": "update"})),
            (200, client.post(events, json={"name": "update"},
                              headers={"Authorization": f"Bearer {job.token}"})),
            # bogus and foreign tokens, both ways
            (403, client.post(events, params={"token": bogus}, json={"name": "update"})),
            (403, client.post(events, json={"name": "update"},
                              headers={"Authorization": f"Bearer {bogus}"})),
            (403, client.post(events, params={"token": other.token}, json={"name": "update"})),
            # an admin event with the job token is refused; with the admin token it is not
            (403, client.post(events, params={"token": job.token}, json={"name": "reset"})),
            (200, client.post(events, params={"token": server.admin_token},
                              json={"name": "reset"})),
            (200, client.post(events, json={"name": "ready"}, headers=admin(server))),
            # the admin token where a job token is expected, and as a bogus admin
            (201, client.post("/jobs", params={"token": server.admin_token},
                              json={"pipeline": "e2e", "data": {"case": bogus}})),
            (403, client.post("/jobs", params={"token": bogus}, json={"pipeline": "e2e"})),
            (403, client.post("/pipelines", json={"name": "x"},
                              headers={"Authorization": f"Bearer {job.token}"})),
            # errors of every other kind, each carrying a token
            (400, client.post(events, params={"token": job.token}, content=b"{not json")),
            (404, client.post(f"/jobs/{job.uuid[:-12]}{'0' * 12}/events",
                              params={"token": server.admin_token}, json={"name": "update"})),
            (409, client.post(events, params={"token": job.token}, json={"name": "validated"})),
            (422, client.post(events, params={"token": job.token}, json={"nmae": "update"})),
            (422, client.post(events, params={"token": job.token, "status": "NOPE",
                                              "mapping": "tapis"})),
            (422, client.get("/jobs", params={"token": bogus, "limit": "many"})),
        ]
        assert client.get("/health").status_code == 200
    for expected, answer in answers:
        assert answer.status_code == expected, (answer.request.url.path, answer.text)
        for token in (job.token, other.token, server.admin_token, bogus):
            assert token not in answer.text, (answer.request.url.path, answer.text)
    output = server.output()
    assert f"/jobs/{job.uuid}/events" in output  # requests are logged: the check is not vacuous
    for token in (job.token, other.token, server.admin_token, bogus):
        assert token not in output
