"""Typed UUIDs, canonical JSON, derived identities and names (DESIGN §3)."""

from __future__ import annotations

import json
import random
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import xxhash
from conftest import json_values
from hypothesis import given, settings
from hypothesis import strategies as st

from catalog.catalog import parse_event
from catalog.errors import InvalidData, InvalidInput, MalformedIdentifier, WrongIdentifierType
from catalog.identifiers import (
    UUIDType,
    archive_path,
    canonical_json,
    check_json,
    check_session,
    instanced_directory,
    job_uuid,
    loads_json,
    parse_uuid,
    pipeline_uuid,
    random_typed_uuid,
    random_typed_uuids,
    typed_uuid,
    upstream_uuids,
    uuid_type,
)
from catalog.models import Event

# The prefixes of DESIGN §3, written out so that a changed prefix fails here.
PREFIXES = {
    UUIDType.generic: "100",
    UUIDType.experiment: "102",
    UUIDType.sample: "103",
    UUIDType.measurement: "104",
    UUIDType.file: "105",
    UUIDType.pipeline: "106",
    UUIDType.pipelinejob: "107",
    UUIDType.pipelinejob_event: "108",
    UUIDType.reference: "109",
    UUIDType.product: "110",
    UUIDType.fixity: "116",
    UUIDType.process: "117",
    UUIDType.observation: "126",
}
NAMESPACE_UUID = uuid.uuid5(uuid.NAMESPACE_DNS, "catalog.local")
SAMPLE = typed_uuid(UUIDType.sample, "sample.lab.7")
MEASUREMENT = typed_uuid(UUIDType.measurement, "measurement.lab.42")
PIPELINE = pipeline_uuid("align", "1.0")
FIXED_NOW = datetime(2024, 3, 5, 7, 8, 9, 123456, tzinfo=UTC)


def test_prefix_table_covers_every_type() -> None:
    assert set(PREFIXES) == set(UUIDType)
    assert {kind: kind.prefix for kind in UUIDType} == PREFIXES


# -- typed UUIDs ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(UUIDType), ids=lambda kind: kind.name)
def test_typed_uuid_carries_prefix_and_version(kind: UUIDType) -> None:
    value = typed_uuid(kind, "some.name")
    assert value[:3] == PREFIXES[kind]
    assert value[14] == "5"
    assert uuid.UUID(value).version == 5
    assert str(uuid.UUID(value)) == value  # canonical lower-case, dashed form
    # Everything but the prefix is the UUID5 of the name in the catalog's namespace.
    assert uuid.UUID(value).hex[3:] == uuid.uuid5(NAMESPACE_UUID, "some.name").hex[3:]
    assert uuid_type(value) is kind
    assert parse_uuid(value, kind) == value


@pytest.mark.parametrize("kind", list(UUIDType), ids=lambda kind: kind.name)
def test_typed_uuid_is_deterministic_and_depends_on_name_and_namespace(kind: UUIDType) -> None:
    assert typed_uuid(kind, "x") == typed_uuid(kind, "x")
    assert typed_uuid(kind, "x") == typed_uuid(kind, "x", "catalog.local")
    assert typed_uuid(kind, "x") != typed_uuid(kind, "y")
    assert typed_uuid(kind, "x") != typed_uuid(kind, "x", "other.namespace")
    assert typed_uuid(kind, "x", "other.namespace")[:3] == PREFIXES[kind]


