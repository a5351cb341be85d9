"""BagIt export: valid bags (checked by bagit-python) whose manifest is the recorded checksums,
and no bag when a file no longer matches; local storage and S3, every store."""
# ruff: noqa: F811  (tests take the imported fixtures as parameters)

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import tarfile
from pathlib import Path

import bagit
import httpx
import pytest
from test_indexer import (  # noqa: F401  (the indexing tests' fixtures, used by name)
    FILES,
    archive_root,
    catalog,
    finished_job,
    records,
)
from test_scheduled_fixity import run_cli

from catalog import Catalog, ManagedPipelineJobInstance
from catalog import bag as catalog_bag
from catalog.bag import export_bag
from catalog.errors import FixityMismatch, InvalidInput, TokenInvalid

INDEXED = ("data/a.csv", "data/b.csv", "plots/p.png", "plots/summary.pdf")


def test_a_jobs_bag_is_valid_and_its_manifest_is_the_recorded_checksums(
        catalog: Catalog, tmp_path: Path) -> None:
    job = finished_job(catalog)
    ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    result = export_bag(catalog, job.uuid, tmp_path / "bag", job.token)
    assert (result.files, result.bytes) == (4, sum(len(FILES[name]) for name in INDEXED))

    bag = bagit.Bag(str(tmp_path / "bag"))
    bag.validate()  # every payload file against the manifest, Payload-Oxum, tag manifest
    assert bag.is_valid()
    assert sorted(bag.payload_files()) == sorted(f"data/{name}" for name in INDEXED)
    found = records(catalog, job)
    manifest = {path: digests["sha256"] for path, digests in bag.entries.items()
                if path.startswith("data/")}
    for name in ("data/a.csv", "data/b.csv"):  # the recorded sha256, as recorded
        assert manifest[f"data/{name}"] == found[name]["checksums"]["sha256"]
    for name in ("plots/p.png", "plots/summary.pdf"):  # indexed without sha256: the copy's
        assert "sha256" not in found[name]["checksums"]
        assert manifest[f"data/{name}"] == hashlib.sha256(FILES[name]).hexdigest()
    info = bag.info
    assert info["External-Identifier"] == info["Catalog-Job-UUID"] == job.uuid
    assert info["Catalog-Pipeline"] == f"indexer-test 1 ({job.job.pipeline_uuid})"
    assert info["Catalog-URL"] == f"{catalog.settings.base_url}/jobs/{job.uuid}"
    assert info["Payload-Oxum"] == f"{result.bytes}.4"
    assert not (tmp_path / "bag" / "data" / "notes.txt").exists()  # never catalogued

    with pytest.raises(InvalidInput, match="exists"):  # never over an existing directory
        export_bag(catalog, job.uuid, tmp_path / "bag", job.token)
    with pytest.raises(TokenInvalid):
        export_bag(catalog, job.uuid, tmp_path / "other", "f" * 64)
    assert catalog.audit_log(job.uuid)[0].name == "bag"  # the refusal is audited
    export_bag(catalog, job.uuid, tmp_path / "by-admin", catalog.admin_token())
    bagit.Bag(str(tmp_path / "by-admin")).validate()


@pytest.mark.parametrize(("damage", "why"), [
    (lambda data: bytes([data[0] ^ 0x01]) + data[1:], "does not match its record"),
    (lambda data: data[:5], "does not match its record"),
    (None, "is missing"),
])
def test_a_file_that_no_longer_matches_stops_the_export_naming_it(
        catalog: Catalog, tmp_path: Path, damage: object, why: str) -> None:
    job = finished_job(catalog)
    ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    path = f"{job.archive_path}/data/b.csv"
    if callable(damage):
        catalog.storage.write(path, damage(FILES["data/b.csv"]))
    else:
        catalog.storage.delete_prefix(f"{job.archive_path}/data")
        path = f"{job.archive_path}/data/a.csv"  # the first file of the bag
    bags = tmp_path / "bags"
    bags.mkdir()
    with pytest.raises(FixityMismatch, match=why) as stopped:
        export_bag(catalog, job.uuid, bags / "bag", job.token)
    assert path in stopped.value.message
    assert (stopped.value.status, stopped.value.code) == (409, "fixity_mismatch")
    assert list(bags.iterdir()) == []  # no bag, and nothing half-written beside it


@pytest.mark.parametrize("batch", [1, 3])
def test_files_handed_to_the_copiers_in_batches_keep_the_manifest_whole_and_in_order(
        catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int) -> None:
    """Batches that do not divide the job's files: every file in the manifest once, in the
    records' order, and a damaged file of a later batch still stops the export."""
    monkeypatch.setattr(catalog_bag, "BATCH", batch)
    monkeypatch.setattr(catalog_bag, "WINDOW", 2)
    job = finished_job(catalog)
    ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    result = export_bag(catalog, job.uuid, tmp_path / "bag", job.token)
    assert result.files == 4
    bagit.Bag(str(tmp_path / "bag")).validate()
    listed = [line.split("  ", 1)[1] for line in
              (tmp_path / "bag" / "manifest-sha256.txt").read_text().splitlines()]
    order = [record["path"].removeprefix(job.archive_path + "/")
             for record in catalog.store.find_files(child_of=job.uuid, limit=100).items]
    assert listed == [f"data/{name}" for name in order]

    last = f"{job.archive_path}/{order[-1]}"  # in the last batch, whatever its size
    catalog.storage.write(last, b"not as recorded")
    bags = tmp_path / "bags"
    bags.mkdir()
    with pytest.raises(FixityMismatch, match="does not match its record") as stopped:
        export_bag(catalog, job.uuid, bags / "bag", job.token)
    assert last in stopped.value.message
    assert list(bags.iterdir()) == []


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_bag_over_http_and_on_the_command_line(
        catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from catalog.web import create_app

    job = finished_job(catalog)
    ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)

    async def post(token: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(catalog))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(f"/jobs/{job.uuid}/bag",
                                     headers={"Authorization": f"Bearer {token}"})

    refused = asyncio.run(post("f" * 64))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "token_invalid"
    answer = asyncio.run(post(job.token))
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(answer.content)) as tar:
        tar.extractall(tmp_path / "http", filter="data")
    bagit.Bag(str(tmp_path / "http" / job.uuid)).validate()

    code, out, err = run_cli(catalog, monkeypatch, capsys, "--json", "bag", job.uuid,
                             str(tmp_path / "cli"), "--token", job.token)
    assert code == 0, err
    assert json.loads(out) == {"uuid": job.uuid, "path": str(tmp_path / "cli"), "files": 4,
                               "bytes": sum(len(FILES[name]) for name in INDEXED)}
    bagit.Bag(str(tmp_path / "cli")).validate()

    flipped = bytearray(FILES["data/a.csv"])
    flipped[2] ^= 0x40
    catalog.storage.write(f"{job.archive_path}/data/a.csv", bytes(flipped))
    stopped = asyncio.run(post(job.token))
    assert stopped.status_code == 409
    assert stopped.json()["error"]["code"] == "fixity_mismatch"
    assert f"{job.archive_path}/data/a.csv" in stopped.json()["error"]["message"]
    code, _, err = run_cli(catalog, monkeypatch, capsys, "bag", job.uuid,
                           str(tmp_path / "cli2"), "--token", job.token)
    assert code == 5 and "data/a.csv does not match its record" in err
    assert not (tmp_path / "cli2").exists()
