"""OpenLineage ingestion's shortcuts write what the general paths write.

A new run's pipeline and job documents are built directly (catalog.openlineage_docs), not
through the models: they must be the models' documents, field for field."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from catalog import Catalog
from catalog.identifiers import job_uuid
from catalog.jobs import ManagedPipelineJob
from catalog.models import utc_now_text
from catalog.openlineage_docs import run_job_doc, run_job_uuid, run_pipeline_doc

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
