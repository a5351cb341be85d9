"""Indexing and verifying a job's files: records, fixity, links, reset; local and S3."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import uuid as uuid_module
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from catalog import Catalog, ManagedPipelineJob, ManagedPipelineJobInstance, indexer, patterns
from catalog.errors import (
    AdminRequired,
    CatalogError,
    IndexingError,
    InvalidInput,
    OtherStorageSystem,
    PatternTooCostly,
    TokenInvalid,
    UnsafePath,
)
from catalog.identifiers import UUIDType
from catalog.indexer import file_uuid
from catalog.models import FileRecord
from catalog.tokens import Keys
from catalog.verify import verify

KEYS = Keys(b"i" * 32, b"a" * 32)
FILES = {
    "data/a.csv": b"x,y\n1,2\n",
    "data/b.csv": b"x,y\n3,4\n" * 1000,
    "plots/p.png": b"\x89PNG fake image",
    "plots/summary.pdf": b"%PDF-1.4 fake",
    "notes.txt": b"not matched by any request",
}
ARCHIVE = [{"patterns": [r"\.csv$"], "level": "1", "note": "tables"}]
PRODUCT = [{"patterns": [r"^plots/"], "derived_from": ["./data/a.csv"], "fixity": False}]


def digests(data: bytes) -> dict[str, str]:
    return {"xxh3_128": xxhash.xxh3_128_hexdigest(data),
            "sha256": hashlib.sha256(data).hexdigest()}


@pytest.fixture(params=["local", "s3"])
def archive_root(request: pytest.FixtureRequest, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """(archive_root, s3_endpoint_url) of an empty archive on each backend."""
    if request.param == "local":
        yield str(tmp_path / "archive"), ""
        return
    endpoint = request.getfixturevalue("moto_endpoint")
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    import boto3

    bucket = f"catalog-{uuid_module.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    yield f"s3://{bucket}/archive", endpoint


@pytest.fixture
def catalog(store_url: str, archive_root: tuple[str, str], tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Catalog]:
    monkeypatch.chdir(tmp_path)
    root, endpoint = archive_root
    opened = Catalog.open(store_url, keys=KEYS, archive_root=root, s3_endpoint_url=endpoint,
                          sqlite_synchronous="NORMAL")
    opened.add_pipeline("indexer-test", "1")
    yield opened
    opened.close()


def finished_job(catalog: Catalog, files: dict[str, bytes] = FILES, **extra: Any
                 ) -> ManagedPipelineJob:
    managed = ManagedPipelineJob(catalog, "indexer-test", {"run": uuid_module.uuid4().hex},
                                 measurement_id="measurement.idx.1",
                                 archive_patterns=extra.get("archive", ARCHIVE),
                                 product_patterns=extra.get("product", PRODUCT))
    managed.setup()
    for relative, data in files.items():
        catalog.storage.write(f"{managed.archive_path}/{relative}", data)
    managed.run()
    managed.finish()
    return managed


def records(catalog: Catalog, job: ManagedPipelineJob) -> dict[str, dict[str, Any]]:
    page = catalog.store.find_files(child_of=job.uuid, limit=1000)
    prefix = job.archive_path + "/"
    # each with its whole fixity history in place of the last check the record keeps
    return {doc["path"][len(prefix):]: {**doc, "fixity": history(catalog, doc["uuid"])}
            for doc in page.items}


def history(catalog: Catalog, uuid: str) -> list[dict[str, Any]]:
    return catalog.fixity_checks(uuid, 1000).items


def refuse_to_open(catalog: Catalog, broken: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the storage refuse to open ``broken`` (a permission error), and only it."""
    storage = type(catalog.storage)
    real_open = storage.open

    def refuse_one(self: Any, path: str) -> Any:
        if path == broken:
            raise PermissionError(13, "Permission denied", path)
        return real_open(self, path)

    monkeypatch.setattr(storage, "open", refuse_one)


def test_index_creates_records_with_fixity_and_links(catalog: Catalog) -> None:
    job = finished_job(catalog)
    result = ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)

    assert result.state == "FINISHED"
    assert (result.hashed, result.unchanged) == (4, 0)
    found = records(catalog, job)
    assert sorted(found) == ["data/a.csv", "data/b.csv", "plots/p.png", "plots/summary.pdf"]
    system = catalog.settings.archive_system
    for doc in [*found.values(), *result.files]:
        # built as plain documents on the hot path: they must be exactly the schema's form
        assert FileRecord.model_validate(doc).model_dump(mode="json") == doc
    for relative, doc in found.items():
        data = FILES[relative]
        assert doc["uuid"] == file_uuid(catalog, system, f"{job.archive_path}/{relative}")
        assert doc["uuid"].startswith("105")
        assert doc["size"] == len(data)
        assert doc["child_of"] == [job.uuid] and doc["generated_by"] == [job.uuid]
        assert [c["outcome"] for c in doc["fixity"]] == ["indexed"]
        assert doc["status"] == "ok"
    for relative in ("data/a.csv", "data/b.csv"):
        assert found[relative]["checksums"] == digests(FILES[relative])
        assert (found[relative]["kind"], found[relative]["level"]) == ("archive", "1")
        assert found[relative]["media_type"] == "text/csv"
        assert found[relative]["note"] == "tables"
    a_csv = found["data/a.csv"]["uuid"]
    for relative in ("plots/p.png", "plots/summary.pdf"):
        # product request with fixity off: the fast digest only
        assert found[relative]["checksums"] == {
            "xxh3_128": xxhash.xxh3_128_hexdigest(FILES[relative])}
        assert found[relative]["kind"] == "plot"
        assert found[relative]["derived_from"] == [a_csv]
    history = [e.name for e in catalog.get_job(job.uuid).history]
    assert history == ["create", "run", "finish", "index", "indexed"]


