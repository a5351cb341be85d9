"""The workers behind the QCG surface: the catalog's worker loop and local engine, in threads of
``catalog serve``, bounded by the cores the surface advertises.

A QCG job runs as its description says (working directory, environment, stdout and stderr
files) and takes as many of the cores as it asked for; its exit code is kept in its results.
Cancelling a running job takes its lease away: its worker finds that at the next heartbeat
(``LEASE_S / 3``) and kills the process group.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from catalog.catalog import Catalog
from catalog.compat.qcg_jobs import cores_tag, working_directory
from catalog.engines.base import Execution
from catalog.engines.call import Outputs
from catalog.engines.local import LocalEngine, LocalRun, command_argv, spawn_group
from catalog.errors import CatalogError
from catalog.queue import WorkFilter, withdraw
from catalog.queue.models import Withdrawn
from catalog.worker import LocalQueue, Worker, WorkerOptions, worker_name

LEASE_S = 6  # heartbeats every 2 s: a cancelled job is killed within about that
STOP_S = 5.0  # how long stopping waits for the jobs in hand
IDLE_S = 1.0  # bound on an idle worker's wait (a submit or an ending wakes it sooner)
_log = logging.getLogger(__name__)


class QcgRun(LocalRun):
    """A child process group in the job's own working directory, with its env and files."""

    def __init__(self, argv: list[str], workdir: Path, timeout: int,
                 qcg: dict[str, Any], logdir: Path) -> None:
        self.workdir = workdir
        self.timeout = timeout
        self.result_file = None
        self.stdout = _path(workdir, qcg.get("stdout"), logdir / "stdout.txt")
        self.stderr = _path(workdir, qcg.get("stderr"), logdir / "stderr.txt")
        self._deadline = time.monotonic() + timeout
        self._killed: str | None = None
        self._timed_out = False
        env = {**os.environ, **(qcg.get("env") or {})}
        for path in (self.stdout, self.stderr):
            path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as files:
            out = files.enter_context(open(self.stdout, "wb"))
            err = out if self.stderr == self.stdout else \
                files.enter_context(open(self.stderr, "wb"))
            self.process = spawn_group(argv, workdir, out, err, env)
        self.native_id = str(self.process.pid)

    def result(self) -> Execution:
        """QCG's commands print what they like: the exit code is the result."""
        code = self.process.poll()
        execution = Execution(code, stdout=self.stdout, stderr=self.stderr,
                              native_id=self.native_id, timed_out=self._timed_out,
                              killed=self._killed is not None)
        if self._killed is not None:
            execution.error = self._killed
        elif code != 0:
            execution.error = f"the command exited with code {code}"
        else:
            execution.outputs = Outputs({"exit_code": 0}, [], [])
        return execution


def _path(workdir: Path, given: Any, default: Path) -> Path:
    if not isinstance(given, str) or not given:
        return default
    path = Path(given)
    return path if path.is_absolute() else workdir / path


class QcgEngine(LocalEngine):
    """The local engine, for work that carries a QCG description (``data["qcg"]``)."""

    name = "local"

    def start(self, work: dict[str, Any], workdir: Path, timeout: int) -> LocalRun:
        qcg = work.get("qcg")
        if not isinstance(qcg, dict):
            return super().start(work, workdir, timeout)
        wd = working_directory(qcg)
        wd.mkdir(parents=True, exist_ok=True)
        return QcgRun(command_argv(work["command"]), wd, timeout, qcg, workdir)


class QcgPool:
    """``cores`` worker threads; a job holds as many cores as it asked for while it runs, and
    is withdrawn only when they are free (so it is never RUNNING while it waits for them)."""

    def __init__(self, catalog: Catalog, cores: int, pipeline: str) -> None:
        self.catalog = catalog
        self.cores = cores
        self.work_filter = WorkFilter(pipelines=[pipeline], tags=["qcg"])
        self.free = cores
        self.cond = threading.Condition()
        self.wake = threading.Event()
        self.stop_event = threading.Event()
        self.root = Path(tempfile.mkdtemp(prefix="catalog-qcg-"))
        self.threads = [threading.Thread(target=self._loop, name=f"catalog-qcg-worker-{n}",
                                         daemon=True) for n in range(cores)]

    def busy(self) -> int:
        with self.cond:
            return self.cores - self.free

    def start(self) -> QcgPool:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()
        with self.cond:
            self.cond.notify_all()
        # A job in hand is not waited for past STOP_S: the server is going, its children
        # die with it (PR_SET_PDEATHSIG), their leases expire and the sweep fails them.
        deadline = time.monotonic() + STOP_S
        for thread in self.threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if not any(thread.is_alive() for thread in self.threads):
            shutil.rmtree(self.root, ignore_errors=True)

    def _withdraw(self, worker: str) -> tuple[Withdrawn | None, int]:
        """A queued job that fits the free cores, and the cores it holds from now on."""
        with self.cond:
            while self.free < 1:
                if self.stop_event.is_set():
                    return None, 0
                self.cond.wait(IDLE_S)
            work_filter = self.work_filter.model_copy(update={
                "tags": [cores_tag(n) for n in range(1, self.free + 1)]})
            try:
                job = withdraw(self.catalog, work_filter, worker, LEASE_S, "qcg")
            except CatalogError as exc:
                _log.warning("the QCG workers could not withdraw: %s", exc.message)
                return None, 0
            if job is None:
                return None, 0
            cores = max(1, int((job.data.get("qcg") or {}).get("cores", 1)))
            self.free -= cores
            return job, cores

    def _give(self, count: int) -> None:
        with self.cond:
            self.free += count
            self.cond.notify_all()

    def _loop(self) -> None:
        name = worker_name()
        worker = Worker(LocalQueue(self.catalog, source="qcg"), WorkerOptions(
            work_filter=self.work_filter, lease=LEASE_S, name=name, workdir=self.root),
            engine=QcgEngine(), stop=self.stop_event)
        while not self.stop_event.is_set():
            job, cores = self._withdraw(name)
            if job is None:
                self.wake.wait(IDLE_S)
                self.wake.clear()
                continue
            self.wake.set()  # there may be more: the next idle thread looks too
            try:
                worker.run_one(job)
            except CatalogError as exc:
                _log.warning("QCG job %s: %s", job.uuid, exc.message)
            finally:
                self._give(cores)
                self.wake.set()  # its dependents may be queued now
