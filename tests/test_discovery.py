"""Inputs discovered at job creation: data.inputs -> acted_on, data.parameters -> acted_using.

An upstream job's files are indexed first, so that there is something to name; then jobs
name them in every supported form, and name things that cannot be resolved.
"""

from __future__ import annotations

import uuid as uuid_module
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from catalog import Catalog, ManagedPipelineJob, ManagedPipelineJobInstance
from catalog.errors import (
    InvalidInput,
    MalformedIdentifier,
    UnsafePath,
    WrongIdentifierType,
)
from catalog.identifiers import UUIDType, job_uuid
from catalog.indexer import file_uuid
from catalog.models import Entity, utc_now
from catalog.storage import LocalStorage, S3Storage
from catalog.tokens import Keys
from catalog.web import create_app

KEYS = Keys(b"d" * 32, b"a" * 32)


@pytest.fixture(params=["local", "s3"])
def catalog(request: pytest.FixtureRequest, store_url: str, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Catalog]:
    monkeypatch.chdir(tmp_path)
    root, endpoint = str(tmp_path / "archive"), ""
    if request.param == "s3":
        endpoint = request.getfixturevalue("moto_endpoint")
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"),
                            ("AWS_SECRET_ACCESS_KEY", "testing"),
                            ("AWS_DEFAULT_REGION", "us-east-1")):
            monkeypatch.setenv(name, value)
        import boto3

        bucket = f"discovery-{uuid_module.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        root = f"s3://{bucket}/archive"
    opened = Catalog.open(store_url, keys=KEYS, archive_root=root, s3_endpoint_url=endpoint,
                          sqlite_synchronous="NORMAL")
    opened.add_pipeline("discovery", "1")
    yield opened
    opened.close()


@pytest.fixture
def upstream(catalog: Catalog) -> dict[str, str]:
    """An indexed upstream job with two files; returns their paths and UUIDs by name."""
    job = ManagedPipelineJob(catalog, "discovery", {"stage": "upstream"},
                             measurement_id="measurement.disc.1",
                             archive_patterns=[{"patterns": [r"\.csv$"], "level": "1"}])
    job.setup()
    for name in ("a.csv", "b.csv"):
        catalog.storage.write(f"{job.archive_path}/data/{name}", name.encode())
    job.run()
    job.finish()
    ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    found = {"job": job.uuid, "archive_path": job.archive_path}
    for name in ("a", "b"):
        path = f"{job.archive_path}/data/{name}.csv"
        found[f"{name}_path"] = path
        found[name] = file_uuid(catalog, "local", path)
    return found


def uri_of(catalog: Catalog, path: str) -> str:
    """The URI by which a pipeline outside the catalog would name an archive file."""
    storage = catalog.storage
    if isinstance(storage, LocalStorage):
        return f"file://{storage.root}{path}"
    assert isinstance(storage, S3Storage)
    return f"s3://{storage.bucket}/{storage.prefix}{path}"


def reference_uuid(catalog: Catalog, uri: str) -> str:
    return catalog.typed_uuid(UUIDType.reference, uri)


def test_every_supported_form_of_input_becomes_an_acted_on_link(
        catalog: Catalog, upstream: dict[str, str]) -> None:
    named = Entity(uuid=catalog.typed_uuid(UUIDType.reference, "hg38"), kind="reference",
                   name="hg38", created=utc_now())
    catalog.add_entities([named])
    inputs = [
        upstream["a"],                              # a typed file UUID
        upstream["b_path"],                         # an absolute archive path
        uri_of(catalog, upstream["a_path"]),        # the file's URI (same record as the UUID)
        named.uuid,                                 # a typed reference UUID
        "https://data.example.org/tables/cal.csv",  # a URI outside the archive
        "file:///shared/references/genome.fa",      # ... on a shared disk
    ]
    job = ManagedPipelineJob(catalog, "discovery", {"inputs": inputs, "parameters": {}},
                             measurement_id="measurement.disc.1")
    stored = job.setup()
    https = reference_uuid(catalog, "https://data.example.org/tables/cal.csv")
    shared = reference_uuid(catalog, "file:///shared/references/genome.fa")
    assert stored.acted_on == [upstream["a"], upstream["b"], named.uuid, https, shared]
    assert stored.acted_using == []
    reference = catalog.get_entity(https)
    assert (reference.kind, reference.name, reference.uri, reference.namespace) == (
        "reference", "cal.csv", "https://data.example.org/tables/cal.csv",
        "https://data.example.org")
    assert catalog.get_entity(shared).name == "genome.fa"
    # The links are edges too: down from an input file reaches the job.
    down = catalog.lineage(upstream["a"], "down", 1)
    assert {"from": job.uuid, "relation": "acted_on", "to": upstream["a"]} in down["edges"]


