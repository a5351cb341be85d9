"""OpenLineage ingestion: run events drive jobs, their datasets become linked entities.

An OpenLineage job (namespace + name) is the pipeline ``<namespace>/<name>``; a run is the job of
that pipeline whose data is ``{"openlineage": {"runId": ...}}``, so its UUID follows from the
runId. Event types map to events::

    START -> run    COMPLETE -> finish    FAIL, ABORT -> fail    RUNNING, OTHER (or none) -> update

An event's ``event_id`` is a digest of (runId, eventType, eventTime), so a sender's retry is
applied once and answered as a duplicate. A COMPLETE or FAIL for a run still CREATED (its START
never came) first sends an implied ``run``. Input datasets become references the job
``acted_on``; output datasets become products ``generated_by`` the job; both are linked once the
event is applied (or replayed: linking is idempotent, so a retry repairs an interrupted one).

Senders authenticate with ``Authorization: Bearer <key>``: the ``openlineage_key`` setting or the
admin token. A refusal before the run is known (no or wrong key, malformed event) writes nothing,
not even to the audit log, which an anonymous sender must not be able to fill; a refused event
(a START after COMPLETE: 409) is audited like every other event.

OTHER is the exception: the specification lets a producer send one at any time, after the run
ended too, to add metadata. When the job's state no longer takes an ``update``, such an event is
still accepted: its datasets are linked, it is written to the audit log (with its data, like any
event the state machine did not apply), and the answer is the job as it stands with
``applied: false``, rather than a 409 the producer could only log.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid as _uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from catalog.catalog import Catalog, parse_document
from catalog.errors import EventNotAllowed, TokenInvalid, TokenRequired
from catalog.identifiers import UUIDType, canonical_json
from catalog.jobs import ManagedPipelineJob
from catalog.models import Entity, LineageOutcome, utc_now
from catalog.states import INITIAL_STATE

__all__ = ["EVENTS", "RunEvent", "authenticate", "event_id", "ingest"]

EventType = Literal["START", "RUNNING", "COMPLETE", "FAIL", "ABORT", "OTHER"]
EVENTS: dict[str, str] = {
    "START": "run", "RUNNING": "update", "COMPLETE": "finish", "FAIL": "fail",
    "ABORT": "fail", "OTHER": "update",
}
# Ends of a run that imply it started, when its START never arrived (an ABORT may not have).
_IMPLY_START = frozenset({"COMPLETE", "FAIL"})
# Run facets worth keeping in the history; the rest of the facets stay with the sender.
_KEPT_RUN_FACETS = ("nominalTime", "parent")
_MAX_AGENT = 256

Name = Annotated[str, Field(min_length=1, max_length=1024)]


class _Open(BaseModel):
    """OpenLineage objects carry many facets and custom fields: keep what we do not read."""

    model_config = ConfigDict(extra="allow")


class LineageDataset(_Open):
    namespace: Name
    name: Name
    facets: dict[str, Any] | None = None


class LineageJob(_Open):
    namespace: Name
    name: Name
    facets: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _fits_a_pipeline_name(self) -> LineageJob:
        if len(self.namespace) + 1 + len(self.name) > 256:
            raise ValueError("namespace/name must be at most 256 characters")
        return self


class LineageRun(_Open):
    runId: str  # the spec's spelling, as for every field here
    facets: dict[str, Any] | None = None

    @field_validator("runId")
    @classmethod
    def _uuid(cls, value: str) -> str:
        try:
            return str(_uuid.UUID(value))  # one spelling per run: lower case, hyphenated
        except ValueError:
            raise ValueError("runId must be a UUID") from None


class RunEvent(_Open):
    """The parts of an OpenLineage RunEvent the catalog reads."""

    eventType: EventType | None = None
    eventTime: str
    producer: str | None = None
    run: LineageRun
    job: LineageJob
    inputs: list[LineageDataset] | None = None
    outputs: list[LineageDataset] | None = None

    @field_validator("eventTime")
    @classmethod
    def _date_time(cls, value: str) -> str:
        if "t" not in value.lower():
            raise ValueError("eventTime must be an ISO 8601 date-time")
        try:
            _instant(value)
        except (ValueError, OverflowError):  # overflow: year 1 or 9999 moved to UTC
            raise ValueError("eventTime must be an ISO 8601 date-time") from None
        return value


def authenticate(catalog: Catalog, token: str | None) -> None:
    """Accept the configured ingestion key or the admin token, compared in constant time."""
    if not token:
        raise TokenRequired(
            "a bearer token (the OpenLineage ingestion key or the admin token) is required"
        )
    refusal = TokenInvalid("the token is neither the OpenLineage ingestion key nor the admin token")
    try:
        given = token.encode("utf-8")
    except (AttributeError, UnicodeEncodeError):  # not text (a reactor message's JSON)
        raise refusal from None
    key = catalog.settings.openlineage_key
    is_key = bool(key) and hmac.compare_digest(given, key.encode("utf-8"))
    if not (is_key or catalog.keys.is_admin(token)):
        raise refusal


def _instant(event_time: str) -> str:
    """One spelling per instant (UTC; a zone-less time is read as UTC)."""
    moment = datetime.fromisoformat(event_time)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def event_id(run_id: str, event_type: str, event_time: str) -> str:
    """The stable event_id of a run's event: equal for every delivery of that event."""
    key = canonical_json(["openlineage", run_id, event_type, _instant(event_time)])
    return "openlineage:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def _event_data(event: RunEvent, kind: str) -> dict[str, Any]:
    data: dict[str, Any] = {"eventType": kind, "eventTime": event.eventTime}
    if event.producer is not None:
        data["producer"] = event.producer
    facets = event.run.facets or {}
    data.update({name: facets[name] for name in _KEPT_RUN_FACETS if name in facets})
    return data


