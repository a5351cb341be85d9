"""Fuzz the HTTP service from its own OpenAPI document (schemathesis over the ASGI app).

Bounded and deterministic: a fixed number of examples per operation and generation mode,
derandomised, no example database. Every generated request must answer below 500; every refusal
must use the one error shape and leave the jobs and pipelines exactly as they were.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from conftest import MONGO_BACKENDS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from pydantic import BaseModel
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.core.parameters import ParameterLocation
from schemathesis.schemas import APIOperation

from catalog import Catalog, ManagedPipelineJob
from catalog.messages import JobRequest, PipelineRequest
from catalog.models import Event
from catalog.states import EVENTS
from catalog.tokens import Keys
from catalog.web import create_app

# Examples per operation: schema-conforming ones, then schema-violating ones (slower to make).
EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 10}
KNOWN_EVENT_EXAMPLES = 20
UNSTORABLE_EXAMPLES = 5
BOGUS_TOKEN = "0123456789abcdef" * 4
# Weighted towards tokens that pass, so that accepted requests are fuzzed too.
WHO = ["own", "own", "own", "admin", "admin", "none", "another job", "bogus"]
# Routes that read their body from the request themselves document no requestBody; the fuzzer
# is given the models those routes validate against so that it sends bodies too.
REQUEST_BODIES: dict[tuple[str, str], tuple[type[BaseModel], bool]] = {
    ("post", "/jobs/{uuid}/events"): (Event, False),
    ("post", "/jobs"): (JobRequest, True),
    ("post", "/pipelines"): (PipelineRequest, True),
}
# FastAPI warns while building /openapi.json: GET and HEAD of /version and /health share an
# operationId (the bug test_web_api.py::test_openapi_operation_ids_are_unique shows).
pytestmark = pytest.mark.filterwarnings("ignore:Duplicate Operation ID:UserWarning")
STATUSES = ["RUNNING", "running", "FINISHED", "FAILED", "success", "EXPLODED", ""]
# Every check schemathesis has runs on every operation, and any finding fails the test. What a
# JSON Schema cannot state is said here, per operation: the statuses a request that the document
# allows may still be answered, besides positive_data_acceptance's own (2xx, 3xx, 401, 403, 404,
# 409, 429, 5xx), and why. Nothing else is relaxed.
SEMANTIC_REFUSALS: dict[tuple[str, str], tuple[list[str], str]] = {
    ("POST", "/jobs/{uuid}/events"): (
        ["400", "422"], "?status= decides what the body is (an event, required, or an optional "
        "{data, event_id}); the known statuses depend on the mapping (?mapping= or the job's "
        "own); data holds no integer beyond 64 bits and no NUL in a key"),
    ("GET", "/jobs"): (["400"], "a cursor is the one a previous page gave; a date must exist; "
                               "child_of names an upstream entity"),
    ("GET", "/files"): (["400"], "a cursor is the one a previous page gave; a path prefix stays "
                                "inside the archive; a glob must parse; a checksum is "
                                "algorithm:hexdigest"),
    ("GET", "/pipelines"): (["400"], "a cursor is the one a previous page gave"),
    ("POST", "/jobs"): (["400", "422"], "upstream ids, an archive path inside the root, index "
                                        "patterns that compile, data JSON can carry"),
    ("POST", "/pipelines"): (["400"], "components JSON can carry"),
    ("POST", "/jobs/{uuid}/index"): (["400", "422"], "index requests whose patterns compile and "
                                                     "whose references resolve"),
    ("POST", "/api/v1/lineage"): (["400", "422"], "an OpenLineage RunEvent (its own schema)"),
    ("GET", "/jobs/wait"): (["400"], "each uuid is a job's typed UUID"),
    ("GET", "/api/v1/lineage"): (["400"], "nodeId is dataset:NAMESPACE:NAME or job:NAMESPACE:NAME"),
    ("GET", "/api/v1/openlineage/datasets"): (["400"], "a cursor is the one a previous page gave; "
                                                      "a name needs its namespace"),
    ("GET", "/api/v1/jobs/runs/{run_id}"): (["400"], "a run id is a UUID"),
    ("GET", "/api/v1/openlineage/runs/{run_id}"): (["400"], "a run id is a UUID"),
    **{(method, path): (["400", "422"], "a Work (or a query) whose text JSON can carry (no lone "
                                        "surrogate), whose pipeline and values the queue takes")
       for method, path in (("POST", "/buckets/work"), ("PUT", "/buckets/work"),
                            ("POST", "/buckets/work/withdraw"), ("POST", "/buckets/view"),
                            ("POST", "/results/results"), ("PUT", "/results/results"),
                            ("POST", "/results/view"), ("POST", "/results/view/count"))},
}
# Operations whose answer never ends (a client reads what it needs, then hangs up): the
# harness reads answers whole, so these are tested where they are defined.
ENDLESS = {"GET /jobs/stream": "server-sent events: tests/test_stream.py"}
_ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
# A schema-violating body may also be over the size limit (a list past its maxItems can be
# megabytes): refused as such, 413, before it is read. schemathesis's own list, and 413.
_REJECTED = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428",
             "429", "5xx"]
CHECKS_CONFIG = SchemathesisConfig.from_dict({
    "checks": {"negative_data_rejection": {"expected-statuses": _REJECTED}},
    "operations": [
        {"include-path": path, "include-method": method,
         "checks": {"positive_data_acceptance": {"expected-statuses": _ACCEPTED + statuses}}}
        for (method, path), (statuses, _why) in SEMANTIC_REFUSALS.items()
    ]})
MAPPINGS = ["tapis", "chime", "slurm"]


@dataclass
class Service:
    catalog: Catalog
    schema: Any
    job: ManagedPipelineJob
    other_job: ManagedPipelineJob
    pipeline_uuid: str

    def token(self, who: str, case: Any) -> str | None:
        """A token for the request: none, the addressed job's own, another job's, admin, bogus."""
        addressed = (case.path_parameters or {}).get("uuid")
        own, other = ((self.other_job, self.job) if addressed == self.other_job.uuid
                      else (self.job, self.other_job))
        return {"none": None, "own": own.token, "another job": other.token,
                "admin": self.catalog.admin_token(), "bogus": BOGUS_TOKEN}[who]

    def state(self) -> dict[str, Any]:
        """What a refused request must leave unchanged (the audit log aside)."""
        found = self.catalog.find_jobs(limit=1000).items
        stored = {doc["uuid"] for doc in found}
        return {
            "jobs": {handle.uuid: self.catalog.get_job(handle.uuid).model_dump()
                     if handle.uuid in stored else None
                     for handle in (self.job, self.other_job)},
            "all jobs": sorted(json.dumps(doc, sort_keys=True, default=str) for doc in found),
            "pipelines": self.catalog.list_pipelines(limit=1000).items,
        }


def with_request_bodies(document: dict[str, Any]) -> dict[str, Any]:
    """The app's OpenAPI document, plus request bodies where a route documents none."""
    document = copy.deepcopy(document)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for (method, path), (model, required) in REQUEST_BODIES.items():
        operation = document["paths"].get(path, {}).get(method)
        if operation is None or "requestBody" in operation:
            continue
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        operation["requestBody"] = {
            "required": required,
            "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    return document


# Both stores: what one keeps, the other may refuse (MongoDB: 64-bit integers, no NUL in keys).
@pytest.fixture(params=["sqlite", *MONGO_BACKENDS])
def service(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            database_url: Callable[[str], str]) -> Iterator[Service]:
    for name in list(os.environ):
        if name.startswith("CATALOG_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    # Every request comes from one address: no rate limit, or the fuzzer would see only 429s.
    catalog = Catalog.open(database_url(request.param), keys=Keys(b"x" * 32, b"y" * 32),
                           refusal_burst=10**9, rate_limit_delay_s=0)
    pipeline, _ = catalog.add_pipeline("align", "1.0", [{"image": "align:1.0"}])
    job = ManagedPipelineJob(catalog, "align", {"n": 1}, measurement_id="measurement.lab.1")
    job.setup()
    other_job = ManagedPipelineJob(catalog, "align", {"n": 2}, status_mapping="tapis")
    other_job.setup()
    app = create_app(catalog)
    loaded = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema = schemathesis.openapi.from_dict(with_request_bodies(loaded.raw_schema),
                                            config=CHECKS_CONFIG)
    schema.app = app
    yield Service(catalog, schema, job, other_job, pipeline.uuid)
    catalog.close()


def strategies(service: Service,
               operation: APIOperation) -> list[tuple[int, st.SearchStrategy[Any]]]:
    """(examples, strategy) pairs: generated cases, some aimed at the pre-created records."""
    path_uuids = ([service.job.uuid, service.other_job.uuid] if "/jobs/{uuid}" in operation.path
                  else [service.pipeline_uuid, "align"] if "/pipelines/{uuid}" in operation.path
                  else [])
    found = [
        (examples, st.one_of(operation.as_strategy(generation_mode=mode), *(
            operation.as_strategy(generation_mode=mode, path_parameters={"uuid": uuid})
            for uuid in path_uuids)))
        for mode, examples in EXAMPLES.items()
    ]
    if operation.path == "/jobs/{uuid}/events":
        # Events the state machine knows, so that accepted events are fuzzed as well.
        known = st.tuples(st.sampled_from(path_uuids), st.sampled_from(EVENTS)).flatmap(
            lambda chosen: operation.as_strategy(path_parameters={"uuid": chosen[0]},
                                                 body={"name": chosen[1]}))
        found.append((KNOWN_EVENT_EXAMPLES, known))
        # Data the document allows and no store keeps: a 400 naming the field, never a 500.
        unstorable = st.sampled_from(path_uuids).flatmap(
            lambda uuid: operation.as_strategy(path_parameters={"uuid": uuid}, body={
                "name": "update", "data": {"big": 2**64, "surrogate": "x\ud800"}}))
        found.append((UNSTORABLE_EXAMPLES, unstorable))
    return found


def realistic(case: Any, data: st.DataObject) -> None:
    """Sometimes swap generated noise for names the service knows, to reach deeper states.

    Parts are replaced, never edited in place, so that schemathesis sees the change and judges
    afresh whether the case still breaks the document (a negative case may become positive)."""
    if not isinstance(case.body, dict) or data.draw(st.integers(0, 3)) == 0:
        return
    if case.operation.path == "/jobs" and "pipeline" in case.body:
        case.body = {**case.body, "pipeline": "align"}
    if case.operation.path != "/jobs/{uuid}/events":
        return
    if "name" in case.body:
        case.body = {**case.body, "name": data.draw(st.sampled_from(EVENTS))}
    if isinstance(case.query, dict) and data.draw(st.booleans()):
        query = {**case.query, "status": data.draw(st.sampled_from(STATUSES))}
        if data.draw(st.booleans()):
            query["mapping"] = data.draw(st.sampled_from(MAPPINGS))
        case.query = query


def check_response(service: Service, case: Any, response: Any, before: dict[str, Any]) -> None:
    label = f"{case.method} {case.formatted_path} query={case.query!r}"
    assert response.status_code < 500, f"{label} -> {response.status_code} {response.text}"
    if response.status_code < 400:
        return
    if case.method.upper() != "HEAD":
        body = json.loads(response.content)
        assert isinstance(body, dict) and set(body) == {"error"}, f"{label}: {body}"
        assert set(body["error"]) == {"code", "message"}, f"{label}: {body}"
        assert all(isinstance(v, str) and v for v in body["error"].values()), f"{label}: {body}"
    assert service.state() == before, f"{label} was refused ({response.status_code}) yet changed"


def authenticate(case: Any, token: str | None, where: str) -> dict[str, Any]:
    """Drop any token the fuzzer made up (the document declares both schemes) and give the
    case's own, in the header or the query, as the caller's (not generated) credentials; a
    case whose headers are made to break the document keeps them, and no token."""
    if where != "generated header":  # a header that breaks the document on purpose stays
        case.headers = {k: v for k, v in (case.headers or {}).items()
                        if k.lower() != "authorization"}
    case.query = {k: v for k, v in (case.query or {}).items() if k != "token"}
    if token is None or where == "generated header":
        return {}
    if where == "header":
        return {"headers": {"Authorization": f"Bearer {token}"}}
    return {"params": {"token": token}}


def fuzz_test(service: Service, operation: APIOperation, strategy: st.SearchStrategy[Any],
              max_examples: int, seen: dict[str, set[int]]) -> Callable[[], None]:
    """One bounded, derandomised hypothesis run over ``strategy``, recording the statuses."""

    @settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow,
                                     HealthCheck.data_too_large])
    @given(case=strategy, who=st.sampled_from(WHO),
           where=st.sampled_from(["query", "header"]), data=st.data())
    def fuzz(case: Any, who: str, where: str, data: st.DataObject) -> None:
        token = service.token(who, case)
        if case.method.upper() == "DELETE" and who == "admin":
            token = None  # keep the pre-created jobs for the other examples
        meta = case.meta
        if meta is None or not meta.generation.mode.is_negative:
            realistic(case, data)  # a negative case stays as generated: it must be refused
        elif meta.is_negative_at(ParameterLocation.HEADER):
            where = "generated header"
        credentials = authenticate(case, token, where)
        before = service.state()
        response = case.call(**credentials)
        seen.setdefault(operation.label, set()).add(response.status_code)
        check_response(service, case, response, before)
        # Every check schemathesis has (CHECKS_CONFIG); ignored_auth sends the case again
        # without its token, and with a made-up one, and expects 401 or 403.
        case.validate_response(response, headers=credentials.get("headers"),
                               transport_kwargs={"app": service.schema.app})

    return fuzz


def test_fuzz_every_operation(service: Service) -> None:
    operations = [operation for result in service.schema.get_all_operations()
                  if (operation := result.ok()).label not in ENDLESS]
    seen: dict[str, set[int]] = {}

    for operation in operations:
        for examples, strategy in strategies(service, operation):
            try:
                fuzz_test(service, operation, strategy, examples, seen)()
            except Unsatisfiable:
                pass  # no negative case exists for an operation without inputs

    assert {operation.label for operation in operations} <= set(seen)
    assert {200, 400, 401, 403, 409, 422} <= seen["POST /jobs/{uuid}/events"], seen
    assert {200, 400, 401, 403, 404, 422} <= set().union(*seen.values()), seen


def test_a_generated_case_reaches_the_job(service: Service) -> None:
    """The harness itself works: a case built from the document drives the job."""
    operation = service.schema["/jobs/{uuid}/events"]["POST"]
    case = operation.Case(path_parameters={"uuid": service.job.uuid}, body={"name": "run"},
                          media_type="application/json")

    answered = case.call(params={"token": service.job.token})

    assert (answered.status_code, json.loads(answered.content)["state"]) == (200, "RUNNING")
    assert service.catalog.get_job(service.job.uuid).state == "RUNNING"
