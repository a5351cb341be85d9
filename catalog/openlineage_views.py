"""What the OpenLineage events say, read back: runs with their times, state, parent and
children; datasets with the runs that wrote and read them, their facets and versions.

A run's view is built from its kept events (catalog.openlineage), whatever order they came in:
its state follows the first terminal event received (COMPLETED, FAILED or ABORTED: ABORT and FAIL
stay apart), ``terminal`` lists every terminal event with ``disagreement`` true when they do not
agree; ``startedAt`` is the earliest START (else RUNNING, else any) eventTime and ``endedAt`` the
standing terminal event's. Facets are merged in eventTime order, the later winning; the standard
ones are also read out as fields (``standard``).
"""

from __future__ import annotations

import json
from typing import Any

from catalog.catalog import Catalog
from catalog.errors import EntityNotFound, InvalidInput, RunNotFound
from catalog.identifiers import UUIDType
from catalog.openlineage_events import TERMINAL, normalise, run_id_of

__all__ = ["get_dataset", "get_run", "list_datasets", "run_times", "runs_times"]

STATES = {"COMPLETE": "COMPLETED", "FAIL": "FAILED", "ABORT": "ABORTED"}
_MAX_EVENTS = 1000  # a run's events read back (a run of more keeps the latest)


def _parse_run_id(run_id: str) -> str:
    try:
        return run_id_of(run_id)
    except ValueError:
        raise InvalidInput(f"runId {run_id!r} is not a UUID") from None


