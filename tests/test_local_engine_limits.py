"""The local engine holds a job to its resources, as Slurm does on its nodes: memory (a cgroup
per job, children included, or RLIMIT_AS where there are none), cores (the child's affinity;
more than the machine has is refused before anything starts) and wall time (the smaller of it
and the timeout, the reason saying which); and leaves no cgroup behind, even when its worker is
killed outright."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid as uuid_module
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from catalog import Catalog
from catalog.engines import LocalEngine
from catalog.engines.cgroups import MemoryGroups
from catalog.engines.guard import remove_cgroup
from catalog.engines.local import CPU_USE, memory_groups
from catalog.queue.models import WorkFilter
from catalog.tokens import Keys
from catalog.worker import LocalQueue, Worker, WorkerOptions

KEYS = Keys(b"l" * 32, b"m" * 32)
CPUS = os.sched_getaffinity(0)

# Starts a sleeper in a session of its own (out of reach of the job's process group), then a
# child that allocates 400 MB; exits 0 whatever became of it.
HOG = textwrap.dedent('''
    import subprocess, sys
    sleeper = subprocess.Popen(["sleep", "300"], start_new_session=True)
    with open(sys.argv[1], "a") as handle:
        handle.write(str(sleeper.pid) + " ")
    hog = subprocess.run([sys.executable, "-c", "b = bytearray(400 << 20)"])
    print({"hog": hog.returncode})
''')

MODULE = '''
import contextlib
import os

def allocate(mb):
    block = bytearray(mb << 20)
    return {"allocated": len(block)}

def cpus():
    return {"cpus": sorted(os.sched_getaffinity(0)), "told": os.environ["CATALOG_CORES"]}
'''


def _groups() -> MemoryGroups:
    groups = memory_groups()
    if groups is None:
        pytest.skip("this process may make no cgroup v1 memory groups here (no memory "
                    "controller mounted, cgroup v2 only, or no permission)")
    return groups


def _job_groups(groups: MemoryGroups) -> list[str]:
    return sorted(entry.name for entry in os.scandir(groups.directory) if entry.is_dir())


def _pids(listed: Path) -> list[int]:
    return [int(line) for line in listed.read_text().split()] if listed.exists() else []


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _left(group: Path) -> str:
    """What is left in a cgroup, to say why it could not be removed."""
    try:
        pids = (group / "cgroup.procs").read_text().split()
    except OSError as exc:
        return f"unreadable ({exc})"
    return "processes " + ", ".join(
        f"{pid}: {Path(f'/proc/{pid}/cmdline').read_bytes()!r}" for pid in pids
        if Path(f"/proc/{pid}").exists()) or "no processes"


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def catalog(queue_catalog: Callable[..., Catalog]) -> Catalog:
    return queue_catalog(KEYS, "reduce")


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module ``limited`` of functions, importable by the engine's children."""
    (tmp_path / "limited.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(engine: LocalEngine, work: dict[str, Any], workdir: Path, timeout: int = 60) -> Any:
    started = engine.start(work, workdir, timeout)
    assert started.wait(timeout + 10)
    return started.result()


def test_a_job_past_its_memory_fails_out_of_memory_children_included(
        catalog: Catalog, tmp_path: Path) -> None:
    groups = _groups()
    before = _job_groups(groups)
    sleeper = tmp_path / "sleeper"
    job = catalog.submit("reduce", {"command": [sys.executable, "-c", HOG, str(sleeper)]},
                         resources={"memory": "64M"}, retries=2)
    options = WorkerOptions(WorkFilter(pipelines=["reduce"]), lives=2, sleep=0.1,
                            workdir=tmp_path / "work")
    try:
        attempts = Worker(LocalQueue(catalog), options).run()
        left = [pid for pid in _pids(sleeper) if _running(pid)]
    finally:  # stopped by their ids whatever the test finds
        for pid in _pids(sleeper):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert [a.state for a in attempts] == ["QUEUED", "FAILED"]  # retried, as Slurm's would be
    stored = catalog.get_job(job.uuid)
    assert stored.state == "FAILED"
    events = [(entry.name, entry.data.get("error")) for entry in stored.history
              if entry.name in ("fail", "retry")]
    assert [name for name, _ in events] == ["fail", "retry", "fail"]
    reason = (r"OUT_OF_MEMORY: the job went past its memory \(64 MB\) and was killed \(the "
              r"kernel killed [1-9][0-9]* of its processes in its memory cgroup\)")
    assert all(re.fullmatch(reason, str(events[i][1])) for i in (0, 2)), events
    # The leader exited 0, but its child was killed for memory: the job failed all the same;
    # the sleepers it left in sessions of their own (one an attempt) died with the job's group.
    assert len(_pids(sleeper)) == 2 and left == []
    assert _job_groups(groups) == before


def test_a_function_past_its_memory_is_killed(module: Path) -> None:
    groups = _groups()
    before = _job_groups(groups)
    engine = LocalEngine()
    ended = run(engine, {"function": "limited.allocate", "parameters": {"mb": 300},
                         "resources": {"memory": 64}}, module / "hog")
    assert ended.returncode == -signal.SIGKILL
    assert ended.error.startswith("OUT_OF_MEMORY: the job went past its memory (64 MB)")
    fits = run(engine, {"function": "limited.allocate", "parameters": {"mb": 16},
                        "resources": {"memory": 64}}, module / "fits")
    assert (fits.error, fits.outputs.results) == (None, {"allocated": 16 << 20})
    assert _job_groups(groups) == before


def test_without_cgroups_a_per_process_limit_holds(module: Path) -> None:
    engine = LocalEngine(cgroups=False)
    ended = run(engine, {"function": "limited.allocate", "parameters": {"mb": 300},
                         "resources": {"memory": 64}}, module / "hog")
    assert ended.returncode == 1  # its allocation failed: a MemoryError, not a kill
    assert ended.error.startswith("OUT_OF_MEMORY: the job went past its memory (64 MB): an "
                                  "allocation failed under its address-space limit "
                                  "(MemoryError")
    command = run(engine, {"command": [sys.executable, "-c", "b = bytearray(300 << 20)"],
                           "resources": {"memory": 64}}, module / "command")
    assert command.error == ("the command exited with code 1 (under an address-space limit "
                             "of 64 MB: an allocation it could not make may be why)")
    fits = run(engine, {"function": "limited.allocate", "parameters": {"mb": 16},
                        "resources": {"memory": 64}}, module / "fits")
    assert fits.error is None


def test_a_job_given_one_core_sees_one_cpu(module: Path) -> None:
    engine = LocalEngine()
    mine = os.sched_getaffinity(0)
    ended = run(engine, {"function": "limited.cpus", "resources": {"cores": 1}},
                module / "one")
    assert ended.error is None
    assert len(ended.outputs.results["cpus"]) == 1 and ended.outputs.results["told"] == "1"
    assert set(ended.outputs.results["cpus"]) <= CPUS
    every = run(engine, {"function": "limited.cpus", "resources": {"cores": len(CPUS)}},
                module / "all")
    assert set(every.outputs.results["cpus"]) == CPUS
    assert os.sched_getaffinity(0) == mine  # the starting thread has its own back


@pytest.mark.skipif(len(CPUS) < 2, reason="one CPU: two jobs can only share it")
def test_jobs_running_at_once_are_spread_over_the_cpus(module: Path) -> None:
    engine = LocalEngine()
    runs = [engine.start({"command": [sys.executable, "-c", "import os, time; "
                                      "print({'cpus': sorted(os.sched_getaffinity(0))}); "
                                      "time.sleep(0.5)"], "resources": {"cores": 1}},
                         module / f"spread-{i}", 30) for i in range(2)]
    for started in runs:
        assert started.wait(30)
    outputs = [started.result().outputs for started in runs]
    taken = [done.results["cpus"] for done in outputs if done is not None]
    assert len(taken[0]) == len(taken[1]) == 1 and taken[0] != taken[1]


@pytest.mark.parametrize("resources, message", [
    ({"cores": len(CPUS) + 1},
     f"the job asks for {len(CPUS) + 1} cores; this machine has {len(CPUS)}"),
    ({"memory": "64T"}, "the job asks for 67108864 MB of memory; this machine has "),
])
def test_more_than_the_machine_has_is_refused_before_anything_starts(
        catalog: Catalog, tmp_path: Path, resources: dict[str, Any], message: str) -> None:
    marker = tmp_path / "started"
    job = catalog.submit("reduce", {"command": ["touch", str(marker)]}, resources=resources,
                         retries=1)
    options = WorkerOptions(WorkFilter(pipelines=["reduce"]), lives=1, sleep=0.1,
                            workdir=tmp_path / "work")
    attempts = Worker(LocalQueue(catalog), options).run()
    assert [a.state for a in attempts] == ["FAILED"]
    assert attempts[0].error is not None
    assert attempts[0].error.startswith(f"could not start: {message}")
    assert catalog.get_job(job.uuid).state == "FAILED"
    assert not marker.exists()
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())