@pytest.mark.parametrize("kind", list(UUIDType), ids=lambda kind: kind.name)
def test_upper_case_uuid_is_accepted_and_normalised(kind: UUIDType) -> None:
    value = typed_uuid(kind, "upper")
    assert uuid_type(value.upper()) is kind
    assert parse_uuid(value.upper()) == value
    assert parse_uuid(value.upper(), kind) == value
    assert parse_uuid(uuid.UUID(value)) == value


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(SAMPLE[:-1], id="one-short"),
        pytest.param(SAMPLE + "0", id="one-long"),
        pytest.param("", id="empty"),
        pytest.param("g" + SAMPLE[1:], id="non-hex"),
        pytest.param(SAMPLE[:35] + "z", id="non-hex-last"),
        pytest.param(SAMPLE.replace("-", ""), id="no-dashes"),
        pytest.param(SAMPLE[:8] + SAMPLE[9:13] + "-" + SAMPLE[13:], id="dash-moved"),
        pytest.param("{" + SAMPLE + "}", id="braces"),
        pytest.param(" " + SAMPLE, id="leading-space"),
        pytest.param(SAMPLE + " ", id="trailing-space"),
        pytest.param(SAMPLE + "\n", id="trailing-newline"),
        pytest.param("urn:uuid:" + SAMPLE, id="urn"),
        pytest.param(42, id="int"),
        pytest.param(None, id="none"),
        pytest.param(SAMPLE.encode(), id="bytes"),
        pytest.param(["x"], id="list"),
    ],
)
def test_malformed_identifiers_are_refused(value: Any) -> None:
    with pytest.raises(MalformedIdentifier) as caught:
        uuid_type(value)
    assert repr(value) in caught.value.message
    with pytest.raises(MalformedIdentifier):
        parse_uuid(value)
    with pytest.raises(MalformedIdentifier):
        parse_uuid(value, UUIDType.sample)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("999" + SAMPLE[3:], id="unknown-prefix"),
        pytest.param("101" + SAMPLE[3:], id="unassigned-prefix-101"),
        pytest.param("000" + SAMPLE[3:], id="zero-prefix"),
        pytest.param(SAMPLE[:14] + "4" + SAMPLE[15:], id="version-4"),
        pytest.param(str(uuid.UUID(int=0)), id="nil"),
    ],
)
def test_non_catalog_uuids_are_refused(value: str) -> None:
    with pytest.raises(MalformedIdentifier) as caught:
        uuid_type(value)
    assert caught.value.message == (
        f"{value} is not a catalog UUID (unknown type prefix or version)"
    )
    with pytest.raises(MalformedIdentifier):
        parse_uuid(value)


@pytest.mark.parametrize(
    ("value", "expected", "names", "actual"),
    [
        (SAMPLE, (UUIDType.measurement,), ["measurement"], "sample"),
        (SAMPLE.upper(), (UUIDType.measurement,), ["measurement"], "sample"),
        (MEASUREMENT, (UUIDType.sample, UUIDType.experiment), ["experiment", "sample"],
         "measurement"),
        (PIPELINE, (UUIDType.pipelinejob,), ["pipelinejob"], "pipeline"),
    ],
)
def test_wrong_identifier_type_names_expected_and_actual(
    value: str, expected: tuple[UUIDType, ...], names: list[str], actual: str
) -> None:
    with pytest.raises(WrongIdentifierType) as caught:
        parse_uuid(value, *expected)
    error = caught.value
    assert error.details == {"value": value, "expected": names, "actual": actual}
    assert error.message == f"{value} is a {actual} UUID, expected {' or '.join(names)}"
    assert error.code == "wrong_uuid_type"
    assert error.status == 400


# -- canonical JSON ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ({"b": [1, 2.5, None], "a": {"d": True, "c": False}},
         '{"a":{"c":false,"d":true},"b":[1,2.5,null]}'),
        ({"z": 1, "A": 2, "a": 3, "_": 4}, '{"A":2,"_":4,"a":3,"z":1}'),
        ({"name": "Zoë", "emoji": "🧪", "cjk": "数据"},
         '{"cjk":"数据","emoji":"🧪","name":"Zoë"}'),
        ({"big": 2**63 - 1, "neg": -(2**63), "float": 1.0},
         '{"big":9223372036854775807,"float":1.0,"neg":-9223372036854775808}'),
        ({"quote": 'a"b\\c\n'}, '{"quote":"a\\"b\\\\c\\n"}'),
        ([], "[]"),
        ({}, "{}"),
        ("text", '"text"'),
        (None, "null"),
    ],
)
def test_canonical_json_text(value: Any, text: str) -> None:
    assert canonical_json(value) == text
    assert loads_json(text) == value


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**70, -(10**40)])
def test_int64_bounds(value: int) -> None:
    """MongoDB keeps 64-bit integers; every store refuses what it would not keep, alike."""
    with pytest.raises(InvalidData, match=r"data.x\[1\]: integer out of the 64-bit range"):
        canonical_json({"x": [0, value]})


