"""Marquez's read API over the catalog's graph: ``GET /api/v1/lineage?nodeId=...`` and the
namespace, dataset and run shapes a Marquez client reads (Marquez's ``spec/openapi.yml``).

Marquez draws jobs and datasets (not runs): a node is ``job:<namespace>:<name>`` or
``dataset:<namespace>:<name>``, with ``inEdges`` and ``outEdges`` of ``{"origin",
"destination"}``. The walk goes through the catalog's runs (a run's pipeline is its job) and
takes ``depth`` job-or-dataset steps each way from the node.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from catalog.catalog import Catalog
from catalog.errors import EntityNotFound, InvalidInput, PipelineNotFound
from catalog.identifiers import UUIDType
from catalog.openlineage_views import (
    dataset_uuid,
    get_dataset,
    get_run,
    run_times,
)

__all__ = ["lineage_graph", "marquez_dataset", "marquez_datasets", "marquez_job", "marquez_jobs",
           "marquez_namespace", "marquez_namespaces", "marquez_run", "marquez_runs",
           "parse_node_id"]

MAX_DEPTH = 20
_MAX_NODES = 10_000
_RUN_EVENTS = 1000  # a job's events read for its runs, datasets and facets


def parse_node_id(node_id: str) -> tuple[str, str, str]:
    """``dataset:NS:NAME`` or ``job:NS:NAME`` as (type, namespace, name); the namespace may
    hold ``:`` itself (``s3://bucket``), so the name is what follows the last ``:``."""
    kind, _, rest = node_id.partition(":")
    namespace, _, name = rest.rpartition(":")
    if kind not in ("dataset", "job") or not namespace or not name:
        raise InvalidInput(f"nodeId {node_id!r} is not dataset:<namespace>:<name> or "
                           "job:<namespace>:<name>")
    return kind, namespace, name


class _Graph:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.store = catalog.store
        self.nodes: dict[str, dict[str, Any]] = {}
        self.edges: set[tuple[str, str]] = set()
        self._pipelines: dict[str, dict[str, Any]] = {}

    def job_node(self, pipeline_uuid: str) -> str:
        pipeline = self._pipelines.get(pipeline_uuid)
        if pipeline is None:
            pipeline = self.store.get_pipeline(pipeline_uuid) or {}
            self._pipelines[pipeline_uuid] = pipeline
        component = next((c["openlineage"] for c in pipeline.get("components") or []
                          if isinstance(c, dict) and "openlineage" in c), None)
        namespace, name = ((component["namespace"], component["name"]) if component
                           else ("catalog", pipeline.get("name", pipeline_uuid)))
        node_id = f"job:{namespace}:{name}"
        self.nodes.setdefault(node_id, {"id": node_id, "type": "JOB", "data": {
            "type": "JOB", "id": {"namespace": namespace, "name": name}, "name": name,
            "namespace": namespace, "uuid": pipeline_uuid, "latestRuns": []}})
        return node_id

    def dataset_node(self, uuid: str) -> str | None:
        entity = self.store.get_entity(uuid)
        if entity is None or not entity.get("namespace"):
            return None
        namespace, name = entity["namespace"], entity["name"]
        node_id = f"dataset:{namespace}:{name}"
        self.nodes.setdefault(node_id, {"id": node_id, "type": "DATASET", "data": {
            "type": "DATASET", "id": {"namespace": namespace, "name": name}, "name": name,
            "namespace": namespace, "uuid": uuid, "uri": entity.get("uri")}})
        return node_id

    def run_job(self, run_uuid: str) -> str | None:
        job = self.store.get_job(run_uuid, history=False)
        if job is None:
            return None
        node_id = self.job_node(job["pipeline_uuid"])
        run = (job.get("data") or {}).get("openlineage")
        if isinstance(run, dict) and "runId" in run:
            latest = self.nodes[node_id]["data"]["latestRuns"]
            if len(latest) < 10:
                latest.append({"id": run["runId"], "state": job["state"],
                               **run_times(self.catalog, run["runId"])})
        return node_id


def lineage_graph(catalog: Catalog, node_id: str, depth: int = 20) -> dict[str, Any]:
    """Marquez's ``{"graph": [...]}`` around ``node_id``, ``depth`` steps each way."""
    if not isinstance(depth, int) or not 0 <= depth <= MAX_DEPTH:
        raise InvalidInput(f"depth must be between 0 and {MAX_DEPTH}, got {depth!r}")
    kind, namespace, name = parse_node_id(node_id)
    graph = _Graph(catalog)
    store = catalog.store
    # Frontier items: ("dataset", entity uuid) or ("runs", [run uuids of one job]).
    if kind == "dataset":
        uuid = dataset_uuid(catalog, namespace, name)
        root = graph.dataset_node(uuid)
        if root is None:
            raise EntityNotFound(f"no dataset {namespace} {name}")
        datasets, runs = [uuid], []
    else:
        try:
            pipeline = catalog.get_pipeline(f"{namespace}/{name}").uuid
        except PipelineNotFound:
            raise EntityNotFound(f"no job {namespace} {name}") from None
        root = graph.job_node(pipeline)
        runs = [src for src, _, _ in store.edges([pipeline], "down", limit=_MAX_NODES)
                if src[:3] == UUIDType.pipelinejob.prefix]
        datasets = []
    seen = set(datasets) | set(runs)
    for _ in range(depth * 2 + 1):
        if not datasets and not runs or len(graph.nodes) > _MAX_NODES:
            break
        following_runs: list[str] = []
        following_datasets: list[str] = []
        if datasets:
            for src, relation, dst in store.edges(datasets, "up", limit=_MAX_NODES):
                if relation == "generated_by" and dst[:3] == UUIDType.pipelinejob.prefix:
                    job, data = graph.run_job(dst), graph.dataset_node(src)
                    if job and data:
                        graph.edges.add((job, data))
                    following_runs.append(dst)
            for src, relation, dst in store.edges(datasets, "down", limit=_MAX_NODES):
                if relation == "acted_on" and src[:3] == UUIDType.pipelinejob.prefix:
                    job, data = graph.run_job(src), graph.dataset_node(dst)
                    if job and data:
                        graph.edges.add((data, job))
                    following_runs.append(src)
        if runs:
            for src, relation, dst in store.edges(runs, "up", limit=_MAX_NODES):
                if relation == "acted_on":
                    job, data = graph.run_job(src), graph.dataset_node(dst)
                    if job and data:
                        graph.edges.add((data, job))
                    following_datasets.append(dst)
            for src, relation, dst in store.edges(runs, "down", limit=_MAX_NODES):
                if relation == "generated_by" and src[:3] == UUIDType.reference.prefix:
                    job, data = graph.run_job(dst), graph.dataset_node(src)
                    if job and data:
                        graph.edges.add((job, data))
                    following_datasets.append(src)
        runs = [r for r in dict.fromkeys(following_runs) if r not in seen]
        datasets = [d for d in dict.fromkeys(following_datasets) if d not in seen]
        seen.update(runs, datasets)
    nodes = []
    for node_id_, node in sorted(graph.nodes.items()):
        node["inEdges"] = [{"origin": a, "destination": b} for a, b in sorted(graph.edges)
                           if b == node_id_]
        node["outEdges"] = [{"origin": a, "destination": b} for a, b in sorted(graph.edges)
                            if a == node_id_]
        nodes.append(node)
    return {"graph": nodes, "root": root}


def _marquez_run(run: dict[str, Any]) -> dict[str, Any]:
    """A run view (catalog.openlineage_views.get_run) in Marquez's Run shape."""
    started, ended = run["startedAt"], run["endedAt"]
    duration = None
    if started and ended:
        duration = int((datetime.fromisoformat(ended) - datetime.fromisoformat(started))
                       .total_seconds() * 1000)
    nominal = run["standard"]["nominalTime"] or {}
    return {"id": run["runId"], "createdAt": run["events"][0]["received"],
            "updatedAt": run["events"][-1]["received"],
            "nominalStartTime": nominal.get("nominalStartTime"),
            "nominalEndTime": nominal.get("nominalEndTime"), "state": run["state"],
            "startedAt": started, "endedAt": ended, "durationMs": duration,
            "jobVersion": {"namespace": run["job"]["namespace"], "name": run["job"]["name"]},
            "inputDatasetVersions": [{"datasetVersionId": {"namespace": d["namespace"],
                                                           "name": d["name"]}}
                                     for d in run["inputs"]],
            "outputDatasetVersions": [{"datasetVersionId": {"namespace": d["namespace"],
                                                            "name": d["name"]}}
                                      for d in run["outputs"]],
            "facets": run["facets"]["run"], "parent": run["parent"],
            "terminal": run["terminal"], "disagreement": run["disagreement"]}


def marquez_run(catalog: Catalog, run_id: str) -> dict[str, Any]:
    """``GET /api/v1/jobs/runs/{id}`` (and ``/api/v1/runs/{id}``)."""
    return _marquez_run(get_run(catalog, run_id))


def _pipeline_of(catalog: Catalog, namespace: str, job: str) -> str:
    try:
        return catalog.get_pipeline(f"{namespace}/{job}").uuid
    except PipelineNotFound:
        raise EntityNotFound(f"no job {job!r} in namespace {namespace!r}") from None


def _run_ids(catalog: Catalog, pipeline: str) -> list[str]:
    """The job's runs newest first, among its last ``_RUN_EVENTS`` events."""
    events = catalog.store.lineage_events(job=pipeline, limit=_RUN_EVENTS)
    return list(dict.fromkeys(e["run_id"] for e in reversed(events) if e.get("run_id")))


def marquez_runs(catalog: Catalog, namespace: str, job: str, limit: int = 100,
                 offset: int = 0) -> dict[str, Any]:
    """``GET /api/v1/namespaces/{namespace}/jobs/{job}/runs``: newest first; ``totalCount``
    counts the runs among the job's last 1000 events."""
    run_ids = _run_ids(catalog, _pipeline_of(catalog, namespace, job))
    runs = [_marquez_run(get_run(catalog, run_id)) for run_id in run_ids[offset:offset + limit]]
    return {"totalCount": len(run_ids), "runs": runs}


def _namespace(row: dict[str, Any]) -> dict[str, Any]:
    return {"name": row["name"], "createdAt": row["created"], "updatedAt": row["updated"],
            "ownerName": None, "description": None, "isHidden": False}


def marquez_namespaces(catalog: Catalog, limit: int = 100, offset: int = 0) -> dict[str, Any]:
    """``GET /api/v1/namespaces``: the namespaces of jobs and datasets, by name."""
    rows, total = catalog.store.lineage_namespaces(None, limit, offset)
    return {"totalCount": total, "namespaces": [_namespace(row) for row in rows]}


def marquez_namespace(catalog: Catalog, namespace: str) -> dict[str, Any]:
    """``GET /api/v1/namespaces/{namespace}`` (404 when no job or dataset has it)."""
    rows, _ = catalog.store.lineage_namespaces(namespace, 1, 0)
    if not rows:
        raise EntityNotFound(f"no namespace {namespace!r}")
    return _namespace(rows[0])


def marquez_jobs(catalog: Catalog, namespace: str, limit: int = 100,
                 offset: int = 0) -> dict[str, Any]:
    """``GET /api/v1/namespaces/{namespace}/jobs``: the namespace's jobs by name."""
    marquez_namespace(catalog, namespace)
    pipelines, total = catalog.store.lineage_jobs(namespace, limit, offset)
    return {"totalCount": total, "jobs": [_job(catalog, pipeline) for pipeline in pipelines]}


def marquez_job(catalog: Catalog, namespace: str, job: str) -> dict[str, Any]:
    """``GET /api/v1/namespaces/{namespace}/jobs/{job}``."""
    pipeline = catalog.store.get_pipeline(_pipeline_of(catalog, namespace, job))
    assert pipeline is not None  # just found by name
    return _job(catalog, pipeline)


def _job(catalog: Catalog, pipeline: dict[str, Any]) -> dict[str, Any]:
    """A job's pipeline in Marquez's Job shape: its datasets, facets and latest runs from its
    last ``_RUN_EVENTS`` events."""
    component = pipeline["components"][0]["openlineage"]
    namespace, name = component["namespace"], component["name"]
    events = catalog.store.lineage_events(job=pipeline["uuid"], limit=_RUN_EVENTS)
    datasets: dict[str, list[dict[str, Any]]] = {}
    for role in ("inputs", "outputs"):
        uuids = dict.fromkeys(u for e in events for u in e.get(role) or [])
        entities = (catalog.store.get_entity(uuid) for uuid in uuids)
        datasets[role] = [{"namespace": e["namespace"], "name": e["name"]}
                          for e in entities if e is not None and e.get("namespace")]
    facets: dict[str, Any] = {}
    for event in sorted(events, key=lambda e: e["event_time"]):
        facets.update((json.loads(event["event"]).get("job") or {}).get("facets") or {})
    run_ids = list(dict.fromkeys(e["run_id"] for e in reversed(events) if e.get("run_id")))
    latest = [_marquez_run(get_run(catalog, run_id)) for run_id in run_ids[:10]]
    location = facets.get("sourceCodeLocation") or {}
    documentation = facets.get("documentation") or {}
    return {"id": {"namespace": namespace, "name": name}, "type": "BATCH", "name": name,
            "simpleName": name.rsplit(".", 1)[-1], "parentJobName": None,
            "createdAt": pipeline["created"],
            "updatedAt": events[-1]["received"] if events else pipeline["created"],
            "namespace": namespace, "inputs": datasets["inputs"],
            "outputs": datasets["outputs"], "location": location.get("url"),
            "description": documentation.get("description"), "facets": facets,
            "currentVersion": None, "latestRun": latest[0] if latest else None,
            "latestRuns": latest}


def marquez_datasets(catalog: Catalog, namespace: str, limit: int = 100,
                     offset: int = 0) -> dict[str, Any]:
    """``GET /api/v1/namespaces/{namespace}/datasets``: by name, ``totalCount`` of all."""
    marquez_namespace(catalog, namespace)
    page = catalog.store.find_datasets(namespace, limit, None, offset)
    datasets = [marquez_dataset(catalog, row["namespace"], row["name"]) for row in page.items]
    return {"totalCount": catalog.store.count_datasets(namespace), "datasets": datasets}


def marquez_dataset(catalog: Catalog, namespace: str, name: str) -> dict[str, Any]:
    """``GET /api/v1/namespaces/{namespace}/datasets/{dataset}``."""
    found = get_dataset(catalog, namespace, name, versions=20)
    schema = found["facets"].get("schema") or {}
    versions = found["versions"]
    return {"id": {"namespace": found["namespace"], "name": found["name"]},
            "type": "DB_TABLE", "name": found["name"], "physicalName": found["name"],
            "namespace": found["namespace"], "sourceName": found["namespace"],
            "createdAt": found["created"],
            "updatedAt": versions[-1]["eventTime"] if versions else found["created"],
            "fields": schema.get("fields", []), "facets": found["facets"], "uri": found["uri"],
            "lastModifiedAt": next((v["eventTime"] for v in reversed(versions)
                                    if v["role"] == "outputs"), None)}
