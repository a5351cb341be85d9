"""CHIME/FRB's Swarm API (chime-frb-api 3.4's ``FRBMaster().swarm``) over the catalog's queue
and the docker engine (DESIGN §12, §13): a spawned job is a catalog job like any other.

- ``spawn-job`` submits a job of pipeline ``swarm`` whose data is the image, the command with
  its arguments, the job name, the environment (values of names that look secret withheld
  from it: they are kept apart, in one file per job beside the server's secret file, mode 0600
  in a 0700 directory, read back at the job's start and removed at its end; never in the job's
  data, history or identity), the limits, and the spawn time (so that
  each spawn is a job of its own, as each is a service in Docker Swarm). One attempt, no
  retries: Swarm does not restart a job that exited. A thread of this server then withdraws it
  and runs it through the docker engine (``catalog.worker``'s loop, one job): its logs go into
  the job's archive path, its end into its history. A job whose withheld values are missing
  (the server died between storing it and keeping them) fails, saying so.
- The lease of a running Swarm job is held as ``swarm:HOST`` (the host of the docker daemon
  the server drives), and its container (named by the job UUID) is removed only once its end
  is recorded. So a server restarted after dying (SIGKILL included) loses nothing and starts
  nothing twice: it starts a thread for each Swarm job still queued, and adopts each one
  running under its host's name: follows its container again (started before, or ended
  meanwhile: its logs and exit code are read then), or starts it when there is none (the
  server died before ``docker run``). A lock file per job (``swarm-locks`` beside the secret
  file, held while a thread follows it) keeps two servers of one host from following one job.
- Where no docker daemon answers, spawn is refused (503 ``engine_unavailable``, naming why)
  before anything is stored. No fallback to local processes: a Swarm job is an image, and
  running its command on the host instead would be another job under its name.
- ``mount_archiver`` and ``swarm_network`` are kept in the job's data; there are no archivers
  or overlay network here to act on them.
- ``kill-job`` cancels the catalog job and removes its container; ``prune-job`` hides ended jobs
  from this surface (an audit entry), their provenance whole.
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

from pydantic import BaseModel, ConfigDict, Field, model_validator

from catalog.catalog import Catalog, parse_document
from catalog.engines.base import Run
from catalog.engines.docker import DockerEngine, DockerRun, DockerUnavailable
from catalog.errors import (
    CatalogError,
    EngineUnavailable,
    InvalidInput,
    JobNameTaken,
    NotFound,
)
from catalog.identifiers import pipeline_uuid
from catalog.models import MAX_TIMEOUT_S, AuditEntry, Job, QueueInfo, format_date, utc_now
from catalog.patterns import Pattern
from catalog.queue import cancel, submit
from catalog.queue.models import SubmitRequest, Withdrawn, WorkFilter
from catalog.states import ENDED_STATES
from catalog.store.base import JobQuery
from catalog.worker import Attempt, LocalQueue, Worker, WorkerOptions

PIPELINE = "swarm"
SOURCE = "api"  # of the jobs' history entries
MARKS_SOURCE = "swarm"  # of this surface's marks in the audit log
PRUNED = "swarm_pruned"
# A Swarm task status (lower case, as the client's helpers compare them), from a job's state.
STATUS_OF_STATE = {
    "CREATED": "new", "WAITING": "new", "RESET": "new",
    "QUEUED": "pending",
    "RUNNING": "running",
    "FINISHED": "completed", "INDEXING": "completed", "VALIDATING": "completed",
    "VALIDATED": "completed", "FINALIZED": "completed",
    "FAILED": "failed", "REJECTED": "rejected",
    "CANCELLED": "shutdown", "RETIRED": "shutdown",
}
JOB_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")  # a Docker service name
IMAGE_NAME = r"^[a-z0-9][a-z0-9._/:@-]{0,254}$"  # a Docker image reference
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|KEY", re.IGNORECASE)
WITHHELD = "(withheld)"
TIMEOUT_S = min(MAX_TIMEOUT_S, 72 * 3600)  # Swarm sets none; the catalog needs one
LEASE_S = 60
PAGE = 200
LOG_BYTES = 1024 * 1024  # of a job's logs answered


class SpawnRequest(BaseModel):
    """``POST /v1/swarm/spawn-job`` as chime-frb-api 3.4 sends it (every field)."""

    model_config = ConfigDict(extra="ignore")

    image_name: str = Field(pattern=IMAGE_NAME)
    command: list[str] = Field(min_length=1, max_length=1000)
    arguments: list[str] = Field(default_factory=list, max_length=10000)
    job_name: str = Field(min_length=1, max_length=63)
    mount_archiver: bool = True
    swarm_network: bool = True
    job_mem_limit: int = Field(4294967296, ge=6 * 1024 * 1024)
    job_mem_reservation: int = Field(268435456, ge=0)
    job_cpu_limit: float = Field(1, gt=0)
    job_cpu_reservation: float = Field(1, ge=0)
    environment: dict[str, str] = Field(default_factory=dict, max_length=1000)

    @model_validator(mode="after")
    def _within_limits(self) -> SpawnRequest:
        if self.job_mem_reservation > self.job_mem_limit:
            raise ValueError("job_mem_reservation is more than job_mem_limit")
        return self


def check_name(name: str) -> str:
    if not JOB_NAME.match(name):
        raise InvalidInput(f"job name {name!r}: 1 to 63 letters, digits, '_', '.' or '-', "
                           "starting with a letter or digit")
    return name


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
        return {**job.data, "environment": environment, "job_uuid": job.uuid}

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
        run = engine.attach(uuid, workdir, timeout) if self.adopted else None
        if run is None:
            name, container, limited = engine.run_container(work, workdir)
            run = DockerRun(engine, name, container, workdir, timeout,
                            memory_limited=limited, keep=True)
        self.runner.runs[uuid] = run
        return run


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


def _named(catalog: Catalog, name: str) -> Job:
    check_name(name)
    for job in visible_jobs(catalog):
        if job.data["job_name"] == name:
            return job
    raise NotFound(f"no Swarm job named {name!r}", name=name)


def _matching(catalog: Catalog, pattern: str) -> list[Job]:
    if not 1 <= len(pattern) <= 1000:
        raise InvalidInput("a job name pattern is 1 to 1000 characters")
    compiled = Pattern(pattern)
    return [job for job in visible_jobs(catalog) if compiled.search(job.data["job_name"])]


def status_of(job: Job) -> str:
    return STATUS_OF_STATE.get(job.state, job.state.lower())


# the calls ----------------------------------------------------------------------------------
def spawn(runner: SwarmRunner, document: Any) -> dict[str, Any]:
    """Submit the job and start it; refused before anything is stored when its name is in use,
    no docker daemon answers or its image is not here."""
    catalog = runner.catalog
    request = parse_document(SpawnRequest, document, "spawn request")
    name = check_name(request.job_name)
    for key in request.environment:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$", key):
            raise InvalidInput(f"environment variable {key!r}: letters, digits and '_'")
    why = runner.engine.unavailable()
    if why is not None:
        raise EngineUnavailable(f"Swarm jobs run in docker, and docker cannot run here: {why}")
    if not runner.engine.has_image(request.image_name):
        raise InvalidInput(f"image {request.image_name!r} is not on this machine, and nothing "
                           "is pulled here", image=request.image_name)
    secrets = {key: value for key, value in request.environment.items()
               if SECRET_NAME.search(key)}
    data = {
        "image": request.image_name, "command": [*request.command, *request.arguments],
        "job_name": name,
        "environment": {key: WITHHELD if key in secrets else value
                        for key, value in request.environment.items()},
        "limits": {"memory": request.job_mem_limit,
                      "memory_reservation": request.job_mem_reservation,
                      "cpus": request.job_cpu_limit,
                      "cpu_reservation": request.job_cpu_reservation},
        "mount_archiver": request.mount_archiver, "swarm_network": request.swarm_network,
        "spawned": utc_now().isoformat(),
    }
    with runner.lock:
        if any(job.data["job_name"] == name for job in visible_jobs(catalog)):
            raise JobNameTaken(f"a Swarm job named {name!r} exists: prune or kill it first",
                               name=name)
        catalog.add_pipeline(PIPELINE)
        outcome = submit(catalog, SubmitRequest(
            pipeline=PIPELINE, data=data, retries=0, timeout=TIMEOUT_S, tags=["swarm"],
            agent="swarm", products="leave", plots="leave"), SOURCE)
        if secrets:
            runner.secrets.keep(outcome.uuid, secrets)
    runner.launch()
    return {"job_name": name, "uuid": outcome.uuid,
            "status": status_of(catalog.get_job(outcome.uuid, history=False))}


def job_names(catalog: Catalog) -> list[str]:
    return [job.data["job_name"] for job in visible_jobs(catalog)]


def statuses(catalog: Catalog, pattern: str) -> dict[str, str]:
    return {job.data["job_name"]: status_of(job) for job in _matching(catalog, pattern)}


def logs(runner: SwarmRunner, name: str) -> dict[str, str]:
    """The container's output while it runs, else the logs archived with the job."""
    job = _named(runner.catalog, name)
    text: str | None = None
    if job.state not in ENDED_STATES:
        try:
            text = runner.engine.logs(job.uuid, LOG_BYTES)
        except DockerUnavailable:
            text = None
    if text is None:
        text = _archived_logs(runner.catalog, job)
    return {name: text}


