"""The documents the queue takes and gives: a submission, a worker's filter, a completion."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from catalog.engines.base import environment_of
from catalog.errors import InvalidInput
from catalog.messages import UpstreamIds
from catalog.models import MAX_TIMEOUT_S, ArchiveMode, JobUUID, QueueInfo
from catalog.queue.conditions import Expr, Ref, outcome
from catalog.resources import JobResources, parse_resources
from catalog.states import ENDED_STATES

TIMEOUT_EXIT = 124  # ``catalog wait``: the time ran out (as coreutils' timeout says it)
MAX_RESULTS_BYTES = 4 * 1024 * 1024  # what workflow-core keeps of results (shallow size 4 MB)
PathList = Annotated[list[Annotated[str, Field(min_length=1, max_length=4096)]],
                     Field(max_length=10000)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubmitRequest(_Strict):
    """What ``POST /queue/jobs`` (and ``catalog submit``) sends to have a job run.

    Identity (the job UUID) is pipeline + upstream + data, as for any job: a function or a
    command and its parameters belong in ``data``; priority, timeout, retries, site, tags,
    user and resources do not, so changing them submits the same job. Resources given inside
    ``data`` (where engines once read them) are taken out of it into ``resources``."""

    pipeline: str = Field(min_length=1, max_length=256, description="Pipeline name or UUID.")
    data: dict[str, Any] = Field(default_factory=dict,
                                 description="`function` or `command`, and `parameters`.")
    measurement_id: UpstreamIds = None
    sample_id: UpstreamIds = None
    experiment_id: UpstreamIds = None
    observation_id: UpstreamIds = None
    priority: int = Field(3, ge=1, le=5)
    timeout: int = Field(3600, ge=1, le=MAX_TIMEOUT_S)
    retries: int = Field(2, ge=0, le=5)
    site: str | None = Field(None, min_length=1, max_length=64)
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=32)
    user: str | None = Field(None, min_length=1, max_length=256)
    events: list[int] = Field(default_factory=list, max_length=1000)
    products: ArchiveMode = "copy"
    plots: ArchiveMode = "copy"
    config: dict[str, Any] = Field(default_factory=dict)
    agent: str | None = Field(None, max_length=256)
    when: dict[str, Any] | None = Field(
        None, description="A condition on other jobs: {\"job\": UUID, \"is\": finished|failed|"
        "cancelled|ended}, {\"all\": [...]}, {\"any\": [...]}, {\"not\": ...}; the job "
        "waits until it is true and is cancelled if it can no longer be.")
    resources: JobResources | None = Field(None, description=(
        "Cores, memory (MB, or '512M', '2G') and wall time (s, or '30m', '2h', 'H:MM:SS') "
        "its attempts ask for; not part of its identity. A job already waiting, queued or "
        "running keeps the resources it has; a failed or cancelled one is queued again with "
        "these."))

    @model_validator(mode="before")
    @classmethod
    def _resources_out_of_data(cls, document: Any) -> Any:
        if isinstance(document, dict):
            document = take_resources(document)
        return document

    @model_validator(mode="after")
    def _one_way_to_run(self) -> SubmitRequest:
        if "function" in self.data and "command" in self.data:
            raise ValueError("data may hold a function or a command, not both")
        environment_of(self.data)  # refused here, not when an attempt starts
        return self

    def queue_info(self) -> QueueInfo:
        return QueueInfo(priority=self.priority, timeout=self.timeout, retries=self.retries,
                         site=self.site, tags=self.tags, user=self.user, events=self.events,
                         products=self.products, plots=self.plots, config=self.config,
                         when=self.when, resources=self.resources)


def take_resources(document: dict[str, Any], place: str = "") -> dict[str, Any]:
    """The submission with resources given inside its ``data`` moved out to ``resources``,
    both checked: InvalidInput (400) naming the field (``{place}resources.memory``) when they
    are malformed, or given in both places differently."""
    data = document.get("data")
    inside = data.get("resources") if isinstance(data, dict) else None
    given = document.get("resources")
    if given is not None and not isinstance(given, JobResources):
        given = parse_resources(given, f"{place}resources")
    if not isinstance(data, dict) or "resources" not in data:
        return document
    if inside is not None:
        inside = parse_resources(inside, f"{place}data.resources")
        if given is not None and given != inside:
            raise InvalidInput(f"{place}data.resources and {place}resources differ: resources "
                               "are a queue attribute, give them once as resources",
                               place=f"{place}data.resources")
    rest = {key: value for key, value in data.items() if key != "resources"}
    return {**document, "data": rest, "resources": given if given is not None else inside}


class SubmitOutcome(_Strict):
    """What a submission did: queued it, left it where it was, or answered it as done."""

    uuid: JobUUID
    state: str
    memoised: bool = Field(description="It had finished already: not run again.")
    queued: bool = Field(description="This submission queued it (or made it wait).")
    created: bool = Field(description="The job was new.")
    archive_path: str
    resources: JobResources | None = Field(None, description=(
        "The resources the job's attempts ask for: its own when this submission left it as "
        "it was (waiting, queued, running or finished), this submission's when it queued it."))

    # A submitted job in a condition (DESIGN §11): ``b = submit(..., when=a.finished)``.
    @property
    def finished(self) -> Expr:
        return Ref(self.uuid).finished

    @property
    def failed(self) -> Expr:
        return Ref(self.uuid).failed

    @property
    def cancelled(self) -> Expr:
        return Ref(self.uuid).cancelled

    @property
    def ended(self) -> Expr:
        return Ref(self.uuid).ended


class WaitOutcome(_Strict):
    """What a wait saw: the awaited jobs' states, and whether its time ran out first."""

    jobs: dict[str, str] = Field(description="Each awaited job's state, by UUID.")
    timed_out: bool = Field(description="The time ran out before the jobs ended.")

    def exit_code(self) -> int:
        """``catalog wait``'s exit status: 0 when the ended jobs finished, 1 when one failed
        or was cancelled, TIMEOUT_EXIT when the time ran out."""
        if self.timed_out:
            return TIMEOUT_EXIT
        return 1 if any(state in ENDED_STATES and outcome(state) != "finished"
                        for state in self.jobs.values()) else 0


