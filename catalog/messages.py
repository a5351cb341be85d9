"""The bodies the HTTP API takes and answers (pipeline and job requests, index options, a
created job, an event's outcome), beside the stored documents of ``catalog.models``; and the
JSON Schemas of all of them, written to ``schemas/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from catalog.models import (
    ArchiveIndexRequest,
    AuditEntry,
    Entity,
    Event,
    FileRecord,
    FixityCheck,
    HistoryEntry,
    Job,
    JobUUID,
    JSONData,
    Pipeline,
    PipelineUUID,
    ProductIndexRequest,
    QueueInfo,
    _Strict,
)

UpstreamIds = str | list[str] | None


class PipelineRequest(_Strict):
    """What ``POST /pipelines`` (and a reactor) sends to register a pipeline."""

    name: str = Field(min_length=1, max_length=256)
    version: str | None = Field(None, max_length=256)
    components: list[JSONData | str] = Field(default_factory=list)
    description: str | None = None


class JobRequest(_Strict):
    """What ``POST /jobs`` (and a reactor) sends to create a job."""

    pipeline: str = Field(min_length=1, description="Pipeline name or UUID.")
    data: dict[str, Any] = Field(default_factory=dict)
    measurement_id: UpstreamIds = None
    sample_id: UpstreamIds = None
    experiment_id: UpstreamIds = None
    observation_id: UpstreamIds = None
    archive_path: str | None = None
    archive_patterns: list[dict[str, Any]] = Field(default_factory=list)
    product_patterns: list[dict[str, Any]] = Field(default_factory=list)
    instanced: bool = False
    session: str | None = None
    agent: str | None = None
    task: str | None = None
    status_mapping: str | None = None


class IndexOptions(_Strict):
    """What ``POST /jobs/{uuid}/index`` may say (all optional)."""

    requests: list[dict[str, Any]] | None = Field(
        None, description="Index requests to use instead of the job's own."
    )
    fixity: bool | None = Field(None, description="Force sha256 on or off for every request.")
    rehash: bool = Field(False, description="Re-read files even when unchanged.")
    accept_changes: bool = Field(
        False, description="Take changed content as the new version of its record (the old "
        "checksums kept as an earlier version), instead of keeping it marked changed.")
    fail_on_error: bool = Field(False, description="Send 'fail' when indexing fails.")


class CreatedJob(_Strict):
    """A job as returned to whoever created it: with its token and webhook."""

    uuid: JobUUID
    state: str
    archive_path: str
    token: str
    webhook: str
    created: bool


class EventOutcome(_Strict):
    """What an accepted (or replayed) event did."""

    uuid: JobUUID
    state: str
    last_event: str
    event_id: str
    duplicate: bool
    cleanup_error: str | None = Field(
        None, exclude_if=lambda value: value is None,
        description="Present when the event was applied but what it does beyond the state "
        "failed (a reset's emptying of the archive path): what failed. The failure is in the "
        "audit log; sending the event again retries it.",
    )


class LineageOutcome(EventOutcome):
    """What an OpenLineage run event did to the job of its run."""

    pipeline_uuid: PipelineUUID
    applied: bool = Field(
        True, description="False for an event the job's state no longer takes (a START or "
        "OTHER after its run ended, a second terminal event): it was kept with the run's events "
        "and its datasets linked, the refusal is in the audit log, and the job's state and "
        "history are unchanged (state and last_event are the job's own).")


SCHEMA_MODELS: tuple[type[BaseModel], ...] = (
    ArchiveIndexRequest,
    AuditEntry,
    CreatedJob,
    Entity,
    Event,
    EventOutcome,
    FileRecord,
    FixityCheck,
    HistoryEntry,
    IndexOptions,
    Job,
    JobRequest,
    LineageOutcome,
    Pipeline,
    PipelineRequest,
    ProductIndexRequest,
    QueueInfo,
)


def schema_documents() -> dict[str, str]:
    """File name -> JSON Schema text for every model in ``SCHEMA_MODELS``."""
    return {
        f"{model.__name__}.json": json.dumps(
            model.model_json_schema(mode="serialization"), indent=2, sort_keys=True
        )
        + "\n"
        for model in SCHEMA_MODELS
    }


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in schema_documents().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
