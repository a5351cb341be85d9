"""Finding jobs and files: every filter, sort and cursor, on both stores, CLI and HTTP too."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from catalog import Catalog, ManagedPipelineJob
from catalog import queries as queries_module
from catalog.cli import main
from catalog.errors import InvalidInput
from catalog.indexer import file_uuid
from catalog.models import FileRecord, Job, format_date
from catalog.queries import glob_regex
from catalog.store.values import Doc, Page
from catalog.tokens import Keys
from catalog.web import create_app

KEYS = Keys(b"q" * 32, b"a" * 32)
START = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.mark.parametrize(("pattern", "path", "matches"), [
    ("*.csv", "/products/v2/a/out.csv", True),
    ("*.csv", "/products/v2/a/out.csv.gz", False),
    ("/products/*.csv", "/products/out.csv", True),
    ("/products/*.csv", "/products/v2/out.csv", False),       # * stays in its segment
    ("/products/**.csv", "/products/v2/out.csv", True),
    ("/products/**/out.csv", "/products/out.csv", True),      # **/ also matches no directory
    ("/products/**/out.csv", "/products/a/b/out.csv", True),
    ("plots/p?.png", "/x/plots/p1.png", True),
    ("plots/p?.png", "/x/plots/p12.png", False),
    ("p?.png", "/x/p/.png", False),                           # ? is never a /
    ("[ab].txt", "/d/a.txt", True),
    ("[!ab].txt", "/d/a.txt", False),
    ("[!ab].txt", "/d/c.txt", True),
    ("[]x].txt", "/d/].txt", True),
    ("[a-c]1", "/d/b1", True),
    ("[.txt", "/d/[.txt", True),                              # an unclosed [ is literal
    ("a.b", "/d/aXb", False),                                 # . is literal
    ("(x)+", "/d/(x)+", True),                                # so is everything regex-like
    ("/", "/", True),
    ("Out.CSV", "/d/out.csv", False),                         # case matters, as in paths
])
def test_glob_semantics(pattern: str, path: str, matches: bool) -> None:
    assert glob_regex(pattern).fullmatch(path) is matches


@pytest.mark.parametrize("pattern", ["", "x" * 1025, "a\x00b"])
def test_bad_globs_are_refused(pattern: str) -> None:
    with pytest.raises(InvalidInput):
        glob_regex(pattern)


@pytest.fixture
def catalog(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[Catalog]:
    monkeypatch.chdir(tmp_path)
    opened = Catalog.open(store_url, keys=KEYS, sqlite_synchronous="NORMAL",
                          archive_root=str(tmp_path / "archive"))
    opened.add_pipeline("queries", "1")
    opened.add_pipeline("other", "1")
    yield opened
    opened.close()


def add_job(catalog: Catalog, number: int, created: datetime, **fields: Any) -> Doc:
    """A job stored with a chosen creation time (setup() stamps now)."""
    managed = ManagedPipelineJob(catalog, fields.pop("pipeline", "queries"),
                                 fields.pop("data", {"n": number}),
                                 agent=fields.pop("agent", None), **fields)
    job = managed.setup().model_dump(mode="json")
    catalog.store.delete_job(job["uuid"])
    job.update(created=format_date(created), updated=format_date(created))
    job["history"][0]["date"] = format_date(created)
    catalog.store.insert_job(Job.model_validate(job).model_dump(mode="json"))
    return {k: v for k, v in job.items() if k != "history"}


@pytest.fixture
def jobs(catalog: Catalog) -> dict[str, Doc]:
    specs: dict[str, dict[str, Any]] = {
        "a": {"agent": "actor-1", "data": {"sample": "Mouse liver", "dose": 3}},
        "b": {"agent": "actor-2", "data": {"inputs": [], "note": "LIVER biopsy, repeat"}},
        "c": {"agent": "actor-1", "data": {"nested": {"deep": ["kidney", {"liverish": 1}]}}},
        "d": {"data": {"sample": "brain", "n": 4}, "pipeline": "other"},
        "e": {"agent": "actor-1", "data": {"count": 5, "label": "Ωmega"}},
        "f": {"agent": "actor-2", "data": {"sample": "heart"},
              "measurement_id": "measurement.q.1"},
    }
    return {key: add_job(catalog, number, START + timedelta(days=number), **spec)
            for number, (key, spec) in enumerate(specs.items())}


def keys_of(page_items: list[Doc], jobs: dict[str, Doc]) -> list[str]:
    names = {job["uuid"]: key for key, job in jobs.items()}
    return [names[doc["uuid"]] for doc in page_items]


def every_page(fetch: Callable[[str | None], Page]) -> list[Doc]:
    found: list[Doc] = []
    cursor: str | None = None
    for _ in range(1000):
        page = fetch(cursor)
        found += page.items
        if page.next is None:
            return found
        cursor = page.next
    raise AssertionError("paging did not end")


@pytest.mark.parametrize(("filters", "expected"), [
    ({}, ["a", "b", "c", "d", "e", "f"]),
    ({"sort": "-created"}, ["f", "e", "d", "c", "b", "a"]),
    ({"agent": "actor-1"}, ["a", "c", "e"]),
    ({"text": "liver"}, ["a", "b", "c"]),          # keys and values, nested, any case
    ({"text": "LIVER", "agent": "actor-2"}, ["b"]),
    ({"text": "ωMEGA"}, ["e"]),                    # casefolded, not only ASCII
    ({"text": "3"}, []),                           # numbers are not text
    ({"created_after": "2026-11-03"}, ["c", "d", "e", "f"]),
    ({"created_before": "2026-11-03"}, ["a", "b"]),
    ({"created_after": "2026-11-02T00:00:00Z", "created_before": "2026-11-04T00:00:00+00:00"},
     ["b", "c"]),
    ({"created_after": "2026-11-02T01:00:00+01:00"}, ["b", "c", "d", "e", "f"]),
    ({"pipeline": "other"}, ["d"]),
    ({"child_of": "measurement.q.1", "agent": "actor-2"}, ["f"]),
    ({"text": "sample", "sort": "-created"}, ["f", "d", "a"]),
])
def test_find_jobs_filters_and_sorts(catalog: Catalog, jobs: dict[str, Doc],
                                     filters: dict[str, Any], expected: list[str]) -> None:
    assert keys_of(catalog.find_jobs(**filters).items, jobs) == expected
    for limit in (1, 2, 4):
        paged = every_page(lambda cursor, size=limit: catalog.find_jobs(
            **filters, limit=size, cursor=cursor))
        assert keys_of(paged, jobs) == expected


def test_text_search_stops_within_its_scan_budget_and_resumes(
        catalog: Catalog, jobs: dict[str, Doc], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queries_module, "SCAN_BUDGET", 2)
    first = catalog.find_jobs(text="liver", limit=10)
    assert keys_of(first.items, jobs) == ["a", "b"] and first.next is not None
    # Short pages are allowed; following the cursors still gives each match once.
    paged = every_page(lambda cursor: catalog.find_jobs(text="heart", limit=10, cursor=cursor))
    assert keys_of(paged, jobs) == ["f"]


@pytest.mark.parametrize(("filters", "message"), [
    ({"created_after": "yesterday"}, "created_after must be an ISO 8601"),
    ({"created_before": "2026-13-01"}, "created_before must be an ISO 8601"),
    ({"text": ""}, "search text must be"),
    ({"text": "x" * 257}, "search text must be"),
    ({"sort": "updated"}, "sort must be one of created, -created"),
    ({"limit": 0}, "limit must be between 1 and 1000"),
    ({"cursor": "garbage"}, "is not valid"),
])
def test_bad_job_queries_are_refused(catalog: Catalog, jobs: dict[str, Doc],
                                     filters: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        catalog.find_jobs(**filters)


def record(catalog: Catalog, path: str, seconds: int, kind: str = "product",
           level: str | None = None, job: str | None = None) -> Doc:
    media = "image/png" if path.endswith(".png") else "text/csv"
    created = START + timedelta(seconds=seconds)
    return FileRecord(
        uuid=file_uuid(catalog, "local", path), storage_system="local", path=path,
        name=path.rpartition("/")[2], size=seconds, mtime=created, media_type=media,
        kind=kind, level=level, checksums={"xxh3_128": f"{seconds:032x}"},
        child_of=[job] if job else [], generated_by=[job] if job else [],
        created=created, updated=created,
    ).model_dump(mode="json")


@pytest.fixture
def files(catalog: Catalog, jobs: dict[str, Doc]) -> list[Doc]:
    records = []
    for n in range(30):
        folder = ("raw", "tables", "plots")[n % 3]
        suffix = "png" if folder == "plots" else "csv"
        kind = {"raw": "archive", "tables": "product", "plots": "plot"}[folder]
        records.append(record(catalog, f"/products/v2/{'ab'[n % 2]}/{folder}/f{n:02d}.{suffix}",
                              (n * 11) % 30, kind, "0" if kind == "archive" else None,
                              jobs["a"]["uuid"] if n < 10 else None))
    catalog.store.upsert_files(records)
    return records


def ordered(docs: list[Doc], sort: str) -> list[str]:
    field = sort.lstrip("-")
    chosen = sorted(docs, key=lambda d: (d[field], d["uuid"]), reverse=sort.startswith("-"))
    return [d["path"] for d in chosen]


@pytest.mark.parametrize(("filters", "keep"), [
    ({}, lambda d: True),
    ({"path_glob": "*.png"}, lambda d: d["path"].endswith(".png")),
    ({"path_glob": "/products/v2/a/*/f1?.csv"},
     lambda d: d["path"].startswith("/products/v2/a/") and d["path"][-7:-5] == "f1"
     and d["path"].endswith(".csv")),
    ({"path_glob": "/products/v2/b/**"}, lambda d: d["path"].startswith("/products/v2/b/")),
    ({"path_glob": "tables/*", "path_prefix": "/products/v2/a"},
     lambda d: "/tables/" in d["path"] and d["path"].startswith("/products/v2/a")),
    ({"path_glob": "/products/v2/a/**", "path_prefix": "/products/v2/b"}, lambda d: False),
    ({"kind": "plot"}, lambda d: d["kind"] == "plot"),
    ({"level": "0"}, lambda d: d["level"] == "0"),
    ({"media_type": "text/csv", "path_glob": "raw/*"},
     lambda d: "/raw/" in d["path"]),
    ({"job": "a"}, lambda d: d["child_of"] != []),
    ({"job": "a", "kind": "archive"}, lambda d: d["child_of"] != [] and d["kind"] == "archive"),
    ({"checksum": f"xxh3_128:{7:032x}"}, lambda d: d["checksums"]["xxh3_128"] == f"{7:032x}"),
    ({"checksum": f"xxh3_128:{7:032x}", "kind": "archive"}, lambda d: False),  # f17: a plot
])
@pytest.mark.parametrize("sort", ["path", "-path", "created", "-created"])
def test_find_files_filters_and_sorts(catalog: Catalog, jobs: dict[str, Doc], files: list[Doc],
                                      filters: dict[str, Any], keep: Callable[[Doc], bool],
                                      sort: str) -> None:
    if "job" in filters:
        filters = {**filters, "job": jobs[filters["job"]]["uuid"]}
    expected = ordered([d for d in files if keep(d)], sort)
    assert [d["path"] for d in catalog.find_files(**filters, sort=sort).items] == expected
    if "checksum" not in filters:
        for limit in (1, 4):
            paged = every_page(lambda cursor, size=limit: catalog.find_files(
                **filters, sort=sort, limit=size, cursor=cursor))
            assert [d["path"] for d in paged] == expected


def test_a_glob_scan_within_a_small_budget_still_pages_through_each_once(
        catalog: Catalog, files: list[Doc], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queries_module, "SCAN_BUDGET", 4)
    paged = every_page(lambda cursor: catalog.find_files(path_glob="*.png", limit=3,
                                                         cursor=cursor))
    assert [d["path"] for d in paged] == ordered(
        [d for d in files if d["path"].endswith(".png")], "path")


@pytest.mark.parametrize(("filters", "message"), [
    ({"kind": "image"}, "unknown kind 'image'"),
    ({"level": "4"}, "unknown level '4'"),
    ({"sort": "size"}, "sort must be one of path, -path, created, -created"),
    ({"path_glob": ""}, "a path glob must be"),
    ({"cursor": "e30"}, "is not valid"),
])
def test_bad_file_queries_are_refused(catalog: Catalog, files: list[Doc],
                                      filters: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        catalog.find_files(**filters)


def test_a_cursor_of_one_sort_is_refused_by_another(catalog: Catalog, files: list[Doc]) -> None:
    page = catalog.find_files(limit=2)
    with pytest.raises(InvalidInput, match="sorted by 'path', not 'created'"):
        catalog.find_files(limit=2, sort="created", cursor=page.next)


# pagination under concurrent inserts ------------------------------------------------------

@pytest.mark.parametrize("sort", ["path", "-path", "created", "-created"])
def test_paging_neither_skips_nor_repeats_while_records_are_inserted(
        catalog: Catalog, sort: str) -> None:
    rng = random.Random(sort)
    before = [record(catalog, f"/p/{rng.randrange(10**6):06d}/{n}.csv", rng.randrange(10**6))
              for n in range(300)]
    catalog.store.upsert_files(before)
    stop = threading.Event()
    inserted: list[str] = []

    def insert_more() -> None:
        n = 0
        while not stop.is_set():
            # Anywhere in the order: before the reader's position, after it, at its key.
            batch = [record(catalog, f"/p/{rng.randrange(10**6):06d}/new{n}-{k}.csv",
                            rng.randrange(10**6)) for k in range(5)]
            catalog.store.upsert_files(batch)
            inserted.extend(d["uuid"] for d in batch)
            n += 1

    writer = threading.Thread(target=insert_more)
    writer.start()
    seen: list[str] = []
    try:
        cursor: str | None = None
        while True:
            page = catalog.find_files(limit=7, sort=sort, cursor=cursor)
            seen += [d["uuid"] for d in page.items]
            if page.next is None:
                break
            cursor = page.next
    finally:
        stop.set()
        writer.join()
    assert len(seen) == len(set(seen)), "a record was repeated"
    assert {d["uuid"] for d in before} <= set(seen), "a record present throughout was skipped"
    assert set(seen) <= {d["uuid"] for d in before} | set(inserted)
    assert inserted, "the writer never ran alongside the reader"


def test_job_paging_neither_skips_nor_repeats_while_jobs_are_created(catalog: Catalog) -> None:
    before = [add_job(catalog, n, START + timedelta(minutes=n)) for n in range(40)]
    stop = threading.Event()
    created: list[str] = []

    def create_more() -> None:
        n = 1000
        while not stop.is_set():
            created.append(add_job(catalog, n, START + timedelta(minutes=(n * 7) % 45))["uuid"])
            n += 1

    writer = threading.Thread(target=create_more)
    writer.start()
    try:
        seen = [d["uuid"] for d in every_page(
            lambda cursor: catalog.find_jobs(limit=3, cursor=cursor, sort="-created"))]
    finally:
        stop.set()
        writer.join()
    assert len(seen) == len(set(seen))
    assert {d["uuid"] for d in before} <= set(seen)


# CLI and HTTP --------------------------------------------------------------------------

def run_cli(catalog: Catalog, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``catalog <args>`` in this process, through the entry point that renders errors."""
    monkeypatch.setenv("CATALOG_DB", catalog.settings.db)
    monkeypatch.setenv("CATALOG_ARCHIVE_ROOT", catalog.settings.archive_root)
    monkeypatch.setenv("CATALOG_SECRET", KEYS.secret.decode())
    monkeypatch.setenv("CATALOG_ADMIN_KEY", KEYS.admin_key.decode())
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_cli_finds_jobs_and_files_by_the_new_filters(
        catalog: Catalog, jobs: dict[str, Doc], files: list[Doc],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(catalog, monkeypatch, capsys, "--json", "job", "list", "--text", "liver",
                           "--agent", "actor-1", "--sort", "-created")
    assert code == 0
    assert keys_of(json.loads(out)["jobs"], jobs) == ["c", "a"]
    code, out, _ = run_cli(catalog, monkeypatch, capsys, "--json", "job", "list", "--created-after",
                           "2026-11-06", "--limit", "1")
    listed = json.loads(out)
    assert keys_of(listed["jobs"], jobs) == ["f"] and listed["next"] is None
    code, out, _ = run_cli(catalog, monkeypatch, capsys, "--json", "file", "list", "--path-glob",
                           "/products/v2/a/**.png", "--kind", "plot", "--sort", "-path")
    assert code == 0
    assert [d["path"] for d in json.loads(out)["files"]] == ordered(
        [d for d in files if d["path"].startswith("/products/v2/a/")
         and d["path"].endswith(".png")], "-path")
    code, _, err = run_cli(catalog, monkeypatch, capsys, "--json", "file", "list", "--sort", "size")
    assert code == 2
    assert json.loads(err)["error"]["code"] == "invalid_input"
    code, _, err = run_cli(catalog, monkeypatch, capsys, "job", "list", "--created-before", "soon")
    assert code == 2 and "created_before must be an ISO 8601" in err


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_http_finds_jobs_and_files_by_the_new_filters(
        catalog: Catalog, jobs: dict[str, Doc], files: list[Doc]) -> None:
    transport = httpx.ASGITransport(app=create_app(catalog))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        found = await client.get("/jobs", params={"text": "Liver", "sort": "-created",
                                                  "limit": 2})
        assert found.status_code == 200
        body = found.json()
        assert keys_of(body["jobs"], jobs) == ["c", "b"]
        rest = await client.get("/jobs", params={"text": "Liver", "sort": "-created",
                                                 "cursor": body["next"]})
        assert keys_of(rest.json()["jobs"], jobs) == ["a"]
        plots = await client.get("/files", params={"path_glob": "plots/*", "sort": "created"})
        assert [d["path"] for d in plots.json()["files"]] == ordered(
            [d for d in files if "/plots/" in d["path"]], "created")
        for params in ({"sort": "bogus"}, {"created_after": "x"}, {"kind": "nope"},
                       {"path_glob": "[" * 2000}):
            path = "/files" if "kind" in params or "path_glob" in params else "/jobs"
            refused = await client.get(path, params=params)
            assert refused.status_code == 400, params
            assert set(refused.json()) == {"error"}

