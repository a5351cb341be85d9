"""OpenLineage ingestion: run events drive jobs, and datasets join runs into one graph.

An OpenLineage job (namespace + name) is the pipeline ``<namespace>/<name>``; a run is the job of
that pipeline whose data is ``{"openlineage": {"runId": ...}}``, so its UUID follows from the
runId. Event types map to events::

    START -> run    RUNNING -> run (to a CREATED job) or update    COMPLETE -> finish
    FAIL, ABORT -> fail (the run's view tells them apart)    OTHER (or none) -> update

Events (parsed and checked first: catalog.openlineage_events) are merged in whatever order they
arrive (DESIGN §13), never refused for being late: a
COMPLETE or FAIL for a run still CREATED first sends an implied ``run``; an event the job's state
no longer takes (a START after COMPLETE, a second terminal event) is still kept, its datasets
linked, and answered ``applied: false`` (the refusal is in the audit log). Everything one event
writes (the pipeline and job when new, the job's events, a refusal's audit entry, the event with
its datasets and links) is handed to the store as one ``LineageWrite``: one transaction, one
commit shared with the events queued meanwhile (catalog.store.openlineage_write). Every
distinct event is kept whole in the store's OpenLineage events, so its times, facets and parent
are read back (catalog.openlineage_views). An event's ``event_id`` is a digest of (runId, eventType,
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

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from catalog.catalog import Catalog, parse_document
from catalog.deletion import gone_or, refuse_deleted
from catalog.errors import CatalogError, EventNotAllowed, SchemaViolation
from catalog.identifiers import UUIDType, typed_uuid
from catalog.models import Entity, Event, Pipeline, utc_now, utc_now_text
from catalog.openlineage_docs import pipeline_of as _pipeline_of
from catalog.openlineage_docs import run_job_doc, run_job_uuid, run_pipeline_doc
from catalog.openlineage_events import (
    EVENTS,
    MAX_FACET_BYTES,
    DatasetEvent,
    JobEvent,
    LineageDataset,
    RunEvent,
    authenticate,
    body_id,
    check_facets,
    column_sources,
    dataset_key,
    dataset_uri,
    event_id,
    instant,
    normalise,
    parent_runs,
    unique_outputs,
)
from catalog.states import ENDED_STATES, INITIAL_STATE
from catalog.store.openlineage_write import LineageApplied, LineageStep, LineageWrite
from catalog.store.values import Applied, Decide, Doc, Link

__all__ = ["EVENTS", "MAX_FACET_BYTES", "DatasetEvent", "JobEvent", "RunEvent", "authenticate",
           "dataset_key", "event_id", "ingest", "ingest_async"]

# Ends of a run that imply it started, when its START never arrived (an ABORT may not have).
_IMPLY_START = frozenset({"COMPLETE", "FAIL"})
# Run facets copied into the job's history; every facet is kept whole with the event.
_KEPT_RUN_FACETS = ("nominalTime", "parent")
_MAX_AGENT = 256


def _entities(catalog: Catalog, datasets: list[LineageDataset], created: str,
              **links: list[str]) -> list[Doc]:
    """The datasets' reference entities (each once), as ``Entity.model_dump(mode="json")``
    makes them, built directly: an event has several, and the model cost a fifth of it.
    ``links`` (``generated_by=[...]``) are the lists a dataset stored with it starts with."""
    found: dict[str, Doc] = {}
    for dataset in datasets:
        namespace, name = _normalised(dataset.namespace, dataset.name)
        uuid = _dataset_uuid(f"{namespace}/{name}", catalog.settings.namespace)
        if uuid in found:
            continue
        doc = {"uuid": uuid, "kind": "reference", "name": name, "namespace": namespace,
               "uri": dataset_uri(namespace, name)[:2049], "created": created,
               "child_of": [], "generated_by": [], "derived_from": [], "derived_using": [],
               **links}
        if len(namespace) > 1024 or len(name) > 1024:  # normalised longer: the model says
            doc = Entity.model_validate(doc).model_dump(mode="json")
        found[uuid] = doc
    return list(found.values())


# Datasets recur (a run's outputs are the next one's inputs): their names are normalised and
# their UUIDs derived once (a URL parse and a SHA-1 each).
_normalised = lru_cache(maxsize=65536)(normalise)


@lru_cache(maxsize=65536)
def _dataset_uuid(key: str, catalog_namespace: str) -> str:
    return typed_uuid(UUIDType.reference, key, catalog_namespace)


def _lineage(catalog: Catalog, job_uuid: str, event: RunEvent | JobEvent,
             pipeline_uuid: str | None = None) -> tuple[list[Doc], list[Doc], list[Doc],
                                                        list[Link]]:
    """Inputs (datasets the run acted on), outputs (generated by the run, or for a JobEvent by
    the pipeline), every dataset to store (column lineage's sources too) and the links. An
    output is stored already linked (a new one then needs no second write), and linked again
    in case it was stored before."""
    created = utc_now_text()
    source = job_uuid or str(pipeline_uuid)
    inputs = _entities(catalog, event.inputs or [], created)
    outputs = _entities(catalog, event.outputs or [], created, generated_by=[source])
    stored = inputs + outputs
    links: list[Link] = []
    if inputs and job_uuid:
        links.append((job_uuid, "acted_on", [entity["uuid"] for entity in inputs]))
    for entity in outputs:
        links.append((entity["uuid"], "generated_by", [source]))
    for output, dataset in zip(outputs, unique_outputs(event.outputs or []), strict=True):
        sources = _entities(catalog, column_sources(dataset), created)
        if sources:
            stored += sources
            links.append((output["uuid"], "derived_from", [e["uuid"] for e in sources]))
    return inputs, outputs, stored, links


def _record_doc(identifier: str, kind: str, event: dict[str, Any], time: str,
                datasets: list[Doc], **fields: Any) -> Doc:
    """The event as kept: whole (as JSON text), with what its reads are indexed by."""
    return {"event_id": identifier, "kind": kind, "event_time": instant(time),
            "received": utc_now().isoformat(), "datasets": [e["uuid"] for e in datasets],
            "event": _event_text(event), **fields}


def _event_text(event: Any) -> str:
    """The event as compact JSON text: orjson's (a tenth of json.dumps's time), or json's for
    what orjson refuses (a lone surrogate in a string)."""
    try:
        return orjson.dumps(event).decode()
    except TypeError:
        return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def _record(catalog: Catalog, identifier: str, kind: str, event: dict[str, Any], time: str,
            datasets: list[Doc], stored: list[Doc], links: list[Link], **fields: Any) -> bool:
    """Keep the event whole, with its datasets and links (one write); whether it was new."""
    return catalog.store.add_lineage_event(
        _record_doc(identifier, kind, event, time, datasets, **fields), stored, links)


def _new_pipeline(catalog: Catalog, namespace: str, name: str) -> Pipeline:
    """The OpenLineage job's pipeline as ``add_pipeline`` stores it (not stored here)."""
    uuid, full_name = _pipeline_of(namespace, name, catalog.settings.namespace)
    return Pipeline(uuid=uuid, name=full_name, created=utc_now(),
                    components=[{"openlineage": {"namespace": namespace, "name": name}}])


