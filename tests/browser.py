"""A real uvicorn server on 127.0.0.1 in a thread of the test process, serving one Catalog,
and (for the browser tests) the headless Chromium to drive it, when it can be had."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from catalog import Catalog
from catalog.web import create_app

START_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serving(catalog: Catalog) -> Iterator[str]:
    """Serve ``catalog`` on a free port of 127.0.0.1; yields the base URL, stops on exit."""
    port = free_port()
    config = uvicorn.Config(create_app(catalog), host="127.0.0.1", port=port,
                            log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    started = threading.Event()
    for _ in range(START_TIMEOUT_S * 20):
        if server.started or not thread.is_alive():
            break
        started.wait(0.05)
    assert server.started, "the server did not come up"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        assert not thread.is_alive(), "the server did not stop"
