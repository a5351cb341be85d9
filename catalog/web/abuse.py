"""What the web layer adds to ``catalog.refusals``: who the client is, and how 429 is answered.

A ``RateLimited`` refusal is answered with ``Retry-After`` and held back for up to
``rate_limit_delay_s`` (never longer than its Retry-After) before it is sent: a client that
ignores Retry-After and sends again at once is slowed to one request per delay on each of its
connections, without holding anything but its own connection (the wait is an asyncio sleep).
"""

from __future__ import annotations

import asyncio

from starlette.types import Scope

from catalog.errors import CatalogError, RateLimited


def client_address(scope: Scope) -> str | None:
    """The client's address as the server saw it (None when the server does not say)."""
    client = scope.get("client")
    return str(client[0]) if client else None


def error_headers(error: CatalogError) -> dict[str, str]:
    """Headers an error's answer carries: ``Retry-After`` for a rate limit."""
    if isinstance(error, RateLimited):
        return {"Retry-After": str(error.retry_after)}
    return {}


async def hold_back(error: CatalogError, delay_s: float) -> None:
    """Wait before answering a rate-limited client (see the module docstring)."""
    if isinstance(error, RateLimited) and delay_s > 0:
        await asyncio.sleep(min(delay_s, error.retry_after))
