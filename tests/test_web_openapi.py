"""The OpenAPI document says what the service does (issue 20, item 5); schemathesis checks the
service against it in test_web_fuzz.py, this checks what the document itself declares."""

from __future__ import annotations

import re
import warnings
from typing import Any

import pytest

from catalog import Catalog, ManagedPipelineJob
from catalog.catalog import FILE_KINDS, LEVELS
from catalog.lineage import DIRECTIONS, FORMATS
from catalog.states import EVENTS, STATES
from catalog.store.values import FILE_SORTS, JOB_SORTS
from catalog.tokens import Keys
from catalog.web import create_app
from catalog.web.openapi import ERRORS, TOKENS

METHODS = {"get", "head", "post", "put", "delete", "patch"}


@pytest.fixture
def catalog(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Catalog:
    monkeypatch.chdir(tmp_path)
    opened = Catalog.open(f"sqlite:///{tmp_path}/c.db", keys=Keys(b"x" * 32, b"y" * 32))
    opened.add_pipeline("align", "1.0", [])
    return opened


@pytest.fixture
def document(catalog: Catalog) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GET and HEAD of /version share an operationId
        return create_app(catalog).openapi()


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method, path): operation for path, item in document["paths"].items()
            for method, operation in item.items() if method in METHODS}


def parameter(operation: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in operation["parameters"] if p["name"] == name)


def test_every_route_that_needs_a_token_declares_its_schemes(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerToken"] == {**schemes["bearerToken"], "type": "http",
                                      "scheme": "bearer"}
    assert (schemes["queryToken"]["in"], schemes["queryToken"]["name"]) == ("query", "token")
    found = operations(document)
    assert set(TOKENS) <= set(found)
    for key, operation in found.items():
        if key in TOKENS:
            assert {name for option in operation["security"] for name in option} <= set(schemes)
            assert "401" in operation["responses"] and "403" in operation["responses"]
        else:
            assert "security" not in operation, key


def test_every_error_status_is_documented_with_the_one_error_shape(
        document: dict[str, Any]) -> None:
    found = operations(document)
    assert set(found) == set(ERRORS)  # a new route must say what it answers
    for key, operation in found.items():
        errors = {status: response for status, response in operation["responses"].items()
                  if status[0] in "45"}
        assert {"400", "413", "500"} <= set(errors), key
        for response in errors.values():
            assert response["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Error"}
    assert "Retry-After" in found[("post", "/jobs/{uuid}/events")]["responses"]["429"]["headers"]
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["error"] and error["additionalProperties"] is False


def test_uuid_path_parameters_carry_their_type_prefix(catalog: Catalog,
                                                       document: dict[str, Any]) -> None:
    job = ManagedPipelineJob(catalog, "align", {"n": 1}, measurement_id="measurement.lab.1")
    job.setup()
    found = operations(document)
    job_pattern = parameter(found[("get", "/jobs/{uuid}")], "uuid")["schema"]["pattern"]
    assert re.fullmatch(job_pattern, job.uuid) and re.fullmatch(job_pattern, job.uuid.upper())
    assert not re.fullmatch(job_pattern, "105" + job.uuid[3:])  # a file's prefix
    assert not re.fullmatch(job_pattern, job.uuid[:14] + "4" + job.uuid[15:])  # not UUID5
    for (_method, path), operation in found.items():
        if path.startswith("/jobs/{uuid}"):
            assert parameter(operation, "uuid")["schema"]["pattern"] == job_pattern
    file_pattern = parameter(found[("get", "/files/{uuid}")], "uuid")["schema"]["pattern"]
    assert re.fullmatch(file_pattern, "105" + job.uuid[3:])
    assert not re.fullmatch(file_pattern, job.uuid)


def test_enumerated_values_come_from_the_catalogs_own_tables(document: dict[str, Any]) -> None:
    found = operations(document)

    def enum(key: tuple[str, str], name: str) -> list[str]:
        return list(parameter(found[key], name)["schema"]["enum"])

    assert enum(("get", "/jobs"), "state") == [*STATES, *(s.lower() for s in STATES)]
    assert enum(("get", "/jobs"), "sort") == list(JOB_SORTS)
    assert enum(("get", "/files"), "kind") == list(FILE_KINDS)
    assert enum(("get", "/files"), "level") == list(LEVELS)
    assert enum(("get", "/files"), "sort") == list(FILE_SORTS)
    assert enum(("get", "/lineage/{uuid}"), "direction") == list(DIRECTIONS)
    assert enum(("get", "/lineage/{uuid}"), "format") == list(FORMATS)
    body = found[("post", "/jobs/{uuid}/events")]["requestBody"]["content"]["application/json"]
    assert body["schema"]["properties"]["name"]["enum"] == list(EVENTS)


def test_creations_document_both_answers(document: dict[str, Any]) -> None:
    found = operations(document)
    for key in (("post", "/jobs"), ("post", "/pipelines")):
        responses = found[key]["responses"]
        assert responses["200"]["content"] == responses["201"]["content"]