class WorkFilter(_Strict):
    """Which queued jobs a worker takes: every field given must match."""

    pipelines: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        min_length=1, max_length=64, description="Pipeline names or UUIDs.")
    site: str | None = None
    tags: list[str] | None = Field(None, description="Any one of these tags.")
    users: list[str] | None = None
    priorities: list[int] | None = None
    events: list[int] | None = Field(None, description="Any one of these event numbers.")
    parent: list[str] | None = Field(None, description="config.parent is one of these.")

    def matches(self, queue: QueueInfo | dict[str, Any]) -> bool:
        info = queue if isinstance(queue, dict) else queue.model_dump(mode="json")
        if self.site is not None and info.get("site") != self.site:
            return False
        if self.tags is not None and not set(self.tags) & set(info.get("tags") or ()):
            return False
        if self.users is not None and info.get("user") not in self.users:
            return False
        if self.priorities is not None and info.get("priority") not in self.priorities:
            return False
        if self.events is not None and not set(self.events) & set(info.get("events") or ()):
            return False
        parent = (info.get("config") or {}).get("parent")
        return self.parent is None or parent in self.parent


class WithdrawRequest(_Strict):
    """What ``POST /queue/withdraw`` sends."""

    filter: WorkFilter
    worker: str = Field(min_length=1, max_length=256)
    lease: int | None = Field(None, ge=5, le=MAX_TIMEOUT_S,
                              description="Seconds the lease lasts between heartbeats "
                              "(default: the job's timeout).")


class Withdrawn(_Strict):
    """A job handed to a worker: everything it needs to run it, and its token."""

    uuid: JobUUID
    pipeline: str
    data: dict[str, Any]
    archive_path: str
    attempt: int
    timeout: int
    lease_expiry: str
    token: str
    queue: QueueInfo

    def work(self) -> dict[str, Any]:
        """What an engine is handed: the job's data, with its resources (a queue attribute)
        under ``resources`` when it has some."""
        if self.queue.resources is None:
            return self.data
        return {**self.data, "resources": self.queue.resources.model_dump(exclude_none=True)}


class Completion(_Strict):
    """What a worker reports at the end of an attempt."""

    worker: str = Field(min_length=1, max_length=256)
    results: dict[str, Any] = Field(default_factory=dict)
    products: PathList = Field(default_factory=list)
    plots: PathList = Field(default_factory=list)
    logs: PathList = Field(default_factory=list,
                           description="Captured output files: archived, never the job's own.")
    error: str | None = Field(None, max_length=20000,
                              description="Set when the attempt failed: why.")


class HeartbeatRequest(_Strict):
    """What ``POST /jobs/{uuid}/heartbeat`` sends."""

    worker: str = Field(min_length=1, max_length=256)
    lease: int | None = Field(None, ge=5, le=MAX_TIMEOUT_S,
                              description="Seconds from now (default: the job's timeout).")


class CancelRequest(_Strict):
    """What ``POST /jobs/{uuid}/cancel`` may send."""

    reason: str = Field("cancelled by a user", min_length=1, max_length=2000)
