"""Fixity over HTTP: the summaries of fixity runs and a file's fixity history (anyone, as
file records are) and a job's
BagIt export (the job's token or the admin token). Each route parses, calls the library and
renders."""

from __future__ import annotations

import shutil
import tempfile
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from catalog.catalog import Catalog
from catalog.web.abuse import client_address
from catalog.web.webhook import bearer_or_query_token


def add_fixity_routes(app: FastAPI, catalog: Catalog) -> None:
    @app.get("/fixity/runs")
    def fixity_runs(limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> dict[str, Any]:
        """The latest fixity runs (scheduled by ``catalog serve`` or run by ``catalog verify
        --older-than``), most recent first: when, how many files, their outcomes, and the
        first problems named."""
        return {"runs": catalog.store.find_fixity_runs(limit)}

    @app.get("/files/{uuid}/fixity")
    def fixity_checks(uuid: str, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                      cursor: str | None = None) -> dict[str, Any]:
        """A file record's fixity history, oldest first, a page at a time (``next``: the
        cursor of the next page; the record keeps only its last check)."""
        page = catalog.fixity_checks(uuid, limit, cursor)
        return {"checks": page.items, "next": page.next}

    @app.post("/jobs/{uuid}/bag", response_class=FileResponse,
              responses={200: {"content": {"application/x-tar": {}}}, 400: {}, 401: {},
                         403: {}, 404: {}, 409: {}})
    async def bag_job(request: Request, uuid: str) -> FileResponse:
        """The job's files as a BagIt bag (RFC 8493) in a tar, its manifest the recorded
        checksums, each file re-verified as it is copied (409 ``fixity_mismatch`` naming the
        first that does not match, and no bag)."""
        from catalog.bag import export_bag_tar

        token = bearer_or_query_token(request.headers.get("authorization"),
                                      request.query_params)
        # A sender without a valid token is counted, not audited one by one (and rate-limited).
        catalog.check_job_token(uuid, token, "api", client_address(request.scope))
        scratch = tempfile.mkdtemp(prefix="catalog-bag-")
        try:
            archive = await run_in_threadpool(export_bag_tar, catalog, uuid, token, scratch)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        return FileResponse(archive, media_type="application/x-tar", filename=archive.name,
                            background=BackgroundTask(shutil.rmtree, scratch, True))
