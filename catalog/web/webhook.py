"""The webhook's hot path: event documents answered ahead of the framework's layers.

``POST /jobs/{uuid}/events`` carrying an event document is most of what a busy catalog
serves. Passing it through FastAPI's and Starlette's middleware, router and response classes
cost as much again as the catalog's own work, so ``CatalogApp`` answers it here, in plain ASGI:
read the body (within the size limit), hand it raw to ``Catalog.handle_event_async`` (which
authenticates, parses, audits refusals and writes), and render the outcome or the error in the
one JSON error shape. Status callbacks (``?status=``) and every other request go through the
FastAPI app unchanged; the FastAPI route of the same path documents this one in the OpenAPI
document and answers identically. Other surfaces put their own busy POST routes on the hot path
the same way (``hot_posts``: OpenLineage's ``POST /api/v1/lineage``).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from catalog.errors import BodyTooLarge, CatalogError, InvalidData
from catalog.web.abuse import client_address, error_headers, hold_back
from catalog.web.accesslog import log_access, loggable_path, withhold_tokens

if TYPE_CHECKING:
    from catalog.catalog import Catalog

log = logging.getLogger("catalog.web")

_EVENTS_PATH = re.compile(r"/jobs/([^/]+)/events")
_JSON_HEADERS = [(b"content-type", b"application/json")]


def too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"request body is larger than {limit} bytes")


def declared_length(headers: list[tuple[bytes, bytes]], limit: int) -> None:
    """Refuse a declared Content-Length over ``limit`` (or not a number) before reading."""
    for name, value in headers:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = -1
            if declared < 0:
                raise InvalidData("Content-Length is not a number")
            if declared > limit:
                raise too_large(limit)


async def send_json(send: Send, status: int, body: bytes,
                    extra_headers: dict[str, str] | None = None) -> None:
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1"))
                for k, v in (extra_headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: CatalogError, delay_s: float = 0.0) -> None:
    """An error in the one JSON shape, with its headers (Retry-After), held back if limited."""
    await hold_back(error, delay_s)
    await send_json(send, error.status, error_body(error), error_headers(error))


# Starlette's JSONResponse rendering (the FastAPI routes' errors), with one encoder for all.
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def error_body(error: CatalogError) -> bytes:
    """The error's JSON, with anything shaped like a token withheld (it may quote one)."""
    return _encode({"error": {"code": error.code,
                              "message": withhold_tokens(error.message)}}).encode()


HotRoute = Callable[[Scope, Receive, Send], Awaitable[None]]


class CatalogApp(FastAPI):
    """The FastAPI app, with event documents to the webhook answered on the hot path."""

    catalog: Catalog | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # POST paths answered in plain ASGI too (their FastAPI routes document them).
        self.hot_posts: dict[str, HotRoute] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        catalog = self.catalog
        if catalog is None or scope["type"] != "http" or scope["method"] != "POST":
            await super().__call__(scope, receive, send)
            return
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        hot = self.hot_posts.get(path)
        if hot is not None:
            await hot(scope, receive, send)
            return
        match = _EVENTS_PATH.fullmatch(path)
        if match is None:
            await super().__call__(scope, receive, send)
            return
        # Starlette's reading of the query: blank values kept, the last of a repeated key wins.
        query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
        if "status" in query:  # another system's status: the FastAPI route maps it
            await super().__call__(scope, receive, send)
            return
        await self._event(catalog, scope, receive, send, match.group(1), query)

    async def _event(self, catalog: Catalog, scope: Scope, receive: Receive, send: Send,
                     uuid: str, query: dict[str, str]) -> None:
        started = time.perf_counter()
        status = 200
        try:
            headers: list[tuple[bytes, bytes]] = scope["headers"]
            limit = catalog.settings.max_body_bytes
            authorization = idempotency_key = None
            for name, value in headers:
                if name == b"authorization":
                    authorization = value.decode("latin-1")
                elif name == b"idempotency-key":
                    idempotency_key = value.decode("latin-1") or None
            token = bearer_or_query_token(authorization, query)
            try:
                declared_length(headers, limit)
                body = await read_body(receive, limit)
            except CatalogError as exc:
                status = exc.status
                await send_error(send, exc)
                return
            if body is None:  # the client went away: there is no one to answer
                status = 499
                return
            try:
                outcome = await catalog.handle_event_async(uuid, body, token, "webhook",
                                                           idempotency_key,
                                                           client_address(scope))
            except CatalogError as exc:
                if exc.status >= 500:
                    log.error("POST %s failed: %s", loggable_path(scope["path"]), exc.code)
                status = exc.status
                await send_error(send, exc, catalog.settings.rate_limit_delay_s)
                return
            await send_json(send, 200, outcome.model_dump_json().encode())
        except Exception:
            log.exception("POST %s: unexpected error", loggable_path(scope["path"]))
            status = 500
            await send_json(send, 500, b'{"error":{"code":"internal_error",'
                                       b'"message":"internal error"}}')
        finally:
            log_access("POST", scope["path"], status, started)


def bearer_or_query_token(authorization: str | None, query: Mapping[str, str]) -> str | None:
    """``Authorization: Bearer <token>`` first, else ``?token=``."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return query.get("token") or None


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, refused as soon as it passes ``limit``; None if the client left."""
    chunks: list[bytes] = []
    seen = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk: Any = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