@pytest.mark.parametrize("resources, timeout, reason", [
    ({"time": 1}, 30, "timed out after 1 s (its wall time, resources.time; its timeout is "
                      "30 s)"),
    ({"time": 30}, 1, "timed out after 1 s (its timeout; its wall time, resources.time, is "
                      "30 s)"),
    ({"cores": 1}, 1, "timed out after 1 s"),
])
def test_the_smaller_of_wall_time_and_timeout_wins_and_the_reason_says_which(
        tmp_path: Path, resources: dict[str, Any], timeout: int, reason: str) -> None:
    started = time.monotonic()
    ended = run(LocalEngine(), {"command": ["sleep", "60"], "resources": resources},
                tmp_path / "slow", timeout)
    assert time.monotonic() - started < 10
    assert (ended.timed_out, ended.error) == (True, reason)


WORKER = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path
    from catalog.engines import LocalEngine
    from catalog.engines.guard import GUARD

    parent, root = Path(sys.argv[1]), Path(sys.argv[2])
    (parent / "cgroup.procs").write_text(str(os.getpid()))  # the test's parent group
    run = LocalEngine().start({"command": ["sleep", "300"], "resources": {"memory": 64}},
                              root / "work", 600)
    (root / "ids.tmp").write_text(f"{run._group.path} {run.native_id} {GUARD.pid()}")
    (root / "ids.tmp").rename(root / "ids")
    if sys.argv[3] == "wait":
        time.sleep(600)
