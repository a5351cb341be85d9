"""BagIt export: valid bags (checked by bagit-python) whose manifest is the recorded checksums,
and no bag when a file no longer matches; local storage and S3, every store."""
# ruff: noqa: F811  (tests take the imported fixtures as parameters)

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import shutil
import tarfile
import tempfile
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


def _payload(bag: Path) -> dict[str, Path]:
    return {str(path.relative_to(bag / "data")): path
            for path in (bag / "data").rglob("*") if path.is_file()}


def test_a_linked_bag_shares_the_archive_s_files_and_is_as_valid(
        catalog: Catalog, tmp_path: Path) -> None:
    job = finished_job(catalog)
    ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    result = export_bag(catalog, job.uuid, tmp_path / "bag", job.token, link=True)
    bagit.Bag(str(tmp_path / "bag")).validate()
    copied = export_bag(catalog, job.uuid, tmp_path / "copied", job.token)
    assert (tmp_path / "bag" / "manifest-sha256.txt").read_text() == \
        (tmp_path / "copied" / "manifest-sha256.txt").read_text()
    payload = _payload(tmp_path / "bag")
    assert sorted(payload) == sorted(INDEXED)
    if catalog.storage.kind == "local":  # the archive's own files, under a second name
        assert result.linked == 4
        archive = Path(catalog.settings.archive_root)
        for name, path in payload.items():
            original = archive / job.archive_path.lstrip("/") / name
            assert path.stat().st_ino == original.stat().st_ino
            assert original.stat().st_nlink == 2
    else:  # an object store has no file to link: every file copied
        assert result.linked == 0
        assert all(path.stat().st_nlink == 1 for path in payload.values())
    assert copied.linked == 0


def test_a_linked_export_still_verifies_every_file_and_leaves_the_archive_alone(
        catalog: Catalog, tmp_path: Path) -> None:
    job = finished_job(catalog)
    ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    path = f"{job.archive_path}/data/b.csv"
    damaged = bytes([FILES["data/b.csv"][0] ^ 0x01]) + FILES["data/b.csv"][1:]
    catalog.storage.write(path, damaged)
    bags = tmp_path / "bags"
    bags.mkdir()
    with pytest.raises(FixityMismatch, match="does not match its record") as stopped:
        export_bag(catalog, job.uuid, bags / "bag", job.token, link=True)
    assert path in stopped.value.message
    assert list(bags.iterdir()) == []  # the links went with the partial bag...
    for name in INDEXED:  # ...and the archive's files stay, each under its one name
        with catalog.storage.open(f"{job.archive_path}/{name}") as stream:
            assert stream.read() == (damaged if name == "data/b.csv" else FILES[name])
    if catalog.storage.kind == "local":
        archive = Path(catalog.settings.archive_root) / job.archive_path.lstrip("/")
        assert all((archive / name).stat().st_nlink == 1 for name in INDEXED)


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_linked_bag_on_another_filesystem_is_copied(catalog: Catalog, tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem (/dev/shm) beside the test's own here")
    job = finished_job(catalog)
    ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    elsewhere = Path(tempfile.mkdtemp(prefix="catalog-test-bag-", dir=shm))
    try:
        result = export_bag(catalog, job.uuid, elsewhere / "bag", job.token, link=True)
        assert (result.files, result.linked) == (4, 0)  # another device: copied, not refused
        bagit.Bag(str(elsewhere / "bag")).validate()
    finally:
        shutil.rmtree(elsewhere)


@pytest.mark.parametrize("copiers", [1, 4])
@pytest.mark.parametrize("batch", [1, 3])
def test_files_handed_to_the_copiers_in_batches_keep_the_manifest_whole_and_in_order(
        catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int,
        copiers: int) -> None:
    """Batches that do not divide the job's files, copied by one thread or several (as from
    S3): every file in the manifest once, in the records' order, and a damaged file of a
    later batch still stops the export."""
    monkeypatch.setattr(catalog_bag, "BATCH", batch)
    monkeypatch.setattr(catalog_bag, "WINDOW", 2)
    monkeypatch.setattr(catalog_bag, "COPIERS", copiers)
    monkeypatch.setattr(catalog_bag, "LOCAL_COPIERS", copiers)
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
                               "bytes": sum(len(FILES[name]) for name in INDEXED),
                               "linked": 0}
    code, out, err = run_cli(catalog, monkeypatch, capsys, "bag", job.uuid,
                             str(tmp_path / "cli-linked"), "--link", "--token", job.token)
    assert code == 0, err
    linked = 4 if catalog.storage.kind == "local" else 0  # an object is copied
    assert f", {linked} linked," in out
    bagit.Bag(str(tmp_path / "cli-linked")).validate()
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
