"""The pages in a real headless Chromium (Debian's, driven by Playwright) against a real
uvicorn server on 127.0.0.1: no console error, no request elsewhere, live updates, filters and
paging, the lineage graph, and an action refused without a token."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from browser import chromium_or_skip, serving
from test_ui import chain, file_of, submitted  # noqa: F401  (chain is a fixture)

from catalog import Catalog
from catalog.tokens import Keys
from catalog.web.ui.pages import PAGE

KEYS = Keys(b"b" * 32, b"a" * 32)
TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright, executable = chromium_or_skip()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True,
                                              args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Catalog]:
    monkeypatch.chdir(tmp_path)
    opened = Catalog.open(f"sqlite:///{tmp_path}/c.db", keys=KEYS, sqlite_synchronous="NORMAL")
    opened.add_pipeline("step")
    opened.add_pipeline("other")
    yield opened
    opened.close()


class Watched:
    """A page whose console errors and requests leaving 127.0.0.1 are recorded."""

    def __init__(self, browser: Any, base_url: str) -> None:
        self.context = browser.new_context(base_url=base_url)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.errors: list[str] = []
        self.elsewhere: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.context.route("**/*", self._route)

    def _route(self, route: Any) -> None:
        url = route.request.url
        if url.startswith("data:") or urlparse(url).hostname == "127.0.0.1":
            route.continue_()
        else:
            self.elsewhere.append(url)
            route.abort()


@pytest.fixture
def watched(browser: Any, catalog: Catalog) -> Iterator[Watched]:
    with serving(catalog) as url:
        page = Watched(browser, url)
        yield page
        page.context.close()
    assert page.errors == [] and page.elsewhere == []


def test_every_page_loads_cleanly(watched: Watched, catalog: Catalog,
                                  chain: dict[str, str]) -> None:  # noqa: F811
    page = watched.page
    for path in ("/", "/ui/jobs", f"/ui/jobs/{chain['J2']}", "/ui/queue",
                 f"/ui/files/{chain['F2']}", "/ui/search?q=f1", "/docs"):
        response = page.goto(path, wait_until="networkidle" if path == "/docs" else "load")
        assert response is not None and response.ok, path
    page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)  # rendered, offline


def test_the_dashboard_updates_live(watched: Watched, catalog: Catalog) -> None:
    page = watched.page
    page.goto("/ui/")
    page.wait_for_function("document.getElementById('live-status').textContent === 'live'")
    queued_before = int(page.inner_text('.totals [data-count="QUEUED"]'))
    uuid = submitted(catalog, 1)
    page.wait_for_selector(f'#events a[href="/ui/jobs/{uuid}"]')
    page.wait_for_function(
        f"document.querySelector('.totals [data-count=\"QUEUED\"]').textContent === "
        f"'{queued_before + 1}'")


def test_filters_and_paging(watched: Watched, catalog: Catalog) -> None:
    step = {submitted(catalog, n) for n in range(PAGE + 2)}
    other = submitted(catalog, 999, "other")
    page = watched.page
    page.goto("/ui/jobs")
    page.select_option('select[name="pipeline"]', "step")
    page.click('form.filters button[type="submit"]')
    page.wait_for_url(re.compile(r"pipeline=step"))
    shown = set(page.eval_on_selector_all("table.jobs a.uuid", "as => as.map(a => a.textContent)"))
    assert len(shown) == PAGE and other not in shown
    page.click("#next")
    page.wait_for_url(re.compile(r"cursor="))
    rest = set(page.eval_on_selector_all("table.jobs a.uuid", "as => as.map(a => a.textContent)"))
    assert shown | rest == step


def test_the_lineage_graph_shows_the_chain_and_opens_a_node(
        watched: Watched, chain: dict[str, str]) -> None:  # noqa: F811
    page = watched.page
    page.goto(f"/ui/jobs/{chain['J2']}")
    nodes = set(page.eval_on_selector_all("svg.lineage a.node",
                                          "as => as.map(a => a.dataset.uuid)"))
    assert {chain[n] for n in ("J1", "F1", "J2", "F2", "J3")} <= nodes
    page.click(f'svg.lineage a.node[data-uuid="{chain["J3"]}"]')
    page.wait_for_url(f"**/ui/jobs/{chain['J3']}")
    assert chain["J3"] in page.inner_text("h1")


def test_an_action_without_a_token_is_refused(watched: Watched, catalog: Catalog) -> None:
    uuid = submitted(catalog, 1)
    page = watched.page
    page.goto(f"/ui/jobs/{uuid}")
    with page.expect_response(f"**/jobs/{uuid}/cancel") as answer:
        page.click('form.action button[value="cancel"]')
    assert answer.value.status == 401
    page.wait_for_selector("form.action output.error")
    assert "refused (401)" in page.inner_text("form.action output")
    assert catalog.get_job(uuid).state == "QUEUED"
    # the browser logs the refused fetch as a console error: that one, and only that, is expected
    assert all("401" in error for error in watched.errors), watched.errors
    watched.errors.clear()
