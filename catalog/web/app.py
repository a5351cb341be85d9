"""The HTTP service: webhooks, status callbacks and the JSON API over one Catalog.

Routes parse, call the library and render; every error leaves as ``{"error": {"code",
"message"}}`` with its status. Tokens come from ``?token=`` or ``Authorization: Bearer`` and
are never logged: the access log written here drops query strings.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from catalog import __version__
from catalog.catalog import Catalog, parse_body, parse_document
from catalog.errors import CatalogError, InvalidInput
from catalog.jobs import create_job
from catalog.lineage import DEFAULT_LIMIT, FORMATS, MAX_LIMIT
from catalog.messages import CreatedJob, EventOutcome, IndexOptions, JobRequest, PipelineRequest
from catalog.models import Event, FileRecord, Job, Pipeline
from catalog.spool import stream_document
from catalog.web.abuse import client_address, error_headers, hold_back
from catalog.web.accesslog import AccessLog, loggable_path, withhold_tokens
from catalog.web.audit import add_audit_routes
from catalog.web.chime_routes import add_chime_routes
from catalog.web.deletion_routes import add_deletion_routes
from catalog.web.fixity_routes import add_fixity_routes
from catalog.web.openapi import complete as complete_openapi
from catalog.web.openlineage_routes import add_openlineage_routes
from catalog.web.queue_routes import add_queue_routes, add_wait_route
from catalog.web.stream_routes import add_stream_route
from catalog.web.swarm_routes import add_swarm_routes
from catalog.web.ui import OriginCheck, add_ui_routes
from catalog.web.webhook import (
    CatalogApp,
    bearer_or_query_token,
    declared_length,
    error_body,
    send_json,
    too_large,
)

log = logging.getLogger("catalog.web")

Limit = Annotated[int, Query(ge=1, le=1000, description="Page size.")]


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes, declared or streamed, before any work."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            declared_length(scope.get("headers", []), self.limit)
        except CatalogError as exc:
            await send_json(send, exc.status, error_body(exc))
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise too_large(self.limit)
            return message

        await self.app(scope, limited, send)


def _body_schema(model: type[BaseModel] | None, required: bool = True) -> dict[str, Any]:
    """OpenAPI request body for routes that read their body raw (to audit malformed ones)."""
    schema: dict[str, Any] = {"type": "object"}
    if model is not None:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schema.pop("$defs", None)
    return {"requestBody": {"required": required,
                            "content": {"application/json": {"schema": schema}}}}


def _token(request: Request) -> str | None:
    return bearer_or_query_token(request.headers.get("authorization"), request.query_params)


async def _json_body(request: Request) -> Any:
    return parse_body(await request.body())


def _render(model: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status)


def create_app(catalog: Catalog) -> FastAPI:
    """The ASGI app serving ``catalog``."""
    # /docs and /redoc are served from packaged assets by catalog.web.ui (offline), not a CDN
    app = CatalogApp(title="catalog", version=__version__, docs_url=None, redoc_url=None,
                     description="Provenance and data-catalog job manager.")
    app.state.catalog = catalog
    app.catalog = catalog  # event documents to the webhook take the hot path (web/webhook.py)
    app.add_middleware(BodyLimit, limit=catalog.settings.max_body_bytes)
    _register_errors(app)

    app.add_middleware(AccessLog)

    def version() -> dict[str, str]:
        return {"name": "catalog", "version": __version__}

    def health() -> dict[str, str]:
        return {"status": "ok", "store": catalog.store.kind}

    for path, endpoint in (("/version", version), ("/health", health)):
        name = path.strip("/")
        app.get(path, operation_id=f"get_{name}")(endpoint)
        app.head(path, operation_id=f"head_{name}")(endpoint)

    @app.post("/jobs/{uuid}/events", response_model=EventOutcome,
              responses={400: {}, 401: {}, 403: {}, 404: {}, 409: {}, 413: {}, 422: {}},
              openapi_extra=_body_schema(Event, required=False))
    async def job_event(request: Request, uuid: str, status: str | None = None,
                        mapping: str | None = None) -> Response:
        """Webhook: an event document, or another system's ``?status=`` (body optional).

        The token comes as ``?token=`` or ``Authorization: Bearer``; an ``Idempotency-Key``
        header stands in for a missing ``event_id``. The body is handed over raw so that the
        library authenticates first and audits malformed bodies like any other refusal.
        ``CatalogApp`` answers event documents before they reach this route (the hot path,
        ``catalog.web.webhook``); status callbacks are answered here.
        """
        token = _token(request)
        body = await request.body()
        idempotency_key = request.headers.get("idempotency-key") or None
        client = client_address(request.scope)
        if status is not None:
            outcome = await run_in_threadpool(catalog.handle_status, uuid, status, token,
                                              mapping, None, idempotency_key, "webhook", body,
                                              client)
        else:
            outcome = await catalog.handle_event_async(uuid, body, token, "webhook",
                                                       idempotency_key, client)
        return Response(outcome.model_dump_json(), media_type="application/json")

    @app.post("/jobs/{uuid}/index", responses={400: {}, 401: {}, 403: {}, 404: {}, 409: {},
                                                422: {}},
              openapi_extra=_body_schema(IndexOptions, required=False))
    async def index_job_files(request: Request, uuid: str) -> Response:
        """Index the job's files (job token); answers ``{"uuid", "state", "files": [...]}``."""
        from catalog.indexer import index_job
        from catalog.spool import JSONSpool

        # Refused here, with the client's address, so that anonymous refusals are counted
        # (catalog.refusals) rather than written one by one by index_job.
        catalog.check_job_token(uuid, _token(request), "api", client_address(request.scope))
        body = await request.body()
        options = parse_document(IndexOptions, parse_body(body), "index options") \
            if body.strip() else IndexOptions()
        # The records wait in a spool (on disk past a few MiB) and are streamed from it, so a
        # tree of a million files is answered without a million records held in memory.
        spool = JSONSpool(separators=(",", ":"))  # JSONResponse's rendering
        try:
            result = await run_in_threadpool(index_job, catalog, uuid, _token(request),
                                             options.requests, options.fixity, options.rehash,
                                             options.fail_on_error, "api", None, spool,
                                             accept_changes=options.accept_changes)
            length, chunks = spool.document(result.to_dict(), "files")
        except BaseException:
            spool.close()
            raise
        return StreamingResponse(chunks, media_type="application/json",
                                 headers={"content-length": str(length)},
                                 background=BackgroundTask(spool.close))

    @app.get("/jobs")
    def list_jobs(state: str | None = None, pipeline: str | None = None,
                  child_of: str | None = None, agent: str | None = None,
                  created_after: str | None = None, created_before: str | None = None,
                  text: str | None = None, sort: str = "created", limit: Limit = 100,
                  cursor: str | None = None) -> dict[str, Any]:
        page = catalog.find_jobs(state, pipeline, child_of, limit, cursor, agent=agent,
                                 created_after=created_after, created_before=created_before,
                                 text=text, sort=sort)
        return {"jobs": page.items, "next": page.next}

    add_wait_route(app, catalog)  # before /jobs/{uuid}, which would take "wait" for a UUID
    add_stream_route(app, catalog)  # ...and "stream"

    # A job's history is streamed a page at a time (catalog.spool.stream_document): a job of
    # a million events is answered without holding them, in JSONResponse's rendering.
    @app.get("/jobs/{uuid}", response_model=Job)
    def get_job(uuid: str) -> StreamingResponse:
        job, pages = catalog.job_and_history_pages(uuid)
        return StreamingResponse(stream_document(job.model_dump(mode="json"), "history", pages,
                                                 (",", ":")), media_type="application/json")

    @app.get("/jobs/{uuid}/history")
    def get_history(uuid: str) -> StreamingResponse:
        job, pages = catalog.job_and_history_pages(uuid)
        return StreamingResponse(stream_document({"uuid": job.uuid, "state": job.state,
                                                  "history": []}, "history", pages, (",", ":")),
                                 media_type="application/json")

    @app.post("/jobs", response_model=CreatedJob, status_code=201,
              openapi_extra=_body_schema(JobRequest))
    async def post_job(request: Request) -> JSONResponse:
        """Create a job (admin token); answers 200 with the same job when it exists."""
        catalog.check_admin(_token(request), "create jobs", "api", client_address(request.scope))
        body = await _json_body(request)
        created = await run_in_threadpool(create_job, catalog, body, "api",
                                          catalog.settings.base_url)
        return _render(created, 201 if created.created else 200)

    add_deletion_routes(app, catalog)
    add_queue_routes(app, catalog)
    add_chime_routes(app, catalog)
    add_swarm_routes(app, catalog)
    add_fixity_routes(app, catalog)
    add_openlineage_routes(app, catalog)

    @app.get("/lineage/{uuid}", responses={400: {}, 422: {}})
    def get_lineage(uuid: str, direction: str = "up",
                    depth: Annotated[int, Query(ge=0, le=20)] = 5,
                    limit: Annotated[int, Query(
                        ge=1, le=MAX_LIMIT, description="At most this many edges; a larger "
                        "graph comes back cut to them, marked truncated.")] = DEFAULT_LIMIT,
                    format_: Annotated[str, Query(
                        alias="format",
                        description="json, prov-json (W3C PROV-JSON) or prov-n (PROV-N).")
                    ] = "json") -> Response:
        """The lineage graph as the catalog's JSON or as a W3C PROV document."""
        from catalog.prov import as_prov_json, as_prov_n

        if format_ not in FORMATS:
            raise InvalidInput(f"format must be one of {', '.join(FORMATS)}, not {format_!r}")
        graph = catalog.lineage(uuid, direction, depth, limit)
        # A PROV document has no place to say it was cut short: a header says it for all three.
        headers = {"catalog-lineage-truncated": "true" if graph["truncated"] else "false"}
        if format_ == "prov-json":
            return Response(as_prov_json(graph), media_type="application/json", headers=headers)
        if format_ == "prov-n":
            return PlainTextResponse(as_prov_n(graph), headers=headers,
                                     media_type="text/provenance-notation; charset=utf-8")
        return JSONResponse(graph, headers=headers)

    @app.get("/files")
    def list_files(job: str | None = None, path_prefix: str | None = None,
                   status: str | None = None, checksum: str | None = None,
                   path_glob: str | None = None, kind: str | None = None,
                   level: str | None = None, media_type: str | None = None,
                   sort: str = "path", limit: Limit = 100,
                   cursor: str | None = None) -> dict[str, Any]:
        page = catalog.find_files(job, path_prefix, status, checksum, limit, cursor,
                                  path_glob=path_glob, kind=kind, level=level,
                                  media_type=media_type, sort=sort)
        return {"files": page.items, "next": page.next}

    @app.get("/files/{uuid}", response_model=FileRecord)
    def get_file(uuid: str) -> JSONResponse:
        return _render(catalog.get_file(uuid))

    @app.get("/pipelines")
    def list_pipelines(name: str | None = None, limit: Limit = 100,
                       cursor: str | None = None) -> dict[str, Any]:
        page = catalog.list_pipelines(name, limit, cursor)
        return {"pipelines": page.items, "next": page.next}

    @app.get("/pipelines/{uuid}", response_model=Pipeline)
    def get_pipeline(uuid: str) -> JSONResponse:
        return _render(catalog.get_pipeline(uuid))

    @app.post("/pipelines", response_model=Pipeline, status_code=201,
              openapi_extra=_body_schema(PipelineRequest))
    async def post_pipeline(request: Request) -> JSONResponse:
        """Register a pipeline (admin token); answers 200 when it was already registered."""
        catalog.check_admin(_token(request), "register pipelines", "api",
                            client_address(request.scope))
        spec = parse_document(PipelineRequest, await _json_body(request), "pipeline")
        pipeline, created = await run_in_threadpool(
            catalog.add_pipeline, spec.name, spec.version, spec.components, spec.description)
        return _render(pipeline, 201 if created else 200)

    add_audit_routes(app, catalog)
    add_ui_routes(app, catalog)
    app.add_middleware(OriginCheck)
    _complete_openapi(app)
    return app


