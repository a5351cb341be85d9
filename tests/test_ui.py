"""The pages (catalog.web.ui) over the ASGI app: each renders what the library holds, pages
through what is long, links records together, and refuses actions without a token or from
another site, changing nothing."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from catalog import Catalog, ManagedPipelineJob
from catalog.identifiers import UUIDType, typed_uuid
from catalog.models import FileRecord, utc_now
from catalog.queue import end_attempt, withdraw
from catalog.tokens import Keys
from catalog.web import create_app
from catalog.web.ui.pages import PAGE

KEYS = Keys(b"u" * 32, b"a" * 32)


@pytest.fixture
def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Catalog]:
    monkeypatch.chdir(tmp_path)
    opened = Catalog.open(f"sqlite:///{tmp_path}/c.db", keys=KEYS, sqlite_synchronous="NORMAL")
    opened.add_pipeline("step")
    opened.add_pipeline("other")
    yield opened
    opened.close()


@pytest.fixture
def client(catalog: Catalog) -> Iterator[TestClient]:
    with TestClient(create_app(catalog), base_url="http://127.0.0.1:8000") as test_client:
        yield test_client


def submitted(catalog: Catalog, n: int, pipeline: str = "step") -> str:
    return str(catalog.submit(pipeline, {"name": f"job-{n}"}, retries=0).uuid)


def file_of(catalog: Catalog, job: str, name: str, derived_from: list[str]) -> str:
    now = utc_now()
    uuid = typed_uuid(UUIDType.file, f"local:/products/{name}")
    catalog.store.upsert_files([FileRecord(
        uuid=uuid, storage_system="local", path=f"/products/{name}", name=name, size=3,
        mtime=now, media_type="text/csv", kind="product", child_of=[job], generated_by=[job],
        derived_from=derived_from, checksums={"sha256": "ab" * 32}, created=now,
        updated=now).model_dump(mode="json")])
    return uuid


@pytest.fixture
def chain(catalog: Catalog) -> dict[str, str]:
    """Three jobs, each using the file the one before made."""
    ids: dict[str, str] = {}
    made: list[str] = []
    for n in (1, 2, 3):
        job = ids[f"J{n}"] = submitted(catalog, n)
        if made:
            catalog.add_links(job, "acted_on", [made[-1]])
        ids[f"F{n}"] = file_of(catalog, job, f"f{n}.csv", made[-1:])
        made.append(ids[f"F{n}"])
    return ids


def links(html: str) -> set[str]:
    return set(re.findall(r'href="([^"]+)"', html))


def test_the_root_leads_to_the_dashboard(client: TestClient) -> None:
    response = client.get("/", follow_redirects=False)
    assert (response.status_code, response.headers["location"]) == (307, "/ui/")
    assert "Jobs by state" in client.get("/").text


def test_the_dashboard_counts_by_state_and_pipeline(catalog: Catalog,
                                                    client: TestClient) -> None:
    a, _ = submitted(catalog, 1), submitted(catalog, 2, "other")
    job = withdraw(catalog, {"pipelines": ["step"]}, "w")
    assert job is not None and job.uuid == a
    html = client.get("/ui/").text
    assert re.search(r'data-count="RUNNING">1<', html)
    assert re.search(r'data-count="QUEUED">1<', html)
    assert 'data-pipeline="other"' in html and f"/ui/jobs/{a}" in html
    assert "/jobs/stream" in client.get("/ui/static/ui.js").text


def test_jobs_filter_and_page(catalog: Catalog, client: TestClient) -> None:
    uuids = [submitted(catalog, n) for n in range(PAGE + 5)]
    other = submitted(catalog, 999, "other")
    first = client.get("/ui/jobs", params={"pipeline": "step"}).text
    shown = set(re.findall(r'/ui/jobs/([0-9a-f-]{36})"', first))
    assert len(shown) == PAGE and other not in shown
    following = re.search(r'id="next" href="([^"]+)"', first)
    assert following is not None
    second = client.get("/ui/jobs" + following.group(1).replace("&amp;", "&")).text
    rest = set(re.findall(r'/ui/jobs/([0-9a-f-]{36})"', second))
    assert shown | rest == set(uuids) and not shown & rest
    assert 'id="next"' not in second

    by_text = client.get("/ui/jobs", params={"text": "job-999"}).text
    assert set(re.findall(r'/ui/jobs/([0-9a-f-]{36})"', by_text)) == {other}
    refused = client.get("/ui/jobs", params={"state": "EXPLODED"})
    assert refused.status_code == 200 and "unknown state" in refused.text


def test_the_job_page_shows_its_state_history_files_and_lineage(
        catalog: Catalog, client: TestClient, chain: dict[str, str]) -> None:
    html = client.get(f"/ui/jobs/{chain['J2']}").text
    assert re.search(r'class="state current" data-state="QUEUED"', html)
    assert "create" in html and "queue" in html  # history
    assert "/products/f2.csv" in html and "sha256:" + "ab" * 32 in html
    assert f"/lineage/{chain['J2']}?direction=both&amp;format=prov-json" in html
    # the chain around J2: J1 made F1, which J2 used; J2 made F2, which J3 used
    for name in ("J1", "J3"):
        assert f"/ui/jobs/{chain[name]}" in links(html)
    for name in ("F1", "F2"):
        assert f"/ui/files/{chain[name]}" in links(html)


def test_a_long_history_is_paged(catalog: Catalog, client: TestClient) -> None:
    job = ManagedPipelineJob(catalog, "step", {"name": "long"})
    job.setup()
    uuid = job.uuid
    for _ in range(PAGE + 4):
        catalog.handle_event(uuid, {"name": "update", "data": {}}, job.token)
    first = client.get(f"/ui/jobs/{uuid}").text
    assert first.count("<td>update</td>") == PAGE - 1  # create comes first
    assert 'id="history-next"' in first
    later = client.get(f"/ui/jobs/{uuid}", params={"history": PAGE}).text
    assert later.count("<td>update</td>") == 5 and 'id="history-next"' not in later
    assert client.get(f"/ui/jobs/{uuid}", params={"history": "x"}).status_code == 400


def test_file_and_record_pages(catalog: Catalog, client: TestClient,
                               chain: dict[str, str]) -> None:
    html = client.get(f"/ui/files/{chain['F2']}").text
    assert f"/ui/files/{chain['F1']}" in links(html)  # derived from
    assert f"/ui/jobs/{chain['J3']}" in links(html)  # used by
    assert f"/ui/jobs/{chain['J2']}" in links(html)  # made by
    assert client.get(f"/ui/files/{typed_uuid(UUIDType.file, 'none')}").status_code == 404


def test_the_queue_page_shows_leases(catalog: Catalog, client: TestClient) -> None:
    uuid = submitted(catalog, 1)
    withdraw(catalog, {"pipelines": ["step"]}, "worker-7")
    html = client.get("/ui/queue").text
    assert "worker-7" in html and f"/ui/jobs/{uuid}" in html
    end_attempt(catalog, uuid, "worker-7", None)
    assert "No job is running." in client.get("/ui/queue").text


def test_search_by_uuid_path_checksum_and_name(catalog: Catalog, client: TestClient,
                                              chain: dict[str, str]) -> None:
    response = client.get("/ui/search", params={"q": chain["J1"]}, follow_redirects=False)
    assert (response.status_code, response.headers["location"]) == (303, f"/ui/jobs/{chain['J1']}")
    by_checksum = client.get("/ui/search", params={"q": "sha256:" + "ab" * 32}).text
    assert {f"/ui/files/{chain[f]}" for f in ("F1", "F2", "F3")} <= links(by_checksum)
    by_path = client.get("/ui/search", params={"q": "/products/f3"}).text
    assert f"/ui/files/{chain['F3']}" in links(by_path)
    assert f"/ui/files/{chain['F1']}" not in links(by_path)
    by_name = client.get("/ui/search", params={"q": "f1.csv"}).text
    assert f"/ui/files/{chain['F1']}" in links(by_name)


def test_an_action_without_a_token_is_refused_and_changes_nothing(
        catalog: Catalog, client: TestClient) -> None:
    uuid = submitted(catalog, 1)
    html = client.get(f"/ui/jobs/{uuid}").text
    assert f'data-action="/jobs/{uuid}/cancel"' in html
    assert not re.search(r'<a [^>]*href="[^"]*/cancel', html)  # never a plain link
    refused = client.post(f"/jobs/{uuid}/cancel", json={})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "token_required"
    assert catalog.get_job(uuid).state == "QUEUED"


def test_a_cross_site_request_is_refused_even_with_a_token(catalog: Catalog,
                                                           client: TestClient) -> None:
    uuid = submitted(catalog, 1)
    headers: dict[str, Any] = {"authorization": f"Bearer {catalog.admin_token()}"}
    refused = client.post(f"/jobs/{uuid}/cancel", json={},
                          headers={**headers, "origin": "https://elsewhere.example"})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "cross_site_request"
    assert catalog.get_job(uuid).state == "QUEUED"
    same_site = client.post(f"/jobs/{uuid}/cancel", json={},
                            headers={**headers, "origin": "http://127.0.0.1:8000"})
    assert same_site.status_code == 200 and catalog.get_job(uuid).state == "CANCELLED"


def test_pages_load_nothing_from_elsewhere(catalog: Catalog, client: TestClient,
                                           chain: dict[str, str]) -> None:
    for path in ("/ui/", "/ui/jobs", f"/ui/jobs/{chain['J1']}", "/ui/queue",
                 f"/ui/files/{chain['F1']}", "/ui/search?q=x"):
        html = client.get(path).text
        sources = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert sources and all(s.startswith(("/", "?", "data:")) for s in sources), path
        for asset in (s for s in sources if s.startswith("/ui/static/")):
            assert client.get(asset).status_code == 200


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_api_docs_work_offline(client: TestClient, path: str) -> None:
    html = client.get(path).text
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and all(s.startswith("/") for s in sources), sources
    for source in sources:
        assert client.get(source).status_code == 200, source
    assert "cdn." not in html and "fonts.googleapis" not in html