def _pipeline(catalog: Catalog, namespace: str, name: str) -> Pipeline:
    """The OpenLineage job's pipeline, read (most events) or else stored."""
    uuid, _ = _pipeline_of(namespace, name, catalog.settings.namespace)
    stored = catalog.store.get_pipeline(uuid)
    if stored is not None:
        return Pipeline.model_validate(stored)
    pipeline = _new_pipeline(catalog, namespace, name)
    return catalog.add_pipeline(name=pipeline.name, components=pipeline.components)[0]


def _event_data(event: RunEvent, kind: str) -> dict[str, Any]:
    data: dict[str, Any] = {"eventType": kind, "eventTime": event.eventTime}
    if event.producer is not None:
        data["producer"] = event.producer
    facets = event.run.facets or {}
    data.update({name: facets[name] for name in _KEPT_RUN_FACETS if name in facets})
    return data


def _decide(catalog: Catalog, uuid: str, name: str, data: dict[str, Any], identifier: str,
            source: str) -> Decide:
    # The event's parts are checked already (the RunEvent's model and check_json of the whole).
    event = Event.model_construct(name=name, data=data, event_id=identifier)
    return catalog.decider(uuid, event, source)


@dataclass
class _Prepared:
    """An event parsed, checked and turned into its store write; ``answer`` makes the reply."""

    write: LineageWrite
    answer: Callable[[LineageApplied], dict[str, Any]]
    refused: Callable[[CatalogError], Doc] | None = None  # the audit entry of a failed write
    job: str | None = None  # the run's job: its side effects follow the write


