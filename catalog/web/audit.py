"""The audit log over HTTP: a job's refused events, and the counted anonymous refusals.

``GET /jobs/{uuid}/audit`` (the job's token or the admin token) answers the job's audit entries,
newest first: refused events with their reason (and, for authenticated senders, their data),
administrative actions and failed clean-ups. ``GET /audit/refusals`` (admin token) answers the
counts of refusals of requests without a valid token, per client address, source and reason
(``catalog.refusals``), the counts held in memory included.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from catalog.catalog import Catalog
from catalog.models import AuditEntry
from catalog.web.abuse import client_address
from catalog.web.webhook import bearer_or_query_token


class JobAudit(BaseModel):
    """A job's audit entries, newest first."""

    uuid: str
    audit: list[AuditEntry]


class RefusalCounts(BaseModel):
    """Counts of refusals of requests without a valid token, newest first."""

    refusals: list[AuditEntry] = Field(description="One entry per (address, source, reason) "
                                       "and write: data holds address, count, first and last.")


AuditLimit = Annotated[int, Query(ge=1, le=1000, description="At most this many entries.")]


def add_audit_routes(app: FastAPI, catalog: Catalog) -> None:
    """Add the audit routes to ``app`` (on the app itself: FastAPI 0.165 keeps an included
    router's routes out of ``app.routes``, where the 405 handler looks for a path's methods)."""

    def token(request: Request) -> str | None:
        return bearer_or_query_token(request.headers.get("authorization"), request.query_params)

    @app.get("/jobs/{uuid}/audit", response_model=JobAudit)
    async def job_audit(request: Request, uuid: str, limit: AuditLimit = 100) -> JobAudit:
        """The job's refused events and administrative actions (job or admin token)."""
        catalog.check_job_token(uuid, token(request), "api", client_address(request.scope))
        entries = await run_in_threadpool(catalog.audit_log, uuid, limit)
        return JobAudit(uuid=uuid.lower(), audit=entries)

    @app.get("/audit/refusals", response_model=RefusalCounts)
    async def refusal_counts(request: Request, limit: AuditLimit = 100) -> RefusalCounts:
        """Counted refusals of requests without a valid token (admin token)."""
        catalog.check_admin(token(request), "read the refusal counts", "api",
                            client_address(request.scope))
        return RefusalCounts(refusals=await run_in_threadpool(catalog.anonymous_refusals, limit))
