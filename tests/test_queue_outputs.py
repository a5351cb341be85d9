"""A succeeding attempt's outputs are indexed before its ``finish``: whoever sees the job
FINISHED (a waiter, a released dependent) finds them; an attempt whose outputs cannot be
indexed fails; a new attempt's outputs replace an earlier attempt's, named in the history."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from catalog import Catalog
from catalog.errors import IndexingError
from catalog.queue import archive, end_attempt, submit, withdraw
from catalog.storage import LocalStorage
from catalog.tokens import Keys

KEYS = Keys(b"o" * 32, b"a" * 32)


@pytest.fixture
def catalog(queue_catalog: Callable[..., Catalog]) -> Catalog:
    return queue_catalog(KEYS, "reduce")


def work(n: int = 0, **queue: Any) -> dict[str, Any]:
    return {"pipeline": "reduce", "data": {"function": "pkg.mod.f", "parameters": {"n": n}},
            **queue}


def product(tmp_path: Path, text: str) -> str:
    made = tmp_path / "work"
    made.mkdir(exist_ok=True)
    (made / "table.csv").write_text(text)
    return str(made / "table.csv")


def test_outputs_are_indexed_before_the_job_is_finished(
        catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uuid = submit(catalog, work(1)).uuid
    assert withdraw(catalog, {"pipelines": ["reduce"]}, "w") is not None
    seen_at_end: list[tuple[str, list[str]]] = []
    real_end = end_attempt

    def watched_end(*args: Any, **kwargs: Any) -> str:
        seen_at_end.append((catalog.get_job(uuid).state,
                            [f["name"] for f in catalog.find_files(job=uuid).items]))
        return real_end(*args, **kwargs)

    monkeypatch.setattr(archive, "end_attempt", watched_end)
    assert archive.complete(catalog, uuid, {"worker": "w", "results": {"rows": 1},
                                            "products": [product(tmp_path, "a,b\n")]}) \
        == "FINISHED"
    assert seen_at_end == [("RUNNING", ["table.csv"])]
    job = catalog.get_job(uuid)
    names = [entry.name for entry in job.history]
    assert names[-1] == "finish" and "index" not in names and "indexed" not in names
    assert job.history[-1].data["files"] == {"indexed": 1, "hashed": 1, "unchanged": 0,
                                             "changed": 0, "accepted": 0}


def test_outputs_that_cannot_be_indexed_fail_the_attempt(
        catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from catalog import indexer

    uuid = submit(catalog, work(2, retries=1)).uuid
    assert withdraw(catalog, {"pipelines": ["reduce"]}, "w") is not None

    def broken(*args: Any, **kwargs: Any) -> None:
        raise IndexingError("1 file could not be read: products/table.csv")

    monkeypatch.setattr(indexer, "index_files", broken)
    assert archive.complete(catalog, uuid, {"worker": "w", "results": {"rows": 1},
                                            "products": [product(tmp_path, "x\n")]}) \
        == "FAILED"
    job = catalog.get_job(uuid)
    assert job.results is None
    assert job.queue is not None and job.queue.reason == (
        "the attempt's outputs could not be indexed: 1 file could not be read: "
        "products/table.csv")


def test_a_new_attempt_replaces_an_earlier_attempts_outputs_in_the_open(
        catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uuid = submit(catalog, work(3, retries=2)).uuid
    assert withdraw(catalog, {"pipelines": ["reduce"]}, "w") is not None
    real_end = end_attempt

    def lost_at_the_end(catalog_: Catalog, uuid_: str, worker: str, error: str | None,
                        *args: Any, **kwargs: Any) -> str:
        # the attempt indexed its outputs, then failed (its lease lost, say) before finish
        return real_end(catalog_, uuid_, worker, error or "lease lost at the end")

    monkeypatch.setattr(archive, "end_attempt", lost_at_the_end)
    assert archive.complete(catalog, uuid, {"worker": "w", "products": [
        product(tmp_path, "first attempt\n")]}) == "QUEUED"
    first = catalog.find_files(job=uuid).items
    assert [(f["name"], f["status"]) for f in first] == [("table.csv", "ok")]
    monkeypatch.setattr(archive, "end_attempt", real_end)

    assert withdraw(catalog, {"pipelines": ["reduce"]}, "w") is not None
    assert archive.complete(catalog, uuid, {"worker": "w", "products": [
        product(tmp_path, "second attempt, other bytes\n")]}) == "FINISHED"
    (record,) = catalog.find_files(job=uuid).items
    assert record["status"] == "ok" and record["size"] == len("second attempt, other bytes\n")
    assert record["checksums"] != first[0]["checksums"]
    job = catalog.get_job(uuid)
    (update,) = [e for e in job.history if e.name == "update"]
    assert update.data["reason"] == "a new attempt replaced an earlier attempt's outputs"
    assert [f["path"] for f in update.data["accepted_changes"]] == [record["path"]]
    assert job.history[-1].name == "finish"
    assert job.history[-1].data["files"]["accepted"] == 1


def test_on_a_first_attempt_changed_content_is_not_accepted(
        catalog: Catalog, tmp_path: Path) -> None:
    """A file already recorded in the job's archive path (indexed by hand before the job ever
    ran) that the first attempt finds changed stays ``changed``: nothing earlier of this job
    wrote it."""
    uuid = submit(catalog, work(4)).uuid
    job = catalog.get_job(uuid)
    assert isinstance(catalog.storage, LocalStorage)
    target = Path(catalog.storage.root) / job.archive_path.lstrip("/") / "products"
    target.mkdir(parents=True)
    (target / "table.csv").write_text("recorded by hand\n")
    from catalog.indexer import index_files

    index_files(catalog, job, [{"patterns": ["^products/"]}])
    assert withdraw(catalog, {"pipelines": ["reduce"]}, "w") is not None
    (target / "table.csv").write_text("overwritten by the first attempt\n")
    assert archive.complete(catalog, uuid, {"worker": "w", "products": [
        "products/table.csv"]}) == "FINISHED"
    (record,) = catalog.find_files(job=uuid).items
    assert record["status"] == "changed"
    assert catalog.get_job(uuid).history[-1].data["files"]["changed"] == 1
