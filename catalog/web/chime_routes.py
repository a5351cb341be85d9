"""The HTTP routes of CHIME/FRB's Buckets (``/buckets``) and Results (``/results``), each its
client's base URL, over ``catalog.compat.chime``: parse, call, render."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from catalog import __version__
from catalog.catalog import Catalog, parse_body
from catalog.compat.chime import (
    WITHDRAW_FIELDS,
    WORK_LIST_MAX,
    ViewRequest,
    WorkIn,
    deposit,
    report,
    withdraw_work,
)
from catalog.compat.chime_views import (
    audit_expired,
    audit_failed,
    audit_stale,
    counts,
    hide,
    pipelines,
    remove_results,
    results_status,
    transfer,
    update_results,
    view,
)


def _token(request: Request) -> str | None:
    token = request.headers.get("x-access-token") or request.headers.get("authorization")
    if token and token.lower().startswith("bearer "):
        token = token[7:]
    return token.strip() or None if token else None


def _writer(catalog: Catalog, request: Request, action: str) -> None:
    """A write needs the worker key or the admin token (``x-access-token`` or a raw
    ``authorization``), unless ``chime_anonymous_writes`` lets a tokenless client write."""
    token = _token(request)
    if token is None and catalog.settings.chime_anonymous_writes:
        return
    from catalog.web.abuse import client_address  # catalog.web imports this module

    # A refusal is counted, not written one by one (catalog.refusals), and rate-limited.
    catalog.check_worker(token, action, "api", client_address(request.scope))


async def _document(request: Request) -> Any:
    return parse_body(await request.body())


def _worker(request: Request) -> str:
    host = request.client.host if request.client is not None else "unknown"
    agent = request.headers.get("user-agent", "")[:64]
    return f"chime@{host} {agent}".strip()[:256]


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    """The request body a route reads raw, documented for the OpenAPI document."""
    schema = dict(schema)
    schema.pop("$defs", None)
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}}}


WORKS_BODY = _body({"type": "array", "items": WorkIn.model_json_schema(), "maxItems":
                    WORK_LIST_MAX})
VIEW_BODY = _body(ViewRequest.model_json_schema())
FILTER_BODY = _body({"type": "object", "description": "Equality or {$in: [...]} on "
                     + ", ".join(WITHDRAW_FIELDS), "properties": {
                         key: {} for key in WITHDRAW_FIELDS}, "additionalProperties": False})
REFUSALS: dict[int | str, dict[str, Any]] = {400: {}, 401: {}, 403: {}, 404: {}, 409: {},
                                            413: {}, 422: {}}


def add_chime_routes(app: FastAPI, catalog: Catalog) -> None:
    """Register Buckets (``/buckets``) and Results (``/results``) on ``app`` itself (an
    included router is one opaque route in FastAPI's list, which the 405 handler reads)."""

    def version() -> dict[str, str]:
        return {"name": "catalog", "version": __version__}

    for base in ("buckets", "results"):
        for method in ("GET", "HEAD"):  # workflow-core probes with HEAD
            app.add_api_route(f"/{base}/version", version, methods=[method], tags=[base],
                              operation_id=f"{method.lower()}_{base}_version",
                              summary=f"CHIME {base.title()}: the probe of a base URL")
        for root, name in ((f"/{base}", "root"), (f"/{base}/", "root_slash")):
            app.add_api_route(root, version, methods=["GET"], tags=[base],
                              operation_id=f"get_{base}_{name}",
                              summary=f"CHIME {base.title()}: the start-up check")

    def route(path: str, method: str, body: dict[str, Any] | None = None
              ) -> Callable[[Any], Any]:
        base = path.split("/")[1]

        def register(endpoint: Any) -> Any:
            app.add_api_route(path, endpoint, methods=[method], tags=[base],
                              responses=REFUSALS, openapi_extra=body,
                              operation_id=f"chime_{endpoint.__name__}")
            return endpoint
        return register

    def threaded(function: Callable[..., Any], *args: Any) -> Any:
        return run_in_threadpool(function, *args)

    @route("/buckets/work", "POST", WORKS_BODY)
    async def post_work(request: Request) -> JSONResponse:
        """Deposit Works (worker key): ``true``, or their ids with ``?return_ids=True``."""
        _writer(catalog, request, "deposit work")
        ids = await threaded(deposit, catalog, await _document(request))
        wanted = any(v.lower() == "true" for v in request.query_params.getlist("return_ids"))
        return JSONResponse(ids if wanted else True)

    @route("/buckets/work/withdraw", "POST", FILTER_BODY)
    async def post_withdraw(request: Request) -> JSONResponse:
        """Withdraw the next queued Work matching the filter (worker key), or ``null``."""
        _writer(catalog, request, "withdraw work")
        work = await threaded(withdraw_work, catalog, await _document(request),
                              _worker(request))
        return JSONResponse(work)

    @route("/buckets/work", "PUT", WORKS_BODY)
    async def put_work(request: Request) -> JSONResponse:
        """A runner's report (worker key): success or failure ends the running attempt."""
        _writer(catalog, request, "update work")
        await threaded(report, catalog, await _document(request))
        return JSONResponse(True)

    @route("/buckets/work", "DELETE")
    async def delete_work(request: Request) -> JSONResponse:
        """Hide ``?ids=`` from Buckets (worker key); the jobs and their history stay."""
        _writer(catalog, request, "delete work")
        await threaded(hide, catalog, request.query_params.getlist("ids"))
        return JSONResponse(True)

    @route("/buckets/view", "POST", VIEW_BODY)
    async def post_view(request: Request) -> JSONResponse:
        """Works matching a Mongo-style query, skipped, limited (0: all) and projected."""
        return JSONResponse(await threaded(view, catalog, await _document(request)))

    @route("/buckets/status", "GET")
    async def get_status() -> JSONResponse:
        """Works by status: total, queued, running, success, failure."""
        return JSONResponse(await threaded(counts, catalog))

    @route("/buckets/status/details/{pipeline}", "GET")
    async def get_status_details(pipeline: str) -> JSONResponse:
        """One pipeline's Works by status."""
        return JSONResponse(await threaded(counts, catalog, pipeline))

    @route("/buckets/status/pipelines", "GET")
    async def get_pipelines() -> JSONResponse:
        """The names of the pipelines that have jobs."""
        return JSONResponse(await threaded(pipelines, catalog))

    @route("/buckets/audit/failed", "GET")
    async def get_audit_failed(request: Request) -> JSONResponse:
        """Queue again failed Works with attempts left (worker key); how many."""
        _writer(catalog, request, "requeue failed work")
        return JSONResponse(await threaded(audit_failed, catalog))

    @route("/buckets/audit/expired", "GET")
    async def get_audit_expired(request: Request) -> JSONResponse:
        """Fail the attempts past their timeout (worker key); how many."""
        _writer(catalog, request, "fail expired work")
        return JSONResponse(await threaded(audit_expired, catalog))

    @route("/buckets/audit/stale/{days}", "GET")
    async def get_audit_stale(request: Request, days: float) -> JSONResponse:
        """Cancel the Works queued for more than ``days`` days (worker key); how many."""
        _writer(catalog, request, "cancel stale work")
        return JSONResponse(await threaded(audit_stale, catalog, days))

    @route("/results/results", "POST", WORKS_BODY)
    async def post_results(request: Request) -> JSONResponse:
        """Transfer ended Works to Results (worker key): marked, never copied."""
        _writer(catalog, request, "transfer work to results")
        return JSONResponse(await threaded(transfer, catalog, await _document(request)))

    @route("/results/results", "PUT", WORKS_BODY)
    async def put_results(request: Request) -> JSONResponse:
        """Updates of Works in Results (worker key), kept beside their jobs."""
        _writer(catalog, request, "update results")
        return JSONResponse(await threaded(update_results, catalog, await _document(request)))

    @route("/results/results", "DELETE")
    async def delete_results(request: Request) -> JSONResponse:
        """Hide ``?<pipeline>=id`` from Results (worker key); the jobs stay."""
        _writer(catalog, request, "delete results")
        pairs = list(request.query_params.multi_items())
        return JSONResponse(await threaded(remove_results, catalog, pairs))

    @route("/results/view", "POST", VIEW_BODY)
    async def post_results_view(request: Request) -> JSONResponse:
        """Works in Results matching a Mongo-style query."""
        return JSONResponse(await threaded(view, catalog, await _document(request), True))

    @route("/results/view/count", "POST", VIEW_BODY)
    async def post_results_count(request: Request) -> JSONResponse:
        """How many Works in Results match a query."""
        return JSONResponse(await threaded(view, catalog, await _document(request), True,
                                           True))

    @route("/results/status", "GET")
    async def get_results_status() -> JSONResponse:
        """Works in Results by pipeline."""
        return JSONResponse(await threaded(results_status, catalog))
