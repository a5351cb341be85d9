"""The runner of spawned Swarm jobs (catalog.compat.swarm): a thread per job withdraws it
and runs it through the docker engine (``catalog.worker``'s loop, one job); environment values
withheld from the job's data wait in ``SecretsStore`` for its start; a restarted server resumes
the jobs left queued and adopts those left running on its host (see catalog.compat.swarm).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from catalog.catalog import Catalog
from catalog.engines.base import Execution, Run
from catalog.engines.docker import DockerEngine, DockerRun, DockerUnavailable
from catalog.errors import CatalogError, InvalidInput
from catalog.identifiers import pipeline_uuid
from catalog.models import Job, QueueInfo, format_date
from catalog.queue.models import Withdrawn, WorkFilter
from catalog.storage import LocalStorage
from catalog.store.values import JobQuery
from catalog.worker import Attempt, LocalQueue, Worker, WorkerOptions

PIPELINE = "swarm"
SOURCE = "api"  # of the jobs' history entries
MARKS_SOURCE = "swarm"  # of this surface's marks in the audit log
PRUNED = "swarm_pruned"
WITHHELD = "(withheld)"
LEASE_S = 60
PAGE = 200
ARCHIVE_MOUNT = "/archive"  # the job's archive path, in its container (mount_archiver)
_ENGINE_ONLY = ("mounts", "workdir_in", "job_uuid")  # set by the runner, never by a job's data


class SwarmRunner:
    """Runs spawned jobs: a thread per spawn withdraws one Swarm job and runs it through the
    engine; environment values withheld from the job's data wait here for its start."""

    def __init__(self, catalog: Catalog, engine: DockerEngine | None = None) -> None:
        self.catalog = catalog
        self.engine = engine or DockerEngine()
        self.stop = threading.Event()
        self.workdir = Path(tempfile.gettempdir()) / "catalog-swarm"
        home = Path(catalog.settings.secret_file).parent
        self.secrets = SecretsStore(home / "swarm-secrets")
        self.locks = home / "swarm-locks"
        self.lock = threading.Lock()  # a name is checked and taken at once
        self.threads: list[threading.Thread] = []
        self.runs: dict[str, Run] = {}  # the containers in hand, by job UUID
        self.name = f"swarm:{socket.gethostname()}"  # the leases' holder, across restarts

    def resume(self) -> int:
        """Start a thread for each Swarm job left queued, and adopt each one left running on
        this host, by a server that stopped (or died); how many."""
        count = 0
        for job in visible_jobs(self.catalog):
            lease = job.queue.lease if job.queue is not None else None
            if job.state == "QUEUED":
                self.launch()
            elif job.state == "RUNNING" and lease is not None and lease.worker == self.name:
                self.launch(adopt=job.uuid)
            else:
                continue
            count += 1
        return count

    def launch(self, adopt: str | None = None) -> None:
        thread = threading.Thread(target=self._run_one, args=(adopt,), name="swarm-job",
                                  daemon=True)
        self.threads = [t for t in self.threads if t.is_alive()] + [thread]
        thread.start()

    def _run_one(self, adopt: str | None = None) -> None:
        if self.stop.is_set():
            return  # a stopping server withdraws nothing: the job stays queued for the next
        queue = LocalQueue(self.catalog, SOURCE)
        options = WorkerOptions(WorkFilter(pipelines=[PIPELINE]), lives=1, lease=LEASE_S,
                                workdir=self.workdir, name=self.name)
        job = queue.withdraw(options.work_filter, options.name, options.lease) \
            if adopt is None else self._held(queue, adopt)
        if job is None:
            return
        with self._followed(job.uuid) as mine:
            if mine:
                _SwarmWorker(self, queue, options, self.engine, self.stop,
                             adopted=adopt is not None).run_one(job)

    def _held(self, queue: LocalQueue, uuid: str) -> Withdrawn | None:
        """The running job ``uuid`` as a withdraw hands it, its lease renewed; None when it is
        no longer this host's."""
        try:
            queue.heartbeat(uuid, self.name, LEASE_S)
        except CatalogError:  # ended, cancelled or taken meanwhile
            return None
        head = self.catalog.store.get_job(uuid, history=False)
        if head is None:
            return None
        held = QueueInfo.model_validate(head["queue"])
        if held.lease is None:
            return None
        return Withdrawn(uuid=uuid, pipeline=PIPELINE, data=head["data"],
                         archive_path=head["archive_path"], attempt=held.attempt,
                         timeout=held.timeout, lease_expiry=format_date(held.lease.expiry),
                         token=self.catalog.job_token(uuid), queue=held)

    @contextlib.contextmanager
    def _followed(self, uuid: str) -> Iterator[bool]:
        """Hold the job's lock file while its container is followed: True when this thread
        has it, False when another server (of this host) follows the job. The kernel drops
        the lock of a process that dies."""
        self.locks.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.locks / f"{uuid}.lock"
        with open(path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                path.unlink(missing_ok=True)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the containers in hand (their jobs fail, saying so) and wait for their reports
        (up to ``timeout`` s each): none is left running unheld once the server is gone."""
        self.stop.set()
        for run in list(self.runs.values()):
            run.kill("the catalog server stopped")
        for thread in self.threads:
            thread.join(timeout)


class SecretsStore:
    """Withheld environment values, one JSON file per job UUID, readable by this server's user
    only: kept (durably) before a spawn is answered, so a restart does not lose them."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, uuid: str) -> Path:
        if not re.match(r"^[0-9a-f-]{36}$", uuid):
            raise InvalidInput(f"job UUID {uuid!r}")
        return self.root / f"{uuid}.json"

    def keep(self, uuid: str, values: dict[str, str]) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        path = self._path(uuid)
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(values, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        dir_fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def read(self, uuid: str) -> dict[str, str] | None:
        try:
            values = json.loads(self._path(uuid).read_text())
        except FileNotFoundError:
            return None
        return {str(key): str(value) for key, value in values.items()}

    def remove(self, uuid: str) -> None:
        self._path(uuid).unlink(missing_ok=True)


class _SwarmWorker(Worker):
    def __init__(self, runner: SwarmRunner, *args: Any, adopted: bool = False) -> None:
        super().__init__(*args)
        self.runner = runner
        self.adopted = adopted  # its container may run already (started before a restart)

    def _work(self, job: Withdrawn) -> dict[str, Any]:
        environment = dict(job.data.get("environment") or {})
        kept = self.runner.secrets.read(job.uuid)
        if kept is None and WITHHELD in environment.values():
            raise ValueError("the withheld environment values of this job were not kept "
                             "(the server stopped as it was spawned); spawn it again")
        environment.update(kept or {})
        work = {key: value for key, value in job.data.items() if key not in _ENGINE_ONLY}
        work.update(environment=environment, job_uuid=job.uuid)
        if job.data.get("mount_archiver") is True:
            try:
                archive = archive_directory(self.runner.catalog, job.archive_path)
            except InvalidInput as exc:  # the archive root moved to S3 since the spawn
                raise ValueError(exc.message) from None
            archive.mkdir(parents=True, exist_ok=True)
            work["mounts"] = [{"source": str(archive), "target": ARCHIVE_MOUNT}]
        return work

    def run_one(self, job: Withdrawn) -> Attempt:
        self.engine = _Tracked(self.runner, self.adopted)
        try:
            return super().run_one(job)
        finally:
            self.runner.runs.pop(job.uuid, None)
            self.runner.secrets.remove(job.uuid)
            with contextlib.suppress(DockerUnavailable):  # once its end is recorded
                self.runner.engine.remove(job.uuid)


class _Tracked:
    """The runner's engine, each run it starts (or, adopting, finds running) kept by job UUID
    until it is reported; its container is left for run_one to remove."""

    name = "docker"

    def __init__(self, runner: SwarmRunner, adopted: bool) -> None:
        self.runner = runner
        self.adopted = adopted

    def start(self, work: dict[str, Any], workdir: Path, timeout: int) -> Run:
        if self.runner.stop.is_set():
            raise ValueError("the catalog server is stopping")
        engine, uuid = self.runner.engine, str(work["job_uuid"])
        run: Run | None = engine.attach(uuid, workdir, timeout) if self.adopted else None
        if run is None:
            name, container, limited = engine.run_container(work, workdir)
            run = DockerRun(engine, name, container, workdir, timeout,
                            memory_limited=limited, keep=True)
        if work.get("mounts"):
            run = _Archived(run, Path(work["mounts"][0]["source"]))
        self.runner.runs[uuid] = run
        return run


class _Archived:
    """A run whose container had the job's archive path mounted: the files it wrote there
    are its products (with those its last line of output names under ``/archive``)."""

    def __init__(self, run: Run, directory: Path) -> None:
        self.run = run
        self.directory = directory
        self.native_id = run.native_id

    def wait(self, timeout: float) -> bool:
        return self.run.wait(timeout)

    def kill(self, reason: str) -> None:
        self.run.kill(reason)

    def result(self) -> Execution:
        execution = self.run.result()
        if execution.outputs is None:
            return execution
        named = [str(self.directory / path[len(ARCHIVE_MOUNT) + 1:])
                 if path.startswith(ARCHIVE_MOUNT + "/") else path
                 for path in execution.outputs.products]
        for folder, directories, files in os.walk(self.directory):  # symlinks not followed
            if folder == str(self.directory):
                directories[:] = [d for d in directories if d != "logs"]
            for name in sorted(files):
                path = os.path.join(folder, name)
                if not os.path.islink(path) and path not in named:
                    named.append(path)
        execution.outputs.products = named
        return execution


def archive_directory(catalog: Catalog, archive_path: str) -> Path:
    """Where the job's archive path lies on this machine (a local archive root only)."""
    storage = catalog.storage
    if not isinstance(storage, LocalStorage):
        raise InvalidInput("mount_archiver needs an archive root on this machine, and this "
                           "catalog archives elsewhere (S3): spawn with mount_archiver false")
    return Path(storage.root) / archive_path.lstrip("/")


# the jobs of this surface -------------------------------------------------------------------
def _pipeline(catalog: Catalog) -> str:
    return pipeline_uuid(PIPELINE, None, [], catalog.settings.namespace)


def _marked(catalog: Catalog, uuid: str) -> bool:
    return any(entry.get("source") == MARKS_SOURCE and entry.get("code") == PRUNED
               for entry in catalog.store.find_audit(uuid, 100))


def visible_jobs(catalog: Catalog) -> Iterator[Job]:
    """The Swarm jobs not pruned, oldest first."""
    cursor: str | None = None
    pipeline = _pipeline(catalog)
    while True:
        page = catalog.store.find_jobs(JobQuery(pipeline_uuid=pipeline, limit=PAGE,
                                                cursor=cursor))
        for doc in page.items:
            job = Job.model_validate(doc)
            if isinstance(job.data.get("job_name"), str) and not _marked(catalog, job.uuid):
                yield job
        cursor = page.next
        if cursor is None:
            return
