"""OpenLineage ingestion's shortcuts write what the general paths write.

A new run's pipeline and job documents are built directly (catalog.openlineage_docs), not
through the models: they must be the models' documents, field for field."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from catalog import Catalog
from catalog.identifiers import job_uuid
from catalog.jobs import ManagedPipelineJob
from catalog.models import utc_now_text
from catalog.openlineage import ingest, ingest_async
from catalog.openlineage_docs import run_job_doc, run_job_uuid, run_pipeline_doc
from catalog.store import openlineage_sqlite
from catalog.store.openlineage_sqlite import OpenLineageSQLite

KEY = "ol-batch-key-0123456789abcdef0123"


@pytest.fixture
def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Catalog]:
    monkeypatch.chdir(tmp_path)
    opened, _ = Catalog.init(f"sqlite:///{tmp_path}/catalog.db", openlineage_key=KEY)
    yield opened
    opened.close()


def _dated(doc: Any, date: str) -> Any:
    """``doc`` with every date field set to ``date`` (the models date with their own now)."""
    if isinstance(doc, list):
        return [_dated(item, date) for item in doc]
    if not isinstance(doc, dict):
        return doc
    return {key: date if key in ("created", "updated", "date") else _dated(value, date)
            for key, value in doc.items()}


@pytest.mark.parametrize(("namespace", "name", "agent", "source"), [
    ("airflow://lab", "nightly.reduce", "https://example.org/producer", "api"),
    ("s3://bucket", "a/b c", None, "reactor"),
    ("file", "ünïcode/job", "p" * 256, "api"),
])
def test_a_new_runs_documents_are_the_models_documents(
        catalog: Catalog, namespace: str, name: str, agent: str | None, source: str) -> None:
    settings = catalog.settings
    components: list[Any] = [{"openlineage": {"namespace": namespace, "name": name}}]
    model, _ = catalog.add_pipeline(f"{namespace}/{name}", components=components)
    created = utc_now_text()
    built = run_pipeline_doc(namespace, name, settings.namespace, created)
    assert _dated(built, created) == _dated(model.model_dump(mode="json"), created)
    for run_id in (str(uuid.uuid4()), "0189c6e2-5b7e-7c3a-9d3e-1f2a3b4c5d6e",
                   "00000000-0000-0000-0000-000000000000"):
        data = {"openlineage": {"runId": run_id}}
        managed = ManagedPipelineJob(catalog, model, data=data, source=source, agent=agent)
        expected = managed.new_job().model_dump(mode="json")
        assert run_job_uuid(model.uuid, run_id, settings.namespace) == managed.uuid == job_uuid(
            model.uuid, [], data, settings.namespace)
        doc = run_job_doc(uuid=managed.uuid, pipeline=model.uuid, run_id=run_id,
                          catalog_namespace=settings.namespace,
                          archive_root=str(catalog.archive_root),
                          archive_system=settings.archive_system, source=source, agent=agent,
                          created=created)
        assert list(doc) == list(expected)
        assert doc == _dated(expected, created)


# Runs, each a list of (eventType, second); every run reads the dataset the one before wrote.
RUNS: list[list[tuple[str | None, int]]] = [
    [("START", 0), ("COMPLETE", 1)], [("COMPLETE", 1), ("START", 0)], [("START", 0)],
    [("START", 0), ("START", 0)], [("RUNNING", 2), ("COMPLETE", 3)], [("FAIL", 1)],
    [("ABORT", 1)], [(None, 1)], [("OTHER", 1), ("START", 0), ("ABORT", 2), ("FAIL", 3)],
    [("START", 0), ("RUNNING", 1), ("COMPLETE", 2), ("FAIL", 3), ("START", 0)],
]


def _events() -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for number, run in enumerate(RUNS):
        run_id = str(uuid.UUID(int=number + 1))
        for kind, second in run:
            event: dict[str, Any] = {
                "eventTime": f"2026-11-21T12:00:{second:02d}Z", "producer": "p",
                "run": {"runId": run_id}, "job": {"namespace": "ns", "name": f"job{number % 3}"},
                "inputs": [{"namespace": "s3://lake", "name": f"d{number}"}],
                "outputs": [{"namespace": "s3://lake", "name": f"d{number + 1}"},
                            {"namespace": "s3://lake", "name": f"d{number}"},  # read and written
                            {"namespace": "s3://lake", "name": f"d{number + 1}"}]}
            if kind is not None:
                event["eventType"] = kind
            if number % 2:
                event["outputs"][0]["facets"] = {"columnLineage": {"fields": {"x": {
                    "inputFields": [{"namespace": "s3://lake", "name": f"src{number}",
                                     "field": "x"}]}}}}
            events.append(event)
    events.append({"eventTime": "2026-11-21T12:00:00Z", "producer": "p",
                   "job": {"namespace": "ns", "name": "static"},
                   "inputs": [{"namespace": "s3://lake", "name": "d1"}],
                   "outputs": [{"namespace": "s3://lake", "name": "static"}]})
    events.append({"eventTime": "2026-11-21T12:00:00Z", "producer": "p",
                   "dataset": {"namespace": "s3://lake", "name": "d2"}})
    return events


_DATE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)")


def _database(path: Path) -> dict[str, list[Any]]:
    """Every row the events wrote, dates spelled alike and added links' clock positions
    (nanoseconds) as one value."""
    conn = sqlite3.connect(path)
    try:
        tables = {}
        for table in ("pipelines", "jobs", "history", "links", "entities", "ol_events",
                      "ol_event_datasets", "audit"):
            rows = conn.execute(f"SELECT * FROM {table}").fetchall()
            tables[table] = sorted((tuple("clock" if isinstance(v, int) and v > 10**12
                                          else _DATE.sub("date", v) if isinstance(v, str) else v
                                          for v in row) for row in rows), key=repr)
        return tables
    finally:
        conn.close()


@pytest.mark.parametrize("on_the_loop", [False, True])
def test_the_shortcuts_write_what_the_general_path_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_the_loop: bool) -> None:
    """A new run's job inserted with its events applied (one insert), links its records were
    inserted with left alone, an entity's links inserted without reading it: the database
    holds exactly what applying each event step by step and linking each link holds."""
    monkeypatch.chdir(tmp_path)

    def ingest_all(name: str) -> dict[str, list[Any]]:
        catalog, _ = Catalog.init(f"sqlite:///{tmp_path}/{name}.db", openlineage_key=KEY)
        answers = []
        try:
            if on_the_loop:
                async def send() -> None:
                    for event in _events():
                        answers.append(await ingest_async(catalog, event, KEY))

                asyncio.run(send())
            else:
                answers.extend(ingest(catalog, event, KEY) for event in _events())
        finally:
            catalog.close()
        return {"answers": answers, **_database(tmp_path / f"{name}.db")}

    shortcuts = ingest_all("shortcuts")
    with sqlite3.connect(tmp_path / "shortcuts.db") as conn:  # dates are not compared above
        stale = conn.execute(
            "SELECT uuid FROM jobs WHERE updated != (SELECT json_extract(doc, '$.date') "
            "FROM history WHERE job_uuid = jobs.uuid ORDER BY seq DESC LIMIT 1)").fetchall()
    assert stale == []
    new_runs: list[bool] = []  # whether each write brought a new job
    monkeypatch.setattr(openlineage_sqlite, "applied_to_new_job",
                        lambda write: new_runs.append(write.job is not None) and None)

    def link_each(cls: Any, conn: sqlite3.Connection, links: Any, *_: Any) -> None:
        for src, relation, targets in links:
            cls._link(conn, src, relation, targets)

    monkeypatch.setattr(OpenLineageSQLite, "_link_all", classmethod(link_each))
    general = ingest_all("general")
    assert sum(new_runs) == len(RUNS)  # the general path was taken
    assert shortcuts == general
    states = {row[0]: row[2] for row in shortcuts["jobs"]}
    assert sorted(states.values()) == sorted(
        ["FINISHED", "FINISHED", "RUNNING", "RUNNING", "FINISHED", "FAILED", "FAILED",
         "CREATED", "FAILED", "FINISHED"])


def _run_event(kind: str, run_id: str, second: int) -> dict[str, Any]:
    return {"eventType": kind, "eventTime": f"2026-11-21T12:00:{second:02d}Z", "producer": "p",
            "run": {"runId": run_id}, "job": {"namespace": "ns", "name": "ends"}}


def test_a_run_that_ends_releases_its_dependents_and_wakes_its_waiters(
        catalog: Catalog) -> None:
    """The end of a run is announced on the loop when nothing depends on it, through the
    catalog's thread otherwise: either way, waiters (of this process and, through the wake
    file, of others) wake and dependents are released."""
    from catalog.queue.waits import WAKE_SUFFIX, wait

    wake_file = Path(f"{catalog.store.path}{WAKE_SUFFIX}")  # type: ignore[attr-defined]
    watched, depended = str(uuid.uuid4()), str(uuid.uuid4())
    jobs = {run_id: ingest(catalog, _run_event("START", run_id, 0), KEY)["uuid"]
            for run_id in (watched, depended)}
    catalog.add_pipeline("after")
    waiting = catalog.submit("after", {"n": 1}, when={"job": jobs[depended], "is": "finished"})
    assert waiting.state == "WAITING"
    outcome: list[Any] = []
    waiter = threading.Thread(target=lambda: outcome.append(
        wait(catalog, [jobs[watched]], timeout=30)))
    waiter.start()
    wake_file.unlink(missing_ok=True)

    async def complete(run_id: str) -> dict[str, Any]:
        return await ingest_async(catalog, _run_event("COMPLETE", run_id, 1), KEY)

    began = time.monotonic()
    assert asyncio.run(complete(watched))["state"] == "FINISHED"
    assert wake_file.exists()  # announced
    waiter.join(timeout=30)
    assert outcome and not outcome[0].timed_out and time.monotonic() - began < 20
    assert asyncio.run(complete(depended))["state"] == "FINISHED"
    assert catalog.get_job(waiting.uuid, history=False).state == "QUEUED"
