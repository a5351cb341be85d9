"""Lineage on the hand-built graph of conftest.py (drawn there), with the exact answers up and
down at several depths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from catalog import Catalog
from catalog.errors import InvalidInput


def named(result: dict[str, Any], ids: dict[str, str]) -> tuple[dict[str, int], set[str]]:
    """Nodes as {name: depth} and edges as 'A relation B', in the test's names."""
    names = {uuid: name for name, uuid in ids.items()}
    nodes = {names[n["uuid"]]: n["depth"] for n in result["nodes"]}
    edges = {f"{names[e['from']]} {e['relation']} {names[e['to']]}" for e in result["edges"]}
    return nodes, edges


F3_UP_1 = {"F3 child_of J3", "F3 generated_by J3", "F3 derived_from F1", "F3 derived_from F2"}
F3_UP_2 = F3_UP_1 | {
    "J3 child_of M1", "J3 child_of M2", "J3 generated_by P", "J3 acted_on F1",
    "F1 child_of J1", "F1 generated_by J1", "F2 child_of J2", "F2 generated_by J2",
}
F3_UP_3 = F3_UP_2 | {"J1 child_of M1", "J1 generated_by P", "J2 child_of M2", "J2 generated_by P"}


@pytest.mark.parametrize(("depth", "nodes", "edges"), [
    (0, {"F3": 0}, set()),
    (1, {"F3": 0, "J3": 1, "F1": 1, "F2": 1}, F3_UP_1),
    (2, {"F3": 0, "J3": 1, "F1": 1, "F2": 1, "M1": 2, "M2": 2, "P": 2, "J1": 2, "J2": 2},
     F3_UP_2),
    (3, {"F3": 0, "J3": 1, "F1": 1, "F2": 1, "M1": 2, "M2": 2, "P": 2, "J1": 2, "J2": 2},
     F3_UP_3),
])
def test_up_from_a_derived_file(graph: tuple[Catalog, dict[str, str]], depth: int,
                                nodes: dict[str, int], edges: set[str]) -> None:
    catalog, ids = graph
    assert named(catalog.lineage(ids["F3"], "up", depth), ids) == (nodes, edges)


M1_DOWN_1 = {"J1 child_of M1", "J3 child_of M1"}
M1_DOWN_2 = M1_DOWN_1 | {"F1 child_of J1", "F1 generated_by J1", "F3 child_of J3",
                         "F3 generated_by J3"}
M1_DOWN_3 = M1_DOWN_2 | {"F3 derived_from F1", "J3 acted_on F1"}


@pytest.mark.parametrize(("depth", "nodes", "edges"), [
    (1, {"M1": 0, "J1": 1, "J3": 1}, M1_DOWN_1),
    (2, {"M1": 0, "J1": 1, "J3": 1, "F1": 2, "F3": 2}, M1_DOWN_2),
    (3, {"M1": 0, "J1": 1, "J3": 1, "F1": 2, "F3": 2}, M1_DOWN_3),
])
def test_down_from_a_measurement(graph: tuple[Catalog, dict[str, str]], depth: int,
                                 nodes: dict[str, int], edges: set[str]) -> None:
    catalog, ids = graph
    # by its id string, as a scientist would ask
    assert named(catalog.lineage("measurement.g.1", "down", depth), ids) == (nodes, edges)


def test_both_directions_and_node_details(graph: tuple[Catalog, dict[str, str]]) -> None:
    catalog, ids = graph
    result = catalog.lineage(ids["J3"], "both", 1)
    nodes, edges = named(result, ids)
    assert nodes == {"J3": 0, "M1": 1, "M2": 1, "P": 1, "F1": 1, "F3": 1}
    assert edges == {"J3 child_of M1", "J3 child_of M2", "J3 generated_by P", "J3 acted_on F1",
                     "F3 child_of J3", "F3 generated_by J3"}
    details = {n["uuid"]: n for n in result["nodes"]}
    assert details[ids["J3"]]["type"] == "pipelinejob"
    assert details[ids["J3"]]["state"] == "CREATED"
    assert details[ids["P"]]["name"] == "lineage-test"
    assert details[ids["F1"]]["path"] == "/products/F1.csv"
    assert details[ids["M1"]]["type"] == "measurement"


def test_a_cycle_ends_the_walk(graph: tuple[Catalog, dict[str, str]]) -> None:
    catalog, ids = graph
    catalog.add_links(ids["F1"], "derived_from", [ids["F3"]])  # F1 <-> F3 now
    nodes, edges = named(catalog.lineage(ids["F3"], "up", 20), ids)
    assert nodes["F1"] == 1 and "F1 derived_from F3" in edges
    assert len(nodes) == 9


@pytest.mark.parametrize(("arguments", "message"), [
    (("up", 21), "depth"), (("up", -1), "depth"), (("sideways", 2), "direction"),
])
def test_bad_arguments(graph: tuple[Catalog, dict[str, str]], arguments: tuple[str, int],
                       message: str) -> None:
    catalog, ids = graph
    with pytest.raises(InvalidInput, match=message):
        catalog.lineage(ids["F3"], *arguments)