def test_a_key_with_a_nul_is_refused() -> None:
    """MongoDB ends a key at a NUL; every store refuses such keys alike (a value may hold one)."""
    with pytest.raises(InvalidData, match=r"data.x: key 'a\\x00b' contains a NUL character"):
        canonical_json({"x": {"a\x00b": 1}})
    assert canonical_json({"x": "a\x00b"}) == '{"x":"a\\u0000b"}'


@pytest.mark.parametrize(("value", "message"), [
    ({"a": [1, {"b": "\ud800"}]}, "data.a[1].b: string is not valid UTF-8 (lone surrogate)"),
    ({"a": {1: 2}}, "data.a: key 1 is not a string"),
    ([{"\udc00": 1}], "data[0]: key '\\udc00' is not valid UTF-8"),
    ({"a": [0.5, float("nan")]}, "data.a[1]: nan is not allowed in JSON (NaN/Infinity)"),
    ({"x": [[], {"y": {1, 2}}]}, "data.x[1].y: set is not a JSON type"),
    ({"é": [b"z"]}, "data.é[0]: bytes is not a JSON type"),
    (2**64, "data: integer out of the 64-bit range (-9223372036854775808 to "
     "9223372036854775807)"),
])
def test_a_refused_value_is_named_by_its_whole_path(value: Any, message: str) -> None:
    """The walk names the path only of the node it refuses (built while unwinding): each
    kind of refusal, at each kind of depth, names the whole path to it."""
    with pytest.raises(InvalidData) as refused:
        check_json(value)
    assert refused.value.message == message


def test_a_document_nested_too_deep_is_named_at_the_level_refused() -> None:
    deep: list[Any] = []
    inner = deep
    for _ in range(120):
        inner.append([])
        inner = inner[0]
    with pytest.raises(InvalidData) as refused:
        check_json({"d": deep})
    assert refused.value.message == "data.d" + "[0]" * 100 + ": nested deeper than 100 levels"


def test_canonical_json_keeps_unicode_as_utf8() -> None:
    text = canonical_json({"name": "Zoë"})
    assert "\\u" not in text
    assert text.encode("utf-8") == b'{"name":"Zo\xc3\xab"}'


def test_canonical_json_equal_for_any_key_order() -> None:
    first = {"a": 1, "b": {"x": [1, {"p": 1, "q": 2}], "y": None}, "c": "z"}
    second = {"c": "z", "b": {"y": None, "x": [1, {"q": 2, "p": 1}]}, "a": 1}
    assert list(first) != list(second)
    assert canonical_json(first).encode() == canonical_json(second).encode()


@pytest.mark.parametrize(
    ("value", "prefix"),
    [
        pytest.param({"a": [0, {"b": float("nan")}]}, "data.a[1].b:", id="nan"),
        pytest.param({"x": float("inf")}, "data.x:", id="infinity"),
        pytest.param({"list": [float("-inf")]}, "data.list[0]:", id="minus-infinity"),
        pytest.param(float("nan"), "data:", id="top-level-nan"),
        pytest.param({"s": {1, 2}}, "data.s:", id="set"),
        pytest.param({"t": (1, 2)}, "data.t:", id="tuple"),
        pytest.param({"a": [{"b": b"raw"}]}, "data.a[0].b:", id="bytes"),
        pytest.param({"when": datetime(2024, 1, 1, tzinfo=UTC)}, "data.when:", id="datetime"),
        pytest.param({"nested": {1: "x"}}, "data.nested:", id="int-key"),
        pytest.param({(1, 2): "x"}, "data:", id="tuple-key"),
        pytest.param({"a": ["ok", "\ud800"]}, "data.a[1]:", id="lone-surrogate-value"),
        pytest.param({"k": {"\udfff": 1}}, "data.k", id="lone-surrogate-key"),
        pytest.param({"o": object()}, "data.o:", id="object"),
    ],
)
def test_canonical_json_refuses_non_json_naming_the_path(value: Any, prefix: str) -> None:
    with pytest.raises(InvalidData) as caught:
        canonical_json(value)
    assert caught.value.message.startswith(prefix), caught.value.message
    assert caught.value.code == "invalid_data"