def _complete_openapi(app: FastAPI) -> None:
    """Serve the OpenAPI document completed by ``catalog.web.openapi`` (built once)."""
    build = app.openapi
    built: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        if not built:
            built.append(complete_openapi(build()))
        return built[0]

    app.openapi = openapi  # type: ignore[method-assign]


def _register_errors(app: FastAPI) -> None:
    def error(status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse({"error": {"code": code, "message": withhold_tokens(message)}},
                            status_code=status)

    @app.exception_handler(CatalogError)
    async def catalog_error(request: Request, exc: CatalogError) -> JSONResponse:
        if exc.status >= 500:
            log.error("%s %s failed: %s", request.method, loggable_path(request.url.path),
                      exc.code)
        await hold_back(exc, app.state.catalog.settings.rate_limit_delay_s)
        response = error(exc.status, exc.code, exc.message)
        response.headers.update(error_headers(exc))
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return error(422, "schema_violation", problems or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        response = error(exc.status_code, codes.get(exc.status_code, "http_error"),
                         str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # Allow must list every route's methods on this path
            path = request.url.path
            allowed = {method for route in app.routes if isinstance(route, APIRoute)
                       and route.path_regex.match(path) for method in route.methods or ()}
            response.headers["Allow"] = ", ".join(sorted(allowed))
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s: unexpected error", request.method,
                      loggable_path(request.url.path))
        return error(500, "internal_error", "internal error")