def ingest(catalog: Catalog, event: Any, token: str | None, source: str = "api") -> dict[str, Any]:
    """Apply one OpenLineage event (a parsed JSON document): a RunEvent answers a
    LineageOutcome dict, a JobEvent or DatasetEvent ``{"kind", "event_id", "duplicate",
    "datasets"}``."""
    prepared = _prepare(catalog, event, token, source)
    try:
        result = catalog.store.apply_lineage(prepared.write)
    except CatalogError as exc:
        raise _failed(catalog, prepared, exc) from None
    cleanup = None
    if prepared.job is not None and result.applied is not None:
        cleanup = catalog.after_event(prepared.job, result.applied, source)
    return _answer(prepared, result, cleanup)


async def ingest_async(catalog: Catalog, event: Any, token: str | None,
                       source: str = "api") -> dict[str, Any]:
    """``ingest`` from an event loop: parsed and prepared in a thread (it reads the store),
    written with the loop's other events (``Store.apply_lineage_async``: one commit for all
    that arrived together, webhook events too), never blocking the loop on the store."""
    if catalog.store.kind == "sqlite":  # its reads are local and short: on the loop
        prepared = _prepare(catalog, event, token, source)
    else:
        prepared = await asyncio.to_thread(_prepare, catalog, event, token, source)
    try:
        result = await catalog.store.apply_lineage_async(prepared.write)
    except CatalogError as exc:
        raise await asyncio.to_thread(_failed, catalog, prepared, exc) from None
    cleanup = None
    if prepared.job is not None and result.applied is not None:
        cleanup = await _after_event(catalog, prepared.job, result.applied, source)
    return _answer(prepared, result, cleanup)


async def _after_event(catalog: Catalog, uuid: str, applied: Applied, source: str) -> str | None:
    """``Catalog.after_event_async``, but on the loop for a SQLite store when the run has ended
    and no job waits on it (nearly always): all that is left is to wake this process's waiters
    and touch the wake file, and handing that to a thread and back cost 0.1-0.2 ms of CPU per
    COMPLETE (measured, bench/openlineage.py), more than the work. OpenLineage events are
    never a ``reset``, the one event whose clean-up touches storage."""
    if (catalog.store.kind == "sqlite" and applied.entry["state"] in ENDED_STATES
            and not applied.duplicate and not catalog.store.dependents(uuid)):
        return catalog.after_event(uuid, applied, source)
    return await catalog.after_event_async(uuid, applied, source)


def _failed(catalog: Catalog, prepared: _Prepared, exc: CatalogError) -> CatalogError:
    """A write refused whole: recorded in the audit log as ``handle_event`` records it."""
    error = gone_or(catalog, exc)
    if prepared.refused is not None:
        catalog.store.append_audit(prepared.refused(error))
    return error


def _answer(prepared: _Prepared, result: LineageApplied, cleanup: str | None) -> dict[str, Any]:
    answer = prepared.answer(result)
    if cleanup is not None:
        answer["cleanup_error"] = cleanup
    return answer


