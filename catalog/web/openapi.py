"""The OpenAPI document as the service really behaves: who needs a token, what each route can
answer, what each identifier and enumerated value looks like.

FastAPI's own document knows only what the route signatures say, and the routes read their
tokens and bodies themselves (to authenticate first and audit what they refuse). So the
document is completed here, from tables kept as data at the top and from the catalog's own
constants (states and events from ``catalog.states``, never a copied list):

* ``securitySchemes``: the bearer token and ``?token=``, on every route that needs one;
* every error status a route can answer, each with the one error shape (``Error``), 429 with
  its ``Retry-After``;
* UUID path parameters with their pattern and type prefix (``107`` for jobs, ...);
* enums for states, events, sorts, kinds, levels, directions and formats.

Values are documented, not enforced here: the routes keep refusing what the library refuses,
with its codes (``malformed_uuid``, ``invalid_input``...), so the document promises no more
than the service does and no less.
"""

from __future__ import annotations

import copy
from typing import Any

from catalog.catalog import FILE_KINDS, FILE_STATUSES, LEVELS
from catalog.identifiers import UUIDType
from catalog.lineage import DIRECTIONS, FORMATS
from catalog.states import EVENTS, STATES
from catalog.store.values import FILE_SORTS, JOB_SORTS

# Routes that need a token: "job" takes the job's token or the admin token, "admin" only the
# admin token, "ingest" the OpenLineage ingestion key or the admin token (bearer only).
TOKENS: dict[tuple[str, str], str] = {
    ("post", "/jobs/{uuid}/events"): "job",
    ("post", "/jobs/{uuid}/index"): "job",
    ("get", "/jobs/{uuid}/audit"): "job",
    ("post", "/jobs"): "admin",
    ("delete", "/jobs/{uuid}"): "admin",
    ("post", "/jobs/{uuid}/purge"): "admin",
    ("post", "/pipelines"): "admin",
    ("get", "/audit/refusals"): "admin",
    ("post", "/api/v1/lineage"): "ingest",
    ("post", "/queue/jobs"): "admin",
    ("post", "/queue/jobs/batch"): "admin",
    ("post", "/queue/withdraw"): "worker",
    ("post", "/queue/sweep"): "worker",
    ("post", "/jobs/{uuid}/heartbeat"): "worker",
    ("post", "/jobs/{uuid}/complete"): "worker",
    ("post", "/jobs/{uuid}/cancel"): "job",
    ("post", "/jobs/{uuid}/retry"): "job",
    ("post", "/jobs/{uuid}/bag"): "job",
    # CHIME/FRB's writes (catalog.compat.chime): the worker key or the admin token
    **{key: "chime" for key in (
        ("post", "/buckets/work"), ("post", "/buckets/work/withdraw"),
        ("put", "/buckets/work"), ("delete", "/buckets/work"),
        ("get", "/buckets/audit/failed"), ("get", "/buckets/audit/expired"),
        ("get", "/buckets/audit/stale/{days}"), ("post", "/results/results"),
        ("put", "/results/results"), ("delete", "/results/results"))},
    # CHIME/FRB's Swarm API (catalog.compat.swarm): the worker key or the admin token, raw
    **{key: "swarm" for key in (
        ("get", "/auth/verify"), ("post", "/auth/refresh"), ("post", "/v1/swarm/spawn-job"),
        ("get", "/v1/swarm/jobs"), ("get", "/v1/swarm/job-status/{job_name}"),
        ("get", "/v1/swarm/logs/{job_name}"), ("get", "/v1/swarm/kill-job/{job_name}"),
        ("get", "/v1/swarm/prune-job/{job_name}"))},
}