def _entity(catalog: Catalog, kind: UUIDType, dataset: LineageDataset) -> Entity:
    uri = f"{dataset.namespace}/{dataset.name}"
    return Entity(uuid=catalog.typed_uuid(kind, uri), kind=kind.name, name=dataset.name,
                  namespace=dataset.namespace, uri=uri, created=utc_now())


def _link_datasets(catalog: Catalog, job_uuid: str, event: RunEvent) -> None:
    """Inputs: references the job acted on; outputs: products generated by the job."""
    references = [_entity(catalog, UUIDType.reference, d) for d in event.inputs or []]
    products = [_entity(catalog, UUIDType.product, d) for d in event.outputs or []]
    if not references and not products:
        return
    catalog.add_entities(references + products)
    if references:
        catalog.add_links(job_uuid, "acted_on", [reference.uuid for reference in references])
    for product in products:
        catalog.add_links(product.uuid, "generated_by", [job_uuid])


def ingest(catalog: Catalog, event: Any, token: str | None, source: str = "api") -> dict[str, Any]:
    """Apply one OpenLineage RunEvent (a parsed JSON document); returns a LineageOutcome dict."""
    authenticate(catalog, token)
    parsed = parse_document(RunEvent, event, "run event")
    namespace, name, run_id = parsed.job.namespace, parsed.job.name, parsed.run.runId
    pipeline, _ = catalog.add_pipeline(
        name=f"{namespace}/{name}",
        components=[{"openlineage": {"namespace": namespace, "name": name}}],
    )
    managed = ManagedPipelineJob(
        catalog, pipeline.uuid, data={"openlineage": {"runId": run_id}}, source=source,
        agent=parsed.producer[:_MAX_AGENT] if parsed.producer else None,
    )
    job = managed.setup()
    kind = parsed.eventType or "OTHER"  # the spec reads a missing type as OTHER
    if kind in _IMPLY_START and job.state == INITIAL_STATE:
        implied = {"eventType": "START", "impliedBy": kind, "eventTime": parsed.eventTime}
        managed.run(implied, event_id=event_id(run_id, f"START/{kind}", parsed.eventTime))
    identifier = event_id(run_id, kind, parsed.eventTime)
    try:
        outcome = managed.handle({"name": EVENTS[kind], "data": _event_data(parsed, kind),
                                  "event_id": identifier})
    except EventNotAllowed:
        if kind != "OTHER":
            raise
        # Metadata after the run ended (the refusal is in the audit log): lineage all the same.
        _link_datasets(catalog, job.uuid, parsed)
        now = catalog.get_job(job.uuid, history=False)
        return LineageOutcome(
            uuid=now.uuid, state=now.state, last_event=now.last_event, event_id=identifier,
            duplicate=False, pipeline_uuid=pipeline.uuid, applied=False,
        ).model_dump(mode="json")
    _link_datasets(catalog, job.uuid, parsed)
    return LineageOutcome(**outcome.model_dump(), pipeline_uuid=pipeline.uuid).model_dump(
        mode="json")
