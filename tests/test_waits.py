"""Waits (DESIGN §11): in the library, over HTTP and from the command line, woken by the
ending event, including one applied by another process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from catalog import Catalog
from catalog.errors import InvalidInput, JobNotFound
from catalog.identifiers import UUIDType, typed_uuid
from catalog.queue import end_attempt, submit, withdraw
from catalog.queue.models import TIMEOUT_EXIT
from catalog.queue.waits import WATCHED_FALLBACK_S
from catalog.tokens import Keys

KEYS = Keys(b"w" * 32, b"a" * 32)
SCRIPT = Path(sys.executable).parent / "catalog"


@pytest.fixture
def catalog(queue_catalog: Callable[..., Catalog]) -> Catalog:
    return queue_catalog(KEYS, "step")


def queued(catalog: Catalog, n: int, retries: int = 0) -> str:
    """A queued job, withdrawn after those queued before it: jobs of one priority go oldest
    first, by their queued time (milliseconds), and by UUID within a millisecond."""
    uuid = submit(catalog, {"pipeline": "step", "data": {"command": ["step", str(n)]},
                            "retries": retries}).uuid
    time.sleep(0.002)
    return uuid


def end(catalog: Catalog, uuid: str, error: str | None = None) -> None:
    job = withdraw(catalog, {"pipelines": ["step"]}, "w")
    assert job is not None and job.uuid == uuid
    end_attempt(catalog, uuid, "w", error)


def later(seconds: float, action: object) -> threading.Thread:
    """Run ``action`` in a thread after ``seconds`` (a bounded Event wait, not a sleep)."""
    def run() -> None:
        threading.Event().wait(seconds)
        action()  # type: ignore[operator]

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_wait_returns_when_the_last_job_ends(catalog: Catalog) -> None:
    a, b = queued(catalog, 1), queued(catalog, 2)
    thread = later(0.3, lambda: (end(catalog, a), end(catalog, b, "broken")))
    started = time.monotonic()
    outcome = catalog.wait([a, b], timeout=30)
    waited = time.monotonic() - started
    thread.join()
    assert outcome.jobs == {a: "FINISHED", b: "FAILED"} and not outcome.timed_out
    assert outcome.exit_code() == 1
    assert waited < 5  # woken by the event, not after a fallback's bound
    assert catalog.wait([a], timeout=0).exit_code() == 0


def test_any_returns_at_the_first_end_and_a_retried_failure_is_no_end(
        catalog: Catalog) -> None:
    a, b = queued(catalog, 1, retries=2), queued(catalog, 2)
    end(catalog, a, "flaky")  # queued again: not ended
    outcome = catalog.wait([a, b], any=True, timeout=0.2)
    assert outcome.timed_out and outcome.exit_code() == TIMEOUT_EXIT
    assert outcome.jobs == {a: "QUEUED", b: "QUEUED"}
    catalog.cancel(b)
    outcome = catalog.wait([a, b], any=True, timeout=30)
    assert (outcome.jobs, outcome.timed_out, outcome.exit_code()) == (
        {a: "QUEUED", b: "CANCELLED"}, False, 1)


def test_a_wait_refuses_unknown_jobs_and_bad_bounds(catalog: Catalog) -> None:
    nobody = typed_uuid(UUIDType.pipelinejob, "nobody")
    with pytest.raises(JobNotFound):
        catalog.wait([nobody], timeout=1)
    with pytest.raises(InvalidInput):
        catalog.wait([], timeout=1)
    with pytest.raises(InvalidInput):
        catalog.wait([queued(catalog, 1)], timeout=-1)


@pytest.mark.anyio
async def test_the_long_poll_answers_when_the_jobs_end_or_the_time_runs_out(
        catalog: Catalog, client: httpx.AsyncClient) -> None:
    a, b = queued(catalog, 1), queued(catalog, 2)
    response = await client.get("/jobs/wait", params={"uuid": [a, b], "timeout": 0.1})
    assert response.status_code == 200
    assert response.json() == {"jobs": {a: "QUEUED", b: "QUEUED"}, "timed_out": True}
    thread = later(0.3, lambda: end(catalog, a))
    response = await client.get("/jobs/wait", params={"uuid": [a, b], "any": "true"})
    thread.join()
    assert response.json() == {"jobs": {a: "FINISHED", b: "QUEUED"}, "timed_out": False}
    response = await client.get("/jobs/wait", params={"uuid": [a], "timeout": 301})
    assert response.status_code == 422
    nobody = typed_uuid(UUIDType.pipelinejob, "nobody")
    response = await client.get("/jobs/wait", params={"uuid": [nobody], "timeout": 1})
    assert response.status_code == 404


def holds_an_inotify_watch(pid: int) -> bool:
    fdinfo = Path(f"/proc/{pid}/fdinfo")
    try:
        return any("inotify wd:" in info.read_text() for info in fdinfo.iterdir())
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_catalog_wait_is_woken_by_an_event_another_process_applies(
        catalog: Catalog, tmp_path: Path) -> None:
    a, b = queued(catalog, 1), queued(catalog, 2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
    env["CATALOG_DB"] = catalog.settings.db
    waiter = subprocess.Popen([str(SCRIPT), "wait", a, b, "--timeout", "120"], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        ready = threading.Event()
        for _ in range(1200):  # at most 60 s for the command to start watching
            if holds_an_inotify_watch(waiter.pid) or waiter.poll() is not None:
                break
            ready.wait(0.05)
        assert waiter.poll() is None, waiter.communicate()
        assert holds_an_inotify_watch(waiter.pid)
        end(catalog, a)
        assert waiter.poll() is None  # b has not ended
        end(catalog, b, "broken")
        ended = time.monotonic()
        stdout, stderr = waiter.communicate(timeout=60)
        woken_after = time.monotonic() - ended
    finally:
        if waiter.poll() is None:
            os.killpg(waiter.pid, signal.SIGKILL)
            waiter.communicate()  # reaped, its pipes closed
    assert waiter.returncode == 1, stderr
    assert json.loads(stdout) == {"jobs": {a: "FINISHED", b: "FAILED"}, "timed_out": False}
    assert woken_after < WATCHED_FALLBACK_S / 2  # the event woke it, not the safety net


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_catalog_wait_exits_with_its_own_code_when_the_time_runs_out(
        catalog: Catalog, tmp_path: Path) -> None:
    a = queued(catalog, 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
    env["CATALOG_DB"] = catalog.settings.db
    done = subprocess.run([str(SCRIPT), "wait", a, "--timeout", "0.2"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == TIMEOUT_EXIT, done.stderr
    assert json.loads(done.stdout) == {"jobs": {a: "QUEUED"}, "timed_out": True}


def test_a_cancellation_down_the_graph_wakes_the_waiters(catalog: Catalog) -> None:
    a = queued(catalog, 1)
    b = submit(catalog, {"pipeline": "step", "data": {"command": ["step", "b"]},
                         "when": {"job": a, "is": "finished"}}).uuid
    thread = later(0.3, lambda: end(catalog, a, "broken"))
    started = time.monotonic()
    outcome = catalog.wait([b], timeout=30)
    thread.join()
    assert outcome.jobs == {b: "CANCELLED"} and outcome.exit_code() == 1
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_catalog_submit_takes_a_condition_as_json(catalog: Catalog, tmp_path: Path) -> None:
    a = queued(catalog, 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
    env["CATALOG_DB"] = catalog.settings.db
    when = json.dumps({"not": {"job": a, "is": "failed"}})
    done = subprocess.run([str(SCRIPT), "submit", "--pipeline", "step", "--data",
                           '{"command": ["step", "2"]}', "--when", when, "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    b = json.loads(done.stdout)
    assert b["state"] == "WAITING"
    end(catalog, a)
    assert catalog.get_job(b["uuid"], history=False).state == "QUEUED"
    refused = subprocess.run([str(SCRIPT), "submit", "--pipeline", "step", "--data", "{}",
                              "--when", '{"job": "x", "is": "ended"}', "--json"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert json.loads(refused.stderr)["error"]["code"] == "invalid_condition"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_job_ending_touches_the_wake_file_after_its_commit(catalog: Catalog) -> None:
    """Another process's watch is woken after the commit (the touch of ``<db>-wake``), not
    only by the WAL's write before the commit's fsync, and what it then reads has ended."""
    from catalog.queue.waits import WAKE_SUFFIX, _Inotify

    uuid = queued(catalog, 1)
    wake = Path(f"{catalog.store.path}{WAKE_SUFFIX}")  # type: ignore[attr-defined]
    watcher = _Inotify.of(Path(catalog.store.path))  # type: ignore[attr-defined]
    assert watcher is not None
    seen: list[str] = []
    original = watcher._ours

    def ours_then_read() -> bool:  # at the wake-up: what a waiter of another process reads
        woke = original()
        if woke and wake.exists():
            head = catalog.store.get_job(uuid, history=False)
            seen.append(str((head or {}).get("state")))
        return woke

    watcher._ours = ours_then_read  # type: ignore[method-assign]
    try:
        job = withdraw(catalog, {"pipelines": ["step"]}, "w")
        assert job is not None
        watcher._ours()  # the withdraw's writes, drained
        seen.clear()
        end_attempt(catalog, uuid, "w", None)
        assert wake.exists()
        deadline = time.monotonic() + 5
        while "FINISHED" not in seen and time.monotonic() < deadline:
            watcher.wait(0.1, threading.Event())
        assert "FINISHED" in seen
        before = wake.stat().st_mtime_ns
        other = queued(catalog, 2)
        end(catalog, other, "boom")  # a failure without retries ends the job too
        assert wake.stat().st_mtime_ns >= before
    finally:
        watcher.close()
