"""Resources (cores, memory, wall time) are queue attributes: not part of a job's identity,
kept while the job is on its way, taken for the attempts to come when it is queued again,
refused clearly when malformed, and handed to the engine that runs the job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from catalog import Catalog, ManagedPipelineJob
from catalog.errors import InvalidInput
from catalog.models import QueueInfo
from catalog.queue import end_attempt, withdraw
from catalog.queue.models import WorkFilter
from catalog.tokens import Keys
from catalog.worker import LocalQueue, Worker, WorkerOptions

KEYS = Keys(b"r" * 32, b"s" * 32)
WORK = {"command": ["sh", "-c", "echo \"{'cores': $CATALOG_CORES, 'memory': "
                    "$CATALOG_MEMORY_MB, 'time': $CATALOG_TIME_S}\""]}


@pytest.fixture
def catalog(queue_catalog: Callable[..., Catalog]) -> Catalog:
    return queue_catalog(KEYS, "reduce")


def jobs_stored(catalog: Catalog) -> int:
    return len(catalog.find_jobs(limit=1000).items)


def test_resources_are_not_identity_and_a_job_on_its_way_keeps_its_own(
        catalog: Catalog) -> None:
    first = catalog.submit("reduce", WORK, resources={"cores": 2, "memory": "2G",
                                                      "time": "30m"})
    assert (first.created, first.queued) == (True, True)
    assert first.resources is not None
    assert first.resources.model_dump() == {"cores": 2, "memory": 2048, "time": 1800}
    again = catalog.submit("reduce", WORK, resources={"cores": 8})
    plain = catalog.submit("reduce", WORK)
    assert again.uuid == plain.uuid == first.uuid
    assert (again.created, again.queued, again.state) == (False, False, "QUEUED")
    assert again.resources == first.resources  # the answer says which ones it runs with
    stored = catalog.get_job(first.uuid)
    assert stored.queue is not None and stored.queue.resources == first.resources
    assert stored.data == WORK
    assert stored.history[1].data["resources"] == {"cores": 2, "memory": 2048, "time": 1800}

    held = withdraw(catalog, WorkFilter(pipelines=["reduce"]), "w", 60)
    assert held is not None and held.uuid == first.uuid
    assert held.work() == {**WORK, "resources": {"cores": 2, "memory": 2048, "time": 1800}}
    running = catalog.submit("reduce", WORK, resources={"cores": 8})
    assert (running.state, running.queued, running.resources) == ("RUNNING", False,
                                                                  first.resources)
    assert end_attempt(catalog, first.uuid, "w", "boom") == "QUEUED"  # retried: kept
    retried = catalog.get_job(first.uuid).queue
    assert retried is not None and retried.resources == first.resources


def test_a_job_queued_again_takes_the_new_resources_for_its_next_attempts(
        catalog: Catalog) -> None:
    first = catalog.submit("reduce", WORK, resources={"cores": 2}, retries=0)
    assert withdraw(catalog, WorkFilter(pipelines=["reduce"]), "w", 60) is not None
    assert end_attempt(catalog, first.uuid, "w", "boom") == "FAILED"
    again = catalog.submit("reduce", WORK, resources={"cores": 3, "time": 90})
    assert (again.uuid, again.state, again.queued) == (first.uuid, "QUEUED", True)
    assert again.resources is not None and again.resources.model_dump() == {
        "cores": 3, "memory": None, "time": 90}
    held = withdraw(catalog, WorkFilter(pipelines=["reduce"]), "w", 60)
    assert held is not None and held.attempt == 1
    assert held.work()["resources"] == {"cores": 3, "time": 90}


def test_resources_given_inside_data_are_moved_out_of_its_identity(catalog: Catalog) -> None:
    inside = catalog.submit("reduce", {**WORK, "resources": {"memory": 300}})
    assert inside.uuid == catalog.submit("reduce", WORK).uuid
    stored = catalog.get_job(inside.uuid)
    assert stored.data == WORK
    assert stored.queue is not None and stored.queue.resources is not None
    assert stored.queue.resources.memory == 300


@pytest.mark.parametrize(("submission", "message"), [
    ({"resources": {"memory": "lots"}}, "resources.memory: 'lots' is not MB"),
    ({"resources": {"cores": 0}}, "resources.cores: "),
    ({"resources": {"cores": True}}, "resources.cores: "),
    ({"resources": {"time": "soon"}}, "resources.time: 'soon' is not seconds"),
    ({"resources": {"gpus": 1}}, "resources.gpus: unknown resources"),
    ({"resources": [2]}, "resources: not a JSON object"),
    ({"data": {**WORK, "resources": {"memory": -1}}}, "data.resources.memory: "),
    ({"data": {**WORK, "resources": {"cores": 1}}, "resources": {"cores": 2}},
     "data.resources and resources differ"),
])
def test_malformed_resources_are_refused_naming_the_field_and_store_nothing(
        catalog: Catalog, submission: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message.replace(".", r"\.")) as refused:
        catalog.submit("reduce", **{"data": WORK, **submission})
    assert refused.value.status == 400
    assert jobs_stored(catalog) == 0


def test_the_worker_hands_the_resources_to_the_engine(catalog: Catalog, tmp_path: Path
                                                      ) -> None:
    cores = len(os.sched_getaffinity(0))  # no more than this machine has: it would refuse
    asked = catalog.submit("reduce", WORK, resources={"cores": cores, "memory": "1G"},
                           timeout=120)
    # A job queued with its resources in its data (before they were queue attributes) still
    # has them read from there.
    legacy = ManagedPipelineJob(catalog, "reduce", {**WORK, "resources": {
        "cores": 1, "memory": 64, "time": 30}}).setup(QueueInfo(timeout=60))
    options = WorkerOptions(WorkFilter(pipelines=["reduce"]), lives=2, sleep=0.1,
                            workdir=tmp_path / "work")
    attempts = Worker(LocalQueue(catalog), options).run()
    assert [a.state for a in attempts] == ["FINISHED", "FINISHED"]
    assert catalog.get_job(asked.uuid).results == {"cores": cores, "memory": 1024,
                                                   "time": 120}
    assert catalog.get_job(legacy.uuid).results == {"cores": 1, "memory": 64, "time": 30}


@pytest.mark.anyio
async def test_http_submissions_take_resources_and_refuse_bad_ones(
        catalog: Catalog, client: httpx.AsyncClient) -> None:
    admin = {"Authorization": f"Bearer {KEYS.admin_token()}"}
    body = {"pipeline": "reduce", "data": WORK, "resources": {"cores": 2, "time": "1:00:00"}}
    made = await client.post("/queue/jobs", json=body, headers=admin)
    assert made.status_code == 201
    assert made.json()["resources"] == {"cores": 2, "memory": None, "time": 3600}
    got = await client.get(f"/jobs/{made.json()['uuid']}")
    assert got.json()["queue"]["resources"] == {"cores": 2, "memory": None, "time": 3600}

    bad = await client.post("/queue/jobs", json={**body, "data": {"n": 2},
                                                 "resources": {"memory": "2X"}},
                            headers=admin)
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_input"
    assert bad.json()["error"]["message"].startswith("resources.memory: '2X'")
    batch = {"jobs": [{"pipeline": "reduce", "data": {"n": 3}, "resources": {"cores": 4}},
                      {"pipeline": "reduce", "data": {"n": 4}, "resources": {"cores": -1}}]}
    refused = await client.post("/queue/jobs/batch", json=batch, headers=admin)
    assert refused.status_code == 400
    assert refused.json()["error"]["message"].startswith("items[1]: resources.cores")
    assert jobs_stored(catalog) == 1  # neither the bad one nor the batch's good one
    batch["jobs"][1]["resources"] = {"cores": 1}
    taken = await client.post("/queue/jobs/batch", json=batch, headers=admin)
    assert [j["resources"]["cores"] for j in taken.json()["jobs"]] == [4, 1]


def test_the_submit_command_takes_resource_flags(tmp_path: Path) -> None:
    env = {"CATALOG_DB": f"sqlite:///{tmp_path}/cli.db", "PATH": "/usr/bin:/bin",
           "CATALOG_ARCHIVE_ROOT": str(tmp_path / "archive")}
    command = str(Path(sys.executable).parent / "catalog")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([command, *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)

    assert cli("init").returncode == 0
    assert cli("pipeline", "add", "--name", "reduce").returncode == 0
    submit = ["--json", "submit", "--pipeline", "reduce", "--data", json.dumps(WORK)]
    done = cli(*submit, "--cores", "2", "--memory", "2G", "--time", "30m")
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["resources"] == {"cores": 2, "memory": 2048, "time": 1800}
    again = json.loads(cli(*submit, "--cores", "4").stdout)
    assert (again["uuid"], again["queued"], again["resources"]) == (
        outcome["uuid"], False, outcome["resources"])
    shown = cli("job", "show", outcome["uuid"])
    assert "(cores 2, memory 2048 MB, time 1800 s)" in shown.stdout
    bad = cli("submit", "--pipeline", "reduce", "--data", '{"n": 9}', "--memory", "lots")
    assert bad.returncode == 2
    assert "resources.memory: 'lots' is not MB" in bad.stderr
    listed = json.loads(cli("--json", "job", "list").stdout)
    assert len(listed["jobs"]) == 1  # the refused one was not stored