def _archived_logs(catalog: Catalog, job: Job) -> str:
    found = [info for info in catalog.storage.list(f"{job.archive_path}/logs/")
             if info.refused is None]
    if not found:
        return ""
    last = max(info.path.split("/")[-2] for info in found)  # attempt-N of the last attempt
    parts: list[str] = []
    for stream in ("stdout.txt", "stderr.txt"):
        for info in found:
            if info.path.endswith(f"/{last}/{stream}"):
                with catalog.storage.open(info.path) as handle:
                    parts.append(handle.read(LOG_BYTES).decode("utf-8", "replace"))
    return "".join(parts)[-LOG_BYTES:]


def kill(runner: SwarmRunner, name: str) -> dict[str, bool]:
    """Cancel the job (any state but ended) and remove its container."""
    job = _named(runner.catalog, name)
    if job.state not in ENDED_STATES:
        try:
            cancel(runner.catalog, job.uuid, "killed through the Swarm API", SOURCE)
        except CatalogError:
            pass  # it ended meanwhile
    try:
        runner.engine.remove(job.uuid)
    except DockerUnavailable:
        pass  # no daemon: no container either
    return {name: True}


def prune(runner: SwarmRunner, pattern: str) -> dict[str, bool]:
    """Hide the ended jobs matching ``pattern`` (True); the others matching stay (False)."""
    pruned: dict[str, bool] = {}
    for job in _matching(runner.catalog, pattern):
        ended = job.state in ENDED_STATES
        if ended:
            entry = AuditEntry(job_uuid=job.uuid, name=PRUNED, date=utc_now(),
                               source=MARKS_SOURCE, code=PRUNED,
                               reason="pruned through the Swarm API", data={})
            runner.catalog.store.append_audit(entry.model_dump(mode="json"))
        pruned[job.data["job_name"]] = ended
    return pruned
