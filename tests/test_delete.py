"""Delete and purge (catalog.deletion) on every store: tombstones, 410s, lineage, conditions,
purge in pages, archive files, the audit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MONGO_BACKENDS

from catalog import Catalog, ManagedPipelineJob
from catalog import deletion as deletion_module
from catalog.errors import (
    AdminRequired,
    ConfirmationRequired,
    JobActive,
    JobDeleted,
    JobNotFound,
    UnsafePath,
)
from catalog.indexer import file_uuid
from catalog.models import FileRecord, utc_now
from catalog.prov import as_prov_n
from catalog.queue import cancel
from catalog.store.values import Doc
from catalog.tokens import Keys

KEYS = Keys(b"d" * 32, b"e" * 32)


@pytest.fixture
def catalog(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[Catalog]:
    monkeypatch.chdir(tmp_path)
    opened = Catalog.open(store_url, keys=KEYS, sqlite_synchronous="NORMAL",
                          archive_root=str(tmp_path / "archive"))
    opened.add_pipeline("step")
    yield opened
    opened.close()


def make_job(catalog: Catalog, n: int) -> ManagedPipelineJob:
    job = ManagedPipelineJob(catalog, "step", {"n": n}, measurement_id="measurement.del.1")
    job.setup()
    return job


def add_files(catalog: Catalog, job: str, count: int) -> list[str]:
    """``count`` file records written by ``job`` (child_of and generated_by it)."""
    now = utc_now()
    records = []
    for number in range(count):
        path = f"/products/del/{job[-8:]}/{number}.csv"
        records.append(FileRecord(
            uuid=file_uuid(catalog, "local", path), storage_system="local", path=path,
            name=f"{number}.csv", size=1, mtime=now, media_type="text/csv", kind="product",
            child_of=[job], generated_by=[job], created=now, updated=now,
        ).model_dump(mode="json"))
    catalog.store.upsert_files(records)
    return [record["uuid"] for record in records]


def listed(catalog: Catalog) -> set[str]:
    return {job["uuid"] for job in catalog.find_jobs(limit=1000).items}


def audit(catalog: Catalog, uuid: str) -> list[tuple[str, str, str]]:
    return [(e.name, e.code, e.source) for e in reversed(catalog.audit_log(uuid))]


def test_delete_leaves_a_tombstone(catalog: Catalog) -> None:
    admin = catalog.admin_token()
    doomed, kept = make_job(catalog, 1), make_job(catalog, 2)
    files = add_files(catalog, doomed.uuid, 3)
    catalog.handle_event(doomed.uuid, {"name": "run"}, doomed.token)
    catalog.handle_event(doomed.uuid, {"name": "finish"}, doomed.token)

    pipeline = catalog.get_job(doomed.uuid).pipeline_uuid
    assert (pipeline, "FINISHED", 1) in catalog.store.queue_counts()

    catalog.delete_job(doomed.uuid, admin)

    assert listed(catalog) == {kept.uuid}
    assert catalog.store.queue_counts() == [(pipeline, "CREATED", 1)]  # queue status's counts
    assert [job["uuid"] for job in catalog.find_jobs(text="n").items] == [kept.uuid]  # search
    with pytest.raises(JobDeleted) as gone:
        catalog.get_job(doomed.uuid)
    assert (gone.value.status, gone.value.code) == (410, "job_deleted")
    assert gone.value.message.startswith(f"job {doomed.uuid} was deleted at ")
    with pytest.raises(JobDeleted):
        catalog.job_and_history_pages(doomed.uuid)
    with pytest.raises(JobDeleted):  # an event: refused, audited, as gone
        catalog.handle_event(doomed.uuid, {"name": "retire"}, doomed.token)
    with pytest.raises(JobDeleted):  # deleting twice: gone already
        catalog.delete_job(doomed.uuid, admin)
    with pytest.raises(JobDeleted):  # no second job under the tombstone
        make_job(catalog, 1)
    tombstone = catalog.store.get_tombstone(doomed.uuid)
    assert tombstone is not None
    assert (tombstone["state"], tombstone["deleted"]["source"]) == ("FINISHED", "python")
    # the files stay, linked to it; a walk up from one shows the job, marked deleted
    assert all(doomed.uuid in catalog.get_file(uuid).child_of for uuid in files)
    graph = catalog.lineage(files[0], "up", 2)
    node = next(n for n in graph["nodes"] if n["uuid"] == doomed.uuid)
    assert (node["state"], node["deleted"]) == ("FINISHED", tombstone["deleted"]["date"])
    assert {(e["from"], e["relation"]) for e in graph["edges"] if e["to"] == doomed.uuid} == {
        (files[0], "child_of"), (files[0], "generated_by")}
    assert "catalog:deleted=" in as_prov_n(graph)
    codes = [code for _, code, _ in audit(catalog, doomed.uuid)]
    assert codes == ["deleted", "job_deleted", "job_deleted"]
    assert kept.uuid in listed(catalog) and catalog.get_job(kept.uuid).state == "CREATED"


def test_a_queued_job_must_be_cancelled_first(catalog: Catalog) -> None:
    admin = catalog.admin_token()
    queued = catalog.submit("step", {"n": 9})
    before = catalog.get_job(queued.uuid).model_dump()

    with pytest.raises(JobActive) as refused:
        catalog.delete_job(queued.uuid, admin)

    assert (refused.value.status, refused.value.code) == (409, "job_active")
    assert "is QUEUED: cancel it before deleting it" in refused.value.message
    assert catalog.get_job(queued.uuid).model_dump() == before
    assert catalog.store.get_tombstone(queued.uuid) is None
    assert [code for _, code, _ in audit(catalog, queued.uuid)] == ["job_active"]
    cancel(catalog, queued.uuid, "no longer wanted", "python")
    catalog.delete_job(queued.uuid, admin)
    assert queued.uuid not in listed(catalog)


def test_jobs_waiting_on_a_deleted_job_are_cancelled(catalog: Catalog) -> None:
    upstream = make_job(catalog, 1)
    waiting = catalog.submit("step", {"n": 2}, when={"job": upstream.uuid, "is": "finished"})
    either = catalog.submit("step", {"n": 3}, when={"any": [
        {"job": upstream.uuid, "is": "finished"}, {"not": {"job": upstream.uuid,
                                                         "is": "finished"}}]})
    assert (waiting.state, either.state) == ("WAITING", "WAITING")

    catalog.delete_job(upstream.uuid, catalog.admin_token())

    cancelled = catalog.get_job(waiting.uuid)
    assert cancelled.state == "CANCELLED"
    assert cancelled.queue is not None and cancelled.queue.reason == (
        f"its condition can no longer be met: job {upstream.uuid} no longer exists")
    # "not finished" holds once the job can never finish: a deletion counts as a cancellation
    assert catalog.get_job(either.uuid).state == "QUEUED"


@pytest.mark.parametrize("page", [2, 1000])
def test_purge_erases_the_job_and_unlinks_its_records(
        catalog: Catalog, monkeypatch: pytest.MonkeyPatch, page: int) -> None:
    monkeypatch.setattr(deletion_module, "PURGE_PAGE", page)
    admin = catalog.admin_token()
    doomed, kept = make_job(catalog, 1), make_job(catalog, 2)
    files = add_files(catalog, doomed.uuid, 5)
    kept_files = add_files(catalog, kept.uuid, 2)
    for number in range(4):
        catalog.handle_event(doomed.uuid, {"name": "update", "data": {"n": number}},
                             doomed.token)
    waiting = catalog.submit("step", {"n": 3}, when={"job": doomed.uuid, "is": "ended"})
    with pytest.raises(ConfirmationRequired):
        catalog.purge_job(doomed.uuid, admin, None)
    with pytest.raises(ConfirmationRequired):
        catalog.purge_job(doomed.uuid, admin, kept.uuid)
    assert catalog.get_job(doomed.uuid).version == 5  # nothing changed

    outcome = catalog.purge_job(doomed.uuid, admin, doomed.uuid.upper())

    assert outcome == {"uuid": doomed.uuid, "purged": True, "files_removed": None}
    with pytest.raises(JobNotFound) as unknown:  # no tombstone: as if never made
        catalog.get_job(doomed.uuid)
    assert unknown.value.status == 404
    assert catalog.store.get_tombstone(doomed.uuid) is None
    assert catalog.store.edges([doomed.uuid], "up") == []
    assert catalog.store.edges([doomed.uuid], "down") == []
    assert catalog.store.dependents(doomed.uuid) == []
    for uuid in files:  # the records stay, unlinked from it
        record = catalog.get_file(uuid)
        assert (record.child_of, record.generated_by) == ([], [])
    assert all(catalog.get_file(uuid).child_of == [kept.uuid] for uuid in kept_files)
    assert catalog.get_job(waiting.uuid).state == "CANCELLED"
    assert [(name, code) for name, code, _ in audit(catalog, doomed.uuid)] == [
        ("delete", "deleted"), ("purge", "purged")]
    with pytest.raises(JobNotFound):
        catalog.purge_job(doomed.uuid, admin, doomed.uuid)
    again = make_job(catalog, 1)  # the same identity afresh, with a history of its own
    assert again.created is True and again.uuid == doomed.uuid
    assert [e.name for e in catalog.get_job(again.uuid).history] == ["create"]


def test_purge_removes_the_archive_only_when_asked(catalog: Catalog) -> None:
    admin = catalog.admin_token()
    kept_files, removed = make_job(catalog, 1), make_job(catalog, 2)
    roots = {}
    for job in (kept_files, removed):
        root = Path(catalog.settings.archive_root) / job.archive_path.lstrip("/")
        (root / "sub").mkdir(parents=True)
        (root / "a.txt").write_text("a")
        (root / "sub" / "b.txt").write_text("b")
        roots[job.uuid] = root
    neighbour = roots[kept_files.uuid].parent / "neighbour.txt"
    neighbour.write_text("not the job's")

    assert catalog.purge_job(kept_files.uuid, admin, kept_files.uuid)["files_removed"] is None
    outcome = catalog.purge_job(removed.uuid, admin, removed.uuid, files=True)

    assert (roots[kept_files.uuid] / "sub" / "b.txt").read_text() == "b"
    assert outcome["files_removed"] == 2
    assert list(roots[removed.uuid].rglob("*.txt")) == []
    assert neighbour.read_text() == "not the job's"
    assert catalog.audit_log(removed.uuid)[0].data == {"files_removed": 2}


def test_purge_refuses_an_archive_path_outside_the_root(
        catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    job = make_job(catalog, 1)
    catalog.delete_job(job.uuid, catalog.admin_token())
    tombstone = catalog.store.get_tombstone(job.uuid)
    assert tombstone is not None
    # A tombstone whose path escapes the root (written by hand, say) is refused.
    with monkeypatch.context() as patched:
        patched.setattr(catalog.store, "get_tombstone",
                        lambda uuid: {**tombstone, "archive_path": "/products/../../outside"})
        with pytest.raises(UnsafePath):
            catalog.purge_job(job.uuid, catalog.admin_token(), job.uuid, files=True)
    assert catalog.store.get_tombstone(job.uuid) == tombstone  # nothing erased
    assert [code for _, code, _ in audit(catalog, job.uuid)] == ["deleted"]


@pytest.mark.parametrize("action", ["delete", "purge"])
def test_bad_tokens_and_unknown_jobs(catalog: Catalog, action: str) -> None:
    job = make_job(catalog, 1)

    def act(uuid: str, token: str | None) -> Any:
        if action == "delete":
            return catalog.delete_job(uuid, token)
        return catalog.purge_job(uuid, token, uuid)

    with pytest.raises(AdminRequired):
        act(job.uuid, job.token)
    assert catalog.get_job(job.uuid).state == "CREATED"
    with pytest.raises(JobNotFound) as unknown:
        act(job.uuid[:-4] + "0000" if not job.uuid.endswith("0000") else job.uuid[:-4] + "1111",
            catalog.admin_token())
    assert unknown.value.status == 404


# MongoDB: the move without transactions ------------------------------------------------------
@pytest.fixture
def mongo_catalog(database_url: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  request: pytest.FixtureRequest) -> Iterator[Catalog]:
    monkeypatch.chdir(tmp_path)
    opened = Catalog.open(database_url(request.param), keys=KEYS)
    opened.add_pipeline("step")
    yield opened
    opened.close()


@pytest.mark.parametrize("mongo_catalog", MONGO_BACKENDS, indirect=True)
def test_an_event_during_the_move_is_kept(mongo_catalog: Catalog) -> None:
    catalog = mongo_catalog
    job = make_job(catalog, 1)
    seen: list[int] = []

    def check(head: Doc) -> None:
        seen.append(head["version"])
        if len(seen) == 1:  # another writer's event lands between the read and the move
            catalog.handle_event(job.uuid, {"name": "update", "data": {"late": True}},
                                 job.token)

    deleted = {"date": "2026-12-04T00:00:00.000Z", "source": "python", "reason": "test"}
    tombstone = catalog.store.tombstone_job(job.uuid, deleted, check)

    assert seen == [1, 2]
    assert tombstone is not None and tombstone["version"] == 2
    assert catalog.store.get_tombstone(job.uuid) == tombstone
    assert catalog.store.get_job(job.uuid) is None


@pytest.mark.parametrize("mongo_catalog", MONGO_BACKENDS, indirect=True)
def test_a_move_cut_short_is_finished_by_purging(mongo_catalog: Catalog) -> None:
    catalog = mongo_catalog
    job = make_job(catalog, 1)
    files = add_files(catalog, job.uuid, 2)
    # A crash between writing the tombstone and removing the job (no transactions): both.
    store: Any = catalog.store
    head = store.get_job(job.uuid, history=False)
    store.database["tombstones"].insert_one(
        {**head, "deleted": {"date": "2026-12-04T00:00:00.000Z", "source": "python",
                             "reason": "cut short"}})
    assert catalog.get_job(job.uuid).state == "CREATED"  # the job still stands

    catalog.purge_job(job.uuid, catalog.admin_token(), job.uuid)

    with pytest.raises(JobNotFound):
        catalog.get_job(job.uuid)
    assert store.get_tombstone(job.uuid) is None
    assert [catalog.get_file(uuid).child_of for uuid in files] == [[], []]