def test_reindex_reads_only_what_changed(catalog: Catalog) -> None:
    job = finished_job(catalog)
    instance = ManagedPipelineJobInstance(catalog, job.uuid)
    instance.index(job.token)
    again = instance.index(job.token)
    assert (again.hashed, again.unchanged) == (0, 4)

    path = f"{job.archive_path}/data/a.csv"
    catalog.storage.write(path, b"x,y\n9,9\n")  # same size, new bytes, new mtime
    if catalog.storage.kind == "local":
        real = Path(catalog.settings.archive_root) / path.lstrip("/")
        os.utime(real, (1_000_000, 1_000_000))
    changed = instance.index(job.token)
    assert (changed.hashed, changed.unchanged, changed.changed) == (1, 3, 1)
    # New content is not the truth until accepted (tests/test_versions.py): read, and kept
    # marked changed against the recorded checksums.
    record = records(catalog, job)["data/a.csv"]
    assert record["checksums"] == digests(FILES["data/a.csv"])
    assert [c["outcome"] for c in record["fixity"]] == ["indexed", "changed"]
    assert record["fixity"][-1]["checksums"] == digests(b"x,y\n9,9\n")
    assert record["status"] == "changed"

    catalog.storage.write(path, FILES["data/a.csv"])  # the recorded content back, new mtime
    restored = instance.index(job.token)
    assert (restored.hashed, restored.unchanged, restored.changed) == (1, 3, 0)
    assert records(catalog, job)["data/a.csv"]["status"] == "ok"
    assert instance.index(job.token).hashed == 0  # the new listing stands

    rehashed = instance.index(job.token, rehash=True)
    assert (rehashed.hashed, rehashed.unchanged) == (4, 0)


def test_records_are_upserted_in_chunks(catalog: Catalog,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import catalog.indexer as indexer_module

    job = finished_job(catalog)
    writes: list[list[str]] = []
    upsert_files = catalog.store.upsert_files

    def counted(docs: list[dict[str, Any]]) -> None:
        writes.append(sorted(doc["path"].rpartition("/")[2] for doc in docs))
        upsert_files(docs)

    monkeypatch.setattr(indexer_module, "UPSERT_CHUNK", 3)
    monkeypatch.setattr(catalog.store, "upsert_files", counted)
    result = ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    assert [len(chunk) for chunk in writes] == [3, 1]
    assert sorted(name for chunk in writes for name in chunk) == [
        "a.csv", "b.csv", "p.png", "summary.pdf"]
    assert len(result.files) == len(records(catalog, job)) == 4


@pytest.mark.parametrize("reset_after", ["erase", "event"])
def test_a_reset_during_an_index_stops_it_and_leaves_no_record_linked(
        catalog: Catalog, monkeypatch: pytest.MonkeyPatch, reset_after: str) -> None:
    """A reset applies its event, then erases and unlinks: whether the index writes a chunk
    after all of that or between the event and the erasing, nothing stays linked to the job."""
    import catalog.indexer as indexer_module

    job = finished_job(catalog)
    upsert_files = catalog.store.upsert_files
    unlink_job_files = catalog.store.unlink_job_files
    writes: list[int] = []

    def reset_after_first(docs: list[dict[str, Any]]) -> None:
        upsert_files(docs)
        writes.append(len(docs))
        if len(writes) == 1:  # an admin resets the job while it is being indexed
            if reset_after == "event":  # the chunk lands before the reset unlinks
                monkeypatch.setattr(catalog.store, "unlink_job_files", lambda uuid: 0)
            catalog.handle_event(job.uuid, {"name": "reset"}, catalog.admin_token(), "cli")
            monkeypatch.setattr(catalog.store, "unlink_job_files", unlink_job_files)

    monkeypatch.setattr(indexer_module, "UPSERT_CHUNK", 2)
    monkeypatch.setattr(catalog.store, "upsert_files", reset_after_first)
    with pytest.raises(IndexingError, match="was reset while it was being indexed"):
        ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    assert writes == [2]  # stopped after the chunk that found the reset
    assert records(catalog, job) == {}
    stored = catalog.get_job(job.uuid)
    assert (stored.state, stored.history[-1].name) == ("RESET", "reset")
    refused = catalog.audit_log(job.uuid)[0]  # the error could not go to the history
    assert (refused.name, refused.code) == ("update", "event_not_allowed")


def test_files_gone_since_the_listing_are_named_as_gone(catalog: Catalog,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    job = finished_job(catalog)
    storage = type(catalog.storage)
    real_list = storage.list
    calls = []

    def list_then_delete(self: Any, prefix: str) -> Iterator[Any]:
        # The run lists twice: first to count and plan (nothing kept), then to read the files
        # a chunk at a time; these go between the second listing and their reading.
        calls.append(prefix)
        listed = list(real_list(self, prefix))
        if len(calls) == 1:
            return iter(listed)
        monkeypatch.setattr(storage, "list", real_list)  # S3's delete_prefix lists too
        catalog.storage.delete_prefix(f"{job.archive_path}/data")  # a.csv, b.csv
        return iter(listed)

    monkeypatch.setattr(storage, "list", list_then_delete)
    with pytest.raises(IndexingError, match=r"data/a\.csv: no such file \(gone since the "):
        ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    assert sorted(records(catalog, job)) == ["plots/p.png", "plots/summary.pdf"]


def test_pattern_matching_nothing_indexes_nothing_and_says_so(catalog: Catalog) -> None:
    job = finished_job(catalog)
    result = ManagedPipelineJobInstance(catalog, job.uuid).index(
        job.token, requests=[{"patterns": [r"\.fits$"]}])
    assert result.files == []
    assert result.unmatched_requests == ["ArchiveIndexRequest ['\\\\.fits$']"]
    assert result.state == "FINISHED"
    assert records(catalog, job) == {}


def test_unresolvable_reference_is_named_and_leaves_the_job_as_it_was(catalog: Catalog) -> None:
    """A run that cannot start is refused before ``index``: the job stays FINISHED."""
    product = [{"patterns": [r"^plots/"], "derived_from": ["./data/nope.csv"]}]
    job = finished_job(catalog, product=product)
    before = catalog.get_job(job.uuid)
    with pytest.raises(InvalidInput, match="nope.csv"):
        ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    assert catalog.get_job(job.uuid) == before
    assert records(catalog, job) == {}  # nothing half-written

    with pytest.raises(InvalidInput):
        ManagedPipelineJobInstance(catalog, job.uuid).index(job.token, fail_on_error=True)
    assert catalog.get_job(job.uuid) == before


def test_a_pattern_that_backtracks_without_end_is_refused_before_anything_is_read(
        catalog: Catalog) -> None:
    """Under re this index never ended, holding a CPU and the GIL (catalog.patterns)."""
    import asyncio

    import httpx

    from catalog.web import create_app

    job = finished_job(catalog, {**FILES, "a" * 60 + "b": b"z"})
    costly = [{"patterns": [r"\.csv$", r"(?:a|aa)+$"]}]
    before = catalog.get_job(job.uuid)
    with pytest.raises(PatternTooCostly, match=r"'\(\?:a\|aa\)\+\$' took more than"):
        ManagedPipelineJobInstance(catalog, job.uuid).index(job.token, requests=costly)
    assert catalog.get_job(job.uuid) == before  # refused before the run started
    assert records(catalog, job) == {}

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(catalog))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(f"/jobs/{job.uuid}/index", json={"requests": costly},
                                     headers={"Authorization": f"Bearer {job.token}"})

    answer = asyncio.run(post())
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, "pattern_too_costly")
    assert records(catalog, job) == {}
    assert catalog.get_job(job.uuid) == before  # a 400 leaves the job FINISHED, not INDEXING


