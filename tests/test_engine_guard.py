"""The guard: a worker that dies outright (SIGKILL) takes its work's whole process groups with
it, children and grandchildren, even when its guard had been killed before and restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from catalog.engines import LocalEngine
from catalog.engines.guard import GUARD

WORKER = textwrap.dedent('''
    import os, signal, sys, time
    from pathlib import Path
    from catalog.engines import LocalEngine
    from catalog.engines.guard import GUARD

    root, kill_guard = Path(sys.argv[1]), sys.argv[2] == "1"
    engine = LocalEngine()
    for i in range(2):
        script = f"sleep 300 & echo $! > {root}/grandchild-{i}.tmp; " \\
                 f"mv {root}/grandchild-{i}.tmp {root}/grandchild-{i}; wait"
        run = engine.start({"command": ["sh", "-c", script]}, root / f"work-{i}", 600)
        (root / f"child-{i}").write_text(run.native_id)
        if kill_guard and i == 0:  # the next start finds it gone and starts another
            os.kill(GUARD.pid(), signal.SIGKILL)
            while GUARD._process.poll() is None:
                time.sleep(0.01)
    (root / "guard").write_text(str(GUARD.pid()))
    time.sleep(600)
''')


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:  # a zombie has ended
        return handle.read().split()[2] != "Z"


def _wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("kill_guard", [False, True], ids=["guard", "guard-restarted"])
def test_a_worker_killed_outright_takes_its_work_groups_with_it(tmp_path: Path,
                                                                 kill_guard: bool) -> None:
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path),
                               "1" if kill_guard else "0"], stdout=subprocess.DEVNULL)
    try:
        _wait_for(lambda: all((tmp_path / name).exists() for name in (
            "child-0", "child-1", "grandchild-0", "grandchild-1", "guard")), 30,
            "the worker to start its work")
        pids = [int((tmp_path / name).read_text()) for name in (
            "child-0", "child-1", "grandchild-0", "grandchild-1")]
        guard = int((tmp_path / "guard").read_text())
        assert all(_running(pid) for pid in [*pids, guard])
        os.kill(worker.pid, signal.SIGKILL)
        assert worker.wait(10) == -signal.SIGKILL
        _wait_for(lambda: not any(_running(pid) for pid in [*pids, guard]), 10,
                  "the work and the guard to die with the worker")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        for name in ("child-0", "child-1"):  # whatever a failed assertion left running
            if (tmp_path / name).exists():
                try:
                    os.killpg(int((tmp_path / name).read_text()), signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_work_that_ended_is_no_longer_the_guards_to_kill(tmp_path: Path) -> None:
    engine = LocalEngine()
    done = engine.start({"command": ["true"]}, tmp_path / "done", 60)
    assert done.wait(30)
    stopped = engine.start({"command": ["sleep", "60"]}, tmp_path / "stopped", 60)
    assert int(stopped.native_id) in GUARD.watching()
    stopped.kill("enough")
    assert not {int(done.native_id), int(stopped.native_id)} & GUARD.watching()
    assert (done.result().error, stopped.result().error) == (None, "enough")