def test_relative_inputs_resolve_under_the_jobs_archive_path(
        catalog: Catalog, upstream: dict[str, str]) -> None:
    job = ManagedPipelineJob(catalog, "discovery", {"inputs": "./data/a.csv"},
                             archive_path=upstream["archive_path"])
    assert job.setup().acted_on == [upstream["a"]]


def test_parameters_that_name_files_or_references_become_acted_using(
        catalog: Catalog, upstream: dict[str, str]) -> None:
    sample = catalog.upstream(UUIDType.sample, "sample.disc.7")[0]
    parameters: dict[str, Any] = {
        "genome": "https://refs.example.org/hg38.fa",
        "calibration": {"table": upstream["b"], "scale": 2.5},
        "mask": upstream["a_path"],      # an archive path that is catalogued: a link
        "scratch": "/tmp/scratch",       # ordinary paths and values: no link, no error
        "config": "./config.yaml",
        "mode": "fast",
        "threshold": 0.5, "repeat": 3, "verbose": True, "nothing": None,
        "control": sample,               # a typed UUID of no file or reference: a value
        "list": ["plain", 1, [upstream["b"]]],
    }
    stored = ManagedPipelineJob(catalog, "discovery", {"parameters": parameters}).setup()
    assert stored.acted_using == [reference_uuid(catalog, "https://refs.example.org/hg38.fa"),
                                  upstream["b"], upstream["a"]]
    assert stored.acted_on == []


@pytest.mark.parametrize("inputs", [
    [1, 2.5, True, None, {"n": 3}, [False]],
    {},
    7,
    None,
])
def test_values_of_other_types_are_ignored(catalog: Catalog, inputs: Any) -> None:
    stored = ManagedPipelineJob(catalog, "discovery", {"inputs": inputs,
                                                       "parameters": inputs}).setup()
    assert (stored.acted_on, stored.acted_using) == ([], [])


def test_inputs_may_be_one_string_or_an_object_of_strings(
        catalog: Catalog, upstream: dict[str, str]) -> None:
    one = ManagedPipelineJob(catalog, "discovery", {"inputs": upstream["a"]}).setup()
    assert one.acted_on == [upstream["a"]]
    named = ManagedPipelineJob(catalog, "discovery", {
        "inputs": {"reads": upstream["b"], "more": {"again": upstream["a"]}}}).setup()
    assert named.acted_on == [upstream["b"], upstream["a"]]


def missing_file_uri(catalog: Catalog) -> str:
    return uri_of(catalog, "/products/missing/x.csv")


# (inputs, parameters, error type, text the message must contain)
UNRESOLVABLE: list[tuple[Any, Any, type[InvalidInput], str]] = [
    (["/products/nowhere/x.csv"], None, InvalidInput,
     "data.inputs[0]: reference '/products/nowhere/x.csv' names /products/nowhere/x.csv, "
     "which is not catalogued"),
    (["unknown-file"], None, InvalidInput, "is not catalogued"),
    (["not a reference"], None, InvalidInput,
     "data.inputs[0]: reference 'not a reference' is not a typed UUID"),
    (["./../../escape.csv"], None, UnsafePath, "leaves the job's archive path"),
    (["/products/../../etc/passwd"], None, UnsafePath, "data.inputs[0]"),
    (["https://"], None, InvalidInput, "data.inputs[0]: reference 'https://' names no location"),
    (["https://ok.example.org/a.csv", "/products/nowhere/y.csv"], None, InvalidInput,
     "data.inputs[1]"),
    (None, {"table": "missing-file-uri"}, InvalidInput, "data.parameters.table"),
    (None, {"deep": [{"ref": "unknown-reference"}]}, InvalidInput,
     "data.parameters.deep[0].ref: reference"),
    (["measurement"], None, WrongIdentifierType, "data.inputs[0]"),
    (["00000000-0000-5000-8000-000000000000"], None, MalformedIdentifier, "data.inputs[0]"),
]


