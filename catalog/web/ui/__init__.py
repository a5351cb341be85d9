"""Pages for people (DESIGN §14), served by ``catalog serve`` under ``/ui``.

Read-only for anyone: the pages show what ``GET`` routes of the API show, rendered on the
server (Jinja2, autoescaped) from the library's own reads, a page at a time (a job's history
and files are paged by the store, never read whole). Actions (cancel, retry) are the API's
token-guarded ``POST`` routes, called by a little script that puts the token in the
``Authorization`` header: never a plain link, never a cookie, so a cross-site page cannot act
for a visitor; ``OriginCheck`` also refuses any unsafe request whose ``Origin`` is another
site's. Everything (templates, styles, scripts) ships in the package: no CDN.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.types import ASGIApp, Receive, Scope, Send

from catalog.catalog import Catalog
from catalog.errors import CatalogError
from catalog.models import format_date
from catalog.web.ui import pages
from catalog.web.webhook import error_body, send_json

HERE = Path(__file__).parent
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class CrossSiteRequest(CatalogError):
    status = 403
    code = "cross_site_request"


class OriginCheck:
    """Refuse unsafe requests a browser sends from another site (its ``Origin`` names a host
    other than the one asked): no page elsewhere can act through a visitor's browser."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in _UNSAFE:
            error = cross_site(scope)
            if error is not None:
                await send_json(send, error.status, error_body(error))
                return
        await self.app(scope, receive, send)


def cross_site(scope: Scope) -> CrossSiteRequest | None:
    """The refusal of a request whose ``Origin`` names another host than the one asked."""
    headers = dict(scope.get("headers", []))
    origin = headers.get(b"origin", b"").decode("latin-1")
    host = headers.get(b"host", b"").decode("latin-1")
    if origin and origin.split("://", 1)[-1] != host:
        return CrossSiteRequest(f"a request from {origin} cannot act on this catalog")
    return None


def _when(value: Any) -> str:
    """A date as the API writes it (``2026-11-21T12:00:00.123Z``); nothing for None."""
    return format_date(value) if isinstance(value, datetime) else str(value or "")


def templates() -> Environment:
    environment = Environment(loader=FileSystemLoader(HERE / "templates"),
                              autoescape=select_autoescape(["html"]), trim_blocks=True,
                              lstrip_blocks=True)
    environment.globals["href"] = pages.node_href
    environment.filters["when"] = _when
    return environment


def add_docs_routes(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` from assets in an installed package, not a CDN:
    they work on a machine with no network (create the app with ``docs_url=None``)."""
    import fastapi_offline
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

    assets = Path(fastapi_offline.__file__).parent / "static"
    app.mount("/docs/static", StaticFiles(directory=assets), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title="catalog API",
            swagger_js_url="/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/docs/static/swagger-ui.css",
            swagger_favicon_url="/docs/static/favicon.png",
            swagger_ui_parameters={"validatorUrl": None})  # no call to validator.swagger.io

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title="catalog API",
                              redoc_js_url="/docs/static/redoc.standalone.js",
                              redoc_favicon_url="/docs/static/favicon.png",
                              with_google_fonts=False)


def add_ui_routes(app: FastAPI, catalog: Catalog) -> None:
    """The pages, their static files, and ``/`` leading to the dashboard."""
    environment = templates()
    add_docs_routes(app)

    def render(request: Request, name: str, context: dict[str, Any]) -> HTMLResponse:
        html = environment.get_template(name).render(request=request, **context)
        return HTMLResponse(html, headers={"cache-control": "no-store"})

    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")

    @app.get("/", include_in_schema=False)
    def root() -> Response:
        return RedirectResponse("/ui/", status_code=307)

    @app.get("/ui", include_in_schema=False)
    @app.get("/ui/", include_in_schema=False)
    def dashboard(request: Request) -> HTMLResponse:
        return render(request, "dashboard.html", pages.dashboard(catalog))

    @app.get("/ui/jobs", include_in_schema=False)
    def jobs(request: Request) -> HTMLResponse:
        return render(request, "jobs.html", pages.jobs(catalog, dict(request.query_params)))

    @app.get("/ui/jobs/{uuid}", include_in_schema=False)
    def job(request: Request, uuid: str) -> HTMLResponse:
        return render(request, "job.html", pages.job(catalog, uuid, dict(request.query_params)))

    @app.get("/ui/queue", include_in_schema=False)
    def queue(request: Request) -> HTMLResponse:
        return render(request, "queue.html", pages.queue(catalog))

    @app.get("/ui/files/{uuid}", include_in_schema=False)
    def file(request: Request, uuid: str) -> HTMLResponse:
        return render(request, "file.html", pages.file(
            catalog, uuid, request.query_params.get("fixity_cursor")))

    @app.get("/ui/records/{uuid}", include_in_schema=False)
    def record(request: Request, uuid: str) -> HTMLResponse:
        return render(request, "record.html", pages.record(catalog, uuid))

    @app.get("/ui/search", include_in_schema=False)
    def search(request: Request, q: str = "") -> Response:
        found = pages.search(catalog, q.strip())
        if isinstance(found, str):
            return RedirectResponse(found, status_code=303)
        return render(request, "search.html", found)
