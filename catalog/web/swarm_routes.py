"""The Swarm surface's routes (``catalog.compat.swarm``) and chime-frb-api's authentication
calls, registered on the app itself.

chime-frb-api sends the raw token in ``authorization`` (no ``Bearer``): the worker key or the
admin token. ``GET /auth/verify`` answers ``{"valid": true}`` for one; ``POST /auth/refresh``
(which the client calls before every request, a catalog token being no JWT with an expiry)
answers the same token back. A missing or wrong token is refused (401/403) and counted as any
other refusal (``catalog.refusals``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from catalog.catalog import Catalog, parse_body, parse_document
from catalog.compat import swarm
from catalog.web.abuse import client_address


class RefreshRequest(BaseModel):
    """What chime-frb-api sends to ``POST /auth/refresh``."""

    model_config = ConfigDict(extra="forbid")

    refresh_token: str | None = Field(max_length=4096)  # always sent, null when it has none


REFUSALS: dict[int | str, dict[str, Any]] = {
    status: {} for status in (400, 401, 403, 404, 409, 422, 429, 503)}
SPAWN_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {key: value for key, value in swarm.SpawnRequest.model_json_schema().items()
               if key != "$defs"}}}}}


def _token(request: Request) -> str | None:
    token = request.headers.get("x-access-token") or request.headers.get("authorization")
    if token and token.lower().startswith("bearer "):
        token = token[7:]
    return token.strip() or None if token else None


def add_swarm_routes(app: FastAPI, catalog: Catalog) -> swarm.SwarmRunner:
    """Register ``/auth/*`` and ``/v1/swarm/*``; the runner of spawned jobs (also kept as
    ``app.state.swarm``)."""
    runner = swarm.SwarmRunner(catalog)
    app.state.swarm = runner
    runner.resume()

    def check(request: Request, action: str) -> str:
        token = _token(request)
        catalog.check_worker(token, action, "api", client_address(request.scope))
        assert token is not None
        return token

    def route(path: str, method: str, tag: str = "swarm",
              extra: dict[str, Any] | None = None) -> Callable[[Any], Any]:
        def register(endpoint: Any) -> Any:
            app.add_api_route(path, endpoint, methods=[method], tags=[tag],
                              responses=REFUSALS, openapi_extra=extra,
                              operation_id=f"swarm_{endpoint.__name__}")
            return endpoint
        return register

    @route("/auth/verify", "GET", "auth")
    async def verify(request: Request) -> JSONResponse:
        """Whether the token in ``authorization`` is a catalog token (worker key or admin)."""
        check(request, "use the Swarm API")
        return JSONResponse({"valid": True})

    @route("/auth/refresh", "POST", "auth", {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {k: v for k, v in RefreshRequest.model_json_schema(
        ).items() if k != "$defs"}}}}})
    async def refresh(request: Request) -> JSONResponse:
        """The same token back: catalog tokens do not expire."""
        token = check(request, "use the Swarm API")
        given = parse_document(RefreshRequest, parse_body(await request.body()),
                               "refresh request")
        return JSONResponse({"access_token": token, "refresh_token": given.refresh_token})

    @route("/v1/swarm/spawn-job", "POST", extra=SPAWN_BODY)
    async def spawn_job(request: Request) -> JSONResponse:
        """Spawn a job from an image on this machine (its name, uuid and status)."""
        check(request, "spawn a Swarm job")
        document = parse_body(await request.body())
        return JSONResponse(await run_in_threadpool(swarm.spawn, runner, document))

    @route("/v1/swarm/jobs", "GET")
    async def jobs(request: Request) -> JSONResponse:
        """The names of the Swarm jobs not pruned."""
        check(request, "list Swarm jobs")
        return JSONResponse(await run_in_threadpool(swarm.job_names, catalog))

    @route("/v1/swarm/job-status/{job_name}", "GET")
    async def job_status(request: Request, job_name: str) -> JSONResponse:
        """``{name: status}`` of every job whose name the regular expression matches."""
        check(request, "read Swarm job status")
        return JSONResponse(await run_in_threadpool(swarm.statuses, catalog, job_name))

    @route("/v1/swarm/logs/{job_name}", "GET")
    async def job_logs(request: Request, job_name: str) -> JSONResponse:
        """``{name: output}`` of the job named exactly so."""
        check(request, "read Swarm job logs")
        return JSONResponse(await run_in_threadpool(swarm.logs, runner, job_name))

    @route("/v1/swarm/kill-job/{job_name}", "GET")
    async def kill_job(request: Request, job_name: str) -> JSONResponse:
        """Cancel the job named exactly so and remove its container."""
        check(request, "kill a Swarm job")
        return JSONResponse(await run_in_threadpool(swarm.kill, runner, job_name))

    @route("/v1/swarm/prune-job/{job_name}", "GET")
    async def prune_job(request: Request, job_name: str) -> JSONResponse:
        """Hide the ended jobs whose name the regular expression matches."""
        check(request, "prune Swarm jobs")
        return JSONResponse(await run_in_threadpool(swarm.prune, runner, job_name))

    return runner
