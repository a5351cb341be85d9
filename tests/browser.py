"""A real uvicorn server on 127.0.0.1 in a thread of the test process, serving one Catalog,
and (for the browser tests) the headless Chromium to drive it, when it can be had."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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


CHROMIUM = "/usr/bin/chromium"


def chromium_or_skip() -> Any:
    """Playwright's Chromium on Debian's binary: skip with a message when either is missing
    (``make test`` installs chromium as root on Debian), fail under ``CI=true``."""
    import shutil

    import pytest

    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed (pip install -e '.[test]')"
    executable = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if missing is None and executable is None:
        missing = "chromium is not installed (apt-get install chromium, or make test as root)"
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests cannot run: {missing}")
        pytest.skip(f"browser tests skipped: {missing}")
    return sync_playwright, executable


def screenshots(directory: str) -> None:
    """PNG screenshots of the pages on a small demo catalog (README's "Pages" section):
    ``python tests/browser.py docs/screenshots``."""
    import tempfile
    from pathlib import Path

    from catalog.identifiers import UUIDType, typed_uuid
    from catalog.models import FileRecord, utc_now
    from catalog.queue import end_attempt, withdraw
    from catalog.tokens import Keys

    sync_playwright, executable = chromium_or_skip()
    out = Path(directory).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pages-shots-") as temporary:
        os.chdir(temporary)
        catalog = Catalog.open(f"sqlite:///{temporary}/c.db", keys=Keys(b"d" * 32, b"a" * 32))
        for name in ("calibrate", "beamform", "classify"):
            catalog.add_pipeline(name)
        made: list[str] = []
        jobs: list[str] = []
        for n, name in enumerate(("calibrate", "beamform", "classify")):
            uuid = str(catalog.submit(name, {"observation": 4242, "step": n}, retries=0).uuid)
            jobs.append(uuid)
            if made:
                catalog.add_links(uuid, "acted_on", [made[-1]])
            path = f"/products/obs-4242/{name}.h5"
            now = utc_now()
            record = FileRecord(uuid=typed_uuid(UUIDType.file, f"local:{path}"),
                                storage_system="local", path=path, name=f"{name}.h5",
                                size=1 << 20, mtime=now, media_type="application/x-hdf5",
                                kind="product", child_of=[uuid], generated_by=[uuid],
                                derived_from=made[-1:], checksums={"sha256": f"{n:02x}" * 32},
                                status="ok", created=now, updated=now)
            catalog.store.upsert_files([record.model_dump(mode="json")])
            made.append(record.uuid)
        for n in range(12):
            catalog.submit(("calibrate", "beamform", "classify")[n % 3], {"n": n}, retries=0)
        for worker in ("worker-a", "worker-b"):
            withdraw(catalog, {"pipelines": ["calibrate"]}, worker)
        job = withdraw(catalog, {"pipelines": ["beamform"]}, "worker-c")
        if job is not None:
            end_attempt(catalog, job.uuid, "worker-c", "out of memory")
        with serving(catalog) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable,
                                                 args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 800}, base_url=url)
            for name, path in (("dashboard", "/ui/"), ("jobs", "/ui/jobs"),
                               ("job", f"/ui/jobs/{jobs[1]}"), ("queue", "/ui/queue"),
                               ("file", f"/ui/files/{made[1]}")):
                page.goto(path)
                page.screenshot(path=str(out / f"{name}.png"))
            browser.close()
        catalog.close()


if __name__ == "__main__":
    import sys

    screenshots(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots")