def _prepare(catalog: Catalog, event: Any, token: str | None, source: str) -> _Prepared:
    authenticate(catalog, token)
    # A RunEvent has a run and a type; a JobEvent a job and neither; a DatasetEvent a dataset.
    static = isinstance(event, dict) and not {"run", "eventType"} & event.keys()
    if static and "dataset" in event:
        return _static(catalog, parse_document(DatasetEvent, event, "dataset event"), event)
    if static and "job" in event:
        return _static(catalog, parse_document(JobEvent, event, "job event"), event)
    parsed = parse_document(RunEvent, event, "run event")
    check_facets(parsed)
    try:
        parent_run, root_run = parent_runs(parsed.run.facets)
    except ValueError:
        raise SchemaViolation("run event: the parent facet's runIds must be UUIDs") from None
    namespace, name, run_id = parsed.job.namespace, parsed.job.name, parsed.run.runId
    settings = catalog.settings
    pipeline, _ = _pipeline_of(namespace, name, settings.namespace)
    uuid = run_job_uuid(pipeline, run_id, settings.namespace)
    head = catalog.store.job_head(uuid)  # most runs have one already
    write = LineageWrite({}, uuid=uuid)
    if head is None:  # stored with the event, unless a concurrent event stores it first
        refuse_deleted(catalog, uuid)  # a tombstone stands until purged
        created = utc_now_text()
        # As ManagedPipelineJob and Pipeline would make them (catalog.openlineage_docs).
        write.pipeline = run_pipeline_doc(namespace, name, settings.namespace, created)
        write.job = run_job_doc(
            uuid=uuid, pipeline=pipeline, run_id=run_id, catalog_namespace=settings.namespace,
            archive_root=str(catalog.archive_root), archive_system=settings.archive_system,
            source=source, agent=parsed.producer[:_MAX_AGENT] if parsed.producer else None,
            created=created)
    state = head["state"] if head is not None else INITIAL_STATE
    kind = parsed.eventType or "OTHER"  # the spec reads a missing type as OTHER
    steps: list[LineageStep] = []
    if kind in _IMPLY_START and state == INITIAL_STATE:  # unless a concurrent event moved it
        implied = {"eventType": "START", "impliedBy": kind, "eventTime": parsed.eventTime}
        implied_id = event_id(run_id, f"START/{kind}", parsed.eventTime)
        steps.append(LineageStep(implied_id, _decide(catalog, uuid, "run", implied, implied_id,
                                                     source), only_in=INITIAL_STATE))
    identifier = event_id(run_id, kind, parsed.eventTime)
    event_data = _event_data(parsed, kind)
    document = {"name": EVENTS[kind], "data": event_data, "event_id": identifier}
    decide = _decide(catalog, uuid, EVENTS[kind], event_data, identifier, source)
    if kind == "RUNNING":  # a RUNNING that finds the run CREATED starts it
        starts = _decide(catalog, uuid, "run", event_data, identifier, source)
        updates = decide

        def decide(head: Doc) -> Any:
            return (starts if head["state"] == INITIAL_STATE else updates)(head)

    steps.append(LineageStep(identifier, decide))
    write.steps = steps

    def audit(exc: CatalogError) -> Doc:
        return catalog.audit_entry(uuid, document, source, exc, keep_data=True)

    # Late (EventNotAllowed): kept and linked all the same, the refusal in the audit log.
    write.refused = lambda exc: audit(exc) if isinstance(exc, EventNotAllowed) else None
    inputs, outputs, write.entities, write.links = _lineage(catalog, uuid, parsed)
    if write.job is not None:  # a new job is stored with the datasets it read
        write.job["acted_on"] = [entity["uuid"] for entity in inputs]
    write.record = _record_doc(
        identifier, "run", event, parsed.eventTime, inputs + outputs, event_type=kind,
        run_id=run_id, parent_run_id=parent_run, root_run_id=root_run, job=pipeline,
        job_uuid=uuid, job_namespace=namespace, job_name=name, applied=True,
        inputs=[e["uuid"] for e in inputs], outputs=[e["uuid"] for e in outputs])

    def answer(result: LineageApplied) -> dict[str, Any]:
        # A LineageOutcome's JSON, built from what the store wrote (nothing to validate).
        if result.applied is not None:
            entry = result.applied.entry
            return {"uuid": uuid, "state": entry["state"], "last_event": entry["name"],
                    "event_id": entry["event_id"], "duplicate": result.applied.duplicate,
                    "pipeline_uuid": pipeline, "applied": True}
        assert result.head is not None
        return {"uuid": uuid, "state": result.head["state"],
                "last_event": result.head["last_event"], "event_id": identifier,
                "duplicate": not result.new, "pipeline_uuid": pipeline, "applied": False}

    return _Prepared(write, answer, audit, uuid)


def _static(catalog: Catalog, parsed: JobEvent | DatasetEvent, event: Any) -> _Prepared:
    """A JobEvent or a DatasetEvent: its datasets stored, linked to the pipeline, kept."""
    check_facets(parsed)
    fields: dict[str, Any] = {}
    pipeline: Doc | None = None
    if isinstance(parsed, JobEvent):
        namespace, name = parsed.job.namespace, parsed.job.name
        pipeline = _new_pipeline(catalog, namespace, name).model_dump(mode="json")
        inputs, outputs, stored, links = _lineage(catalog, "", parsed, pipeline["uuid"])
        datasets, kind = inputs + outputs, "job"
        fields = {"job": pipeline["uuid"], "job_namespace": namespace, "job_name": name,
                  "inputs": [e["uuid"] for e in inputs], "outputs": [e["uuid"] for e in outputs]}
    else:
        datasets = _entities(catalog, [parsed.dataset], utc_now_text())
        kind, links, stored = "dataset", [], datasets
    identifier = body_id(kind, event)
    write = LineageWrite(
        _record_doc(identifier, kind, event, parsed.eventTime, datasets, **fields), stored, links,
        pipeline=pipeline)
    return _Prepared(write, lambda result: {
        "kind": kind, "event_id": identifier, "duplicate": not result.new,
        "datasets": [entity["uuid"] for entity in datasets]})
