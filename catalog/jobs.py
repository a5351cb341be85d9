"""ManagedPipelineJob (define and set up a job) and ManagedPipelineJobInstance (drive one)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from catalog.catalog import Catalog, parse_document, validation_message
from catalog.deletion import refuse_deleted
from catalog.errors import InvalidInput, InvalidPattern, SchemaViolation
from catalog.identifiers import (
    UUIDType,
    canonical_json,
    instanced_directory,
    job_uuid,
)
from catalog.identifiers import archive_path as derive_archive_path
from catalog.mappings import get_mapping
from catalog.messages import CreatedJob, EventOutcome, JobRequest
from catalog.models import (
    ArchiveIndexRequest,
    HistoryEntry,
    Job,
    Pipeline,
    ProductIndexRequest,
    QueueInfo,
    utc_now,
)
from catalog.paths import check_archive_path
from catalog.references import discover_inputs
from catalog.states import INITIAL_STATE

if TYPE_CHECKING:
    from catalog.indexer import IndexResult

UpstreamIds = str | Iterable[str] | None


def _event_method(name: str, admin: bool = False) -> Callable[..., EventOutcome]:
    """One method per event, sending it with the job's own token (or the given one)."""

    def send(self: _JobHandle, data: dict[str, Any] | None = None, *,
             event_id: str | None = None, token: str | None = None) -> EventOutcome:
        event = {"name": name, "data": {} if data is None else data, "event_id": event_id}
        return self.handle(event, token=token)

    send.__name__ = name
    send.__doc__ = f"Send the {'admin ' if admin else ''}event {name!r} to this job."
    return send


class _JobHandle:
    """What a defined job and a loaded job share: token, webhook and event methods."""

    catalog: Catalog
    uuid: str
    source: str = "python"

    @property
    def token(self) -> str:
        return self.catalog.job_token(self.uuid)

    def build_webhook(self, base_url: str | None = None) -> str:
        """The URL that drives this job over HTTP: ``<base>/jobs/<uuid>/events?token=...``."""
        return self.catalog.webhook_url(self.uuid, base_url)

    def handle(self, event: dict[str, Any], token: str | None = None) -> EventOutcome:
        """Apply ``{"name", "data", "event_id"}``; the token defaults to the job's own."""
        return self.catalog.handle_event(self.uuid, event, token if token is not None
                                         else self.token, source=self.source)

    create = _event_method("create")
    run = _event_method("run")
    update = _event_method("update")
    resource = _event_method("resource")
    fail = _event_method("fail")
    finish = _event_method("finish")
    indexed = _event_method("indexed")
    validate = _event_method("validate")
    validated = _event_method("validated")
    reject = _event_method("reject")
    finalize = _event_method("finalize")
    retire = _event_method("retire")
    reset = _event_method("reset", admin=True)
    ready = _event_method("ready", admin=True)


_Request = TypeVar("_Request", ArchiveIndexRequest, ProductIndexRequest)


def parse_index_requests(kind: type[_Request], values: Iterable[Any] | None,
                         name: str) -> list[_Request]:
    """Validated index requests; a bad regular expression is InvalidPattern."""
    if values is None:
        return []
    if isinstance(values, dict | str):
        raise InvalidInput(f"{name} must be a list of index requests")
    parsed = []
    for index, value in enumerate(values):
        try:
            parsed.append(value if isinstance(value, kind) else kind.model_validate(value))
        except ValidationError as exc:
            error = InvalidPattern if any(
                e["loc"] and e["loc"][0] == "patterns" for e in exc.errors()) else InvalidInput
            raise error(f"{name}[{index}]: {validation_message(exc)}") from None
    return parsed


