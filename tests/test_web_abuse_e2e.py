"""Abuse against a real ``catalog serve`` on 127.0.0.1: idle and slow connections (raw
sockets), and a flood of anonymous refusals.

The server runs with a 1 s keep-alive and a 2 s request deadline; each client below would hold
its connection for ever without them. Stopped by its PID at the end.
"""

from __future__ import annotations

import socket
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
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
    running.env["CATALOG_RATE_LIMIT_DELAY_S"] = "0"  # 429s answered at once: a quick flood
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
        assert read_response(sock).startswith(b"HTTP/1.1 200")
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


def read_response(sock: socket.socket) -> bytes:
    """One whole response (head and Content-Length body), however the bytes arrive."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {received!r}"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed mid-body"
        body += chunk
    return head + b"\r\n\r\n" + body


def test_requests_in_time_are_served_on_one_connection(server: Server) -> None:
    with connect(server) as sock:
        for _ in range(3):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 200")
            time.sleep(KEEP_ALIVE_S / 2)  # idle, but not for long


def test_the_server_log_shows_no_error(server: Server, tmp_path: Path) -> None:
    assert "Traceback" not in server.output()


def audit_rows(server: Server) -> int:
    with sqlite3.connect(f"file:{server.directory / 'c.db'}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM audit").fetchone()[0])


def test_an_anonymous_flood_is_counted_limited_and_written_in_a_few_rows(server: Server) -> None:
    before = audit_rows(server)
    flood = 300
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        statuses = Counter(
            client.post(f"/jobs/107{uuid.uuid4().hex[3:8]}-0000-5000-8000-000000000000/events",
                        json={"name": "run"}).status_code for _ in range(flood))
        assert audit_rows(server) == before  # not one write per refusal
        # The default budget: a burst of 50, then 5 a second; the rest are 429.
        assert statuses[401] >= 50 and statuses[429] > 0, statuses
        assert statuses[401] + statuses[429] == flood, statuses
        counts = client.get("/audit/refusals", headers={
            "Authorization": f"Bearer {server.admin_token}"}).json()["refusals"]
    webhook = [e for e in counts if e["source"] == "webhook"]
    assert {(e["code"], e["data"]["address"]) for e in webhook} == {
        ("token_required", "127.0.0.1"), ("rate_limited", "127.0.0.1")}
    assert sum(e["data"]["count"] for e in webhook) == flood
    # One row per (address, source, reason): the flood's two, and any the other tests caused.
    assert audit_rows(server) == before + len(counts) <= before + 4
