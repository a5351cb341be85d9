"""SVG drawn on the server: the state machine with one state lit, and a lineage graph whose
nodes are links. Generated from ``catalog.states.TRANSITIONS`` and ``catalog.lineage``, so
they cannot drift; no script or external renderer needed."""

from __future__ import annotations

from html import escape
from typing import Any

from catalog.identifiers import UUIDType, uuid_type
from catalog.states import STATES, TRANSITIONS

_COLUMNS = 5
_BOX_W, _BOX_H, _GAP_X, _GAP_Y = 112, 30, 34, 40


def _state_positions() -> dict[str, tuple[int, int]]:
    return {state: (10 + (i % _COLUMNS) * (_BOX_W + _GAP_X),
                    10 + (i // _COLUMNS) * (_BOX_H + _GAP_Y))
            for i, state in enumerate(STATES)}


def state_diagram(current: str) -> str:
    """The job states as boxes joined by their transitions, ``current`` lit."""
    where = _state_positions()
    pairs = sorted({(source, target) for _, sources, target in TRANSITIONS if target
                    for source in sources if source != target})
    rows = (len(STATES) + _COLUMNS - 1) // _COLUMNS
    width = 20 + _COLUMNS * _BOX_W + (_COLUMNS - 1) * _GAP_X
    height = 20 + rows * _BOX_H + (rows - 1) * _GAP_Y
    parts = [f'<svg class="states" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="job states, {escape(current)} lit">',
             '<defs><marker id="arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="6" '
             'markerHeight="6" orient="auto"><path d="M0,0L8,4L0,8z"/></marker></defs>']
    for source, target in pairs:
        (x1, y1), (x2, y2) = where[source], where[target]
        lit = " lit" if source == current else ""
        parts.append(f'<line class="transition{lit}" x1="{x1 + _BOX_W // 2}" '
                     f'y1="{y1 + _BOX_H // 2}" x2="{x2 + _BOX_W // 2}" y2="{y2 + _BOX_H // 2}" '
                     'marker-end="url(#arrow)"/>')
    for state, (x, y) in where.items():
        lit = " current" if state == current else ""
        parts.append(f'<g class="state{lit}" data-state="{state}"><rect x="{x}" y="{y}" '
                     f'width="{_BOX_W}" height="{_BOX_H}" rx="6"/><text x="{x + _BOX_W // 2}" '
                     f'y="{y + 20}" text-anchor="middle">{state}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def node_href(uuid: str) -> str:
    """The page of a record: a job's, a file's, else the search that finds it."""
    try:
        kind = uuid_type(uuid)
    except Exception:  # an upstream id string (measurement.lab.42)
        kind = None
    if kind is UUIDType.pipelinejob:
        return f"/ui/jobs/{uuid}"
    if kind is UUIDType.file:
        return f"/ui/files/{uuid}"
    return f"/ui/records/{escape(uuid)}"


def _label(node: dict[str, Any]) -> str:
    text = (node.get("path") or node.get("name") or node.get("archive_path")
            or node["uuid"])
    text = str(text).rsplit("/", 1)[-1] or str(text)
    return text if len(text) <= 22 else text[:10] + "…" + text[-10:]


def lineage_graph(root: str, up: dict[str, Any], down: dict[str, Any]) -> str:
    """Where ``root`` came from (left) and what came from it (right), a column per step."""
    level: dict[str, int] = {root: 0}
    nodes: dict[str, dict[str, Any]] = {}
    for graph, sign in ((up, -1), (down, 1)):
        for node in graph["nodes"]:
            nodes.setdefault(node["uuid"], node)
            if node["uuid"] != root:
                level.setdefault(node["uuid"], sign * int(node["depth"]))
    columns: dict[int, list[str]] = {}
    for uuid in sorted(level, key=lambda u: (level[u], u)):
        columns.setdefault(level[uuid], []).append(uuid)
    low = min(columns)
    node_w, node_h, gap_x, gap_y = 170, 34, 50, 14
    where = {uuid: (10 + (column - low) * (node_w + gap_x), 10 + row * (node_h + gap_y))
             for column, members in columns.items() for row, uuid in enumerate(members)}
    width = 20 + len(columns) * (node_w + gap_x)
    height = 20 + max(len(m) for m in columns.values()) * (node_h + gap_y)
    parts = [f'<svg class="lineage" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" aria-label="lineage">']
    edges = {(e["from"], e["relation"], e["to"]) for g in (up, down) for e in g["edges"]}
    for src, relation, dst in sorted(edges):
        if src in where and dst in where:
            (x1, y1), (x2, y2) = where[dst], where[src]  # from the upstream to what it made
            parts.append(f'<line class="edge" x1="{x1 + node_w}" y1="{y1 + node_h // 2}" '
                         f'x2="{x2}" y2="{y2 + node_h // 2}"><title>{escape(relation)}</title>'
                         '</line>')
    for uuid, (x, y) in where.items():
        node = nodes.get(uuid, {"uuid": uuid, "type": "record"})
        classes = "node root" if uuid == root else "node"
        state = f" · {escape(str(node['state']))}" if node.get("state") else ""
        parts.append(f'<a class="{classes}" href="{node_href(uuid)}" data-uuid="{escape(uuid)}">'
                     f'<rect x="{x}" y="{y}" width="{node_w}" height="{node_h}" rx="5"/>'
                     f'<text x="{x + 6}" y="{y + 14}">{escape(_label(node))}</text>'
                     f'<text class="kind" x="{x + 6}" y="{y + 28}">'
                     f'{escape(str(node.get("type", "")))}{state}</text>'
                     f'<title>{escape(uuid)}</title></a>')
    parts.append("</svg>")
    return "".join(parts)