class ManagedPipelineJob(_JobHandle):
    """A job defined by (pipeline, upstream entities, data); ``setup()`` stores it once."""

    def __init__(
        self,
        catalog: Catalog,
        pipeline: str | Pipeline,
        data: dict[str, Any] | None = None,
        *,
        measurement_id: UpstreamIds = None,
        sample_id: UpstreamIds = None,
        experiment_id: UpstreamIds = None,
        observation_id: UpstreamIds = None,
        archive_path: str | None = None,
        archive_system: str | None = None,
        archive_patterns: Iterable[Any] | None = None,
        product_patterns: Iterable[Any] | None = None,
        instanced: bool = False,
        session: str | None = None,
        agent: str | None = None,
        task: str | None = None,
        status_mapping: str | None = None,
        source: str = "python",
    ) -> None:
        self.catalog = catalog
        self.source = source
        # A Pipeline already looked up (a batch looks each name up once) or its name or UUID.
        self.pipeline = pipeline if isinstance(pipeline, Pipeline) else catalog.get_pipeline(
            pipeline)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise SchemaViolation(f"data must be a JSON object, not {type(data).__name__}")
        canonical_json(data)
        self.data = data
        child_of: list[str] = []
        for kind, values in ((UUIDType.experiment, experiment_id), (UUIDType.sample, sample_id),
                             (UUIDType.measurement, measurement_id),
                             (UUIDType.observation, observation_id)):
            child_of.extend(catalog.upstream(kind, values))
        self.child_of = sorted(set(child_of))
        self.uuid = job_uuid(self.pipeline.uuid, self.child_of, data, catalog.settings.namespace)
        self.archive_patterns = parse_index_requests(ArchiveIndexRequest, archive_patterns,
                                          "archive_patterns")
        self.product_patterns = parse_index_requests(ProductIndexRequest, product_patterns,
                                          "product_patterns")
        for field, value in (("agent", agent), ("task", task)):
            if value is not None and (not isinstance(value, str) or len(value) > 256):
                raise InvalidInput(f"{field} must be a string of at most 256 characters")
        self.session, self.agent, self.task = session, agent, task
        if status_mapping is not None:
            get_mapping(status_mapping, catalog.settings.mappings_dir)
        self.status_mapping = status_mapping
        self.archive_system = archive_system or catalog.settings.archive_system
        if archive_path is not None:
            self.archive_path = check_archive_path(archive_path, catalog.archive_root)
        else:
            instance = instanced_directory(session) if instanced or session else None
            self.archive_path = check_archive_path(
                derive_archive_path(self.pipeline.uuid, self.child_of, data, instance),
                catalog.archive_root,
            )
        # Inputs and parameters naming files or references become acted_on / acted_using
        # links; anything unresolvable is refused here, before anything is stored.
        self.inputs = discover_inputs(catalog, data, self.archive_system, self.archive_path)
        self.created: bool | None = None
        self._job: Job | None = None

    def setup(self, queued: QueueInfo | None = None, queued_data: dict[str, Any] | None = None
              ) -> ManagedPipelineJob:
        """Store the job, or find the one already stored for this identity, unchanged; return
        this object, so that ``ManagedPipelineJob(...).setup().run()`` reads as it should.

        ``stored`` is the job as stored by this call (the fields of ``Job`` are also read
        through from it: ``setup().state``, ``setup().acted_on``), ``job`` the job as it is now.
        With ``queued``, a new job is stored already QUEUED (its ``create`` and ``queue``
        entries and queue attributes in one write: a submission costs one commit, not two)."""
        job = self.new_job(queued, queued_data)
        if self.inputs.references:
            self.catalog.add_entities(self.inputs.references)
        refuse_deleted(self.catalog, job.uuid)  # a tombstone stands until purged
        doc, self.created = self.catalog.store.insert_job(job.model_dump(mode="json"))
        # Stored as built: validating the stored copy again would only rebuild the same job.
        self._job = job if self.created else Job.model_validate(doc)
        self.archive_path = self._job.archive_path
        return self

    def new_job(self, queued: QueueInfo | None = None,
                queued_data: dict[str, Any] | None = None) -> Job:
        """The job ``setup`` stores when there is none yet (nothing is stored here)."""
        now = utc_now()
        event_id = f"{self.uuid}:create"
        first = HistoryEntry(
            uuid=self.catalog.entry_uuid(self.uuid, event_id), name="create", date=now,
            data={}, source=self.source, event_id=event_id, state=INITIAL_STATE,
        )
        history = [first]
        if queued is not None:
            queued = queued.model_copy(update={"queued": now})
            history.append(HistoryEntry.model_validate(self.catalog.history_entry(
                self.uuid, "queue", queued_data or {}, self.source, "QUEUED")))
        return Job(
            uuid=self.uuid, pipeline_uuid=self.pipeline.uuid, data=self.data,
            state=history[-1].state, last_event=history[-1].name, version=len(history),
            child_of=self.child_of,
            generated_by=[self.pipeline.uuid], acted_on=self.inputs.acted_on,
            acted_using=self.inputs.acted_using, archive_system=self.archive_system,
            archive_path=self.archive_path, archive_patterns=self.archive_patterns,
            product_patterns=self.product_patterns, session=self.session, agent=self.agent,
            task=self.task, status_mapping=self.status_mapping, created=now,
            updated=history[-1].date, history=history, queue=queued,
        )

    @property
    def stored(self) -> Job:
        """The job as ``setup()`` stored or found it."""
        if self._job is None:
            raise AttributeError("the job is not set up yet: call setup() first")
        return self._job

    def __getattr__(self, name: str) -> Any:
        # Only for names this class does not have: the stored Job's fields (state, acted_on,
        # history, model_dump, ...), so callers of the old setup(), which returned the Job,
        # keep working.
        job = self.__dict__.get("_job")
        if name.startswith("_") or job is None or not hasattr(job, name):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}"
                                 + ("" if job is not None or name.startswith("_")
                                    else " (call setup() first)"))
        return getattr(job, name)

    index = _event_method("index")

    @property
    def job(self) -> Job:
        """The stored job as it is now (``setup()`` first)."""
        return self.catalog.get_job(self.uuid)


