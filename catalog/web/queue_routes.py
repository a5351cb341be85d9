"""The queue over HTTP: submit (admin token), withdraw, heartbeat and complete (worker key),
cancel and retry (the job's token), status (anyone). Each route parses, calls the library and
renders."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from catalog.catalog import Catalog, parse_body, parse_document
from catalog.identifiers import UUIDType, parse_uuid
from catalog.messages import EventOutcome
from catalog.models import Job
from catalog.queue import heartbeat, status, submit, sweep, withdraw
from catalog.queue.archive import complete
from catalog.queue.batch import SubmitBatch, SubmitBatchOutcome, submit_many
from catalog.queue.models import (
    CancelRequest,
    Completion,
    HeartbeatRequest,
    SubmitOutcome,
    SubmitRequest,
    WaitOutcome,
    Withdrawn,
    WithdrawRequest,
)
from catalog.web.abuse import client_address
from catalog.web.webhook import bearer_or_query_token

SOURCE = "api"
_REFUSALS: dict[int | str, dict[str, Any]] = {400: {}, 401: {}, 403: {}, 404: {}, 409: {},
                                             413: {}, 422: {}}


def _token(request: Request) -> str | None:
    return bearer_or_query_token(request.headers.get("authorization"), request.query_params)


def _body(model: type[Any], required: bool = True) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return {"requestBody": {"required": required,
                            "content": {"application/json": {"schema": schema}}}}


async def _document(request: Request, required: bool = True) -> Any:
    body = await request.body()
    if not required and not body.strip():
        return {}
    return parse_body(body)


MAX_WAIT_S = 300.0  # a long-poll answers within this, timed out or not: proxies cut longer ones


def add_wait_route(app: FastAPI, catalog: Catalog) -> None:
    """``GET /jobs/wait``: a long-poll until the jobs end (anyone may read a job's state)."""

    @app.get("/jobs/wait", response_model=WaitOutcome, responses=_REFUSALS)
    async def get_wait(
            uuid: Annotated[list[str], Query(description="The jobs to wait for.")],
            any: Annotated[bool, Query(description="Until the first of them ends.")] = False,
            timeout: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description=(
                "Seconds to wait at most; the answer says timed_out."))] = 30.0,
    ) -> dict[str, Any]:
        """Wait until the jobs end (the first of them with ``any``), woken by the ending
        event: their states, and whether the time ran out first."""
        outcome = await run_in_threadpool(catalog.wait, uuid, any, timeout)
        return dict(outcome.model_dump(mode="json"))