def test_canonical_json_path_uses_given_name() -> None:
    with pytest.raises(InvalidData) as caught:
        canonical_json({"p": [float("nan")]}, "parameters")
    assert caught.value.message.startswith("parameters.p[0]:")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("NaN", id="NaN"),
        pytest.param("[Infinity]", id="Infinity"),
        pytest.param('{"a": -Infinity}', id="minus-Infinity"),
        pytest.param("1e400", id="overflow-to-infinity"),
        pytest.param('{"a": [-1e999]}', id="overflow-to-minus-infinity"),
        pytest.param("", id="empty"),
        pytest.param("{", id="unclosed"),
        pytest.param("{'a': 1}", id="single-quotes"),
        pytest.param("[1,]", id="trailing-comma"),
        pytest.param('{"a" 1}', id="missing-colon"),
        pytest.param("undefined", id="bare-word"),
        pytest.param(b"\xff\xfe{", id="invalid-utf8"),
        pytest.param("\ufeff{}", id="byte-order-mark-in-text"),
        pytest.param('{"a": 1} {"b": 2}', id="two-documents"),
        pytest.param(bytearray(b"{"), id="bytearray-unclosed"),
    ],
)
def test_loads_json_refuses(text: str | bytes) -> None:
    with pytest.raises(InvalidData) as caught:
        loads_json(text)
    assert caught.value.message.startswith("data: ")
    with pytest.raises(InvalidData) as named:
        loads_json(text, "params")
    assert named.value.message.startswith("params: ")


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32"])
def test_loads_json_reads_bytes_as_json_loads_does(encoding: str) -> None:
    text = '{"a": "Zoë", "b": [1.5, -2]}'
    assert loads_json(text.encode(encoding)) == json.loads(text.encode(encoding))
    assert loads_json(bytearray(text.encode(encoding))) == {"a": "Zoë", "b": [1.5, -2]}


def reordered(value: Any, rng: random.Random) -> Any:
    """The same value with every object's keys inserted in a shuffled order."""
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {key: reordered(value[key], rng) for key in keys}
    if isinstance(value, list):
        return [reordered(item, rng) for item in value]
    return value


@settings(max_examples=200, deadline=None)
@given(value=json_values, rng=st.randoms(use_true_random=False))
def test_canonical_json_round_trips_and_ignores_key_order(value: Any, rng: random.Random) -> None:
    text = canonical_json(value)
    assert loads_json(text) == value
    assert canonical_json(reordered(value, rng)) == text
    # Canonical: what the standard library writes with these options, and a fixed point.
    assert text == json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_json(loads_json(text)) == text


# -- derived identities --------------------------------------------------------------------


def test_pipeline_uuid_is_a_deterministic_pipeline_uuid() -> None:
    value = pipeline_uuid("align", "1.0", ["bwa"])
    assert value == pipeline_uuid("align", "1.0", ["bwa"])
    assert uuid_type(value) is UUIDType.pipeline
    identity = '{"components":["bwa"],"name":"align","version":"1.0"}'
    assert value == typed_uuid(UUIDType.pipeline, identity)
    assert pipeline_uuid("align", "1.0") == pipeline_uuid("align", "1.0", [])


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(("align", "1.0", ["bwa"]), ("call", "1.0", ["bwa"]), id="name"),
        pytest.param(("align", "1.0", ["bwa"]), ("align", "1.1", ["bwa"]), id="version"),
        pytest.param(("align", "1.0", ["bwa"]), ("align", None, ["bwa"]), id="no-version"),
        pytest.param(("align", "1.0", ["bwa"]), ("align", "1.0", ["bowtie"]), id="components"),
        pytest.param(("align", "1.0", ["bwa"]), ("align", "1.0", []), id="no-components"),
        pytest.param(("align", "1.0", ["a", "b"]), ("align", "1.0", ["b", "a"]),
                     id="component-order"),
    ],
)
def test_pipeline_uuid_depends_on_identity(first: tuple[Any, ...], second: tuple[Any, ...]) -> None:
    assert pipeline_uuid(*first) != pipeline_uuid(*second)


