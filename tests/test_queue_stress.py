"""No job run twice, none lost: worker processes racing on one SQLite file, and a server killed
with SIGKILL in the middle of withdraws. Every process started here is stopped by its PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from test_web_e2e import Server

from catalog import Catalog
from catalog.tokens import Keys

pytestmark = pytest.mark.slow

KEYS = Keys(b"s" * 32, b"t" * 32)
WORKER = textwrap.dedent('''
    import json, sys
    from catalog import Catalog
    from catalog.queue import end_attempt, withdraw
    from catalog.tokens import Keys

    catalog = Catalog.open(sys.argv[1], keys=Keys(b"s" * 32, b"t" * 32),
                           sqlite_synchronous="NORMAL")
    name, taken = sys.argv[2], []
    while (job := withdraw(catalog, {"pipelines": ["race"]}, name)) is not None:
        end_attempt(catalog, job.uuid, name, None, {"by": name})
        taken.append(job.uuid)
    catalog.close()
    print(json.dumps(taken))
''')


# The wire server is slower per operation than SQLite: a smaller race by default, the issue's
# full size when asked (CATALOG_TEST_RACE_JOBS=2000). A claim there costs the same at 64 or
# 1,024 queued (mongo_claim), but the server answers one request at a time and a job costs
# some 35 of them with eight racers (every loser reads the winner's head): 256 jobs take
# 30-70 s here, 2,000 would take minutes.
RACE_JOBS = {"sqlite": 2000,
             "mongowire": int(os.environ.get("CATALOG_TEST_RACE_JOBS", "256"))}


@pytest.mark.parametrize("backend", ["sqlite", "mongowire"])
def test_eight_worker_processes_run_every_job_exactly_once(
        backend: str, database_url: Callable[[str], str], tmp_path: Path) -> None:
    url = database_url(backend)
    jobs = RACE_JOBS[backend]
    with Catalog.open(url, keys=KEYS, sqlite_synchronous="NORMAL",
                      archive_root=str(tmp_path / "archive")) as catalog:
        catalog.add_pipeline("race")
        uuids = {catalog.submit("race", {"n": n}).uuid for n in range(jobs)}
    processes = [subprocess.Popen([sys.executable, "-c", WORKER, url, f"p{n}"], cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for n in range(8)]
    outputs: list[str] = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=1800)
            assert process.returncode == 0, err
            outputs.append(out)
    finally:
        for process in processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
    taken = [uuid for out in outputs for uuid in json.loads(out)]
    assert len(taken) == len(set(taken)) == jobs
    assert set(taken) == uuids
    assert sum(1 for out in outputs if json.loads(out)) >= 2  # they did race
    with Catalog.open(url, keys=KEYS) as catalog:
        assert catalog.store.queue_counts() == [(catalog.get_pipeline("race").uuid, "FINISHED",
                                                 jobs)]
        for uuid in list(uuids)[:200]:
            job = catalog.get_job(uuid)
            assert [e.name for e in job.history].count("run") == 1
            assert job.results == {"by": job.history[2].data["worker"]}


def test_a_server_killed_during_withdraws_loses_no_job_and_runs_none_twice(
        tmp_path: Path) -> None:
    server = Server.init(tmp_path)
    with Catalog.open(f"sqlite:///{tmp_path}/c.db", archive_root=str(tmp_path / "archive"),
                      secret_file=str(tmp_path / ".catalog/secret.json")) as catalog:
        catalog.add_pipeline("race")
        for n in range(150):
            catalog.submit("race", {"n": n})
        key = catalog.keys.worker_token()
    headers = {"Authorization": f"Bearer {key}"}
    finished: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def work(name: str) -> None:
        while not stop.is_set():
            try:
                with httpx.Client(base_url=server.base_url, timeout=10) as client:
                    got = client.post("/queue/withdraw", headers=headers, json={
                        "filter": {"pipelines": ["race"]}, "worker": name, "lease": 5})
                    if got.status_code != 200:
                        time.sleep(0.05)
                        continue
                    job = got.json()
                    if job is None:
                        client.post("/queue/sweep", headers=headers)
                        time.sleep(0.2)
                        continue
                    done = client.post(f"/jobs/{job['uuid']}/complete", headers=headers,
                                       json={"worker": name})
                    if done.status_code == 200:
                        with lock:
                            finished.append(job["uuid"])
            except httpx.TransportError:
                time.sleep(0.05)  # the server is down: come back

    server.start()
    threads = [threading.Thread(target=work, args=(f"t{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(finished) < 40:
            assert time.monotonic() < deadline, "no progress before the kill"
            time.sleep(0.02)
        server.kill()  # SIGKILL, mid-stream
        time.sleep(0.5)
        server.start()
        deadline = time.monotonic() + 120
        while True:
            status = httpx.get(f"{server.base_url}/queue/status").json()["total"]
            if status == {"FINISHED": 150}:
                break
            assert time.monotonic() < deadline, f"jobs left behind: {status}"
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        if server.process is not None:
            server.stop()
    assert len(finished) == len(set(finished))  # no job completed twice
    with Catalog.open(f"sqlite:///{tmp_path}/c.db",
                      secret_file=str(tmp_path / ".catalog/secret.json")) as catalog:
        for page_job in catalog.find_jobs(limit=1000).items:
            job = catalog.get_job(page_job["uuid"])
            names = [e.name for e in job.history]
            assert names.count("finish") == 1, names
            # every attempt but the last ended by the sweep: held by nobody, never by two
            runs = [i for i, name in enumerate(names) if name == "run"]
            for position in runs[:-1]:
                assert job.history[position + 1].name == "fail", names
                assert job.history[position + 1].data["error"] == "lease expired"
    counted = Counter(finished)
    assert all(count == 1 for count in counted.values())

