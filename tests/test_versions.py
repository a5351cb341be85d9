"""No silent re-baselining: changed content stays changed until accepted, and an accepted
change keeps the old version for whoever used it (local storage and S3, every store)."""
# ruff: noqa: F811  (tests take the imported fixtures as parameters)

from __future__ import annotations

import json
import uuid as uuid_module
from typing import Any

import pytest
from test_indexer import (  # noqa: F401  (the indexing tests' fixtures, used by name)
    FILES,
    archive_root,
    catalog,
    digests,
    finished_job,
    records,
)

from catalog import Catalog, ManagedPipelineJob, ManagedPipelineJobInstance
from catalog.models import FileRecord
from catalog.prov import as_prov_json
from catalog.verify import verify


def flip_a_bit(data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x04
    return bytes(flipped)


def truncate(data: bytes) -> bytes:
    return data[:len(data) // 2]


@pytest.mark.parametrize("damage", [flip_a_bit, truncate], ids=["bit-flip", "truncated"])
def test_changed_content_stays_changed_until_accepted_and_the_old_version_is_kept(
        catalog: Catalog, damage: Any) -> None:
    job = finished_job(catalog)
    instance = ManagedPipelineJobInstance(catalog, job.uuid)
    instance.index(job.token)
    original = records(catalog, job)["data/b.csv"]
    # A later job read b.csv as it was then.
    reader = ManagedPipelineJob(catalog, "indexer-test", {"reads": uuid_module.uuid4().hex})
    reader.setup()
    catalog.add_links(reader.uuid, "acted_on", [original["uuid"]])

    damaged = damage(FILES["data/b.csv"])
    catalog.storage.write(f"{job.archive_path}/data/b.csv", damaged)
    verdicts = {v.path.rpartition("/")[2]: v.outcome for v in verify(catalog, job.uuid).files}
    assert verdicts["b.csv"] == "changed"

    for _ in range(2):  # indexing again, and again, never makes the new content the truth
        result = instance.index(job.token)
        assert (result.state, result.changed, result.accepted) == ("FINISHED", 1, 0)
        assert result.changed_files == [original["path"]]
        kept = records(catalog, job)["data/b.csv"]
        assert kept["status"] == "changed"
        assert kept["checksums"] == original["checksums"] == digests(FILES["data/b.csv"])
        assert (kept["size"], kept["version"], kept["versions"]) == (original["size"], 1, [])
        assert kept["fixity"][-1]["outcome"] == "changed"
        assert kept["fixity"][-1]["checksums"] == digests(damaged)
        assert verify(catalog, job.uuid).counts()["changed"] == 1

    accepted = instance.index(job.token, accept_changes=True)
    assert (accepted.changed, accepted.accepted) == (0, 1)
    now = records(catalog, job)["data/b.csv"]
    stored = catalog.store.get_file(now["uuid"])
    assert FileRecord.model_validate(stored).model_dump(mode="json") == stored
    assert (now["status"], now["version"], now["size"]) == ("ok", 2, len(damaged))
    assert now["checksums"] == digests(damaged)
    [earlier] = now["versions"]
    assert earlier["version"] == 1 and earlier["checksums"] == original["checksums"]
    assert (earlier["size"], earlier["accepted_by"]) == (original["size"], job.uuid)
    assert earlier["recorded"] == original["created"]
    assert [c["outcome"] for c in now["fixity"]][-1] == "accepted"
    assert verify(catalog, job.uuid).counts()["changed"] == 0
    # The acceptance is in the job's history, naming the file.
    history = catalog.get_job(job.uuid).history
    said = [e.data["accepted_changes"] for e in history if e.name == "update"
            and isinstance(e.data, dict) and "accepted_changes" in e.data]
    assert said == [[{"uuid": now["uuid"], "path": now["path"], "version": 2}]]
    assert [e.name for e in history][-3:] == ["index", "update", "indexed"]
    assert history[-3].data == {"rehash": False, "accept_changes": True}
    assert history[-1].data["accepted"] == 1

    # The job that read b.csv before the change read version 1, and its lineage says so.
    graph = catalog.lineage(reader.uuid, "up", depth=1)
    [edge] = [e for e in graph["edges"] if e["to"] == now["uuid"]]
    assert (edge["relation"], edge["version"]) == ("acted_on", 1)
    [node] = [n for n in graph["nodes"] if n["uuid"] == now["uuid"]]
    assert node["version"] == 2
    assert node["versions"][0]["checksums"] == original["checksums"]
    used = json.loads(as_prov_json(graph))["used"]
    assert [u["catalog:version"]["$"] for u in used.values()
            if u["prov:entity"] == f"catalog:{now['uuid']}"] == ["1"]
    # A job that reads it from now on uses version 2.
    later = ManagedPipelineJob(catalog, "indexer-test", {"reads": uuid_module.uuid4().hex})
    later.setup()
    catalog.add_links(later.uuid, "acted_on", [now["uuid"]])
    [edge] = [e for e in catalog.lineage(later.uuid, "up", depth=1)["edges"]
              if e["to"] == now["uuid"]]
    assert edge["version"] == 2


def test_bit_rot_under_an_unchanged_listing_is_not_reset_by_an_index(catalog: Catalog) -> None:
    """Bit rot keeps a file's size and date: a verify finds it changed, and an index, whose
    listing says nothing changed, reads it again rather than calling it ok."""
    job = finished_job(catalog)
    instance = ManagedPipelineJobInstance(catalog, job.uuid)
    instance.index(job.token)
    record = records(catalog, job)["data/a.csv"]
    # As a verify that read rotten bytes records it (the listing is untouched).
    catalog.store.record_fixity([(record["uuid"], {
        "date": "2030-01-01T00:00:00.000Z", "outcome": "changed", "size": record["size"],
        "checksums": {"xxh3_128": "0" * 32}, "changed": ["xxh3_128"]}, "changed")])
    result = instance.index(job.token)
    assert (result.hashed, result.changed) == (1, 0)  # read again: the content is intact
    assert records(catalog, job)["data/a.csv"]["status"] == "ok"


def test_accepting_changes_over_http_needs_the_job_token(catalog: Catalog) -> None:
    import asyncio

    import httpx

    from catalog.web import create_app

    job = finished_job(catalog)
    ManagedPipelineJobInstance(catalog, job.uuid).index(job.token)
    catalog.storage.write(f"{job.archive_path}/data/a.csv", b"x,y\n5,6\n")

    async def call(token: str, body: bytes) -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(catalog))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(f"/jobs/{job.uuid}/index", content=body,
                                     headers={"Authorization": f"Bearer {token}"})

    refused = asyncio.run(call("f" * 64, b'{"accept_changes": true}'))
    assert refused.status_code == 403
    kept = asyncio.run(call(job.token, b"{}")).json()
    assert (kept["changed"], kept["accepted"]) == (1, 0)
    assert records(catalog, job)["data/a.csv"]["version"] == 1
    taken = asyncio.run(call(catalog.admin_token(), b'{"accept_changes": true}')).json()
    assert (taken["changed"], taken["accepted"]) == (0, 1)
    assert records(catalog, job)["data/a.csv"]["version"] == 2
