"""The access log: one line per request that no request can forge or fill with a token.

A line holds the method, the path, the status and the time taken; never the query string (it
may carry ``?token=``). What a client chose is escaped: control and format characters (a
``%0A`` in a path is a newline by the time the path is decoded) are written as ``\\xNN`` /
``\\uNNNN`` escapes, a backslash as two, so one request is always one line. Runs of 64 or more
hex digits, the shape of a token, are withheld wherever a client put them (a token sent as a
path segment is not logged, nor echoed in an error message: ``withhold_tokens``).
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("catalog.web")

_TOKEN_SHAPED = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{64,}(?![0-9A-Fa-f])")
WITHHELD = "<withheld: token-shaped>"


def withhold_tokens(text: str) -> str:
    """``text`` with every run of 64 or more hex digits (a token's shape) withheld."""
    return _TOKEN_SHAPED.sub(WITHHELD, text) if len(text) >= 64 else text


def _escape(char: str) -> str:
    if char == "\\":
        return "\\\\"
    category = unicodedata.category(char)
    # Kept: letters, marks, numbers, punctuation, symbols, the space. Escaped: control, format,
    # surrogate, private and unassigned characters, and separators a viewer may break lines at.
    if category[0] not in "CZ" or char == " ":
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 \
        else f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with control and other invisible characters escaped (one line, no forgery)."""
    if text.isprintable() and "\\" not in text:  # the common case, in C
        return text
    return "".join(_escape(char) for char in text)


def log_access(method: str, path: str, status: int, started: float) -> None:
    """The access log line: method, path (never the query: it may hold a token), status."""
    log.info("%s %s %d %.1fms", printable(method), printable(withhold_tokens(path)), status,
             (time.perf_counter() - started) * 1000)


def loggable_path(path: str) -> str:
    """A request path as other log lines may show it (escaped, tokens withheld)."""
    return printable(withhold_tokens(path))


class AccessLog:
    """One log line per request (``log_access``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            log_access(scope["method"], scope["path"], status, started)