@pytest.mark.parametrize(("inputs", "parameters", "error", "text"), UNRESOLVABLE)
def test_unresolvable_inputs_are_refused_naming_them_and_nothing_is_stored(
        catalog: Catalog, inputs: Any, parameters: Any, error: type[InvalidInput],
        text: str) -> None:
    substitutes = {
        "missing-file-uri": missing_file_uri(catalog),
        "unknown-file": catalog.typed_uuid(UUIDType.file, "never indexed"),
        "unknown-reference": catalog.typed_uuid(UUIDType.reference, "never added"),
        "measurement": catalog.upstream(UUIDType.measurement, "measurement.disc.1")[0],
    }

    def substitute(value: Any) -> Any:
        if isinstance(value, list):
            return [substitute(v) for v in value]
        if isinstance(value, dict):
            return {k: substitute(v) for k, v in value.items()}
        return substitutes.get(value, value)

    data = {"inputs": substitute(inputs), "parameters": substitute(parameters)}
    with pytest.raises(error) as raised:
        ManagedPipelineJob(catalog, "discovery", data).setup()
    assert text in raised.value.message
    pipeline = catalog.get_pipeline("discovery").uuid
    assert catalog.store.get_job(job_uuid(pipeline, [], data, catalog.settings.namespace)) \
        is None
    # The URI that did resolve made no reference record either: the refusal wrote nothing.
    assert catalog.store.get_entity(
        reference_uuid(catalog, "https://ok.example.org/a.csv")) is None


def test_a_product_can_be_derived_using_a_reference_but_only_from_files(
        catalog: Catalog, upstream: dict[str, str]) -> None:
    product = [{"patterns": [r"\.png$"], "derived_from": [upstream["a"]],
                "derived_using": ["https://refs.example.org/palette.json"], "fixity": False}]
    job = ManagedPipelineJob(catalog, "discovery", {"stage": "plot"}, product_patterns=product)
    job.setup()
    catalog.storage.write(f"{job.archive_path}/plot.png", b"png")
    job.run()
    job.finish()
    result = ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    palette = reference_uuid(catalog, "https://refs.example.org/palette.json")
    (record,) = result.files
    assert (record["derived_from"], record["derived_using"]) == ([upstream["a"]], [palette])
    assert catalog.get_entity(palette).name == "palette.json"

    outside = [{"patterns": [r"\.png$"], "derived_from": ["https://elsewhere.example/x.csv"]}]
    other = ManagedPipelineJob(catalog, "discovery", {"stage": "bad"}, product_patterns=outside)
    other.setup()
    catalog.storage.write(f"{other.archive_path}/plot.png", b"png")
    other.run()
    other.finish()
    with pytest.raises(InvalidInput, match="is not in this catalog's archive"):
        ManagedPipelineJobInstance(catalog, other.uuid).index(other.token)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_http_job_creation_refuses_unresolvable_inputs(catalog: Catalog) -> None:
    app = create_app(catalog)
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {catalog.admin_token()}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        refused = await client.post("/jobs", headers=headers, json={
            "pipeline": "discovery", "data": {"inputs": ["/products/none.csv"]}})
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "invalid_input"
        assert "data.inputs[0]" in refused.json()["error"]["message"]
        listed = await client.get("/jobs")
        assert listed.json()["jobs"] == []

        accepted = await client.post("/jobs", headers=headers, json={
            "pipeline": "discovery", "data": {"inputs": ["https://x.example/in.csv"]}})
        assert accepted.status_code == 201
        shown = await client.get(f"/jobs/{accepted.json()['uuid']}")
        assert shown.json()["acted_on"] == [reference_uuid(catalog, "https://x.example/in.csv")]
