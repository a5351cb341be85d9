"""Lineage: walk the stored edges up (what this came from) or down (what came from it).

Edges are those of DESIGN §5 (child_of, generated_by, acted_on, acted_using, derived_from,
derived_using), read from the store in both directions through its indexes, one query per
level of the walk: the time is proportional to the answer, not to the catalog. A node is
visited once, so cycles end the walk rather than hang it.
"""

from __future__ import annotations

from typing import Any

from catalog.catalog import Catalog
from catalog.errors import InvalidInput, MalformedIdentifier, NotFound
from catalog.identifiers import UUIDType, parse_uuid, uuid_type
from catalog.store.paging import chunked
from catalog.versions import current_since, version_at

DIRECTIONS = ("up", "down", "both")
FORMATS = ("json", "prov-json", "prov-n")  # the catalog's JSON, W3C PROV-JSON, PROV-N
MAX_DEPTH = 20
DEFAULT_LIMIT = 10_000  # edges in an answer, unless asked for more
MAX_LIMIT = 50_000  # ~125 MB for the JSON answer, ~300 MB for PROV (200,000-file job)
_BATCH = 1000  # file records read at a time
_FILE_FIELDS = ("path", "kind", "status")  # what a file's node shows


def _describe(catalog: Catalog, uuid: str, depth: int,
              records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A node: its uuid, type, distance from the root, and a few fields of its record.

    Records (file fields, job fields with their run's times) come in ``records``, read in
    batches by ``_read_records``; pipelines and entities (few in an answer) are read here.
    """
    kind = uuid_type(uuid)
    node: dict[str, Any] = {"uuid": uuid, "type": kind.name, "depth": depth}
    store = catalog.store
    if kind in (UUIDType.pipelinejob, UUIDType.file):
        node.update(records.get(uuid, {}))
    elif kind is UUIDType.pipeline:
        pipeline = store.get_pipeline(uuid)
        if pipeline is not None:
            node.update(name=pipeline["name"], version=pipeline.get("version"))
    elif kind in (UUIDType.reference, UUIDType.product):
        entity = store.get_entity(uuid)
        if entity is not None:
            node.update(name=entity["name"], uri=entity.get("uri"))
    return node


def _job_fields(catalog: Catalog, uuids: list[str]) -> dict[str, dict[str, Any]]:
    """What the nodes of the jobs of ``uuids`` show, by uuid: one read of their heads and one
    of their runs' events per batch (a deleted job is shown from its tombstone, marked so)."""
    from catalog.openlineage_views import runs_times

    heads = catalog.store.get_jobs(uuids)
    shown: dict[str, dict[str, Any]] = {}
    runs: dict[str, str] = {}
    for uuid in uuids:
        fields: dict[str, Any] = {}
        job = heads.get(uuid)
        if job is None:
            job = catalog.store.get_tombstone(uuid)
            if job is not None:
                fields.update(deleted=job["deleted"]["date"])
        if job is not None:
            fields.update(state=job["state"], pipeline_uuid=job["pipeline_uuid"],
                          archive_path=job["archive_path"])
            run = (job.get("data") or {}).get("openlineage")
            if isinstance(run, dict) and "runId" in run:  # times and parent from its events
                runs[uuid] = run["runId"]
        shown[uuid] = fields
    times = runs_times(catalog, list(runs.values())) if runs else {}
    for uuid, run_id in runs.items():
        shown[uuid].update(run_id=run_id, **times.get(run_id, {}))
    return shown


def _known(catalog: Catalog, uuid: str) -> bool:
    """Whether the catalog knows ``uuid``: a stored record (job, file, pipeline, entity) or
    an edge to or from it (an upstream entity is known by the jobs that name it)."""
    store, kind = catalog.store, uuid_type(uuid)
    if kind is UUIDType.pipelinejob:
        found: Any = store.get_job(uuid, history=False)
    elif kind is UUIDType.file:
        found = store.get_file(uuid)
    elif kind is UUIDType.pipeline:
        found = store.get_pipeline(uuid)
    else:
        found = store.get_entity(uuid)
    return found is not None or any(store.edges([uuid], way, limit=1) for way in ("up", "down"))


def lineage(catalog: Catalog, uuid: str, direction: str = "up", depth: int = 5,
            limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """``{"root", "direction", "depth", "limit", "truncated", "nodes": [...], "edges": [{"from",
    "relation", "to"}]}`` within ``depth``, with at most ``limit`` edges (and so at most
    ``limit`` + 1 nodes). A file that has had several versions shows its ``version`` and
    earlier ``versions``, and an edge to it says which ``version`` its source used.

    A graph with more edges within ``depth`` comes back cut to ``limit`` of them (the store's
    choice of which) and ``truncated`` true: a lower depth, or a walk from one of its nodes,
    sees the rest. Without a bound, what came from a job of a million files would be read,
    held and sent whole for anyone who asked.

    A UUID (or id) the catalog knows nothing about is ``NotFound`` (404), not a graph of one
    node: a typo must not look like a record without lineage.
    """
    if direction not in DIRECTIONS:
        raise InvalidInput(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
    if not isinstance(depth, int) or not 0 <= depth <= MAX_DEPTH:
        raise InvalidInput(f"depth must be between 0 and {MAX_DEPTH}, got {depth!r}")
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}, got {limit!r}")
    try:
        root = parse_uuid(uuid)
    except MalformedIdentifier:
        # An upstream entity by its id string (measurement.lab.42) is a fine root too.
        root = catalog.parse_upstream(uuid)
    if not _known(catalog, root):
        raise NotFound(f"no record {root} in the catalog (nothing has this UUID, and no "
                       "lineage names it)", uuid=root)
    distance = {root: 0}
    edges: dict[tuple[str, str, str], None] = {}  # in the order found
    truncated = False
    for way in ("up", "down") if direction == "both" else (direction,):
        frontier, seen = [root], {root}
        for level in range(1, depth + 1):
            if not frontier or truncated:
                break
            room = limit - len(edges)
            # One edge more than there is room for tells whether the graph goes on.
            found = catalog.store.edges(frontier, way, limit=room + 1)
            fresh = [edge for edge in dict.fromkeys(found) if edge not in edges]
            # Edges found again (both ways) take no room, but may have kept others out.
            if len(fresh) > room or (len(found) > room and len(fresh) < len(found)):
                truncated = True
            following = []
            for src, relation, dst in fresh[:room]:
                edges[(src, relation, dst)] = None
                reached = dst if way == "up" else src
                if reached not in seen:
                    seen.add(reached)
                    following.append(reached)
                    distance[reached] = min(distance.get(reached, level), level)
            frontier = following
    # File records (most of a large answer) are read a batch at a time, and only what a node
    # shows of them is kept: whole records of a large answer would take gigabytes.
    records: dict[str, dict[str, Any]] = {}
    # Files with earlier versions (rare): whoever used them is told which version it was.
    versioned: dict[str, dict[str, Any]] = {}
    for batch in chunked([n for n in distance if n.startswith(UUIDType.file.prefix)], _BATCH):
        for uuid, record in catalog.store.get_files(batch).items():
            records[uuid] = {key: record[key] for key in _FILE_FIELDS}
            if record.get("versions"):
                records[uuid].update(version=record["version"], versions=record["versions"])
                versioned[uuid] = record
    for batch in chunked([n for n in distance if n.startswith(UUIDType.pipelinejob.prefix)],
                         _BATCH):
        records.update(_job_fields(catalog, batch))
    nodes = [_describe(catalog, node, distance[node], records)
             for node in sorted(distance, key=lambda n: (distance[n], n))]
    found_edges: list[dict[str, Any]] = [
        {"from": src, "relation": relation, "to": dst} for src, relation, dst in sorted(edges)]
    for edge in found_edges:
        if edge["to"] in versioned:
            used = _time_of_use(catalog, edge["from"])
            if used is not None:
                edge["version"] = version_at(versioned[edge["to"]], used)
    return {
        "root": root,
        "direction": direction,
        "depth": depth,
        "limit": limit,
        "truncated": truncated,
        "nodes": nodes,
        "edges": found_edges,
    }


def _time_of_use(catalog: Catalog, uuid: str) -> str | None:
    """When ``uuid`` took what it links to: a job when it was created (its inputs are named
    then), a file when its current content was recorded, another entity when created."""
    kind = uuid_type(uuid)
    if kind is UUIDType.pipelinejob:
        job = catalog.store.get_job(uuid, history=False) or catalog.store.get_tombstone(uuid)
        return None if job is None else str(job["created"])
    if kind is UUIDType.file:
        record = catalog.store.get_file(uuid)
        return None if record is None else current_since(record)
    if kind in (UUIDType.reference, UUIDType.product):
        entity = catalog.store.get_entity(uuid)
        return None if entity is None else str(entity["created"])
    return None


def as_text(graph: dict[str, Any]) -> str:
    """One line per node (indented by depth) and per edge, for people."""
    lines = []
    for node in graph["nodes"]:
        label = node.get("path") or node.get("name") or node.get("state") or ""
        lines.append(f"{'  ' * node['depth']}{node['type']} {node['uuid']} {label}".rstrip())
    lines += [f"{e['from']} --{e['relation']}--> {e['to']}" for e in graph["edges"]]
    return "\n".join(lines)