def test_job_uuid_ignores_child_of_order_and_duplicates() -> None:
    data = {"threshold": 3, "inputs": ["a"]}
    base = job_uuid(PIPELINE, [SAMPLE, MEASUREMENT], data)
    assert uuid_type(base) is UUIDType.pipelinejob
    assert job_uuid(PIPELINE, [MEASUREMENT, SAMPLE], data) == base
    assert job_uuid(PIPELINE, [MEASUREMENT, SAMPLE, MEASUREMENT, SAMPLE], data) == base
    assert job_uuid(PIPELINE, iter([SAMPLE, MEASUREMENT]), data) == base
    assert job_uuid(PIPELINE, [SAMPLE, MEASUREMENT], {"inputs": ["a"], "threshold": 3}) == base


@pytest.mark.parametrize(
    ("pipeline", "child_of", "data"),
    [
        pytest.param(PIPELINE, [SAMPLE, MEASUREMENT], {"threshold": 4, "inputs": ["a"]},
                     id="data-value"),
        pytest.param(PIPELINE, [SAMPLE, MEASUREMENT], {"threshold": 3, "inputs": ["a", "b"]},
                     id="data-list"),
        pytest.param(PIPELINE, [SAMPLE, MEASUREMENT], {"threshold": 3.0, "inputs": ["a"]},
                     id="data-int-vs-float"),
        pytest.param(pipeline_uuid("align", "2.0"), [SAMPLE, MEASUREMENT],
                     {"threshold": 3, "inputs": ["a"]}, id="pipeline"),
        pytest.param(PIPELINE, [SAMPLE], {"threshold": 3, "inputs": ["a"]}, id="fewer-child-of"),
        pytest.param(PIPELINE, [], {"threshold": 3, "inputs": ["a"]}, id="no-child-of"),
        pytest.param(PIPELINE, [SAMPLE, typed_uuid(UUIDType.measurement, "m2")],
                     {"threshold": 3, "inputs": ["a"]}, id="other-child-of"),
    ],
)
def test_job_uuid_changes_with_pipeline_child_of_and_data(
    pipeline: str, child_of: list[str], data: dict[str, Any]
) -> None:
    base = job_uuid(PIPELINE, [SAMPLE, MEASUREMENT], {"threshold": 3, "inputs": ["a"]})
    assert job_uuid(pipeline, child_of, data) != base


def test_job_uuid_depends_on_namespace() -> None:
    assert job_uuid(PIPELINE, [SAMPLE], {}) != job_uuid(PIPELINE, [SAMPLE], {}, "other.ns")


ARCHIVE_RE = re.compile(r"^/products/v2/[0-9a-f]{32}/[0-9a-f]{16}/[0-9a-f]{16}(/[^/]+)?$")


def expected_digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return xxhash.xxh3_64_hexdigest(text.encode("utf-8"))


@pytest.mark.parametrize("instance", [None, "s1-20240305T070809Z"])
def test_archive_path_shape(instance: str | None) -> None:
    data = {"threshold": 3, "name": "Zoë"}
    path = archive_path(PIPELINE, [SAMPLE, MEASUREMENT], data, instance)
    assert ARCHIVE_RE.match(path), path
    expected = "/".join([
        "/products/v2",
        PIPELINE.replace("-", ""),
        expected_digest(sorted([SAMPLE, MEASUREMENT])),
        expected_digest(data),
    ])
    if instance is not None:
        expected += "/" + instance
    assert path == expected


def test_archive_path_ignores_child_of_order_and_duplicates() -> None:
    data = {"a": 1, "b": 2}
    base = archive_path(PIPELINE, [SAMPLE, MEASUREMENT], data)
    assert archive_path(PIPELINE, [MEASUREMENT, SAMPLE, SAMPLE], data) == base
    assert archive_path(PIPELINE, [SAMPLE, MEASUREMENT], {"b": 2, "a": 1}) == base
    assert archive_path(PIPELINE, [SAMPLE], data) != base
    assert archive_path(PIPELINE, [SAMPLE, MEASUREMENT], {"a": 1, "b": 3}) != base
    assert archive_path(pipeline_uuid("other"), [SAMPLE, MEASUREMENT], data) != base


# -- instanced directory names and sessions -----------------------------------------------

INSTANCED_RE = re.compile(r"^[a-z]+(-[a-z]+)+-\d{8}T\d{6}Z$")