def add_queue_routes(app: FastAPI, catalog: Catalog) -> None:
    """Register the queue's routes on ``app`` itself (an included router is one opaque route
    in FastAPI's list, which the 405 handler and the tests read)."""

    @app.post("/queue/jobs", response_model=SubmitOutcome, responses=_REFUSALS,
                 openapi_extra=_body(SubmitRequest))
    async def post_submission(request: Request) -> JSONResponse:
        """Have a job run (admin token): 201 when this queued it, 200 when it was queued,
        running or (``memoised``) finished already."""
        catalog.check_admin(_token(request), "submit jobs", SOURCE, client_address(request.scope))
        document = await _document(request)
        outcome = await run_in_threadpool(submit, catalog, document, SOURCE)
        return JSONResponse(outcome.model_dump(mode="json"),
                            status_code=201 if outcome.queued else 200)

    @app.post("/queue/jobs/batch", response_model=SubmitBatchOutcome, responses=_REFUSALS,
              openapi_extra=_body(SubmitBatch))
    async def post_submission_batch(request: Request) -> JSONResponse:
        """Have a whole graph run (admin token): the submissions in order, each with an
        optional local ``key`` later ones' conditions may name; checked whole before
        anything is stored (a bad one refuses them all). 200 with the outcomes, in order."""
        catalog.check_admin(_token(request), "submit jobs", SOURCE, client_address(request.scope))
        batch = parse_document(SubmitBatch, await _document(request), "batch")
        outcomes = await run_in_threadpool(submit_many, catalog, batch.jobs, SOURCE)
        return JSONResponse({"jobs": [o.model_dump(mode="json") for o in outcomes]})

    @app.get("/queue/status")
    def get_status(pipeline: Annotated[str | None, Query(
            description="Only these pipelines: names or UUIDs, separated by commas.")] = None
                   ) -> dict[str, Any]:
        """Jobs by pipeline and state."""
        names = None if pipeline is None else [p for p in pipeline.split(",") if p]
        return status(catalog, names)

    @app.post("/queue/withdraw", response_model=Withdrawn | None, responses=_REFUSALS,
                 openapi_extra=_body(WithdrawRequest))
    async def post_withdraw(request: Request) -> JSONResponse:
        """Claim the next queued job matching the filter (worker key), or ``null``."""
        catalog.check_worker(_token(request), "withdraw jobs", SOURCE,
                             client_address(request.scope))
        spec = parse_document(WithdrawRequest, await _document(request), "withdraw request")
        withdrawn = await run_in_threadpool(withdraw, catalog, spec.filter, spec.worker,
                                            spec.lease, SOURCE)
        return JSONResponse(None if withdrawn is None else withdrawn.model_dump(mode="json"))

    @app.post("/queue/sweep", responses=_REFUSALS)
    async def post_sweep(request: Request) -> dict[str, int]:
        """Fail the attempts whose lease expired (worker key); retried while attempts remain."""
        catalog.check_worker(_token(request), "sweep expired leases", SOURCE,
                             client_address(request.scope))
        return await run_in_threadpool(sweep, catalog)

    @app.post("/jobs/{uuid}/heartbeat", responses=_REFUSALS,
                 openapi_extra=_body(HeartbeatRequest))
    async def post_heartbeat(request: Request, uuid: str) -> dict[str, str]:
        """Renew the lease of a job the worker holds (worker key); 409 when it holds none."""
        uuid = parse_uuid(uuid, UUIDType.pipelinejob)
        catalog.authorize(uuid, _token(request), "heartbeat", SOURCE, worker=True,
                          client=client_address(request.scope))
        spec = parse_document(HeartbeatRequest, await _document(request), "heartbeat")
        expiry = await run_in_threadpool(heartbeat, catalog, uuid, spec.worker, spec.lease)
        return {"uuid": uuid, "lease_expiry": expiry}

    @app.post("/jobs/{uuid}/complete", response_model=Job, responses=_REFUSALS,
                 openapi_extra=_body(Completion))
    async def post_completion(request: Request, uuid: str) -> JSONResponse:
        """End the worker's attempt (worker key): results, products, plots, logs, or an
        error; answers the job (without its history) as it then is."""
        uuid = parse_uuid(uuid, UUIDType.pipelinejob)
        catalog.authorize(uuid, _token(request), "complete", SOURCE, worker=True,
                          client=client_address(request.scope))
        document = await _document(request)
        await run_in_threadpool(complete, catalog, uuid, document, SOURCE)
        job = await run_in_threadpool(catalog.get_job, uuid, False)
        return JSONResponse(job.model_dump(mode="json", exclude={"history"}))

    @app.post("/jobs/{uuid}/cancel", response_model=EventOutcome, responses=_REFUSALS,
                 openapi_extra=_body(CancelRequest, required=False))
    async def post_cancel(request: Request, uuid: str) -> JSONResponse:
        """Cancel a job that has not ended (its token or the admin token)."""
        uuid = parse_uuid(uuid, UUIDType.pipelinejob)
        catalog.authorize(uuid, _token(request), "cancel", SOURCE,
                          client=client_address(request.scope))
        spec = parse_document(CancelRequest, await _document(request, required=False), "cancel")
        outcome = await run_in_threadpool(catalog.cancel, uuid, spec.reason, SOURCE)
        return JSONResponse(outcome.model_dump(mode="json"))

    @app.post("/jobs/{uuid}/retry", response_model=EventOutcome, responses=_REFUSALS)
    async def post_retry(request: Request, uuid: str) -> JSONResponse:
        """Queue a failed job again with a fresh count of attempts (its token or admin)."""
        uuid = parse_uuid(uuid, UUIDType.pipelinejob)
        catalog.authorize(uuid, _token(request), "retry", SOURCE,
                          client=client_address(request.scope))
        outcome = await run_in_threadpool(catalog.retry, uuid, SOURCE)
        return JSONResponse(outcome.model_dump(mode="json"))
