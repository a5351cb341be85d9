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
- ``swarm_network`` names a docker network through the setting ``swarm_networks`` (name ->
  docker network; ``true``: the one named ``default``, if any; ``false`` or none configured:
  docker's own default). An unknown name, or a docker network that does not exist, is refused
  (400) before anything is stored; the docker network is kept in the job's data.
- ``mount_archiver`` binds the job's archive path (the archive root must be a local directory)
  read-write at ``/archive`` (``ARCHIVE_MOUNT``) in the container: every file the job writes
  there is indexed with fixity as its product when it finishes (``logs/`` aside). Nothing else
  of a job's data can ask for a mount.
- ``kill-job`` cancels the catalog job and removes its container; ``prune-job`` hides ended jobs
  from this surface (an audit entry), their provenance whole.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from catalog.catalog import Catalog, parse_document
from catalog.compat.swarm_runner import (
    ARCHIVE_MOUNT,
    MARKS_SOURCE,
    PIPELINE,
    PRUNED,
    SOURCE,
    WITHHELD,
    SwarmRunner,
    archive_directory,
    visible_jobs,
)
from catalog.config import Settings, parse_networks
from catalog.engines.docker import DockerUnavailable
from catalog.errors import (
    CatalogError,
    EngineUnavailable,
    InvalidInput,
    JobNameTaken,
    NotFound,
)
from catalog.models import MAX_TIMEOUT_S, AuditEntry, Job, utc_now
from catalog.patterns import Pattern
from catalog.queue import cancel, submit
from catalog.queue.models import SubmitRequest
from catalog.states import ENDED_STATES

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
TIMEOUT_S = min(MAX_TIMEOUT_S, 72 * 3600)  # Swarm sets none; the catalog needs one
LOG_BYTES = 1024 * 1024  # of a job's logs answered


class SpawnRequest(BaseModel):
    """``POST /v1/swarm/spawn-job`` as chime-frb-api 3.4 sends it (every field)."""

    model_config = ConfigDict(extra="ignore")

    image_name: str = Field(pattern=IMAGE_NAME)
    command: list[str] = Field(min_length=1, max_length=1000)
    arguments: list[str] = Field(default_factory=list, max_length=10000)
    job_name: str = Field(min_length=1, max_length=63)
    mount_archiver: bool = True
    swarm_network: bool | str = True  # a name of the setting swarm_networks, or true/false
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


def network_of(settings: Settings, asked: bool | str) -> str | None:
    """The docker network a spawn's ``swarm_network`` names (None: docker's default)."""
    networks = parse_networks(settings.swarm_networks)
    if asked is True or asked is False:
        return networks.get("default") if asked else None
    if asked not in networks:
        known = ", ".join(sorted(networks)) or "none (setting swarm_networks)"
        raise InvalidInput(f"swarm_network {asked!r} is not a network of this catalog; its "
                           f"networks: {known}", swarm_network=asked)
    return networks[asked]


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
    network = network_of(catalog.settings, request.swarm_network)
    if request.mount_archiver:
        archive_directory(catalog, "/")  # refused before anything is stored
    why = runner.engine.unavailable()
    if why is not None:
        raise EngineUnavailable(f"Swarm jobs run in docker, and docker cannot run here: {why}")
    if not runner.engine.has_image(request.image_name):
        raise InvalidInput(f"image {request.image_name!r} is not on this machine, and nothing "
                           "is pulled here", image=request.image_name)
    if network is not None and runner.engine.call("network", "inspect", "--",
                                                  network).returncode != 0:
        raise InvalidInput(f"swarm_network {request.swarm_network!r} is docker network "
                           f"{network!r}, which does not exist here (setting swarm_networks)",
                           swarm_network=request.swarm_network)
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
        **({"network": network} if network is not None else {}),
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


__all__ = ["ARCHIVE_MOUNT", "PIPELINE", "SOURCE", "STATUS_OF_STATE", "WITHHELD", "SpawnRequest",
           "SwarmRunner", "check_name", "job_names", "kill", "logs", "network_of", "prune",
           "spawn", "status_of", "statuses", "visible_jobs"]