def test_a_graph_larger_than_the_limit_comes_back_cut_and_marked(
    graph: tuple[Catalog, dict[str, str]]
) -> None:
    catalog, ids = graph
    whole = catalog.lineage(ids["F3"], "up", 2)
    assert (whole["limit"], whole["truncated"], len(whole["edges"])) == (10_000, False, 12)
    assert catalog.lineage(ids["F3"], "up", 2, limit=12)["truncated"] is False  # exactly fits
    for limit in (1, 4, 5, 11):
        cut = catalog.lineage(ids["F3"], "up", 2, limit=limit)
        nodes, edges = named(cut, ids)
        assert (cut["limit"], cut["truncated"], len(edges)) == (limit, True, limit)
        assert edges <= F3_UP_2
        # every node is the root or an end of a kept edge, and every kept edge's ends are nodes
        ends = {name for edge in edges for name in edge.split(" ")[::2]}
        assert set(nodes) == ends | {"F3"}
        assert len(nodes) <= limit + 1
    both = catalog.lineage(ids["J3"], "both", 3, limit=7)
    assert (both["truncated"], len(both["edges"])) == (True, 7)


def test_store_edges_stop_at_their_limit(graph: tuple[Catalog, dict[str, str]]) -> None:
    catalog, ids = graph
    for way, frontier, count in (("up", [ids["F3"], ids["J3"]], 8),
                                 ("down", [ids["J1"], ids["J2"], ids["J3"], ids["F1"]], 8)):
        every = set(catalog.store.edges(frontier, way))
        assert len(every) == count
        for limit in (1, 3, count, count + 5):
            some = catalog.store.edges(frontier, way, limit=limit)
            assert len(some) == min(limit, count) and set(some) <= every


@pytest.mark.parametrize("limit", [0, -1, 50_001, True, 2.5])
def test_a_bad_limit_is_refused(graph: tuple[Catalog, dict[str, str]], limit: Any) -> None:
    catalog, ids = graph
    with pytest.raises(InvalidInput, match="limit must be between 1 and 50000"):
        catalog.lineage(ids["F3"], "up", 1, limit=limit)


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_lineage_over_http(graph: tuple[Catalog, dict[str, str]]) -> None:
    import asyncio

    import httpx

    from catalog.web import create_app

    catalog, ids = graph

    async def get(url: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(catalog))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(url)

    response = asyncio.run(get(f"/lineage/{ids['F3']}?direction=up&depth=1"))
    assert response.status_code == 200
    assert named(response.json(), ids) == ({"F3": 0, "J3": 1, "F1": 1, "F2": 1}, F3_UP_1)
    assert response.headers["catalog-lineage-truncated"] == "false"
    cut = asyncio.run(get(f"/lineage/{ids['F3']}?direction=up&depth=2&limit=3"))
    assert (cut.status_code, cut.json()["truncated"], len(cut.json()["edges"])) == (200, True, 3)
    assert cut.headers["catalog-lineage-truncated"] == "true"
    prov = asyncio.run(get(f"/lineage/{ids['F3']}?depth=2&limit=3&format=prov-n"))
    assert prov.status_code == 200 and prov.headers["catalog-lineage-truncated"] == "true"
    for limit in ("0", "50001", "many"):
        wrong = asyncio.run(get(f"/lineage/{ids['F3']}?limit={limit}"))
        assert (wrong.status_code, wrong.json()["error"]["code"]) == (422, "schema_violation")
    refused = asyncio.run(get(f"/lineage/{ids['F3']}?depth=99"))
    assert (refused.status_code, refused.json()["error"]["code"]) == (422, "schema_violation")
    bad = asyncio.run(get("/lineage/not-an-id"))
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_input")


@pytest.mark.slow
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_lineage_on_the_command_line(graph: tuple[Catalog, dict[str, str]],
                                     tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    catalog, ids = graph
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
    env.update(CATALOG_DB=catalog.settings.db, CATALOG_SECRET=catalog.keys.secret.decode(),
               CATALOG_ADMIN_KEY=catalog.keys.admin_key.decode())
    command = [str(Path(sys.executable).parent / "catalog"), "lineage"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*command, *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=60)

    as_json = cli(ids["F3"], "--depth", "1", "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    assert named(json.loads(as_json.stdout), ids)[1] == F3_UP_1
    as_text = cli("measurement.g.1", "--direction", "down", "--depth", "1")
    assert as_text.returncode == 0
    assert f"{ids['J1']} --child_of--> {ids['M1']}" in as_text.stdout
    assert as_text.stderr == ""
    cut_json = cli(ids["F3"], "--depth", "2", "--limit", "3", "--json")
    cut_graph = json.loads(cut_json.stdout)
    assert (cut_graph["truncated"], len(cut_graph["edges"]), cut_json.stderr) == (True, 3, "")
    cut = cli(ids["F3"], "--depth", "2", "--limit", "3")
    assert cut.returncode == 0  # a line per node and per edge, and a warning
    assert len(cut.stdout.splitlines()) == len(cut_graph["nodes"]) + 3
    assert "warning: more than 3 edges within depth 2: the graph is cut to 3" in cut.stderr
    refused = cli(ids["F3"], "--format", "prov-xml")
    assert refused.returncode == 2 and "format" in refused.stderr
    too_many = cli(ids["F3"], "--limit", "0")
    assert too_many.returncode == 2 and "limit must be between 1 and 50000" in too_many.stderr