@pytest.mark.parametrize(
    ("now", "stamp"),
    [
        (FIXED_NOW, "20240305T070809Z"),
        (datetime(2024, 3, 5, 9, 8, 9, tzinfo=timezone(timedelta(hours=2))), "20240305T070809Z"),
        (datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "19991231T235959Z"),
        (datetime(2000, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))), "19991231T233000Z"),
    ],
)
def test_instanced_directory_names(now: datetime, stamp: str) -> None:
    for _ in range(50):
        name = instanced_directory(now=now)
        assert INSTANCED_RE.match(name), name
        assert name.endswith("-" + stamp)
    assert instanced_directory("s1", now=now) == f"s1-{stamp}"


def test_instanced_directory_uses_current_utc_time_and_varies() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    names = {instanced_directory() for _ in range(20)}
    after = datetime.now(UTC)
    assert len(names) > 1
    for name in names:
        assert INSTANCED_RE.match(name), name
        stamp = datetime.strptime(name.rsplit("-", 1)[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        assert before <= stamp <= after


@pytest.mark.parametrize("session", ["s1", "a", "A" * 64, "run_2.v-3", "0lead-digit"])
def test_check_session_accepts(session: str) -> None:
    assert check_session(session) == session
    assert instanced_directory(session, now=FIXED_NOW) == f"{session}-20240305T070809Z"


@pytest.mark.parametrize(
    "session",
    [
        pytest.param("../x", id="dotdot"),
        pytest.param("", id="empty"),
        pytest.param("a/b", id="slash"),
        pytest.param("a" * 65, id="65-chars"),
        pytest.param(".hidden", id="leading-dot"),
        pytest.param("-x", id="leading-dash"),
        pytest.param("a b", id="space"),
        pytest.param("a\\b", id="backslash"),
        pytest.param("s1\n", id="trailing-newline"),
        pytest.param("s1\x00", id="nul"),
        pytest.param(None, id="none"),
        pytest.param(7, id="int"),
    ],
)
def test_check_session_refuses(session: Any) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_session(session)
    assert repr(session) in caught.value.message
    if session is not None:  # no session means a word-list name
        with pytest.raises(InvalidInput):
            instanced_directory(session, now=FIXED_NOW)


# -- upstream ids ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param(None, [], id="none"),
        pytest.param("measurement.lab.42", [MEASUREMENT], id="single-string"),
        pytest.param(["measurement.lab.42", "measurement.lab.43"],
                     [MEASUREMENT, typed_uuid(UUIDType.measurement, "measurement.lab.43")],
                     id="list"),
        pytest.param(("measurement.lab.42",), [MEASUREMENT], id="tuple"),
        pytest.param(MEASUREMENT, [MEASUREMENT], id="typed-uuid"),
        pytest.param(MEASUREMENT.upper(), [MEASUREMENT], id="typed-uuid-upper"),
        pytest.param(uuid.UUID(MEASUREMENT), [MEASUREMENT], id="uuid-object"),
        pytest.param([MEASUREMENT, "measurement.lab.42"], [MEASUREMENT, MEASUREMENT],
                     id="uuid-and-id-agree"),
        pytest.param("lab42", [typed_uuid(UUIDType.measurement, "lab42")], id="bare-id"),
        pytest.param([], [], id="empty-list"),
    ],
)
def test_upstream_uuids_resolves(values: Any, expected: list[str]) -> None:
    assert upstream_uuids(UUIDType.measurement, values) == expected


def test_upstream_uuids_use_namespace() -> None:
    assert upstream_uuids(UUIDType.sample, "sample.x", "other.ns") == [
        typed_uuid(UUIDType.sample, "sample.x", "other.ns")
    ]
    assert upstream_uuids(UUIDType.sample, "sample.x", "other.ns") != upstream_uuids(
        UUIDType.sample, "sample.x"
    )


