"""Lineage: walk the stored edges up (what this came from) or down (what came from it).

Edges are those of DESIGN §5 (child_of, generated_by, acted_on, acted_using, derived_from,
derived_using), read from the store in both directions through its indexes, one query per
level of the walk: the time is proportional to the answer, not to the catalog. A node is
visited once, so cycles end the walk rather than hang it.
"""

from __future__ import annotations

from typing import Any

from catalog.catalog import Catalog
from catalog.errors import InvalidInput, MalformedIdentifier
from catalog.identifiers import UUIDType, parse_uuid, uuid_type

DIRECTIONS = ("up", "down", "both")
MAX_DEPTH = 20


def _describe(catalog: Catalog, uuid: str, depth: int,
              files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A node: its uuid, type, distance from the root, and a few fields of its record.

    File records (most of the nodes of a large answer) come in ``files``, read in one query.
    """
    kind = uuid_type(uuid)
    node: dict[str, Any] = {"uuid": uuid, "type": kind.name, "depth": depth}
    store = catalog.store
    if kind is UUIDType.pipelinejob:
        job = store.get_job(uuid, history=False)
        if job is not None:
            node.update(state=job["state"], pipeline_uuid=job["pipeline_uuid"],
                        archive_path=job["archive_path"])
    elif kind is UUIDType.file:
        record = files.get(uuid)
        if record is not None:
            node.update(path=record["path"], kind=record["kind"], status=record["status"])
    elif kind is UUIDType.pipeline:
        pipeline = store.get_pipeline(uuid)
        if pipeline is not None:
            node.update(name=pipeline["name"], version=pipeline.get("version"))
    elif kind in (UUIDType.reference, UUIDType.product):
        entity = store.get_entity(uuid)
        if entity is not None:
            node.update(name=entity["name"], uri=entity.get("uri"))
    return node


def lineage(catalog: Catalog, uuid: str, direction: str = "up", depth: int = 5) -> dict[str, Any]:
    """``{"root", "nodes": [...], "edges": [{"from", "relation", "to"}]}`` within ``depth``."""
    if direction not in DIRECTIONS:
        raise InvalidInput(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
    if not isinstance(depth, int) or not 0 <= depth <= MAX_DEPTH:
        raise InvalidInput(f"depth must be between 0 and {MAX_DEPTH}, got {depth!r}")
    try:
        root = parse_uuid(uuid)
    except MalformedIdentifier:
        # An upstream entity by its id string (measurement.lab.42) is a fine root too.
        root = catalog.parse_upstream(uuid)
    distance = {root: 0}
    edges: set[tuple[str, str, str]] = set()
    for way in ("up", "down") if direction == "both" else (direction,):
        frontier, seen = [root], {root}
        for level in range(1, depth + 1):
            if not frontier:
                break
            following = []
            for src, relation, dst in catalog.store.edges(frontier, way):
                edges.add((src, relation, dst))
                reached = dst if way == "up" else src
                if reached not in seen:
                    seen.add(reached)
                    following.append(reached)
                    distance[reached] = min(distance.get(reached, level), level)
            frontier = following
    files = catalog.store.get_files(
        [node for node in distance if node.startswith(UUIDType.file.prefix)])
    nodes = [_describe(catalog, node, distance[node], files)
             for node in sorted(distance, key=lambda n: (distance[n], n))]
    return {
        "root": root,
        "direction": direction,
        "depth": depth,
        "nodes": nodes,
        "edges": [{"from": src, "relation": relation, "to": dst}
                  for src, relation, dst in sorted(edges)],
    }


def as_text(graph: dict[str, Any]) -> str:
    """One line per node (indented by depth) and per edge, for people."""
    lines = []
    for node in graph["nodes"]:
        label = node.get("path") or node.get("name") or node.get("state") or ""
        lines.append(f"{'  ' * node['depth']}{node['type']} {node['uuid']} {label}".rstrip())
    lines += [f"{e['from']} --{e['relation']}--> {e['to']}" for e in graph["edges"]]
    return "\n".join(lines)