# What every route may answer: a Content-Length that is not a number (400), a body over
# max_body_bytes (413), an internal error (500).
COMMON_ERRORS = (400, 413, 500)
# The error statuses each route answers besides those (a 405 for a method a path does not
# serve is the framework's, with its Allow header, and not an operation's).
ERRORS: dict[tuple[str, str], tuple[int, ...]] = {
    ("get", "/version"): (),
    ("head", "/version"): (),
    ("get", "/health"): (),
    ("head", "/health"): (),
    ("post", "/jobs/{uuid}/events"): (401, 403, 404, 409, 410, 422, 429, 503),
    ("post", "/api/v1/lineage"): (401, 403, 404, 409, 422, 503),
    ("post", "/jobs/{uuid}/index"): (401, 403, 404, 409, 410, 422, 429, 503),
    ("get", "/jobs"): (404, 409, 422),
    ("post", "/jobs"): (401, 403, 404, 409, 410, 422, 429),
    ("get", "/jobs/{uuid}"): (404, 410),
    ("delete", "/jobs/{uuid}"): (401, 403, 404, 409, 410, 429, 503),
    ("post", "/jobs/{uuid}/purge"): (401, 403, 404, 409, 422, 429, 503),
    ("get", "/jobs/{uuid}/history"): (404, 410),
    ("get", "/jobs/{uuid}/audit"): (401, 403, 422, 429),
    ("get", "/audit/refusals"): (401, 403, 422, 429),
    ("get", "/lineage/{uuid}"): (404, 422),
    ("get", "/files"): (422,),
    ("get", "/files/{uuid}"): (404,),
    ("get", "/files/{uuid}/fixity"): (404, 422),
    ("get", "/pipelines"): (422,),
    ("get", "/pipelines/{uuid}"): (404, 409),
    ("post", "/pipelines"): (401, 403, 422, 429),
    ("post", "/queue/jobs"): (401, 403, 404, 409, 410, 422, 429, 503),
    ("post", "/queue/jobs/batch"): (401, 403, 404, 409, 410, 422, 429, 503),
    ("get", "/queue/status"): (422,),
    ("post", "/queue/withdraw"): (401, 403, 422, 429, 503),
    ("post", "/queue/sweep"): (401, 403, 429, 503),
    ("post", "/jobs/{uuid}/heartbeat"): (401, 403, 404, 409, 410, 422, 429, 503),
    ("post", "/jobs/{uuid}/complete"): (401, 403, 404, 409, 410, 422, 429, 503),
    ("post", "/jobs/{uuid}/cancel"): (401, 403, 404, 409, 410, 422, 429, 503),
    ("post", "/jobs/{uuid}/retry"): (401, 403, 404, 409, 410, 429, 503),
    ("post", "/jobs/{uuid}/bag"): (401, 403, 404, 409, 410, 422, 429, 503),
    ("get", "/fixity/runs"): (422,),
    ("get", "/jobs/wait"): (404, 422),
    ("get", "/jobs/stream"): (404, 409, 422, 503),
    ("get", "/api/v1/lineage"): (404, 422),
    ("get", "/api/v1/openlineage/datasets"): (404, 422),
    ("get", "/api/v1/jobs/runs/{run_id}"): (404,),
    ("get", "/api/v1/runs/{run_id}"): (404,),
    ("get", "/api/v1/namespaces"): (422,),
    ("get", "/api/v1/openlineage/runs/{run_id}"): (404,),
    # CHIME/FRB Buckets and Results: probes, then what each call may refuse
    **{(method, f"/{base}{tail}"): () for base in ("buckets", "results")
       for method, tail in (("get", "/version"), ("head", "/version"), ("get", ""),
                            ("get", "/"))},
    **{key: (401, 403, 404, 409, 422, 429, 503) for key in (
        ("post", "/buckets/work"), ("post", "/buckets/work/withdraw"),
        ("put", "/buckets/work"), ("delete", "/buckets/work"),
        ("get", "/buckets/audit/failed"), ("get", "/buckets/audit/expired"),
        ("get", "/buckets/audit/stale/{days}"), ("post", "/results/results"),
        ("put", "/results/results"), ("delete", "/results/results"))},
    **{key: (404, 422) for key in (
        ("post", "/buckets/view"), ("get", "/buckets/status"),
        ("get", "/buckets/status/details/{pipeline}"), ("get", "/buckets/status/pipelines"),
        ("post", "/results/view"), ("post", "/results/view/count"),
        ("get", "/results/status"))},
    # CHIME/FRB's Swarm API: every call needs a token; spawn may find no docker (503)
    **{key: (401, 403, 429) for key in (("get", "/auth/verify"), ("get", "/v1/swarm/jobs"))},
    ("post", "/auth/refresh"): (401, 403, 422, 429),
    ("post", "/v1/swarm/spawn-job"): (401, 403, 409, 422, 429, 503),
    ("get", "/v1/swarm/job-status/{job_name}"): (401, 403, 429),
    ("get", "/v1/swarm/prune-job/{job_name}"): (401, 403, 429),
    **{key: (401, 403, 404, 429) for key in (
        ("get", "/v1/swarm/logs/{job_name}"), ("get", "/v1/swarm/kill-job/{job_name}"))},
}

