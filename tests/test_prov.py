"""W3C PROV export of lineage graphs: exact relations read back from PROV-JSON, PROV-N text,
determinism, every edge accounted for, and the CLI and HTTP formats.

The store-backed tests use conftest.py's ``graph`` (drawn there); ``referenced_graph`` adds a
reference R that J3 used as a parameter (acted_using) and F3 was derived using.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prov.constants import PROV_N_MAP, PROV_ROLE, PROV_TYPE
from prov.model import ProvDocument, ProvElement, ProvRelation

from catalog import Catalog
from catalog.cli import main
from catalog.identifiers import UUIDType, typed_uuid
from catalog.models import Entity, utc_now
from catalog.prov import as_prov_json, as_prov_n, to_prov
from catalog.web import create_app

Graph = tuple[Catalog, dict[str, str]]
Relation = tuple[str, str, str, str]  # (PROV-N keyword, subject, object, role or type)

# lineage(F3, up, 3) of the conftest graph, as PROV relations in the test's names.
F3_UP_3 = {
    ("wasGeneratedBy", "F3", "J3", ""),  # child_of and generated_by: one generation
    ("wasDerivedFrom", "F3", "F1", ""),
    ("wasDerivedFrom", "F3", "F2", ""),
    ("used", "J3", "M1", "catalog:child_of"),
    ("used", "J3", "M2", "catalog:child_of"),
    ("used", "J3", "F1", "catalog:input"),
    ("wasAssociatedWith", "J3", "P", ""),
    ("wasGeneratedBy", "F1", "J1", ""),
    ("wasGeneratedBy", "F2", "J2", ""),
    ("used", "J1", "M1", "catalog:child_of"),
    ("used", "J2", "M2", "catalog:child_of"),
    ("wasAssociatedWith", "J1", "P", ""),
    ("wasAssociatedWith", "J2", "P", ""),
    ("wasInformedBy", "J3", "J1", ""),  # J3 used F1, which J1 generated
}
F3_UP_3_WITH_REFERENCE = F3_UP_3 | {
    ("used", "J3", "R", "catalog:parameter"),
    ("wasDerivedFrom", "F3", "R", "catalog:derived_using"),
}
# lineage(measurement.g.1, down, 3): J2, F2 and the pipeline are not reached.
M1_DOWN_3 = {
    ("used", "J1", "M1", "catalog:child_of"),
    ("used", "J3", "M1", "catalog:child_of"),
    ("wasGeneratedBy", "F1", "J1", ""),
    ("wasGeneratedBy", "F3", "J3", ""),
    ("wasDerivedFrom", "F3", "F1", ""),
    ("used", "J3", "F1", "catalog:input"),
    ("wasInformedBy", "J3", "J1", ""),
}


@pytest.fixture
def referenced_graph(graph: Graph) -> Iterator[Graph]:
    """The conftest graph plus reference R: J3 acted_using R, F3 derived_using R."""
    catalog, ids = graph
    ids = {**ids, "R": typed_uuid(UUIDType.reference, "calibration")}
    catalog.add_entities([Entity(uuid=ids["R"], kind="reference", name="calibration",
                                 uri="file://refs/calibration.fits", created=utc_now())])
    catalog.add_links(ids["J3"], "acted_using", [ids["R"]])
    catalog.add_links(ids["F3"], "derived_using", [ids["R"]])
    yield catalog, ids


def read_back(content: str) -> ProvDocument:
    return ProvDocument.deserialize(content=content, format="json")


def relations(doc: ProvDocument, ids: dict[str, str]) -> set[Relation]:
    """Every relation of ``doc`` as (keyword, subject, object, its prov:role or prov:type)."""
    names = {uuid: name for name, uuid in ids.items()}
    found = set()
    for record in doc.get_records(ProvRelation):
        (_, subject), (_, obj) = record.formal_attributes[:2]
        extra = list(record.extra_attributes)
        assert {key for key, _ in extra} <= {PROV_ROLE, PROV_TYPE}, extra
        qualifier = ",".join(sorted(str(value) for _, value in extra))
        found.add((PROV_N_MAP[record.get_type()], names[subject.localpart],
                   names[obj.localpart], qualifier))
    return found


def elements(doc: ProvDocument, ids: dict[str, str]) -> dict[str, tuple[str, dict[str, list[str]]]]:
    """Every element of ``doc`` by name: its keyword and its attributes (values sorted)."""
    names = {uuid: name for name, uuid in ids.items()}
    found = {}
    for record in doc.get_records(ProvElement):
        attributes: dict[str, list[str]] = {}
        for key, value in record.attributes:
            attributes.setdefault(str(key), []).append(str(value))
        found[names[record.identifier.localpart]] = (
            PROV_N_MAP[record.get_type()], {key: sorted(v) for key, v in attributes.items()})
    return found


def named_prov(graph: dict[str, Any], ids: dict[str, str]) -> set[Relation]:
    return relations(read_back(as_prov_json(graph)), ids)


# -- the conftest graph, exactly -------------------------------------------------------------


def test_up_from_a_derived_file(graph: Graph) -> None:
    catalog, ids = graph
    assert named_prov(catalog.lineage(ids["F3"], "up", 3), ids) == F3_UP_3


def test_down_from_a_measurement(graph: Graph) -> None:
    catalog, ids = graph
    assert named_prov(catalog.lineage("measurement.g.1", "down", 3), ids) == M1_DOWN_3


def test_a_reference_used_as_a_parameter(referenced_graph: Graph) -> None:
    catalog, ids = referenced_graph
    graph = catalog.lineage(ids["F3"], "up", 3)
    assert named_prov(graph, ids) == F3_UP_3_WITH_REFERENCE


def test_records_and_their_attributes(referenced_graph: Graph) -> None:
    catalog, ids = referenced_graph
    found = elements(to_prov(catalog.lineage(ids["F3"], "up", 3)), ids)
    assert {name: keyword for name, (keyword, _) in found.items()} == {
        "P": "agent", "J1": "activity", "J2": "activity", "J3": "activity",
        "F1": "entity", "F2": "entity", "F3": "entity", "M1": "entity", "M2": "entity",
        "R": "entity",
    }
    assert found["P"][1] == {
        "prov:type": ["catalog:pipeline", "prov:SoftwareAgent"],
        "prov:label": ["lineage-test"], "catalog:name": ["lineage-test"],
        "catalog:version": ["1"],
    }
    assert found["J3"][1] == {
        "prov:type": ["catalog:pipelinejob"], "catalog:state": ["CREATED"],
        "catalog:pipeline_uuid": [ids["P"]],
        "catalog:archive_path": [catalog.get_job(ids["J3"]).archive_path],
    }
    assert found["F1"][1] == {
        "prov:type": ["catalog:file"], "prov:label": ["/products/F1.csv"],
        "catalog:path": ["/products/F1.csv"], "catalog:kind": ["product"],
        "catalog:status": ["unchecked"],
    }
    assert found["R"][1] == {
        "prov:type": ["catalog:reference"], "prov:label": ["calibration"],
        "catalog:name": ["calibration"], "catalog:uri": ["file://refs/calibration.fits"],
    }
    assert found["M1"][1] == {"prov:type": ["catalog:measurement"]}  # no record: type only


def test_prov_n_statements(referenced_graph: Graph) -> None:
    catalog, ids = referenced_graph
    text = as_prov_n(catalog.lineage(ids["F3"], "up", 1))
    lines = [line.strip() for line in text.splitlines()]
    c = {name: f"catalog:{uuid}" for name, uuid in ids.items()}
    assert (lines[0], lines[1], lines[-1]) == ("document", "prefix catalog <urn:catalog:>",
                                               "endDocument")
    expected = [
        f"wasDerivedFrom({c['F3']}, {c['F1']}, -, -, -)",
        f"wasDerivedFrom({c['F3']}, {c['F2']}, -, -, -)",
        f"wasDerivedFrom({c['F3']}, {c['R']}, -, -, -, [prov:type='catalog:derived_using'])",
        f"wasGeneratedBy({c['F3']}, {c['J3']}, -)",
        f'entity({c["F3"]}, [prov:type=\'catalog:file\', prov:label="/products/F3.csv", '
        f'catalog:kind="product", catalog:path="/products/F3.csv", catalog:status="unchecked"])',
    ]
    assert [line for line in expected if line not in lines] == []
    assert sum(line.startswith("wasGeneratedBy(") for line in lines) == 1


def test_the_same_graph_gives_the_same_text(referenced_graph: Graph) -> None:
    catalog, ids = referenced_graph
    graph = catalog.lineage(ids["J3"], "both", 3)
    shuffled = {**graph, "nodes": graph["nodes"][::-1], "edges": graph["edges"][::-1]}
    assert as_prov_json(graph) == as_prov_json(catalog.lineage(ids["J3"], "both", 3))
    assert as_prov_json(graph) == as_prov_json(shuffled)
    assert as_prov_n(graph) == as_prov_n(shuffled)


@pytest.mark.parametrize(("root", "direction", "depth"), [
    ("F3", "up", 1), ("F3", "up", 2), ("F3", "up", 3), ("M1", "down", 3), ("J3", "both", 2),
    ("P", "down", 2), ("R", "down", 2),
])
def test_every_edge_is_in_the_document(referenced_graph: Graph, root: str, direction: str,
                                       depth: int) -> None:
    catalog, ids = referenced_graph
    graph = catalog.lineage(ids[root], direction, depth)
    names = {uuid: name for name, uuid in ids.items()}
    found = named_prov(graph, ids)
    pairs = {(subject, obj) for _, subject, obj, _ in found}
    edges = {(names[e["from"]], names[e["to"]]) for e in graph["edges"]}
    assert graph["edges"] and edges <= pairs
    # nothing invented: every relation is an edge's, or wasInformedBy between two jobs
    assert {r for r in found if (r[1], r[2]) not in edges} == {
        r for r in found if r[0] == "wasInformedBy" and (r[1], r[2]) not in edges}


# -- one edge at a time, records missing, types unknown ----------------------------------------


def two_node_graph(source: str, relation: str, target: str) -> tuple[dict[str, Any],
                                                                     dict[str, str]]:
    """A graph of one edge between records that are missing (uuid, type and depth only)."""
    ids = {"A": typed_uuid(UUIDType[source], "a"), "B": typed_uuid(UUIDType[target], "b")}
    graph = {"root": ids["A"], "direction": "up", "depth": 1,
             "nodes": [{"uuid": ids["A"], "type": source, "depth": 0},
                       {"uuid": ids["B"], "type": target, "depth": 1}],
             "edges": [{"from": ids["A"], "relation": relation, "to": ids["B"]}]}
    return graph, ids


@pytest.mark.parametrize(("source", "relation", "target", "expected"), [
    ("pipelinejob", "child_of", "measurement", ("used", "catalog:child_of")),
    ("pipelinejob", "child_of", "sample", ("used", "catalog:child_of")),
    ("pipelinejob", "child_of", "experiment", ("used", "catalog:child_of")),
    ("pipelinejob", "child_of", "observation", ("used", "catalog:child_of")),
    ("pipelinejob", "acted_on", "file", ("used", "catalog:input")),
    ("pipelinejob", "acted_on", "reference", ("used", "catalog:input")),
    ("pipelinejob", "acted_using", "file", ("used", "catalog:parameter")),
    ("pipelinejob", "acted_using", "reference", ("used", "catalog:parameter")),
    ("pipelinejob", "generated_by", "pipeline", ("wasAssociatedWith", "")),
    ("file", "generated_by", "pipelinejob", ("wasGeneratedBy", "")),
    ("file", "child_of", "pipelinejob", ("wasGeneratedBy", "")),
    ("product", "generated_by", "pipelinejob", ("wasGeneratedBy", "")),
    ("file", "derived_from", "file", ("wasDerivedFrom", "")),
    ("product", "derived_from", "file", ("wasDerivedFrom", "")),
    ("file", "derived_using", "reference", ("wasDerivedFrom", "catalog:derived_using")),
    ("sample", "derived_using", "file", ("wasDerivedFrom", "catalog:derived_using")),
    # edges between types DESIGN does not pair: wasInfluencedBy, typed by the relation
    ("pipelinejob", "child_of", "pipelinejob", ("wasInfluencedBy", "catalog:child_of")),
    ("file", "generated_by", "pipeline", ("wasInfluencedBy", "catalog:generated_by")),
    ("pipeline", "derived_from", "file", ("wasInfluencedBy", "catalog:derived_from")),
    ("file", "acted_on", "file", ("wasInfluencedBy", "catalog:acted_on")),
    ("pipelinejob", "wrote", "file", ("wasInfluencedBy", "catalog:wrote")),
    ("process", "child_of", "fixity", ("wasInfluencedBy", "catalog:child_of")),
])
def test_each_relation(source: str, relation: str, target: str,
                       expected: tuple[str, str]) -> None:
    graph, ids = two_node_graph(source, relation, target)
    keyword, qualifier = expected
    assert named_prov(graph, ids) == {(keyword, "A", "B", qualifier)}


def test_edge_ends_without_nodes_and_informed_jobs() -> None:
    """Edge ends missing from ``nodes`` get a record of their UUID's type (or generic);
    job J2 is informed by J1 through F, and a job that used its own output by nothing."""
    ids = {"J1": typed_uuid(UUIDType.pipelinejob, "1"),
           "J2": typed_uuid(UUIDType.pipelinejob, "2"),
           "F": typed_uuid(UUIDType.file, "f"), "G": typed_uuid(UUIDType.file, "g"),
           "X": "not-a-catalog-uuid"}
    edges = [("F", "child_of", "J1"), ("J2", "acted_using", "F"), ("G", "generated_by", "J2"),
             ("J2", "acted_on", "G"), ("G", "derived_from", "X")]
    graph = {"root": ids["J2"], "direction": "both", "depth": 2,
             "nodes": [{"uuid": ids["J2"], "type": "pipelinejob", "depth": 0}],
             "edges": [{"from": ids[a], "relation": r, "to": ids[b]} for a, r, b in edges]}
    doc = read_back(as_prov_json(graph))
    assert relations(doc, ids) == {
        ("wasGeneratedBy", "F", "J1", ""), ("used", "J2", "F", "catalog:parameter"),
        ("wasGeneratedBy", "G", "J2", ""), ("used", "J2", "G", "catalog:input"),
        ("wasDerivedFrom", "G", "X", ""), ("wasInformedBy", "J2", "J1", ""),
    }
    assert {name: (keyword, attributes["prov:type"])
            for name, (keyword, attributes) in elements(doc, ids).items()} == {
        "J1": ("activity", ["catalog:pipelinejob"]), "J2": ("activity", ["catalog:pipelinejob"]),
        "F": ("entity", ["catalog:file"]), "G": ("entity", ["catalog:file"]),
        "X": ("entity", ["catalog:generic"]),
    }


def test_an_empty_graph() -> None:
    root = typed_uuid(UUIDType.file, "alone")
    graph = {"root": root, "direction": "up", "depth": 0,
             "nodes": [{"uuid": root, "type": "file", "depth": 0}], "edges": []}
    assert as_prov_n(graph) == (
        "document\n  prefix catalog <urn:catalog:>\n  \n"
        f"  entity(catalog:{root}, [prov:type='catalog:file'])\nendDocument")


# -- command line and HTTP ---------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``catalog <args>`` through the console entry point, in process: (exit code, out, err)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cli_graph(referenced_graph: Graph, monkeypatch: pytest.MonkeyPatch) -> Graph:
    """The referenced graph, with ``CATALOG_DB`` naming its catalog for the CLI."""
    catalog, ids = referenced_graph
    for name in [name for name in os.environ if name.startswith("CATALOG_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CATALOG_DB", catalog.settings.db)
    return catalog, ids


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_cli_prov_json(cli_graph: Graph, capsys: pytest.CaptureFixture[str],
                       json_flag: list[str]) -> None:
    catalog, ids = cli_graph
    code, out, err = run_cli(capsys, "lineage", ids["F3"], "--depth", "3",
                             "--format", "prov-json", *json_flag)
    assert (code, err) == (0, "")
    assert out.endswith("\n") and out.count("\n") == 1  # exactly one JSON document
    json.loads(out)
    assert out == as_prov_json(catalog.lineage(ids["F3"], "up", 3)) + "\n"
    assert relations(read_back(out), ids) == F3_UP_3_WITH_REFERENCE


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_cli_prov_n(cli_graph: Graph, capsys: pytest.CaptureFixture[str]) -> None:
    catalog, ids = cli_graph
    code, out, err = run_cli(capsys, "lineage", "measurement.g.1", "--direction", "down",
                             "--depth", "3", "--format", "prov-n")
    assert (code, err) == (0, "")
    assert out == as_prov_n(catalog.lineage(ids["M1"], "down", 3)) + "\n"
    assert f"used(catalog:{ids['J3']}, catalog:{ids['F1']}, -, [prov:role='catalog:input'])" \
        in out


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("format_", ["prov-xml", "PROV-N", ""])
def test_cli_refuses_a_bad_format(cli_graph: Graph, capsys: pytest.CaptureFixture[str],
                                  format_: str) -> None:
    _, ids = cli_graph
    message = f"format must be one of json, text, prov-json, prov-n, not {format_!r}"
    code, out, err = run_cli(capsys, "--json", "lineage", ids["F3"], "--format", format_)
    assert (code, out) == (2, "")
    assert json.loads(err) == {"error": {"code": "invalid_input", "message": message}}
    code, out, err = run_cli(capsys, "lineage", ids["F3"], "--format", format_)
    assert (code, out) == (2, "")
    assert " ".join(err.split()) == f"error: {message}"


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("args", [
    ["--json", "lineage", "F3", "--format", "prov-n"],
    ["lineage", "F3", "--format", "prov-n", "--json"],
])
def test_cli_prov_n_is_not_one_json_document(cli_graph: Graph,
                                             capsys: pytest.CaptureFixture[str],
                                             args: list[str]) -> None:
    _, ids = cli_graph
    code, out, err = run_cli(capsys, *[ids.get(arg, arg) for arg in args])
    assert (code, out) == (2, "")
    assert json.loads(err) == {"error": {
        "code": "invalid_input",
        "message": "--json and --format prov-n exclude each other; use prov-json"}}


def get(catalog: Catalog, url: str) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(catalog))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(url)

    return asyncio.run(send())


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("format_", "media_type"), [
    ("json", "application/json"),
    ("prov-json", "application/json"),
    ("prov-n", "text/provenance-notation; charset=utf-8"),
])
def test_http_formats(referenced_graph: Graph, format_: str, media_type: str) -> None:
    catalog, ids = referenced_graph
    response = get(catalog, f"/lineage/{ids['F3']}?depth=3&format={format_}")
    graph = catalog.lineage(ids["F3"], "up", 3)
    assert (response.status_code, response.headers["content-type"]) == (200, media_type)
    if format_ == "json":
        assert response.json() == graph
    elif format_ == "prov-json":
        assert response.text == as_prov_json(graph)
        assert relations(read_back(response.text), ids) == F3_UP_3_WITH_REFERENCE
    else:
        assert response.text == as_prov_n(graph)


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("format_", ["text", "prov-xml", ""])
def test_http_refuses_a_bad_format(graph: Graph, format_: str) -> None:
    catalog, ids = graph
    response = get(catalog, f"/lineage/{ids['F3']}?format={format_}")
    assert (response.status_code, response.json()) == (400, {"error": {
        "code": "invalid_input",
        "message": f"format must be one of json, prov-json, prov-n, not {format_!r}"}})