def test_index_needs_the_job_token_and_a_finished_job(catalog: Catalog) -> None:
    job = finished_job(catalog)
    with pytest.raises(CatalogError) as wrong:
        ManagedPipelineJobInstance(catalog, job.uuid).index("f" * 64)
    assert wrong.value.status == 403
    created = ManagedPipelineJob(catalog, "indexer-test", {"other": 1})
    created.setup()
    with pytest.raises(CatalogError) as early:
        ManagedPipelineJobInstance(catalog, created.uuid).index(created.token)
    assert early.value.status == 409
    assert records(catalog, job) == {}


def test_verify_reports_ok_changed_missing_uncatalogued_and_ignored(catalog: Catalog) -> None:
    job = finished_job(catalog)
    ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    report = verify(catalog, job.uuid)
    assert report.counts() == {"ok": 4, "changed": 0, "missing": 0, "unreadable": 0,
                               "uncatalogued": 0, "ignored": 1, "other_storage": 0}
    assert report.ok  # notes.txt is there, but no index request selects it: ignored
    assert (report.ignored, report.uncatalogued) == ([f"{job.archive_path}/notes.txt"], [])
    # A new file that a request selects, and that has no record, is uncatalogued.
    catalog.storage.write(f"{job.archive_path}/data/late.csv", b"x,y\n")
    report = verify(catalog, job.uuid)
    assert report.uncatalogued == [f"{job.archive_path}/data/late.csv"] and not report.ok
    ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)  # catalogued now
    assert verify(catalog, job.uuid).counts()["ok"] == 5
    catalog.storage.write(f"{job.archive_path}/data/late.csv", b"x,y\n")  # as it was

    flipped = bytearray(FILES["data/b.csv"])
    flipped[100] ^= 0x01  # one bit
    catalog.storage.write(f"{job.archive_path}/data/b.csv", bytes(flipped))
    catalog.storage.delete_prefix(f"{job.archive_path}/plots")
    report = verify(catalog, job.uuid)
    prefix = job.archive_path + "/"
    outcomes = {v.path[len(prefix):]: (v.outcome, v.changed) for v in report.files}
    assert outcomes == {
        "data/a.csv": ("ok", []), "data/late.csv": ("ok", []),
        "data/b.csv": ("changed", ["xxh3_128", "sha256"]),
        "plots/p.png": ("missing", []),
        "plots/summary.pdf": ("missing", []),
    }
    assert not report.ok
    stored = records(catalog, job)
    assert stored["data/b.csv"]["status"] == "changed"
    assert [c["outcome"] for c in stored["data/b.csv"]["fixity"]] == [
        "indexed", "ok", "ok", "ok", "changed"]
    assert stored["plots/p.png"]["status"] == "missing"