''')


@pytest.fixture
def parent() -> Iterator[Path]:
    """A memory cgroup of the test's own, for workers whose groups only they may sweep."""
    groups = _groups()
    path = groups.directory.parent / f"test-{uuid_module.uuid4().hex[:12]}"
    path.mkdir()
    yield path
    for directory in sorted((p for p in path.rglob("*") if p.is_dir()), reverse=True):
        remove_cgroup(str(directory))  # deepest first: whatever a failed test left
    remove_cgroup(str(path))
    assert not path.exists()


def _worker(parent: Path, root: Path, then: str) -> subprocess.Popen[bytes]:
    root.mkdir()
    return subprocess.Popen([sys.executable, "-c", WORKER, str(parent), str(root), then])


@pytest.mark.parametrize("guard_killed_first", [False, True], ids=["guard", "next-start"])
def test_a_worker_killed_outright_leaves_no_cgroup_behind(
        parent: Path, tmp_path: Path, guard_killed_first: bool) -> None:
    worker = _worker(parent, tmp_path / "first", "wait")
    try:
        _wait_for(lambda: (tmp_path / "first" / "ids").exists(), 30, "the worker's job")
        group, leader, guard = (tmp_path / "first" / "ids").read_text().split()
        assert Path(group).parent.parent == parent and _running(int(leader))
        if guard_killed_first:
            os.kill(int(guard), signal.SIGKILL)
            _wait_for(lambda: not _running(int(guard)), 10, "the guard to die")
        os.kill(worker.pid, signal.SIGKILL)
        assert worker.wait(10) == -signal.SIGKILL
        if guard_killed_first:  # nobody left to clean up: the group and its job stay...
            time.sleep(0.5)
            assert Path(group).exists() and _running(int(leader))
            # ...until the next worker under the same parent starts a job.
            assert _worker(parent, tmp_path / "next", "exit").wait(30) == 0
        _wait_for(lambda: not Path(group).exists(), 10, "the job's cgroup to be removed: "
                  f"{_left(Path(group))}")
        _wait_for(lambda: not _running(int(leader)), 10, "the job to be killed")
        _wait_for(lambda: not Path(group).parent.exists(), 10,  # nor its worker's directory
                  "the dead worker's directory to be removed")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_the_engine_is_safe_to_start_from_many_threads(module: Path) -> None:
    groups = _groups()
    before = _job_groups(groups)
    engine = LocalEngine()
    errors: list[str | None] = []

    def one(i: int) -> None:
        ended = run(engine, {"function": "limited.allocate", "parameters": {"mb": 1},
                             "resources": {"cores": 1, "memory": 64}}, module / f"t{i}")
        errors.append(ended.error)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [None] * 8
    assert _job_groups(groups) == before


def test_a_start_that_fails_leaves_no_group_and_holds_no_cpu(tmp_path: Path) -> None:
    groups = _groups()
    before = _job_groups(groups)
    engine = LocalEngine()
    with pytest.raises(FileNotFoundError):
        engine.start({"command": ["no-such-program-here"], "resources": {"memory": 64}},
                     tmp_path / "missing", 10)
    with pytest.raises(ValueError, match="a command is a list of strings"):
        engine.start({"command": 3, "resources": {"cores": 1}}, tmp_path / "bad", 10)
    assert CPU_USE.held() == {}
    assert _job_groups(groups) == before
