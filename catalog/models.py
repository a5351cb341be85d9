"""Pydantic v2 models of the documents the catalog stores (the HTTP API's request and answer
bodies are in ``catalog.messages``, which writes the JSON Schemas of both to ``schemas/``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    field_validator,
    model_validator,
)

from catalog.errors import InvalidPattern
from catalog.identifiers import UUIDType, check_json, parse_uuid
from catalog.patterns import check_pattern
from catalog.resources import JobResources


def utc_now() -> datetime:
    """Now in UTC, truncated to milliseconds (the precision every date is kept at)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def utc_now_text() -> str:
    """``format_date(utc_now())``, at a third of the cost (the event hot path dates entries)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def format_date(value: datetime) -> str:
    """``2026-11-21T12:00:00.123Z``: UTC, milliseconds, sortable as text."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(timespec="milliseconds")[:-6] + "Z"  # drop "+00:00"


def _to_utc_ms(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("dates must carry a time zone")
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


UTCDate = Annotated[
    datetime,
    AfterValidator(_to_utc_ms),
    PlainSerializer(format_date, return_type=str, when_used="json"),
]


def _typed(*kinds: UUIDType) -> AfterValidator:
    def check(value: str) -> str:
        return parse_uuid(value, *kinds)

    return AfterValidator(check)


JobUUID = Annotated[str, _typed(UUIDType.pipelinejob)]
PipelineUUID = Annotated[str, _typed(UUIDType.pipeline)]
EventUUID = Annotated[str, _typed(UUIDType.pipelinejob_event)]
UpstreamUUID = Annotated[
    str, _typed(UUIDType.experiment, UUIDType.sample, UUIDType.measurement, UUIDType.observation)
]
AnyUUID = Annotated[str, _typed(*UUIDType)]
EntityUUID = Annotated[str, _typed(UUIDType.reference, UUIDType.product)]
EventId = Annotated[str, Field(min_length=1, max_length=256)]


JSON_CHECKED = {"json_checked": True}  # validation context: the whole document was checked


def _plain_json(value: Any, info: ValidationInfo) -> Any:
    if info.context is not JSON_CHECKED:  # parse_document checked the whole document
        check_json(value)
    return value


JSONData = Annotated[dict[str, Any], AfterValidator(_plain_json)]

Level = Literal["0", "1", "2", "3", "Reference", "User", "Unknown"]


def _check_patterns(patterns: list[str]) -> list[str]:
    if not patterns:
        raise ValueError("at least one pattern is required")
    for pattern in patterns:
        try:
            check_pattern(pattern)  # the dialect indexing matches them in
        except InvalidPattern as exc:
            raise ValueError(exc.message) from None
    return patterns


Patterns = Annotated[list[str], AfterValidator(_check_patterns)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArchiveIndexRequest(_Strict):
    """Select archive files under the job's archive path and give them a processing level."""

    patterns: Patterns
    level: Level = "1"
    fixity: bool = True
    note: str | None = None

    @field_validator("level", mode="before")
    @classmethod
    def _level_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class ProductIndexRequest(_Strict):
    """Select product files and say what they were derived from and using."""

    patterns: Patterns
    derived_from: list[str] = Field(default_factory=list)
    derived_using: list[str] = Field(default_factory=list)
    fixity: bool = True
    note: str | None = None


class Pipeline(_Strict):
    """A computational pipeline; its UUID is derived from name, version and components."""

    uuid: PipelineUUID
    name: str = Field(min_length=1, max_length=256)
    version: str | None = Field(None, max_length=256)
    components: list[JSONData | str] = Field(default_factory=list)
    description: str | None = None
    created: UTCDate


class Event(_Strict):
    """An event as sent by a webhook, reactor, the CLI or the API."""

    name: str = Field(min_length=1, max_length=64)
    data: JSONData = Field(default_factory=dict)
    event_id: EventId | None = None


class HistoryEntry(_Strict):
    """One accepted event in a job's history."""

    uuid: EventUUID
    name: str
    date: UTCDate
    data: JSONData = Field(default_factory=dict)
    source: str
    event_id: EventId
    state: str = Field(description="The job's state after this event.")


class AuditEntry(_Strict):
    """A refused event (or an administrative action) with its reason."""

    job_uuid: str
    name: str
    date: UTCDate
    source: str
    event_id: str | None = None
    code: str
    reason: str
    data: dict[str, Any] = Field(default_factory=dict)


ArchiveMode = Literal["copy", "move", "leave"]
MAX_TIMEOUT_S = 259200  # 72 h, as workflow-core allows (chime-frb-api 3.4: 24 h)


class Lease(_Strict):
    """Who holds a running job, for which attempt, and until when (renewed by heartbeat)."""

    worker: str = Field(min_length=1, max_length=256)
    attempt: int = Field(ge=1)
    start: UTCDate
    expiry: UTCDate


class QueueInfo(_Strict):
    """How a submitted job is run: none of it is part of the job's identity (DESIGN §10)."""

    priority: int = Field(3, ge=1, le=5, description="1 to 5, higher first.")
    timeout: int = Field(3600, ge=1, le=MAX_TIMEOUT_S, description="Seconds an attempt may run.")
    retries: int = Field(2, ge=0, le=5, description="Attempts in all before a failure is final.")
    attempt: int = Field(0, ge=0, description="Attempts withdrawn so far.")
    site: str | None = Field(None, min_length=1, max_length=64)
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=32)
    user: str | None = Field(None, min_length=1, max_length=256)
    events: list[int] = Field(default_factory=list, max_length=1000,
                              description="Observation event numbers (CHIME's `event`).")
    products: ArchiveMode = Field("copy", description="How reported products enter the archive.")
    plots: ArchiveMode = Field("copy", description="How reported plots enter the archive.")
    config: JSONData = Field(default_factory=dict, description="The submitter's own settings.")
    queued: UTCDate | None = Field(None, description="When it last entered QUEUED.")
    start: UTCDate | None = Field(None, description="When its last attempt was withdrawn.")
    stop: UTCDate | None = Field(None, description="When its last attempt ended.")
    lease: Lease | None = None
    reason: str | None = Field(None, description="Why its last attempt failed or it was "
                               "cancelled.")
    when: JSONData | None = Field(None, description="Its condition on other jobs (DESIGN "
                                  "§11): it waits until the condition is true.")
    resources: JobResources | None = Field(None, description=(
        "Cores, memory and wall time its attempts ask of the engine. A submission of the job "
        "while it waits, is queued or runs leaves them as they are; one that queues it again "
        "(failed, cancelled) sets them for the attempts to come."))


class Job(_Strict):
    """A pipeline job: what ran, on what, where its outputs go, and how far it got."""

    uuid: JobUUID
    pipeline_uuid: PipelineUUID
    data: JSONData = Field(default_factory=dict)
    state: str
    last_event: str
    version: int = Field(ge=0)
    child_of: list[UpstreamUUID] = Field(default_factory=list)
    generated_by: list[AnyUUID] = Field(default_factory=list)
    acted_on: list[AnyUUID] = Field(default_factory=list)
    acted_using: list[AnyUUID] = Field(default_factory=list)
    archive_system: str
    archive_path: str
    archive_patterns: list[ArchiveIndexRequest] = Field(default_factory=list)
    product_patterns: list[ProductIndexRequest] = Field(default_factory=list)
    session: str | None = None
    agent: str | None = None
    task: str | None = None
    status_mapping: str | None = Field(
        None, description="Status mapping used for ?status= callbacks that name none."
    )
    created: UTCDate
    updated: UTCDate
    queue: QueueInfo | None = Field(None, description="Set once the job is submitted.")
    results: JSONData | None = Field(None, description="What its run reported.")
    history: list[HistoryEntry] = Field(default_factory=list)


class Entity(_Strict):
    """A record of another kind than jobs: a reference (an input) or a product (an output)."""

    uuid: EntityUUID
    kind: Literal["reference", "product"] = Field(description="Matches the UUID's type.")
    name: str = Field(min_length=1, max_length=1024)
    namespace: str | None = Field(None, max_length=1024)
    uri: str | None = Field(None, max_length=2049)
    created: UTCDate
    child_of: list[AnyUUID] = Field(default_factory=list)
    generated_by: list[AnyUUID] = Field(default_factory=list)
    derived_from: list[AnyUUID] = Field(default_factory=list)
    derived_using: list[AnyUUID] = Field(default_factory=list)

    @model_validator(mode="after")
    def _kind_matches_uuid(self) -> Entity:
        if self.uuid[:3] != UUIDType[self.kind].prefix:
            raise ValueError(f"a {self.kind} needs a {self.kind} UUID, got {self.uuid}")
        return self


FileUUID = Annotated[str, _typed(UUIDType.file)]
FixityOutcome = Literal["indexed", "ok", "changed", "missing", "unreadable", "accepted"]


class FixityCheck(_Strict):
    """One reading of a file: when, what it hashed to, and how that compared."""

    date: UTCDate
    outcome: FixityOutcome
    size: int | None = Field(None, ge=0)
    checksums: dict[str, str] = Field(default_factory=dict)
    changed: list[str] = Field(
        default_factory=list, description="Digests (or 'size') that differ from the record."
    )


class FileVersion(_Strict):
    """Content a file record held as its truth before a change was accepted (an earlier
    version): its checksums stay the reference for whoever used it while it was current."""

    version: int = Field(ge=1)
    checksums: dict[str, str] = Field(default_factory=dict)
    size: int = Field(ge=0)
    mtime: UTCDate
    etag: str | None = None
    recorded: UTCDate = Field(description="When this content became the record's truth.")
    superseded: UTCDate = Field(description="When a change to it was accepted.")
    accepted_by: str | None = Field(
        None, description="The job whose index accepted the content that replaced it.")


class FileRecord(_Strict):
    """A file in the archive, with its fixity and where it came from."""

    uuid: FileUUID = Field(description="Derived from storage system + path.")
    storage_system: str
    path: str = Field(description="Inside the storage root, e.g. /products/v2/.../out.csv.")
    name: str
    size: int = Field(ge=0)
    mtime: UTCDate
    etag: str | None = Field(None, description="The store's content tag (S3 ETag), if any.")
    media_type: str
    kind: Literal["archive", "product", "plot"]
    level: Level | None = None
    checksums: dict[str, str] = Field(default_factory=dict)
    status: Literal["ok", "changed", "missing", "unreadable", "unchecked"] = "unchecked"
    fixity: list[FixityCheck] = Field(
        default_factory=list,
        description="The last check, if any: the whole history is read a page at a time "
        "(GET /files/{uuid}/fixity), so that no record grows with its checks.")
    checked: UTCDate | None = Field(None, description="When the file was last read.")
    version: int = Field(1, ge=1, description="Which content the checksums are: 1 until a "
                         "change is accepted (--accept-changes), then one more each time.")
    versions: list[FileVersion] = Field(
        default_factory=list, description="Earlier versions, oldest first.")
    child_of: list[AnyUUID] = Field(default_factory=list)
    generated_by: list[AnyUUID] = Field(default_factory=list)
    derived_from: list[AnyUUID] = Field(default_factory=list)
    derived_using: list[AnyUUID] = Field(default_factory=list)
    note: str | None = None
    created: UTCDate
    updated: UTCDate
