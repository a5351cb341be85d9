"""OpenLineage ingestion: run events drive jobs, and datasets join runs into one graph.

An OpenLineage job (namespace + name) is the pipeline ``<namespace>/<name>``; a run is the job of
that pipeline whose data is ``{"openlineage": {"runId": ...}}``, so its UUID follows from the
runId. Event types map to events::

    START -> run    RUNNING -> run (to a CREATED job) or update    COMPLETE -> finish
    FAIL, ABORT -> fail (the run's view tells them apart)    OTHER (or none) -> update

Events are merged in whatever order they arrive (DESIGN §13), never refused for being late: a
COMPLETE or FAIL for a run still CREATED first sends an implied ``run``; an event the job's state
no longer takes (a START after COMPLETE, a second terminal event) is still kept, its datasets
linked, and answered ``applied: false`` (the refusal is in the audit log). Every distinct event
is kept whole in the store's OpenLineage events, so its times, facets and parent are read back
(catalog.openlineage_views). An event's ``event_id`` is a digest of (runId, eventType,
eventTime): a sender's retry is applied once and answered as a duplicate.

A dataset is ONE ``reference`` entity whatever its role, its UUID derived from its normalised
namespace and name (``<namespace>/<name>``): the job ``acted_on`` the datasets it read, and those
it wrote are ``generated_by`` it, so run A -> X -> run B joins. JobEvents (static lineage: the
outputs ``generated_by`` the pipeline) and DatasetEvents (a dataset and its facets) are kept too.

Senders authenticate with ``Authorization: Bearer <key>``: the ``openlineage_key`` setting or the
admin token. A refusal before the event is known (no or wrong key, malformed event, a facet over
``MAX_FACET_BYTES``) writes nothing, not even to the audit log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid as _uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from catalog.catalog import Catalog, parse_document
from catalog.errors import (
    BodyTooLarge,
    EventNotAllowed,
    SchemaViolation,
    TokenInvalid,
    TokenRequired,
)
from catalog.identifiers import UUIDType, canonical_json, pipeline_uuid
from catalog.jobs import ManagedPipelineJob
from catalog.models import Entity, LineageOutcome, Pipeline, utc_now
from catalog.states import INITIAL_STATE
from catalog.store.base import Link

__all__ = ["EVENTS", "MAX_FACET_BYTES", "DatasetEvent", "JobEvent", "RunEvent", "authenticate",
           "dataset_key", "event_id", "ingest"]

EventType = Literal["START", "RUNNING", "COMPLETE", "FAIL", "ABORT", "OTHER"]
EVENTS: dict[str, str] = {
    "START": "run", "RUNNING": "update", "COMPLETE": "finish", "FAIL": "fail",
    "ABORT": "fail", "OTHER": "update",
}
TERMINAL = ("COMPLETE", "FAIL", "ABORT")
# Ends of a run that imply it started, when its START never arrived (an ABORT may not have).
_IMPLY_START = frozenset({"COMPLETE", "FAIL"})
# Run facets copied into the job's history; every facet is kept whole with the event.
_KEPT_RUN_FACETS = ("nominalTime", "parent")
_MAX_AGENT = 256
# One facet's JSON at most: a schema of thousands of columns fits, a runaway plan does not.
MAX_FACET_BYTES = 2 * 1024 * 1024

Name = Annotated[str, Field(min_length=1, max_length=1024)]


class _Open(BaseModel):
    """OpenLineage objects carry many facets and custom fields: keep what we do not read."""

    model_config = ConfigDict(extra="allow")


class LineageDataset(_Open):
    namespace: Name
    name: Name
    facets: dict[str, Any] | None = None
    inputFacets: dict[str, Any] | None = None
    outputFacets: dict[str, Any] | None = None


class LineageJob(_Open):
    namespace: Name
    name: Name
    facets: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _fits_a_pipeline_name(self) -> LineageJob:
        if len(self.namespace) + 1 + len(self.name) > 256:
            raise ValueError("namespace/name must be at most 256 characters")
        return self


def _run_id(value: str) -> str:
    try:
        return str(_uuid.UUID(value))  # one spelling per run: lower case, hyphenated
    except (ValueError, AttributeError, TypeError):
        raise ValueError("runId must be a UUID") from None


class LineageRun(_Open):
    runId: str  # the spec's spelling, as for every field here
    facets: dict[str, Any] | None = None

    @field_validator("runId")
    @classmethod
    def _uuid(cls, value: str) -> str:
        return _run_id(value)


def _event_time(value: str) -> str:
    if "t" not in value.lower():
        raise ValueError("eventTime must be an ISO 8601 date-time")
    try:
        _instant(value)
    except (ValueError, OverflowError):  # overflow: year 1 or 9999 moved to UTC
        raise ValueError("eventTime must be an ISO 8601 date-time") from None
    return value


class _Timed(_Open):
    eventTime: str
    producer: str | None = None

    @field_validator("eventTime")
    @classmethod
    def _date_time(cls, value: str) -> str:
        return _event_time(value)


class RunEvent(_Timed):
    """The parts of an OpenLineage RunEvent the catalog reads."""

    eventType: EventType | None = None
    run: LineageRun
    job: LineageJob
    inputs: list[LineageDataset] | None = None
    outputs: list[LineageDataset] | None = None


class JobEvent(_Timed):
    """Static lineage: a job and the datasets it reads and writes, with no run."""

    job: LineageJob
    inputs: list[LineageDataset] | None = None
    outputs: list[LineageDataset] | None = None


class DatasetEvent(_Timed):
    """A dataset and its facets, with no run or job."""

    dataset: LineageDataset


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


def _body_id(kind: str, event: dict[str, Any]) -> str:
    """The event_id of a JobEvent or DatasetEvent: a digest of the whole event."""
    digest = hashlib.sha256(canonical_json(event).encode("utf-8")).hexdigest()[:32]
    return f"openlineage:{kind}:{digest}"


def normalise(namespace: str, name: str) -> tuple[str, str]:
    """The naming spec's one spelling: scheme and host in lower case, no trailing ``/`` on the
    namespace, ``file://`` with no host is ``file``; object-store names without a leading ``/``."""
    namespace = namespace.strip()
    parts = urlsplit(namespace)
    if parts.scheme and "://" in namespace:
        authority = parts.netloc
        if "@" not in authority:
            authority = authority.lower()
        namespace = f"{parts.scheme.lower()}://{authority}{parts.path.rstrip('/')}"
        if parts.scheme.lower() == "file" and not authority and not parts.path.strip("/"):
            namespace = "file"
        elif parts.scheme.lower() in ("s3", "s3a", "gs", "gcs", "abfs", "abfss", "wasbs"):
            name = name.lstrip("/") or name
    return namespace, name