# Answers in more than JSON: (method, path) -> media type -> schema of a 200 answer.
OTHER_CONTENT: dict[tuple[str, str], dict[str, Any]] = {
    ("get", "/lineage/{uuid}"): {
        "text/provenance-notation": {"schema": {"type": "string",
                                                "description": "format=prov-n: W3C PROV-N."}},
    },
}

# Creations that answer 200, with the same document, when the record already existed.
IDEMPOTENT_CREATIONS = frozenset({("post", "/jobs"), ("post", "/pipelines")})

_REASONS = {400: "Invalid input", 401: "Token required", 403: "Token invalid",
            404: "Not found", 409: "Conflict with the current state",
            410: "Gone: deleted (a tombstone until purged)", 413: "Body too large",
            422: "Unprocessable document", 429: "Too many refused requests",
            500: "Internal error", 503: "Concurrency conflict: send again"}

# Path parameters named uuid, by path prefix: the UUID types each one takes.
UUID_PATHS: dict[str, tuple[UUIDType, ...]] = {
    "/jobs/{uuid}": (UUIDType.pipelinejob,),
    "/files/{uuid}": (UUIDType.file,),
    "/lineage/{uuid}": tuple(UUIDType),
}

# Enumerated query parameters: (path, parameter) -> allowed values.
ENUMS: dict[tuple[str, str], tuple[str, ...]] = {
    # A state is matched whatever its case; the document lists both spellings.
    ("/jobs", "state"): (*STATES, *(state.lower() for state in STATES)),
    ("/jobs", "sort"): JOB_SORTS,
    ("/files", "status"): FILE_STATUSES,
    ("/files", "kind"): FILE_KINDS,
    ("/files", "level"): LEVELS,
    ("/files", "sort"): FILE_SORTS,
    ("/lineage/{uuid}", "direction"): DIRECTIONS,
    ("/lineage/{uuid}", "format"): FORMATS,
}

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "description": "The one error shape every route answers with.",
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {"error": {
        "type": "object", "required": ["code", "message"], "additionalProperties": False,
        "properties": {
            "code": {"type": "string", "description": "Stable code (catalog.errors)."},
            "message": {"type": "string", "description": "What was wrong, in words."},
        },
    }},
}
SECURITY_SCHEMES: dict[str, Any] = {
    "bearerToken": {"type": "http", "scheme": "bearer",
                    "description": "A job's token (hex) or the admin token."},
    "accessToken": {"type": "apiKey", "in": "header", "name": "x-access-token",
                    "description": "workflow-core's header: the worker key or the admin "
                    "token."},
    "rawAuthorization": {"type": "apiKey", "in": "header", "name": "authorization",
                         "description": "chime-frb-api's header: the raw token, no 'Bearer'."},
    "queryToken": {"type": "apiKey", "in": "query", "name": "token",
                   "description": "The same token as ?token= (webhook senders that cannot "
                   "set a header). Never logged."},
}
_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "job": [{"bearerToken": []}, {"queryToken": []}],
    "admin": [{"bearerToken": []}, {"queryToken": []}],
    "ingest": [{"bearerToken": []}],
    "worker": [{"bearerToken": []}, {"queryToken": []}],
    "chime": [{"accessToken": []}, {"rawAuthorization": []}],
    "swarm": [{"accessToken": []}, {"rawAuthorization": []}],
}
_WHO = {"job": "the job's token or the admin token", "admin": "the admin token",
        "ingest": "the ingestion key (setting openlineage_key) or the admin token",
        "worker": "the worker key ('catalog token worker') or the admin token",
        "chime": "the worker key or the admin token, as CHIME/FRB's clients send it "
                 "(unless the setting chime_anonymous_writes lets a tokenless client write)",
        "swarm": "the worker key or the admin token, raw in authorization as chime-frb-api sends "
                 "it (or in x-access-token)"}


