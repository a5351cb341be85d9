"""Idle and slow connections against a real ``catalog serve`` on 127.0.0.1 (raw sockets).

The server runs with a 1 s keep-alive and a 2 s request deadline; each client below would hold
its connection for ever without them. Stopped by its PID at the end.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_web_e2e import Server, stop_and_check

pytestmark = pytest.mark.slow

KEEP_ALIVE_S = 1
REQUEST_TIMEOUT_S = 2
PATIENCE_S = 8  # how long a test waits for the server to close before it fails


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server.init(tmp_path_factory.mktemp("timeouts"))
    running.env["CATALOG_HTTP_TIMEOUT_KEEP_ALIVE_S"] = str(KEEP_ALIVE_S)
    running.env["CATALOG_HTTP_REQUEST_TIMEOUT_S"] = str(REQUEST_TIMEOUT_S)
    running.start()
    try:
        yield running
    finally:
        stop_and_check(running)


def connect(server: Server) -> socket.socket:
    host, port = server.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=PATIENCE_S)
    return sock


def closed_after(sock: socket.socket) -> float:
    """Seconds until the server closes ``sock`` (reading whatever it answers first)."""
    started = time.monotonic()
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {PATIENCE_S} s")
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def trickle(sock: socket.socket, data: bytes, every_s: float, for_s: float) -> bool:
    """Send ``data`` a byte at a time; False once the server has closed the connection."""
    deadline = time.monotonic() + for_s
    for byte in data:
        if time.monotonic() > deadline:
            return True
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return False
        time.sleep(every_s)
    return True


def test_a_connection_that_sends_nothing_is_closed(server: Server) -> None:
    with connect(server) as sock:
        assert closed_after(sock) < KEEP_ALIVE_S + 2


def test_an_idle_keep_alive_connection_is_closed(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        assert closed_after(sock) < KEEP_ALIVE_S + 2


def test_headers_sent_a_byte_at_a_time_are_cut_off(server: Server) -> None:
    """Slow-loris: a byte every 0.3 s keeps disarming the keep-alive timer, never the deadline."""
    with connect(server) as sock:
        started = time.monotonic()
        headers = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 100
        still_open = trickle(sock, headers, 0.3, PATIENCE_S)
        if still_open:
            closed_after(sock)
        assert time.monotonic() - started < REQUEST_TIMEOUT_S + 2


def test_a_body_that_stops_coming_is_cut_off(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"pipeline\":")
        assert closed_after(sock) < REQUEST_TIMEOUT_S + 2


def test_requests_in_time_are_served_on_one_connection(server: Server) -> None:
    with connect(server) as sock:
        for _ in range(3):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            time.sleep(KEEP_ALIVE_S / 2)  # idle, but not for long


def test_the_server_log_shows_no_error(server: Server, tmp_path: Path) -> None:
    assert "Traceback" not in server.output()
