"""The docker engine against a dockerd of the tests' own (tests/dockerimage.py): exit codes,
output and results, limits, environment, timeout, kill, OOMKilled, and an image not present."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import dockerimage
import pytest
from dockerimage import DockerDaemon

from catalog.engines.docker import LABEL, DockerEngine, kernel_logged_oom

pytestmark = pytest.mark.slow
docker_daemon = dockerimage.docker_daemon  # the session's fixture, used by name


def _inspect(name: str) -> dict[str, object]:
    done = subprocess.run(["docker", "inspect", "--type", "container", name],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)[0]
    assert isinstance(found, dict)
    return found


def test_a_container_runs_to_its_results(docker_daemon: DockerDaemon, tmp_path: Path) -> None:
    engine = DockerEngine()
    run = engine.start({"image": docker_daemon.image, "job_uuid": "job-ok",
                        "command": ["sh", "-c", "echo to-err >&2; echo $GREETING; "
                                    "echo \"{'n': 2}\""],
                        "environment": {"GREETING": "hello there"}}, tmp_path, 60)
    assert run.wait(60)
    execution = run.result()
    assert execution.returncode == 0 and execution.error is None
    assert execution.outputs is not None and execution.outputs.results == {"n": 2}
    assert (tmp_path / "stdout.txt").read_text().startswith("hello there\n")
    assert (tmp_path / "stderr.txt").read_text() == "to-err\n"
    assert execution.native_id and engine.state("job-ok") == {}  # removed once read


def test_limits_labels_and_environment_reach_docker(docker_daemon: DockerDaemon,
                                                    tmp_path: Path) -> None:
    engine = DockerEngine()
    run = engine.start({"image": docker_daemon.image, "job_uuid": "job-limits",
                        "command": ["sleep", "30"], "environment": {"SECRET": "s3cret"},
                        "limits": {"memory": 64 * 2**20, "memory_reservation": 32 * 2**20,
                                      "cpus": 0.5}}, tmp_path, 60)
    try:
        found = _inspect("job-limits")
        host = found["HostConfig"]
        config = found["Config"]
        assert isinstance(host, dict) and isinstance(config, dict)
        assert host["Memory"] == 64 * 2**20 and host["MemoryReservation"] == 32 * 2**20
        assert host["NanoCpus"] == 500_000_000
        assert config["Labels"][LABEL] == "job-limits"
        assert "SECRET=s3cret" in config["Env"]
        assert "s3cret" not in " ".join(found["Args"])  # type: ignore[arg-type]
    finally:
        run.kill("test over")
    execution = run.result()
    assert execution.killed and execution.error == "test over"


def test_a_failing_command_reports_its_exit_code(docker_daemon: DockerDaemon,
                                                tmp_path: Path) -> None:
    run = DockerEngine().start({"image": docker_daemon.image, "command": "sh -c 'exit 7'"},
                               tmp_path, 60)
    assert run.wait(60)
    execution = run.result()
    assert execution.returncode == 7
    assert execution.error == "the container exited with code 7"


def test_the_timeout_stops_the_container(docker_daemon: DockerDaemon, tmp_path: Path) -> None:
    engine = DockerEngine()
    started = time.monotonic()
    run = engine.start({"image": docker_daemon.image, "job_uuid": "job-slow",
                        "command": ["sleep", "300"]}, tmp_path, 1)
    assert run.wait(60)
    assert time.monotonic() - started < 30
    execution = run.result()
    assert execution.timed_out and execution.error == "timed out after 1 s"
    assert engine.state("job-slow") == {}


def test_out_of_memory_is_read_from_inspect(docker_daemon: DockerDaemon,
                                           tmp_path: Path) -> None:
    run = DockerEngine().start({
        "image": docker_daemon.image, "job_uuid": "job-oom",
        "command": ["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"],
        "limits": {"memory": 8 * 2**20}}, tmp_path, 60)
    assert run.wait(60)
    execution = run.result()
    assert execution.error is not None and "OOMKilled" in execution.error, execution


@pytest.mark.parametrize(("work", "message"), [
    ({"image": "not-here/nothing:1", "command": ["true"]}, "is not on this machine"),
    ({"command": ["true"]}, "names no container image"),
    ({"image": "IMAGE", "command": ["true"], "limits": {"memory": 100}},
     "memory limit is at least"),
    ({"image": "IMAGE", "command": ["true"], "limits": {"cpus": 1000}}, "CPU limit"),
    ({"image": "IMAGE", "command": ["true"], "environment": {"A B": "x"}}, "environment"),
    ({"image": "IMAGE", "command": ["/no/such/program"]}, "could not start the container"),
])
def test_work_that_cannot_run_is_refused_before_it_runs(
        docker_daemon: DockerDaemon, tmp_path: Path, work: dict[str, object],
        message: str) -> None:
    if work.get("image") == "IMAGE":
        work = {**work, "image": docker_daemon.image}
    before = subprocess.run(["docker", "ps", "-aq"], capture_output=True, text=True).stdout
    with pytest.raises(ValueError, match=message):
        DockerEngine().start(work, tmp_path, 60)
    assert subprocess.run(["docker", "ps", "-aq"], capture_output=True,
                          text=True).stdout == before


def test_no_daemon_is_named_as_the_reason(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    why = DockerEngine().unavailable()
    assert why is not None and "does not answer" in why
    assert DockerEngine("no-such-docker-client").unavailable() == \
        "no docker client ('no-such-docker-client' is not found)"


def test_an_oom_kill_docker_missed_is_found_in_the_kernel_log(tmp_path: Path) -> None:
    container = "f68e0e02299a0283c51ce11ab0dcbff5421cd47f0948a4a26dd2756a4c329c97"
    log = tmp_path / "kmsg"
    log.write_text("6,1,2,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),"
                   f"oom_memcg=/docker/{container},task_memcg=/docker/{container},task=dd\n")
    assert kernel_logged_oom(container, str(log))
    assert not kernel_logged_oom("0" * 64, str(log))  # another container's kill
    assert not kernel_logged_oom(f"{container},task_memcg", str(log))  # not a container id
    assert not kernel_logged_oom(container, str(tmp_path / "unreadable"))


def test_a_network_must_exist_and_is_joined(docker_daemon: DockerDaemon,
                                            tmp_path: Path) -> None:
    engine = DockerEngine()
    work = {"image": docker_daemon.image, "job_uuid": "job-net", "command": ["true"]}
    with pytest.raises(ValueError, match="network 'no-such-net' does not exist"):
        engine.start({**work, "network": "no-such-net"}, tmp_path, 60)
    assert engine.state("job-net") == {}  # nothing was created
    with pytest.raises(ValueError, match="cannot name a docker network"):
        engine.start({**work, "network": "--privileged"}, tmp_path, 60)
    waits = ["sh", "-c", "trap 'exit 0' TERM; sleep 30 & wait"]  # stops at once when asked
    run = engine.start({**work, "network": "none", "command": waits}, tmp_path, 60)
    try:
        host = _inspect("job-net")["HostConfig"]
        assert isinstance(host, dict) and host["NetworkMode"] == "none"
    finally:
        run.kill("test over")
        run.wait(30)
        run.result()  # removes the container
    assert engine.state("job-net") == {}
