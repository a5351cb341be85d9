"""OpenLineage over HTTP: ``POST /api/v1/lineage`` (what Marquez takes: gzip bodies too, the
key in the ``Authorization`` header only) and the reads: runs, datasets, and Marquez's lineage
graph (catalog.compat.marquez). Each route parses, calls the library and renders."""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import parse_qsl, unquote

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from catalog.catalog import Catalog, parse_body
from catalog.compat.marquez import (
    lineage_graph,
    marquez_dataset,
    marquez_datasets,
    marquez_job,
    marquez_jobs,
    marquez_namespace,
    marquez_namespaces,
    marquez_run,
    marquez_runs,
)
from catalog.errors import BodyTooLarge, CatalogError, InvalidData, InvalidInput, NotFound
from catalog.openlineage import ingest_async
from catalog.openlineage_views import get_dataset, get_run, list_datasets
from catalog.web.accesslog import log_access, loggable_path
from catalog.web.ui import cross_site
from catalog.web.webhook import (
    CatalogApp,
    HotRoute,
    declared_length,
    read_body,
    send_error,
    send_json,
)

log = logging.getLogger("catalog.web")
# JSONResponse's rendering, as the FastAPI route answers.
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode

_REFUSALS: dict[int | str, dict[str, Any]] = {400: {}, 401: {}, 403: {}, 404: {}, 413: {},
                                             422: {}}
# An event after decompression at most: a schema facet of thousands of columns passes.
MIN_EVENT_BYTES = 8 * 1024 * 1024
MAX_OFFSET = 10**9  # Marquez's offset, bounded: SQLite's integers are 64-bit


def _key(request: Request) -> str | None:
    return _bearer(request.query_params, request.headers.get("authorization"))