def dataset_key(namespace: str, name: str) -> str:
    """What a dataset's UUID is derived from: its normalised ``<namespace>/<name>``."""
    namespace, name = normalise(namespace, name)
    return f"{namespace}/{name}"


def dataset_uri(namespace: str, name: str) -> str:
    """The dataset as a well-formed URI (``file`` + ``/data/x`` is ``file:///data/x``)."""
    if namespace == "file" or namespace.startswith("file://"):
        host = namespace[len("file://"):] if namespace != "file" else ""
        return f"file://{host}/{name.lstrip('/')}"
    if "://" not in namespace:
        return f"{namespace}:{name}"
    return f"{namespace}{'' if name.startswith('/') else '/'}{name}"


def _check_facets(event: BaseModel) -> None:
    """Refuse a facet whose JSON is over MAX_FACET_BYTES, naming it and where it is."""
    def check(where: str, facets: dict[str, Any] | None) -> None:
        for facet, value in (facets or {}).items():
            size = len(json.dumps(value, separators=(",", ":")).encode("utf-8"))
            if size > MAX_FACET_BYTES:
                raise BodyTooLarge(f"facet {facet!r} of {where} is {size} bytes, over the "
                                   f"limit of {MAX_FACET_BYTES} bytes for one facet")

    for name in ("run", "job"):
        part = getattr(event, name, None)
        if part is not None:
            check(name, part.facets)
    datasets = [("input", d) for d in getattr(event, "inputs", None) or []]
    datasets += [("output", d) for d in getattr(event, "outputs", None) or []]
    if isinstance(event, DatasetEvent):
        datasets.append(("dataset", event.dataset))
    for role, dataset in datasets:
        where = f"{role} dataset {dataset.namespace}/{dataset.name}"
        for field in ("facets", "inputFacets", "outputFacets"):
            check(where, getattr(dataset, field))


def _entities(catalog: Catalog, datasets: list[LineageDataset]) -> list[Entity]:
    found: dict[str, Entity] = {}
    for dataset in datasets:
        namespace, name = normalise(dataset.namespace, dataset.name)
        uuid = catalog.typed_uuid(UUIDType.reference, f"{namespace}/{name}")
        found.setdefault(uuid, Entity(uuid=uuid, kind="reference", name=name,
                                      namespace=namespace, uri=dataset_uri(namespace, name)[:2049],
                                      created=utc_now()))
    return list(found.values())


