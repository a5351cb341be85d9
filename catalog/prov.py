"""W3C PROV export of lineage graphs (PROV-JSON, PROV-N), so that PROV tools can read them.

Records (identifiers ``catalog:<uuid>`` in the namespace ``urn:catalog:``; each has
``prov:type catalog:<type>``, its fields as ``catalog:`` attributes and its path or name as
``prov:label``)::

    job                                  prov:Activity
    pipeline                             prov:Agent, also prov:type prov:SoftwareAgent
    every other type                     prov:Entity (files, upstream entities, references,
                                         products; unknown types too)

Edges of DESIGN §5, each in the document in some form::

    job child_of X                       used(job, X, [prov:role='catalog:child_of'])
    job acted_on X                       used(job, X, [prov:role='catalog:input'])
    job acted_using X                    used(job, X, [prov:role='catalog:parameter'])
    job generated_by pipeline            wasAssociatedWith(job, pipeline)
    X generated_by job, X child_of job   wasGeneratedBy(X, job), once for both
    X derived_from Y                     wasDerivedFrom(X, Y)
    X derived_using Y                    wasDerivedFrom(X, Y, [prov:type='catalog:derived_using'])
    any other edge                       wasInfluencedBy(src, dst, [prov:type='catalog:<edge>'])

and ``wasInformedBy(job2, job1)`` wherever job2 used an entity that job1 generated (PROV-DM's
communication inference, written out for consumers that do not infer).

Why so: a pipeline is only an agent, not also a ``prov:Plan``, because the catalog has no recipe
record apart from the pipeline itself and a second record for one thing would only confuse.
``derived_using`` is a typed derivation rather than ``wasInfluencedBy`` because the product was
made from the reference as much as from its inputs: a consumer walking ``wasDerivedFrom``
reaches calibration files too, and the ``prov:type`` still tells them apart from inputs.

Nodes and edges are added in sorted order, so one graph always serialises to the same text
(the anonymous relation ids ``_:idN`` included).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from prov.constants import PROV, PROV_LABEL, PROV_ROLE, PROV_TYPE
from prov.identifier import Namespace, QualifiedName
from prov.model import ProvDocument

from catalog.errors import MalformedIdentifier
from catalog.identifiers import UUIDType, canonical_json, uuid_type

NAMESPACE_PREFIX = "catalog"
NAMESPACE_URI = "urn:catalog:"

_ACTIVITY, _AGENT, _ENTITY = "activity", "agent", "entity"
# Roles of the usages a job's edges become: (relation, role).
# A job node's times (an OpenLineage run's eventTimes): prov:startTime and prov:endTime.
_TIMES = ("startTime", "endTime")
_USAGE_ROLES = {"child_of": "child_of", "acted_on": "input", "acted_using": "parameter"}


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _record_class(kind: str) -> str:
    if kind == UUIDType.pipelinejob.name:
        return _ACTIVITY
    if kind == UUIDType.pipeline.name:
        return _AGENT
    return _ENTITY


def _kind_of(uuid: str) -> str:
    """The type of a UUID that has no node in the graph (not expected, but not fatal)."""
    try:
        return uuid_type(uuid).name
    except MalformedIdentifier:
        return UUIDType.generic.name


def _attribute(value: Any) -> Any:
    """A PROV attribute value: scalars as they are, anything else as canonical JSON text."""
    return value if isinstance(value, str | int | float | bool) else canonical_json(value)


def _add_node(doc: ProvDocument, catalog: Namespace, node: dict[str, Any], kind: str) -> None:
    attributes: list[tuple[QualifiedName, Any]] = []
    if kind == UUIDType.pipeline.name:
        attributes.append((PROV_TYPE, PROV["SoftwareAgent"]))
    attributes.append((PROV_TYPE, catalog[kind]))
    label = node.get("path") or node.get("name")
    if label:
        attributes.append((PROV_LABEL, str(label)))
    attributes += [(catalog[key], _attribute(node[key])) for key in sorted(node)
                   if key not in ("uuid", "type", "depth", *_TIMES) and node[key] is not None]
    identifier = catalog[str(node["uuid"])]
    record_class = _record_class(kind)
    if record_class == _ACTIVITY:
        start, end = (_time(node.get(key)) for key in _TIMES)
        doc.activity(identifier, start, end, other_attributes=attributes)
    elif record_class == _AGENT:
        doc.agent(identifier, attributes)
    else:
        doc.entity(identifier, attributes)


def to_prov(graph: dict[str, Any]) -> ProvDocument:
    """The PROV document of a ``Catalog.lineage`` answer (mapping in the module docstring)."""
    doc = ProvDocument()
    catalog = doc.add_namespace(NAMESPACE_PREFIX, NAMESPACE_URI)
    nodes = {str(node["uuid"]): node for node in graph["nodes"]}
    edges = sorted((str(e["from"]), str(e["relation"]), str(e["to"])) for e in graph["edges"])
    # The version of a file an edge's source used, where the file has had several.
    versions = {(str(e["from"]), str(e["relation"]), str(e["to"])): e["version"]
                for e in graph["edges"] if "version" in e}
    for src, _, dst in edges:
        for uuid in (src, dst):
            nodes.setdefault(uuid, {"uuid": uuid})
    kinds = {uuid: str(node.get("type") or _kind_of(uuid)) for uuid, node in nodes.items()}
    for uuid in sorted(nodes):
        _add_node(doc, catalog, nodes[uuid], kinds[uuid])

    generated: set[tuple[str, str]] = set()  # (entity, job)
    used: set[tuple[str, str]] = set()  # (job, entity)
    for src, relation, dst in edges:
        classes = (_record_class(kinds[src]), _record_class(kinds[dst]))
        if relation in _USAGE_ROLES and classes == (_ACTIVITY, _ENTITY):
            attributes: dict[QualifiedName, Any] = {PROV_ROLE: catalog[_USAGE_ROLES[relation]]}
            if (src, relation, dst) in versions:
                attributes[catalog["version"]] = versions[(src, relation, dst)]
            doc.used(catalog[src], catalog[dst], other_attributes=attributes)
            used.add((src, dst))
        elif relation == "generated_by" and classes == (_ACTIVITY, _AGENT):
            doc.wasAssociatedWith(catalog[src], catalog[dst])
        elif relation in ("generated_by", "child_of") and classes == (_ENTITY, _ACTIVITY):
            if (src, dst) not in generated:
                doc.wasGeneratedBy(catalog[src], catalog[dst])
                generated.add((src, dst))
        elif relation == "derived_from" and classes == (_ENTITY, _ENTITY):
            doc.wasDerivedFrom(catalog[src], catalog[dst])
        elif relation == "derived_using" and classes == (_ENTITY, _ENTITY):
            doc.wasDerivedFrom(catalog[src], catalog[dst],
                               other_attributes={PROV_TYPE: catalog[relation]})
        else:
            doc.wasInfluencedBy(catalog[src], catalog[dst],
                                other_attributes={PROV_TYPE: catalog[relation]})
    informed = sorted({(job, maker) for job, entity in used for made, maker in generated
                       if made == entity and maker != job})
    for job, maker in informed:
        doc.wasInformedBy(catalog[job], catalog[maker])
    return doc


def as_prov_json(graph: dict[str, Any]) -> str:
    """The graph as one PROV-JSON document."""
    # serialize() returns the text when it is given no destination to write to.
    return cast(str, to_prov(graph).serialize(format="json"))


def as_prov_n(graph: dict[str, Any]) -> str:
    """The graph in PROV-N, the notation people read."""
    return to_prov(graph).get_provn()