def _bearer(query: Mapping[str, str], authorization: str | None) -> str | None:
    """The bearer key of the ``Authorization`` header; a key in the URL is refused (URLs are
    logged, by proxies if not here)."""
    if "token" in query or "api_key" in query:
        raise InvalidInput("send the key in the Authorization header (Bearer), not in the URL")
    scheme, _, value = (authorization or "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def decompressed(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body, gunzipped when ``Content-Encoding: gzip``; 413 past ``limit`` bytes."""
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("identity", ""):
        data = body
    elif encoding in ("gzip", "x-gzip", "deflate"):
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header
        try:
            data = inflater.decompress(body, limit + 1)
        except zlib.error:
            raise InvalidData(f"the body is not valid {encoding} data") from None
        if not inflater.eof and len(data) <= limit:
            raise InvalidData(f"the {encoding} body is truncated")
    else:
        raise InvalidInput(f"Content-Encoding {encoding!r} is not supported (gzip is)")
    if len(data) > limit:
        raise BodyTooLarge(f"the event is larger than {limit} bytes once decompressed")
    return data


def _paging(request: Request) -> tuple[int, int]:
    """Marquez's ``limit`` (1-1000, 100 by default) and ``offset`` (0 by default)."""
    limit = request.query_params.get("limit", "100")
    if not limit.isdigit() or not 1 <= int(limit) <= 1000:
        raise InvalidInput(f"limit must be between 1 and 1000, got {limit!r}")
    offset = request.query_params.get("offset", "0")
    if not offset.isdigit() or int(offset) > MAX_OFFSET:
        raise InvalidInput(f"offset must be a whole number of at most {MAX_OFFSET}, "
                           f"got {offset!r}")
    return int(limit), int(offset)


def hot_post(catalog: Catalog) -> HotRoute:
    """``POST /api/v1/lineage`` in plain ASGI, ahead of the framework's layers (as the webhook
    is: ``catalog.web.webhook``), answering as ``post_lineage`` below: the origin, the key, the
    raw body's limit, gzip, the event's limit once decompressed, then ``ingest_async``."""
    limit = max(MIN_EVENT_BYTES, catalog.settings.max_body_bytes)
    raw_limit = catalog.settings.max_body_bytes

    async def post(scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 200
        try:
            try:
                refusal = cross_site(scope)
                if refusal is not None:
                    raise refusal
                query = dict(parse_qsl(scope["query_string"].decode("latin-1"),
                                       keep_blank_values=True))
                headers: list[tuple[bytes, bytes]] = scope["headers"]
                found = {name: value.decode("latin-1") for name, value in headers
                         if name in (b"authorization", b"content-encoding")}
                declared_length(headers, raw_limit)  # the order of the FastAPI app's checks
                key = _bearer(query, found.get(b"authorization"))
                body = await read_body(receive, raw_limit)
                if body is None:  # the client went away: there is no one to answer
                    status = 499
                    return
                document = parse_body(decompressed(body, found.get(b"content-encoding"), limit))
                outcome = await ingest_async(catalog, document, key, "api")
            except CatalogError as exc:
                if exc.status >= 500:
                    log.error("POST %s failed: %s", loggable_path(scope["path"]), exc.code)
                status = exc.status
                await send_error(send, exc, catalog.settings.rate_limit_delay_s)
                return
            await send_json(send, 200, _encode(outcome).encode())
        except Exception:
            log.exception("POST %s: unexpected error", loggable_path(scope["path"]))
            status = 500
            await send_json(send, 500, b'{"error":{"code":"internal_error",'
                                       b'"message":"internal error"}}')
        finally:
            log_access("POST", scope["path"], status, started)

    return post


def add_openlineage_routes(app: FastAPI, catalog: Catalog) -> None:
    limit = max(MIN_EVENT_BYTES, catalog.settings.max_body_bytes)
    if isinstance(app, CatalogApp):
        app.hot_posts["/api/v1/lineage"] = hot_post(catalog)

    @app.post("/api/v1/lineage", responses={**_REFUSALS, 409: {}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {"type": "object"}}}}})
    async def post_lineage(request: Request) -> JSONResponse:
        """An OpenLineage RunEvent, JobEvent or DatasetEvent (``Authorization: Bearer`` with
        the ingestion key or the admin token; ``Content-Encoding: gzip`` accepted)."""
        token = _key(request)
        body = decompressed(await request.body(), request.headers.get("content-encoding"),
                            limit)
        return JSONResponse(await ingest_async(catalog, parse_body(body), token, "api"))

    @app.get("/api/v1/lineage", responses=_REFUSALS)
    def marquez_lineage(node_id: Annotated[str, Query(alias="nodeId")],
                        depth: Annotated[int, Query(ge=0, le=20)] = 20) -> dict[str, Any]:
        """Marquez's lineage graph around ``dataset:NS:NAME`` or ``job:NS:NAME``."""
        return lineage_graph(catalog, node_id, depth)

    @app.get("/api/v1/openlineage/datasets", responses=_REFUSALS)
    def datasets(namespace: str | None = None, name: str | None = None,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                 cursor: str | None = None) -> dict[str, Any]:
        """Datasets by namespace; with ``namespace`` and ``name``, that one dataset whole."""
        if name is not None:
            if namespace is None:
                raise InvalidInput("a dataset's name needs its namespace")
            return get_dataset(catalog, namespace, name)
        return list_datasets(catalog, namespace, limit, cursor)

    def namespace_document(parts: list[str], limit: int, offset: int) -> dict[str, Any]:
        if len(parts) == 1:
            return marquez_namespace(catalog, parts[0])
        if len(parts) == 2 and parts[1] == "datasets":
            return marquez_datasets(catalog, parts[0], limit, offset)
        if len(parts) == 3 and parts[1] == "datasets":
            return marquez_dataset(catalog, parts[0], parts[2])
        if len(parts) == 2 and parts[1] == "jobs":
            return marquez_jobs(catalog, parts[0], limit, offset)
        if len(parts) == 3 and parts[1] == "jobs":
            return marquez_job(catalog, parts[0], parts[2])
        if len(parts) == 4 and parts[1] == "jobs" and parts[3] == "runs":
            return marquez_runs(catalog, parts[0], parts[2], limit, offset)
        raise NotFound(f"no route /api/v1/namespaces/{'/'.join(parts)}: the namespace, dataset "
                       "and job names are URL-encoded parts")

    async def marquez_namespace_route(request: Request) -> JSONResponse:
        """Marquez's ``{namespace}``, ``{namespace}/datasets[/{name}]``,
        ``{namespace}/jobs[/{job}]`` and ``{namespace}/jobs/{job}/runs``, each part URL-encoded
        as Marquez clients send it (a plain route: its parts are split before decoding, which a
        path parameter cannot); ``limit`` and ``offset`` page the lists, as Marquez's."""
        raw = request.scope.get("raw_path") or request.url.path.encode()
        tail = raw.decode("latin-1").split("?")[0].split("/api/v1/namespaces/", 1)[1]
        limit, offset = _paging(request)
        document = await run_in_threadpool(
            namespace_document, [unquote(part) for part in tail.split("/")], limit, offset)
        return JSONResponse(document)

    @app.get("/api/v1/namespaces", responses=_REFUSALS)
    def namespaces(limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                   offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> dict[str, Any]:
        """Marquez's namespaces: those of the OpenLineage jobs and datasets, by name."""
        return marquez_namespaces(catalog, limit, offset)

    app.router.add_route("/api/v1/namespaces/{path:path}", marquez_namespace_route,
                         methods=["GET"])

    @app.get("/api/v1/jobs/runs/{run_id}", responses=_REFUSALS)
    def marquez_run_route(run_id: str) -> dict[str, Any]:
        """Marquez's run by its id."""
        return marquez_run(catalog, run_id)

    @app.get("/api/v1/runs/{run_id}", responses=_REFUSALS)
    def marquez_run_short(run_id: str) -> dict[str, Any]:
        """Marquez's run by its id (as ``/api/v1/jobs/runs/{run_id}``)."""
        return marquez_run(catalog, run_id)

    @app.get("/api/v1/openlineage/runs/{run_id}", responses=_REFUSALS)
    def run(run_id: str) -> dict[str, Any]:
        """A run: state, times, terminal events, parent and children, datasets, facets."""
        return get_run(catalog, run_id)