def _lineage(catalog: Catalog, job_uuid: str, event: RunEvent | JobEvent,
             pipeline_uuid: str | None = None) -> tuple[list[Entity], list[Entity], list[Entity],
                                                        list[Link]]:
    """Inputs (datasets the run acted on), outputs (generated by the run, or for a JobEvent by
    the pipeline), every dataset to store (column lineage's sources too) and the links."""
    inputs = _entities(catalog, event.inputs or [])
    outputs = _entities(catalog, event.outputs or [])
    stored = inputs + outputs
    links: list[Link] = []
    if inputs and job_uuid:
        links.append((job_uuid, "acted_on", [entity.uuid for entity in inputs]))
    for entity in outputs:
        links.append((entity.uuid, "generated_by", [job_uuid or str(pipeline_uuid)]))
    for output, dataset in zip(outputs, _unique_outputs(event.outputs or []), strict=True):
        sources = _entities(catalog, _column_sources(dataset))
        if sources:
            stored += sources
            links.append((output.uuid, "derived_from", [source.uuid for source in sources]))
    return inputs, outputs, stored, links


def _unique_outputs(datasets: list[LineageDataset]) -> list[LineageDataset]:
    """The first of each dataset, in the order ``_entities`` keeps them."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for dataset in datasets:
        key = normalise(dataset.namespace, dataset.name)
        if key not in seen:
            seen.add(key)
            kept.append(dataset)
    return kept


def _column_sources(dataset: LineageDataset) -> list[LineageDataset]:
    """The datasets a columnLineage facet says the output's columns come from."""
    facet = (dataset.facets or {}).get("columnLineage")
    fields = facet.get("fields") if isinstance(facet, dict) else None
    sources = []
    for column in fields.values() if isinstance(fields, dict) else []:
        for source in (column.get("inputFields") or []) if isinstance(column, dict) else []:
            if (isinstance(source, dict) and isinstance(source.get("namespace"), str)
                    and isinstance(source.get("name"), str)
                    and source["namespace"] and source["name"]):
                sources.append(LineageDataset(namespace=source["namespace"][:1024],
                                              name=source["name"][:1024]))
    return sources


def _record(catalog: Catalog, identifier: str, kind: str, event: dict[str, Any], time: str,
            datasets: list[Entity], stored: list[Entity], links: list[Link],
            **fields: Any) -> bool:
    """Keep the event whole, with its datasets and links (one write); whether it was new."""
    doc = {"event_id": identifier, "kind": kind, "event_time": _instant(time),
           "received": utc_now().isoformat(), "datasets": [e.uuid for e in datasets],
           "event": json.dumps(event, separators=(",", ":"), ensure_ascii=False), **fields}
    return catalog.store.add_lineage_event(
        doc, [entity.model_dump(mode="json") for entity in stored], links)


def _pipeline(catalog: Catalog, namespace: str, name: str) -> Pipeline:
    """The OpenLineage job's pipeline, read (most events) or else stored."""
    components: list[Any] = [{"openlineage": {"namespace": namespace, "name": name}}]
    uuid = pipeline_uuid(f"{namespace}/{name}", None, components, catalog.settings.namespace)
    stored = catalog.store.get_pipeline(uuid)
    if stored is not None:
        return Pipeline.model_validate(stored)
    return catalog.add_pipeline(name=f"{namespace}/{name}", components=components)[0]


