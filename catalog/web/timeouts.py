"""Connections that cannot be held open: idle ones close, slow requests are cut off.

uvicorn closes a keep-alive connection idle for ``timeout_keep_alive`` only after a response,
and any byte received disarms that timer: a connection that sends nothing, or sends a header a
byte every few seconds (slow-loris), was held for ever. ``DeadlineH11Protocol`` adds two
bounds: a new connection idle for ``http_timeout_keep_alive_s`` is closed as one between
requests is, and each request's headers and body must have arrived within
``http_request_timeout_s`` of the connection becoming ready for it (connected, or the previous
response sent), however steadily they trickle in. Once a request has arrived, the time the
catalog takes to answer it is not bounded here.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on receiving each request."""

    request_timeout_s: float = 10.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Idle from the start is idle: closed like a keep-alive connection between requests.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED):
            self._disarm()  # the whole request is in: the rest is the catalog's to answer

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.request_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.conn.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED):
            return
        if not self.transport.is_closing():
            self.transport.close()


def deadline_protocol(request_timeout_s: float) -> type[DeadlineH11Protocol]:
    """The protocol class for uvicorn's ``http`` setting, with this request deadline."""
    return type("DeadlineH11Protocol", (DeadlineH11Protocol,),
                {"request_timeout_s": request_timeout_s})