def test_a_verify_during_an_index_keeps_its_checks(catalog: Catalog) -> None:
    """The indexer builds records from what it read before hashing; checks a verify records
    meanwhile are kept by the upsert, not overwritten."""
    from catalog.indexer import index_job

    job = finished_job(catalog)
    ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    verified: list[int] = []
    collecting: list[bool] = []

    def verify_once(path: str, size: int) -> None:  # called as each file is hashed
        collecting.append(gc.isenabled())
        if not verified:
            verified.append(verify(catalog, job.uuid).counts()["ok"])

    result = index_job(catalog, job.uuid, job.token, rehash=True, progress=verify_once)
    assert (result.hashed, verified) == (4, [4])
    # The collector is paused while the records are built (catalog.gcpause), and only then.
    assert collecting == [False] * 4 and gc.isenabled()
    for relative, doc in records(catalog, job).items():
        # the history in the order the readings were stamped: the index stamped its reading
        # before it hashed, so before the verify's
        assert [c["outcome"] for c in doc["fixity"]] == ["indexed", "indexed", "ok"], relative
        assert catalog.store.get_file(doc["uuid"])["fixity"] == doc["fixity"][-1:]
        assert doc["status"] == "ok"


def test_verify_takes_records_a_page_at_a_time(catalog: Catalog,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import catalog.verify as verify_module

    job = finished_job(catalog)
    ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    writes: list[int] = []
    record_fixity = catalog.store.record_fixity

    def counted(checks: list[Any]) -> None:
        writes.append(len(checks))
        record_fixity(checks)

    monkeypatch.setattr(verify_module, "PAGE", 3)
    monkeypatch.setattr(catalog.store, "record_fixity", counted)
    assert verify(catalog, job.uuid).counts()["ok"] == 4
    assert writes == [3, 1]
    for doc in records(catalog, job).values():
        assert [c["outcome"] for c in doc["fixity"]] == ["indexed", "ok"]

    # With a sink, each page's verdicts go to it once its checks are recorded, none are kept.
    catalog.storage.delete_prefix(f"{job.archive_path}/plots")
    pages: list[list[tuple[str, int]]] = []
    report = verify(catalog, job.uuid, sink=lambda verdicts: pages.append(
        [(v.outcome, len(writes)) for v in verdicts]))
    assert pages == [[("ok", 3)] * 2 + [("missing", 3)], [("missing", 4)]]
    assert report.files == [] and not report.ok
    assert report.counts() == {"ok": 2, "changed": 0, "missing": 2, "unreadable": 0,
                               "uncatalogued": 0, "ignored": 1, "other_storage": 0}
    assert report.to_dict()["files"] == []
    for relative in ("plots/p.png", "plots/summary.pdf"):  # back for what follows
        catalog.storage.write(f"{job.archive_path}/{relative}", FILES[relative])
    writes.clear()

    # Interrupted in its second page, a verify keeps what it recorded of the first.
    hashed: list[str] = []

    def interrupt_at_the_fourth(path: str, size: int) -> None:
        hashed.append(path)
        if len(hashed) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        verify(catalog, job.uuid, progress=interrupt_at_the_fourth)
    outcomes = sorted(len(doc["fixity"]) for doc in records(catalog, job).values())
    assert (outcomes, writes) == ([3, 4, 4, 4], [3])


def test_a_job_of_another_storage_system_is_neither_indexed_nor_verified_here(
    catalog: Catalog, tmp_path: Path
) -> None:
    ours = finished_job(catalog)
    ManagedPipelineJobInstance(catalog, ours.uuid).index(ours.token)
    theirs = finished_job(catalog)
    # The same catalog database, seen from a catalog whose archive is another system.
    other = Catalog.open(catalog.settings.db, keys=KEYS, archive_root=str(tmp_path / "hpc"),
                         archive_system="hpc")
    try:
        with pytest.raises(OtherStorageSystem, match="storage system 'local'") as refused:
            ManagedPipelineJobInstance(other, theirs.uuid).index(theirs.token)
        assert (refused.value.status, refused.value.code) == (409, "other_storage_system")
        assert other.get_job(theirs.uuid).state == "FINISHED"  # refused before any event
        with pytest.raises(TokenInvalid):  # a wrong token is refused as such first
            ManagedPipelineJobInstance(other, theirs.uuid).index("not-the-token")
        with pytest.raises(OtherStorageSystem):
            verify(other, ours.uuid)
        everything = verify(other, None)  # nothing read here, nothing recorded
        assert everything.files == [] and everything.uncatalogued == []
        assert sorted(everything.other_storage) == sorted(
            f"local:{doc['path']}" for doc in records(catalog, ours).values())
        assert everything.ok
    finally:
        other.close()
    for doc in records(catalog, ours).values():
        assert [c["outcome"] for c in doc["fixity"]] == ["indexed"]
    assert ManagedPipelineJobInstance(catalog, theirs.uuid).index(theirs.token).hashed == 4


def test_a_file_that_cannot_be_read_is_reported_and_the_verify_goes_on(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = finished_job(catalog)
    ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    broken = f"{job.archive_path}/data/b.csv"
    refuse_to_open(catalog, broken, monkeypatch)
    report = verify(catalog, job.uuid)
    assert report.unreadable == [f"{broken}: PermissionError: [Errno 13] Permission denied: "
                                 f"'{broken}'"]
    assert report.counts()["ok"] == 3 and report.counts()["unreadable"] == 1
    assert [v.outcome for v in report.files if v.path == broken] == ["unreadable"]
    assert not report.ok
    found = records(catalog, job)
    # Recorded as such (with nothing read), so a scheduled check moves on past it.
    assert [c["outcome"] for c in found["data/b.csv"]["fixity"]] == ["indexed", "unreadable"]
    assert found["data/b.csv"]["status"] == "unreadable"
    assert found["data/b.csv"]["fixity"][-1]["checksums"] == {}
    assert [c["outcome"] for c in found["data/a.csv"]["fixity"]] == ["indexed", "ok"]


@pytest.mark.parametrize("archive_root", ["local"], indirect=True)
def test_a_catalogued_file_turned_into_a_symlink_out_of_the_root_is_reported(
    catalog: Catalog, tmp_path: Path
) -> None:
    job = finished_job(catalog)
    ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    outside = tmp_path / "secret.csv"
    outside.write_bytes(b"not the archive's")
    file = Path(catalog.settings.archive_root) / job.archive_path.lstrip("/") / "data" / "a.csv"
    file.unlink()
    file.symlink_to(outside)
    report = verify(catalog, job.uuid)  # neither read nor followed, and the verify goes on
    assert [entry.split(": ", 1)[0] for entry in report.unreadable] == [
        f"{job.archive_path}/data/a.csv"]  # once: the listing goes on past it
    assert "outside the archive root" in report.unreadable[0]
    assert report.ignored == [f"{job.archive_path}/notes.txt"]
    assert report.counts()["ok"] == 3 and not report.ok


def test_reset_empties_the_archive_path_and_unlinks_records(catalog: Catalog) -> None:
    job = finished_job(catalog)
    ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    before = records(catalog, job)
    with pytest.raises(AdminRequired):
        job.reset()
    assert len(list(catalog.storage.list(job.archive_path))) == 5

    job.reset(token=catalog.admin_token())
    assert list(catalog.storage.list(job.archive_path)) == []
    assert records(catalog, job) == {}
    for doc in before.values():
        kept = catalog.store.get_file(doc["uuid"])
        assert kept is not None
        assert job.uuid not in kept["child_of"] and job.uuid not in kept["generated_by"]
        assert kept["fixity"] == doc["fixity"][-1:]  # its last check; its history stays
        assert history(catalog, doc["uuid"]) == doc["fixity"]
    assert job.ready(token=catalog.admin_token()).state == "CREATED"


@pytest.mark.parametrize("archive_root", ["local"], indirect=True)  # symlinks: local only
def test_a_symlink_out_of_the_root_is_never_read_and_named_when_a_request_matches_it(
        catalog: Catalog, tmp_path: Path) -> None:
    job = finished_job(catalog)
    outside = tmp_path / "secret.csv"
    outside.write_bytes(b"do not index me")
    directory = Path(catalog.settings.archive_root) / job.archive_path.lstrip("/")
    (directory / "data" / "x.csv").symlink_to(outside)
    with pytest.raises(IndexingError, match="x.csv: a symlink pointing out of the archive root"):
        ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    assert catalog.get_job(job.uuid).state == "INDEXING"
    indexed = records(catalog, job)  # the others are indexed; the link is not
    assert sorted(doc["name"] for doc in indexed.values()) == ["a.csv", "b.csv", "p.png",
                                                              "summary.pdf"]

    # A link no request matches (an input the pipeline linked into its outputs) stops nothing.
    (directory / "data" / "x.csv").unlink()
    (directory / "genome.fa").symlink_to(outside)
    result = ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    assert (result.state, result.indexed, result.hashed) == ("FINISHED", 4, 0)
    report = verify(catalog, job.uuid)  # verify names it, and lists the rest
    assert report.unreadable == [f"{job.archive_path}/genome.fa: a symlink pointing out of "
                                 "the archive root"]
    assert report.ignored == [f"{job.archive_path}/notes.txt"] and not report.ok


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("archive_root", ["local"], indirect=True)
def test_index_over_http(catalog: Catalog) -> None:
    import asyncio

    import httpx

    from catalog.web import create_app

    job = finished_job(catalog)

    async def call(token: str, body: bytes = b"") -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(catalog))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(f"/jobs/{job.uuid}/index", content=body,
                                     headers={"Authorization": f"Bearer {token}"})

    refused = asyncio.run(call("f" * 64))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "token_invalid"
    bad = asyncio.run(call(job.token, b'{"rehash": "often"}'))
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "schema_violation"
    before = catalog.get_job(job.uuid)
    # Requests that are no index requests are refused before the job moves: bad input
    # changes nothing (the job once went INDEXING with the error in its history).
    for body, code in ((b'{"requests": [{"patterns": ["(unclosed"]}]}', "invalid_pattern"),
                       (b'{"requests": [{"patterns": []}]}', "invalid_pattern"),
                       (b'{"requests": [{"patterns": ["x"], "level": "9"}]}', "invalid_input")):
        refused_requests = asyncio.run(call(job.token, body))
        assert (refused_requests.status_code, refused_requests.json()["error"]["code"]) == (
            400, code), body
    assert catalog.get_job(job.uuid) == before

    response = asyncio.run(call(job.token, b'{"fixity": false}'))
    assert response.status_code == 200
    # streamed from the index's spool, with its length given and JSONResponse's compact form
    assert response.headers["content-length"] == str(len(response.content))
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert list(document) == ["uuid", "state", "files", "hashed", "unchanged", "changed",
                              "changed_files", "accepted", "unmatched_requests"]
    assert response.content == json.dumps(document, ensure_ascii=False,
                                          separators=(",", ":")).encode()
    assert (document["uuid"], document["state"]) == (job.uuid, "FINISHED")
    assert sorted(f["name"] for f in document["files"]) == ["a.csv", "b.csv", "p.png",
                                                            "summary.pdf"]
    assert all(set(f["checksums"]) == {"xxh3_128"} for f in document["files"])


@pytest.mark.slow
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("archive_root", ["local"], indirect=True)
def test_index_and_verify_on_the_command_line(catalog: Catalog, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    job = finished_job(catalog)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
    env.update(CATALOG_DB=catalog.settings.db, CATALOG_ARCHIVE_ROOT=catalog.settings.archive_root,
               CATALOG_SECRET=KEYS.secret.decode(), CATALOG_ADMIN_KEY=KEYS.admin_key.decode())
    command = str(Path(sys.executable).parent / "catalog")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([command, *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)

    indexed = cli("--json", "index", job.uuid, "--token", job.token)
    assert indexed.returncode == 0, indexed.stderr
    document = json.loads(indexed.stdout)
    assert (document["uuid"], document["state"], len(document["files"])) == (
        job.uuid, "FINISHED", 4)
    catalog.storage.delete_prefix(f"{job.archive_path}/plots")
    (Path(catalog.settings.archive_root) / job.archive_path.lstrip("/") / "notes.txt").unlink()
    checked = cli("verify", job.uuid, "--json")
    assert checked.returncode == 1
    report = json.loads(checked.stdout)
    assert report["counts"] == {"ok": 2, "changed": 0, "missing": 2, "unreadable": 0,
                                "uncatalogued": 0, "ignored": 0, "other_storage": 0}
    human = cli("verify", job.uuid)
    assert human.returncode == 1 and "missing" in human.stdout
    neither = cli("--json", "verify")
    assert neither.returncode == 2
    assert json.loads(neither.stderr)["error"]["code"] == "invalid_input"

    listed = json.loads(cli("--json", "file", "list", "--job", job.uuid, "--status",
                            "missing").stdout)
    assert [f["name"] for f in listed["files"]] == ["p.png", "summary.pdf"]
    shown = cli("--json", "file", "show", listed["files"][0]["uuid"])
    # verified twice above (--json, then for people): both checks are on the record
    assert [c["outcome"] for c in json.loads(shown.stdout)["fixity"]] == ["missing"]  # last
    assert [c["outcome"] for c in history(catalog, listed["files"][0]["uuid"])] == [
        "indexed", "missing", "missing"]
    unknown = cli("file", "show", "nope")
    assert unknown.returncode == 2 and "not a UUID" in unknown.stderr


@pytest.mark.parametrize(("name", "media", "plot"), [
    ("table.csv", "text/csv", False),
    ("figure.PNG", "image/png", True),
    ("figure.svg", "image/svg+xml", True),
    ("report.pdf", "application/pdf", True),
    ("figure.eps", "application/postscript", True),
    ("sky.fits", "image/fits", False),  # FITS is data, not a picture of it
    ("bundle.tar.gz", "application/x-tar", False),
    ("run.v2.csv", "text/csv", False),
    ("README", "application/octet-stream", False),
])
def test_media_types_and_plots(name: str, media: str, plot: bool) -> None:
    from catalog.indexer import is_plot, media_type

    assert (media_type(name), is_plot(media_type(name))) == (media, plot)


@pytest.mark.parametrize("archive_root", ["local"], indirect=True)
def test_a_reset_whose_erase_fails_stands_and_a_resend_finishes_it(catalog: Catalog) -> None:
    import shutil

    job = finished_job(catalog)
    admin = catalog.admin_token()
    root = Path(catalog.settings.archive_root)
    directory = root / job.archive_path.lstrip("/")
    elsewhere = root / "elsewhere"
    shutil.move(directory, elsewhere)
    directory.symlink_to(elsewhere)  # erasing through it could empty another job's files
    applied = job.reset(token=admin, event_id="reset-1")
    # The event was applied, and is answered so, with the failed clean-up stated and recorded.
    assert (applied.state, applied.duplicate) == ("RESET", False)
    assert applied.cleanup_error is not None and "symlink" in applied.cleanup_error
    assert catalog.get_job(job.uuid).state == "RESET"
    assert [(a.name, a.code, a.event_id) for a in catalog.audit_log(job.uuid)] == [
        ("reset", "cleanup_failed", "reset-1")]
    assert len(list(elsewhere.rglob("*.csv"))) == 2  # nothing outside the job was touched

    directory.unlink()
    shutil.move(elsewhere, directory)
    again = job.reset(token=admin, event_id="reset-1")
    assert (again.duplicate, again.state) == (True, "RESET")
    assert list(catalog.storage.list(job.archive_path)) == []


def test_file_lookups_by_job_prefix_status_and_checksum(catalog: Catalog) -> None:
    from catalog.errors import FileNotFound, MalformedIdentifier

    job = finished_job(catalog)
    other = finished_job(catalog)
    ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    ManagedPipelineJobInstance(catalog, other.uuid).index(other.token)

    mine = catalog.find_files(job=job.uuid, limit=3)
    rest = catalog.find_files(job=job.uuid, limit=3, cursor=mine.next)
    paths = [d["path"] for d in mine.items + rest.items]
    assert paths == sorted(f"{job.archive_path}/{r}" for r in FILES if r != "notes.txt")
    assert rest.next is None
    plots = catalog.find_files(path_prefix=f"{job.archive_path}/plots/").items
    assert [d["name"] for d in plots] == ["p.png", "summary.pdf"]

    sha = digests(FILES["data/a.csv"])["sha256"]
    both = catalog.find_files(checksum=f"sha256:{sha.upper()}").items
    assert sorted(d["path"] for d in both) == sorted(
        [f"{job.archive_path}/data/a.csv", f"{other.archive_path}/data/a.csv"])
    assert [d["path"] for d in catalog.find_files(job=other.uuid,
                                                  checksum=f"sha256:{sha}").items] == [
        f"{other.archive_path}/data/a.csv"]
    assert catalog.find_files(checksum="sha256:" + "0" * 64).items == []
    # paged like any other filter, and with a glob (scanned over the digest's matches)
    first = catalog.find_files(checksum=f"sha256:{sha}", limit=1)
    second = catalog.find_files(checksum=f"sha256:{sha}", limit=1, cursor=first.next)
    assert [d["path"] for d in first.items + second.items] == sorted(d["path"] for d in both)
    assert first.next is not None and second.next is None
    globbed = catalog.find_files(checksum=f"sha256:{sha}", path_glob=f"{other.archive_path}/**")
    assert [d["path"] for d in globbed.items] == [f"{other.archive_path}/data/a.csv"]

    catalog.storage.delete_prefix(f"{job.archive_path}/plots")
    verify(catalog, job.uuid)
    missing = catalog.find_files(status="missing").items
    assert [d["name"] for d in missing] == ["p.png", "summary.pdf"]
    record = catalog.get_file(missing[0]["uuid"])
    assert [c.outcome for c in record.fixity] == ["missing"]  # the last check
    assert [c["outcome"] for c in history(catalog, record.uuid)] == ["indexed", "missing"]

    for bad, error in ((dict(status="lost"), InvalidInput),
                       (dict(checksum="sha256"), InvalidInput),
                       (dict(checksum="sha-256:ab"), InvalidInput),
                       (dict(path_prefix="../x"), UnsafePath),
                       (dict(job="not-a-uuid"), MalformedIdentifier)):
        with pytest.raises(error):
            catalog.find_files(**bad)  # type: ignore[arg-type]
    with pytest.raises(FileNotFound):
        catalog.get_file(file_uuid(catalog, "local", "/nowhere"))


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("archive_root", ["local"], indirect=True)
def test_files_over_http(catalog: Catalog) -> None:
    import asyncio

    import httpx

    from catalog.web import create_app

    job = finished_job(catalog)
    ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)

    async def get(url: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(catalog))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(url)

    listed = asyncio.run(get(f"/files?job={job.uuid}&limit=2"))
    assert listed.status_code == 200
    assert len(listed.json()["files"]) == 2 and listed.json()["next"]
    uuid = listed.json()["files"][0]["uuid"]
    shown = asyncio.run(get(f"/files/{uuid}"))
    assert shown.status_code == 200 and shown.json()["uuid"] == uuid
    missing = asyncio.run(get(f"/files/{file_uuid(catalog, 'local', '/nowhere')}"))
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "file_not_found")
    bad = asyncio.run(get("/files?status=lost"))
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_input")
    # The glob that kept the service at 100% CPU under re (tests/test_patterns.py).
    froze = asyncio.run(get("/files?path_glob=" + "**a" * 12 + "**b"))
    assert (froze.status_code, froze.json()["files"]) == (200, [])
    with pytest.MonkeyPatch.context() as patch:  # every match out of time at once
        patch.setattr(patterns, "MATCH_TIMEOUT_S", 0)
        costly = asyncio.run(get("/files?path_glob=**/*.csv"))
    assert (costly.status_code, costly.json()["error"]["code"]) == (400, "pattern_too_costly")
    assert "'**/*.csv' took more than 0 s" in costly.json()["error"]["message"]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab.cZ", min_size=1, max_size=24).filter(lambda n: n not in (".", "..")))
def test_media_type_reads_the_suffixes_as_pathlib_does(name: str) -> None:
    from pathlib import PurePosixPath

    from catalog.indexer import _media_type_of_suffix, media_type

    path = f"/products/x.y/{name}"  # storage paths: normalised, a file name last
    suffixes = PurePosixPath(path).suffixes
    assert media_type(path) == _media_type_of_suffix("".join(suffixes[-2:]).lower())


@pytest.mark.parametrize("archive_root", ["local"], indirect=True)
def test_a_request_references_are_resolved_once_for_all_its_files(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = finished_job(catalog)
    ManagedPipelineJobInstance(catalog, upstream.uuid).index(upstream.token)
    a_csv = file_uuid(catalog, catalog.settings.archive_system,
                      f"{upstream.archive_path}/data/a.csv")
    plots = {f"plots/p{i:03d}.png": b"png %d" % i for i in range(60)}
    job = finished_job(catalog, plots, archive=[], product=[
        {"patterns": [r"^plots/"], "derived_from": [a_csv],
         "derived_using": ["s3://elsewhere/calibration.h5"]}])
    looked_up: list[str] = []
    real_get_file = type(catalog.store).get_file

    def counting(self: Any, uuid: str) -> Any:
        looked_up.append(uuid)
        return real_get_file(self, uuid)

    monkeypatch.setattr(type(catalog.store), "get_file", counting)
    result = ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    assert result.indexed == len(result.files) == 60
    # once for the request, not once per file (which made a large index quadratic)
    assert looked_up.count(a_csv) == 1
    reference = catalog.typed_uuid(UUIDType.reference, "s3://elsewhere/calibration.h5")
    assert {(tuple(f["derived_from"]), tuple(f["derived_using"])) for f in result.files} == {
        ((a_csv,), (reference,))}
    assert catalog.store.get_entity(reference) is not None


def test_index_in_chunks_hands_each_record_to_the_sink_once(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(indexer, "UPSERT_CHUNK", 3)
    many = {f"data/t{i:02d}.csv": b"%d\n" % i for i in range(10)}
    job = finished_job(catalog, many)
    chunks: list[list[dict[str, Any]]] = []
    result = indexer.index_job(catalog, job.uuid, job.token, sink=chunks.append)
    assert [len(chunk) for chunk in chunks] == [3, 3, 3, 1]
    assert result.files == [] and (result.indexed, result.hashed) == (10, 10)
    streamed = [record for chunk in chunks for record in chunk]
    assert [r["path"] for r in streamed] == sorted(f"{job.archive_path}/{p}" for p in many)
    assert {r["uuid"]: r for r in streamed} == {r["uuid"]: r for r in records(catalog,
                                                                              job).values()}
    assert catalog.get_job(job.uuid).history[-1].data == {
        "files": 10, "hashed": 10, "unchanged": 0, "changed": 0, "accepted": 0}
    again = indexer.index_job(catalog, job.uuid, job.token)  # no sink: the records kept
    assert (len(again.files), again.indexed, again.unchanged) == (10, 10, 10)


def test_a_file_that_cannot_be_read_is_named_and_the_others_are_indexed(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(indexer, "UPSERT_CHUNK", 2)
    job = finished_job(catalog)
    broken = f"{job.archive_path}/data/b.csv"
    refuse_to_open(catalog, broken, monkeypatch)
    with pytest.raises(IndexingError) as caught:
        ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    assert caught.value.message.startswith(
        "could not read 1 file(s), which were not indexed (the other 3 were): "
        f"{broken}: [Errno 13] Permission denied")
    stored = catalog.get_job(job.uuid)
    assert stored.state == "INDEXING"
    assert "could not read 1 file(s)" in stored.history[-1].data["error"]
    assert sorted(records(catalog, job)) == ["data/a.csv", "plots/p.png", "plots/summary.pdf"]

    monkeypatch.undo()  # readable again (and chunks of 5,000): only it is read now
    result = ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    assert (result.hashed, result.unchanged, result.state) == (1, 3, "FINISHED")
    assert records(catalog, job)["data/b.csv"]["checksums"] == digests(FILES["data/b.csv"])


def test_reindexing_an_unchanged_job_writes_nothing(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = finished_job(catalog)
    instance = ManagedPipelineJobInstance(catalog, job.uuid)
    instance.index(job.token)
    stored = records(catalog, job)
    written: list[str] = []
    upsert_files = catalog.store.upsert_files

    def counted(docs: list[dict[str, Any]]) -> None:
        written.extend(doc["name"] for doc in docs)
        upsert_files(docs)

    monkeypatch.setattr(catalog.store, "upsert_files", counted)
    again = instance.index(job.token)
    assert (again.unchanged, written) == (4, [])
    assert records(catalog, job) == stored  # their dates too: nothing about them changed
    assert sorted(again.files, key=lambda f: f["path"]) == sorted(
        stored.values(), key=lambda f: f["path"])

    # A request that says something new about the files rewrites them, still unread.
    noted = instance.index(job.token, requests=[{**ARCHIVE[0], "note": "new note"}, *PRODUCT])
    assert (noted.hashed, sorted(written)) == (0, ["a.csv", "b.csv"])
    assert records(catalog, job)["data/a.csv"]["note"] == "new note"
    assert records(catalog, job)["data/a.csv"]["fixity"] == stored["data/a.csv"]["fixity"]


def test_a_product_may_name_a_file_of_the_same_run_by_path_or_uuid(catalog: Catalog) -> None:
    probe = finished_job(catalog, {})  # only for its archive path's shape
    files = {"data/raw.h5": b"raw", "plots/a.png": b"a", "plots/b.png": b"b"}
    job = finished_job(catalog, files, product=[])
    raw = file_uuid(catalog, catalog.settings.archive_system, f"{job.archive_path}/data/raw.h5")
    assert catalog.store.get_file(raw) is None  # not catalogued before this run
    requests = [{"patterns": [r"\.h5$"], "level": "0"},
                {"patterns": [r"^plots/a"], "derived_from": ["./data/raw.h5"]},
                {"patterns": [r"^plots/b"], "derived_from": [raw]}]
    result = ManagedPipelineJobInstance(catalog, job.uuid).index(job.token, requests=requests)
    derived = {f["name"]: f["derived_from"] for f in result.files}
    assert derived == {"raw.h5": [], "a.png": [raw], "b.png": [raw]}
    # a uuid of no file of this run (nor of the catalog) is refused, naming it
    elsewhere = file_uuid(catalog, catalog.settings.archive_system,
                          f"{probe.archive_path}/data/raw.h5")
    with pytest.raises(InvalidInput, match=f"reference {elsewhere} is not catalogued"):
        ManagedPipelineJobInstance(catalog, job.uuid).index(
            job.token, requests=[*requests[:2], {"patterns": [r"^plots/b"],
                                                 "derived_from": [elsewhere]}])