def _merged(facet_sets: list[dict[str, Any] | None]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for facets in facet_sets:
        merged.update(facets or {})
    return merged


def _standard(run_facets: dict[str, Any], job_facets: dict[str, Any]) -> dict[str, Any]:
    """The standard facets people ask for, as fields (None when not sent)."""
    error = run_facets.get("errorMessage") or {}
    return {
        "errorMessage": error.get("message"),
        "stackTrace": error.get("stackTrace"),
        "programmingLanguage": error.get("programmingLanguage"),
        "nominalTime": run_facets.get("nominalTime"),
        "sql": (job_facets.get("sql") or {}).get("query"),
        "sourceCodeLocation": job_facets.get("sourceCodeLocation"),
        "sourceCode": job_facets.get("sourceCode"),
        "ownership": job_facets.get("ownership"),
        "documentation": (job_facets.get("documentation") or {}).get("description"),
        "jobType": job_facets.get("jobType"),
    }


def summarise(events: list[dict[str, Any]]) -> dict[str, Any]:
    """A run's state, times and terminal events from its kept events (received order)."""
    terminal = [{"eventType": e["event_type"], "eventTime": e["event_time"],
                 "received": e["received"]} for e in events if e["event_type"] in TERMINAL]
    types = {e["event_type"] for e in events}
    if terminal:
        state = STATES[terminal[0]["eventType"]]
    elif types & {"START", "RUNNING"}:
        state = "RUNNING"
    else:
        state = "NEW"
    starts = next(([e["event_time"] for e in events if e["event_type"] == kind]
                   for kind in ("START", "RUNNING") if kind in types),
                  [e["event_time"] for e in events])
    return {
        "state": state,
        "startedAt": min(starts) if starts else None,
        "endedAt": terminal[0]["eventTime"] if terminal else None,
        "terminal": terminal,
        "disagreement": len({t["eventType"] for t in terminal}) > 1,
    }


def run_times(catalog: Catalog, run_id: str) -> dict[str, Any]:
    """``{"state", "startedAt", "endedAt", "parent"}`` of a run (lineage nodes show them)."""
    return _times(catalog.store.lineage_events(run_id=run_id, limit=_MAX_EVENTS))


def runs_times(catalog: Catalog, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    """``run_times`` of each of ``run_ids``, by run id, from one batched read of their
    events (a lineage answer's jobs, not one query per job)."""
    events = catalog.store.lineage_events_of_runs(run_ids, limit=_MAX_EVENTS)
    return {run_id: _times(events.get(run_id, [])) for run_id in run_ids}


def _times(events: list[dict[str, Any]]) -> dict[str, Any]:
    if not events:
        return {}
    summary = summarise(events)
    parents = [e.get("parent_run_id") for e in events if e.get("parent_run_id")]
    return {"ol_state": summary["state"], "startTime": summary["startedAt"],
            "endTime": summary["endedAt"], "parent_run_id": parents[-1] if parents else None}


def get_run(catalog: Catalog, run_id: str) -> dict[str, Any]:
    """A run as its events describe it (module docstring), with its parent and children."""
    run_id = _parse_run_id(run_id)
    events = catalog.store.lineage_events(run_id=run_id, limit=_MAX_EVENTS)
    if not events:
        raise RunNotFound(f"no OpenLineage run {run_id}")
    bodies = sorted(((e["event_time"], json.loads(e["event"])) for e in events),
                    key=lambda pair: pair[0])
    run_facets = _merged([body["run"].get("facets") for _, body in bodies])
    job_facets = _merged([body["job"].get("facets") for _, body in bodies])
    last = events[-1]
    children = catalog.store.lineage_events(parent_run_id=run_id, limit=_MAX_EVENTS)
    parents = [e.get("parent_run_id") for e in events if e.get("parent_run_id")]
    roots = [e.get("root_run_id") for e in events if e.get("root_run_id")]
    return {
        "runId": run_id,
        "job": {"namespace": last["job_namespace"], "name": last["job_name"]},
        "job_uuid": last["job_uuid"],
        "pipeline_uuid": last["job"],
        "state_in_catalog": catalog.get_job(last["job_uuid"], history=False).state,
        **summarise(events),
        "parent": parents[-1] if parents else None,
        "root": roots[-1] if roots else None,
        "children": list(dict.fromkeys(e["run_id"] for e in children)),
        "inputs": _datasets(catalog, events, "inputs"),
        "outputs": _datasets(catalog, events, "outputs"),
        "facets": {"run": run_facets, "job": job_facets},
        "standard": _standard(run_facets, job_facets),
        "events": [{"eventType": e["event_type"], "eventTime": e["event_time"],
                    "received": e["received"], "applied": e.get("applied", True),
                    "event_id": e["event_id"]} for e in events],
    }


def _datasets(catalog: Catalog, events: list[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    uuids = list(dict.fromkeys(uuid for e in events for uuid in e.get(role, [])))
    found = []
    for uuid in uuids:
        entity = catalog.store.get_entity(uuid)
        if entity is not None:
            found.append({"uuid": uuid, "namespace": entity.get("namespace"),
                          "name": entity["name"], "uri": entity.get("uri")})
    return found


def list_datasets(catalog: Catalog, namespace: str | None = None, limit: int = 100,
                  cursor: str | None = None) -> dict[str, Any]:
    """Datasets (by namespace and name): ``{"datasets": [...], "next"}``."""
    if namespace is not None:
        namespace, _ = normalise(namespace, "x")
    page = catalog.store.find_datasets(namespace, limit, cursor)
    return {"datasets": [_dataset_row(doc) for doc in page.items], "next": page.next}


def _dataset_row(doc: dict[str, Any]) -> dict[str, Any]:
    return {key: doc.get(key) for key in ("uuid", "namespace", "name", "uri", "created")}


def dataset_uuid(catalog: Catalog, namespace: str, name: str) -> str:
    namespace, name = normalise(namespace, name)
    return catalog.typed_uuid(UUIDType.reference, f"{namespace}/{name}")


def get_dataset(catalog: Catalog, namespace: str, name: str,
                versions: int = 100) -> dict[str, Any]:
    """A dataset: the runs that wrote and read it, its facets (latest) and its versions
    (each event that named it, newest last, at most ``versions``)."""
    uuid = dataset_uuid(catalog, namespace, name)
    entity = catalog.store.get_entity(uuid)
    if entity is None:
        raise EntityNotFound(f"no dataset {namespace} {name}")
    readers = [src for src, _, _ in catalog.store.edges([uuid], "down")
               if src[:3] == UUIDType.pipelinejob.prefix]
    events = catalog.store.lineage_events(dataset=uuid, limit=versions)
    history = []
    facets: dict[str, Any] = {}
    for event in sorted(events, key=lambda e: e["event_time"]):
        body = json.loads(event["event"])
        for role in ("inputs", "outputs", "dataset"):
            entries = body.get(role) or []
            for entry in entries if isinstance(entries, list) else [entries]:
                if dataset_uuid(catalog, entry["namespace"], entry["name"]) != uuid:
                    continue
                facets.update(entry.get("facets") or {})
                history.append({"eventTime": event["event_time"], "run_id": event.get("run_id"),
                                "role": role, "eventType": event.get("event_type"),
                                "facets": entry.get("facets") or {},
                                "inputFacets": entry.get("inputFacets"),
                                "outputFacets": entry.get("outputFacets")})
    return {**_dataset_row(entity), "written_by": entity.get("generated_by", []),
            "read_by": list(dict.fromkeys(readers)), "facets": facets, "versions": history}