@pytest.mark.parametrize(
    ("values", "actual"),
    [
        pytest.param(SAMPLE, "sample", id="sample-uuid"),
        pytest.param([MEASUREMENT, SAMPLE], "sample", id="sample-uuid-in-list"),
        pytest.param("sample.x", "sample", id="sample-id"),
        pytest.param(["measurement.ok", "experiment.e1"], "experiment", id="experiment-id"),
        pytest.param("observation.o1", "observation", id="observation-id"),
        pytest.param(PIPELINE, "pipeline", id="pipeline-uuid"),
    ],
)
def test_upstream_uuids_refuse_other_types(values: Any, actual: str) -> None:
    with pytest.raises(WrongIdentifierType) as caught:
        upstream_uuids(UUIDType.measurement, values)
    assert caught.value.details["expected"] == ["measurement"]
    assert caught.value.details["actual"] == actual


@pytest.mark.parametrize(
    "values",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param(" measurement.x", id="leading-space"),
        pytest.param("measurement.x ", id="trailing-space"),
        pytest.param("measurement.x\n", id="trailing-newline"),
        pytest.param([""], id="empty-in-list"),
        pytest.param("m" * 257, id="too-long"),
    ],
)
def test_upstream_uuids_refuse_bad_strings(values: Any) -> None:
    with pytest.raises(InvalidInput) as caught:
        upstream_uuids(UUIDType.measurement, values)
    assert type(caught.value) is InvalidInput
    assert caught.value.message.startswith("measurement id")


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(MEASUREMENT + "\n", id="uuid-trailing-newline"),
        pytest.param([MEASUREMENT + "\n"], id="uuid-trailing-newline-in-list"),
        pytest.param(" " + MEASUREMENT, id="uuid-leading-space"),
    ],
)
def test_upstream_uuids_refuse_padded_uuids(values: Any) -> None:
    # A padded UUID must not become a distinct upstream entity (and so a distinct job).
    with pytest.raises(InvalidInput):
        upstream_uuids(UUIDType.measurement, values)


@pytest.mark.parametrize(
    "values",
    [
        pytest.param([42], id="int-in-list"),
        pytest.param([None], id="none-in-list"),
        pytest.param([b"measurement.x"], id="bytes-in-list"),
        pytest.param(42, id="bare-int"),
        pytest.param(4.2, id="bare-float"),
    ],
)
def test_upstream_uuids_refuse_non_strings(values: Any) -> None:
    with pytest.raises(InvalidInput):
        upstream_uuids(UUIDType.measurement, values)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.sampled_from(list(UUIDType)), st.text(min_size=1, max_size=20))
def test_typed_uuids_are_uuid5_of_the_name_with_the_type_prefix(
        name: str, kind: UUIDType, namespace: str) -> None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return  # lone surrogates: no UTF-8, no UUID (uuid.uuid5 refuses them too)
    expected = uuid.uuid5(uuid.uuid5(uuid.NAMESPACE_DNS, namespace), name)
    value = typed_uuid(kind, name, namespace)
    assert uuid.UUID(value).hex == kind.prefix + expected.hex[3:]
    assert uuid.UUID(value).version == 5


@pytest.mark.parametrize("data", [{"x": float("nan")}, {"a": ["\ud800"]}, {"s": {1, 2}}])
def test_models_refuse_non_json_data_unless_the_whole_document_was_checked(data: Any) -> None:
    """``Event.data`` checks itself; only ``parse_document``, which checked the whole document
    first, skips that second walk (by passing the one ``JSON_CHECKED`` context object)."""
    with pytest.raises(InvalidData):
        Event.model_validate({"name": "update", "data": data})
    with pytest.raises(InvalidData):  # an equal context from elsewhere does not skip it
        Event.model_validate({"name": "update", "data": data}, context={"json_checked": True})
    with pytest.raises(InvalidData):
        parse_event({"name": "update", "data": data})


@pytest.mark.parametrize("kind", [UUIDType.pipelinejob_event, UUIDType.generic])
def test_random_typed_uuids_are_what_random_typed_uuid_gives(kind: UUIDType) -> None:
    """Made in bulk (a sweep's entries), each is a version-5, RFC 4122 typed UUID as one made
    alone, all of them distinct."""
    many = random_typed_uuids(kind, 2000)
    assert len(set(many)) == 2000 and random_typed_uuids(kind, 0) == []
    for value in [*many, random_typed_uuid(kind)]:
        parsed = uuid.UUID(value)
        assert (str(parsed), parsed.version, parsed.variant) == (value, 5, uuid.RFC_4122)
        assert uuid_type(value) is kind and parse_uuid(value, kind) == value
