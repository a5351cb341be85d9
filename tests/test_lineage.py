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
    refused = cli(ids["F3"], "--format", "prov-xml")
    assert refused.returncode == 2 and "format" in refused.stderr