def uuid_pattern(*kinds: UUIDType) -> str:
    """The pattern of a typed UUID of one of ``kinds`` (name-based, version 5)."""
    prefixes = "|".join(kind.prefix for kind in kinds)
    return (f"^({prefixes})[0-9a-fA-F]{{5}}-[0-9a-fA-F]{{4}}-5[0-9a-fA-F]{{3}}-"
            "[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` (FastAPI's) completed as the module docstring says; a new document."""
    document = copy.deepcopy(document)
    components = document.setdefault("components", {})
    components.setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    components["securitySchemes"] = SECURITY_SCHEMES
    _event_names(components["schemas"].get("Event"))
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            _operation(path, method, operation)
            body = operation.get("requestBody", {}).get("content", {})
            _event_names(body.get("application/json", {}).get("schema"))
    return document


def _event_names(schema: dict[str, Any] | None) -> None:
    """An event's name is one the state machine knows (others are refused, 422)."""
    if schema is not None and schema.get("title") == "Event":
        name = schema["properties"]["name"]
        name.pop("minLength", None)
        name.pop("maxLength", None)
        name["enum"] = list(EVENTS)


def _operation(path: str, method: str, operation: dict[str, Any]) -> None:
    key = (method, path)
    who = TOKENS.get(key)
    if who is not None:
        operation["security"] = _SECURITY[who]
        operation["description"] = (operation.get("description", "") +
                                     f"\n\nNeeds {_WHO[who]}.").strip()
    responses = operation.setdefault("responses", {})
    if key in IDEMPOTENT_CREATIONS and "201" in responses:
        responses["200"] = {**copy.deepcopy(responses["201"]),
                            "description": "It existed already: the same record, unchanged."}
    if key in OTHER_CONTENT:
        responses["200"].setdefault("content", {}).update(OTHER_CONTENT[key])
    for status in list(responses):
        if status[0] in "45":
            del responses[status]  # FastAPI's placeholders and its own 422 shape
    for status in sorted({*COMMON_ERRORS, *ERRORS.get(key, (422,))}):
        response: dict[str, Any] = {
            "description": _REASONS[status],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        if status == 429:
            response["headers"] = {"Retry-After": {
                "description": "Seconds before a refused address is served again.",
                "schema": {"type": "integer", "minimum": 1}}}
        responses[str(status)] = response
    for parameter in operation.get("parameters", []):
        schema = parameter.setdefault("schema", {})
        if parameter.get("in") == "path" and parameter.get("name") == "uuid":
            kinds = next((kinds for prefix, kinds in UUID_PATHS.items()
                          if path == prefix or path.startswith(prefix + "/")), None)
            if kinds is not None:
                schema.update(type="string", pattern=uuid_pattern(*kinds))
                schema.pop("anyOf", None)
                parameter["description"] = (
                    "A typed UUID: type prefix " + " or ".join(k.prefix for k in kinds)
                    + (f" ({kinds[0].name})" if len(kinds) == 1 else "") + ".")
        if parameter.get("in") == "query":
            values = ENUMS.get((path, parameter["name"]))
            if values is not None:
                _enum(schema, values)


def _enum(schema: dict[str, Any], values: tuple[str, ...]) -> None:
    """Give a (possibly nullable) string parameter its allowed values."""
    options = schema.get("anyOf")
    if options:
        for option in options:
            if option.get("type") == "string":
                option["enum"] = list(values)
        schema["anyOf"] = [o for o in options if o.get("type") != "null"] or options
        if len(schema["anyOf"]) == 1:
            schema.update(schema.pop("anyOf")[0])
    else:
        schema["enum"] = list(values)

