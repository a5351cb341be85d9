"""Delete and purge over HTTP (admin token; ``catalog.deletion``).

``DELETE /jobs/{uuid}`` leaves a tombstone: later reads of the job answer 410 Gone, and so
does deleting it again (the job is gone, and says since when). Purge is ``POST
/jobs/{uuid}/purge`` with ``{"confirm": "<the job's UUID>", "files": false}`` rather than a
``?purge=true`` on DELETE: it cannot be undone, so it takes a body naming what it erases (a
stray query flag, or a DELETE body that proxies drop, would not), and it is a different
action from deletion, with its own answer and audit entry.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from catalog.catalog import Catalog, parse_body, parse_document
from catalog.web.abuse import client_address
from catalog.web.webhook import bearer_or_query_token


class PurgeRequest(BaseModel):
    """What a purge erases, named again as its confirmation."""

    model_config = ConfigDict(extra="forbid")

    confirm: str | None = Field(None, description="The job's UUID, as the confirmation.")
    files: bool = Field(False, description="Empty the job's archive directory too.")


class Deleted(BaseModel):
    uuid: str
    deleted: bool


class Purged(BaseModel):
    uuid: str
    purged: bool
    files_removed: int | None = Field(description="Archive files removed (null: not asked).")


def add_deletion_routes(app: FastAPI, catalog: Catalog) -> None:
    """Add ``DELETE /jobs/{uuid}`` and ``POST /jobs/{uuid}/purge`` to ``app``."""

    def token(request: Request) -> str | None:
        return bearer_or_query_token(request.headers.get("authorization"), request.query_params)

    @app.delete("/jobs/{uuid}", response_model=Deleted)
    async def delete_job(request: Request, uuid: str) -> dict[str, Any]:
        """Delete the job, leaving a tombstone (admin token); 409 while it is queued or
        running, 410 once deleted."""
        catalog.check_admin(token(request), f"delete job {uuid}", "api",
                            client_address(request.scope))
        await run_in_threadpool(catalog.delete_job, uuid, token(request), "api")
        return {"uuid": uuid, "deleted": True}

    schema = PurgeRequest.model_json_schema(ref_template="#/components/schemas/{model}")

    @app.post("/jobs/{uuid}/purge", response_model=Purged, openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}})
    async def purge_job(request: Request, uuid: str) -> dict[str, Any]:
        """Erase the job for good (admin token, ``confirm`` naming it); 400 unconfirmed."""
        catalog.check_admin(token(request), f"purge job {uuid}", "api",
                            client_address(request.scope))
        body = await request.body()
        spec = parse_document(PurgeRequest, parse_body(body), "purge request") \
            if body.strip() else PurgeRequest()
        return await run_in_threadpool(catalog.purge_job, uuid, token(request), spec.confirm,
                                       spec.files, "api")