class ManagedPipelineJobInstance(_JobHandle):
    """An existing job, loaded by UUID."""

    def __init__(self, catalog: Catalog, uuid: str, source: str = "python") -> None:
        self.catalog = catalog
        self.source = source
        self._job = catalog.get_job(uuid)
        self.uuid = self._job.uuid

    def refresh(self) -> Job:
        self._job = self.catalog.get_job(self.uuid)
        return self._job

    @property
    def job(self) -> Job:
        return self._job

    @property
    def state(self) -> str:
        return self.refresh().state

    @property
    def archive_path(self) -> str:
        return self._job.archive_path

    def handle(self, event: dict[str, Any], token: str | None = None) -> EventOutcome:
        outcome = super().handle(event, token)
        self.refresh()  # a replay answers its first outcome, not the job's state now
        return outcome

    def index(self, token: str | None = None, requests: Iterable[Any] | None = None,
              fixity: bool | None = None, rehash: bool = False,
              fail_on_error: bool = False, accept_changes: bool = False) -> IndexResult:
        """Index this job's files (``index`` -> INDEXING -> ``indexed`` -> FINISHED)."""
        from catalog.indexer import index_job

        result = index_job(self.catalog, self.uuid, token if token is not None else self.token,
                           requests, fixity, rehash, fail_on_error, self.source,
                           accept_changes=accept_changes)
        self.refresh()
        return result

    def delete(self, token: str | None) -> None:
        """Remove the job (admin token required)."""
        self.catalog.delete_job(self.uuid, token, source=self.source)


def create_job(catalog: Catalog, request: JobRequest | dict[str, Any], source: str = "python",
               base_url: str | None = None) -> CreatedJob:
    """Create a job from a request document (HTTP, reactor), or answer the existing one."""
    if not isinstance(request, JobRequest):
        request = parse_document(JobRequest, request, "job request")
    managed = ManagedPipelineJob(
        catalog, request.pipeline, request.data, measurement_id=request.measurement_id,
        sample_id=request.sample_id, experiment_id=request.experiment_id,
        observation_id=request.observation_id, archive_path=request.archive_path,
        archive_patterns=request.archive_patterns, product_patterns=request.product_patterns,
        instanced=request.instanced, session=request.session, agent=request.agent,
        task=request.task, status_mapping=request.status_mapping, source=source,
    )
    job = managed.setup().stored
    return CreatedJob(uuid=job.uuid, state=job.state, archive_path=job.archive_path,
                      token=managed.token, webhook=managed.build_webhook(base_url),
                      created=bool(managed.created))