def _parent(facets: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """The parent and root run ids of a parent facet (refused when not UUIDs)."""
    facet = (facets or {}).get("parent")
    if not isinstance(facet, dict):
        return None, None
    runs = []
    for part in (facet, facet.get("root")):
        run = part.get("run") if isinstance(part, dict) else None
        run_id = run.get("runId") if isinstance(run, dict) else None
        runs.append(_run_id(run_id) if run_id is not None else None)
    return runs[0], runs[1]


def _event_data(event: RunEvent, kind: str) -> dict[str, Any]:
    data: dict[str, Any] = {"eventType": kind, "eventTime": event.eventTime}
    if event.producer is not None:
        data["producer"] = event.producer
    facets = event.run.facets or {}
    data.update({name: facets[name] for name in _KEPT_RUN_FACETS if name in facets})
    return data


def ingest(catalog: Catalog, event: Any, token: str | None, source: str = "api") -> dict[str, Any]:
    """Apply one OpenLineage event (a parsed JSON document): a RunEvent answers a
    LineageOutcome dict, a JobEvent or DatasetEvent ``{"kind", "event_id", "duplicate",
    "datasets"}``."""
    authenticate(catalog, token)
    # A RunEvent has a run and a type; a JobEvent a job and neither; a DatasetEvent a dataset.
    static = isinstance(event, dict) and not {"run", "eventType"} & event.keys()
    if static and "dataset" in event:
        return _static(catalog, parse_document(DatasetEvent, event, "dataset event"), event)
    if static and "job" in event:
        return _static(catalog, parse_document(JobEvent, event, "job event"), event)
    parsed = parse_document(RunEvent, event, "run event")
    _check_facets(parsed)
    try:
        parent_run, root_run = _parent(parsed.run.facets)
    except ValueError:
        raise SchemaViolation("run event: the parent facet's runIds must be UUIDs") from None
    namespace, name, run_id = parsed.job.namespace, parsed.job.name, parsed.run.runId
    pipeline = _pipeline(catalog, namespace, name)
    managed = ManagedPipelineJob(
        catalog, pipeline.uuid, data={"openlineage": {"runId": run_id}}, source=source,
        agent=parsed.producer[:_MAX_AGENT] if parsed.producer else None,
    )
    head = catalog.store.get_job(managed.uuid, history=False)  # most runs have one already
    state = head["state"] if head is not None else managed.setup().stored.state
    kind = parsed.eventType or "OTHER"  # the spec reads a missing type as OTHER
    created = state == INITIAL_STATE
    if kind in _IMPLY_START and created:
        implied = {"eventType": "START", "impliedBy": kind, "eventTime": parsed.eventTime}
        try:
            managed.run(implied, event_id=event_id(run_id, f"START/{kind}", parsed.eventTime))
        except EventNotAllowed:
            pass  # a concurrent event moved the run on: the end decides below
    identifier = event_id(run_id, kind, parsed.eventTime)
    name_of = "run" if kind == "RUNNING" and created else EVENTS[kind]
    applied = True
    try:
        outcome = managed.handle({"name": name_of, "data": _event_data(parsed, kind),
                                  "event_id": identifier})
    except EventNotAllowed:
        applied = False  # late (the refusal is in the audit log): kept and linked all the same
    inputs, outputs, stored, links = _lineage(catalog, managed.uuid, parsed)
    new = _record(catalog, identifier, "run", event, parsed.eventTime, inputs + outputs,
                  stored, links, event_type=kind, run_id=run_id, parent_run_id=parent_run,
                  root_run_id=root_run, job=pipeline.uuid, job_uuid=managed.uuid,
                  job_namespace=namespace, job_name=name, applied=applied,
                  inputs=[e.uuid for e in inputs], outputs=[e.uuid for e in outputs])
    if applied:
        return LineageOutcome(**outcome.model_dump(), pipeline_uuid=pipeline.uuid).model_dump(
            mode="json")
    now = catalog.get_job(managed.uuid, history=False)
    return LineageOutcome(
        uuid=now.uuid, state=now.state, last_event=now.last_event, event_id=identifier,
        duplicate=not new, pipeline_uuid=pipeline.uuid, applied=False,
    ).model_dump(mode="json")


def _static(catalog: Catalog, parsed: JobEvent | DatasetEvent, event: Any) -> dict[str, Any]:
    """A JobEvent or a DatasetEvent: its datasets stored, linked to the pipeline, kept."""
    _check_facets(parsed)
    fields: dict[str, Any] = {}
    if isinstance(parsed, JobEvent):
        namespace, name = parsed.job.namespace, parsed.job.name
        pipeline = _pipeline(catalog, namespace, name)
        inputs, outputs, stored, links = _lineage(catalog, "", parsed, pipeline.uuid)
        datasets, kind = inputs + outputs, "job"
        fields = {"job": pipeline.uuid, "job_namespace": namespace, "job_name": name,
                  "inputs": [e.uuid for e in inputs], "outputs": [e.uuid for e in outputs]}
    else:
        datasets, kind, links = _entities(catalog, [parsed.dataset]), "dataset", []
        stored = datasets
    identifier = _body_id(kind, event)
    new = _record(catalog, identifier, kind, event, parsed.eventTime, datasets, stored, links,
                  **fields)
    return {"kind": kind, "event_id": identifier, "duplicate": not new,
            "datasets": [entity.uuid for entity in datasets]}
