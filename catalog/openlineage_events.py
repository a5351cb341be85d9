"""OpenLineage events parsed and checked, before anything is stored: the RunEvent, JobEvent
and DatasetEvent models (pydantic, unknown fields and facets kept), the sender's key, the
event's stable ``event_id``, the naming spec's normalised dataset identity and the facet size
limit. Nothing here reads or writes the store; catalog.openlineage applies what passes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid as _uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from catalog.catalog import Catalog
from catalog.errors import BodyTooLarge, TokenInvalid, TokenRequired
from catalog.identifiers import canonical_json

__all__ = ["EVENTS", "MAX_FACET_BYTES", "TERMINAL", "DatasetEvent", "JobEvent", "LineageDataset",
           "RunEvent", "authenticate", "check_facets", "column_sources", "dataset_key",
           "dataset_uri", "event_id", "instant", "normalise", "parent_runs", "run_id_of", "body_id",
           "unique_outputs"]

EventType = Literal["START", "RUNNING", "COMPLETE", "FAIL", "ABORT", "OTHER"]
EVENTS: dict[str, str] = {
    "START": "run", "RUNNING": "update", "COMPLETE": "finish", "FAIL": "fail",
    "ABORT": "fail", "OTHER": "update",
}
TERMINAL = ("COMPLETE", "FAIL", "ABORT")
# Ends of a run that imply it started, when its START never arrived (an ABORT may not have).

# One facet's JSON at most: a schema of thousands of columns fits, a runaway plan does not.
MAX_FACET_BYTES = 2 * 1024 * 1024

Name = Annotated[str, Field(min_length=1, max_length=1024)]


class _Open(BaseModel):
    """OpenLineage objects carry many facets and custom fields: keep what we do not read."""

    model_config = ConfigDict(extra="allow")


class LineageDataset(_Open):
    namespace: Name
    name: Name
    facets: dict[str, Any] | None = None
    inputFacets: dict[str, Any] | None = None
    outputFacets: dict[str, Any] | None = None


class LineageJob(_Open):
    namespace: Name
    name: Name
    facets: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _fits_a_pipeline_name(self) -> LineageJob:
        if len(self.namespace) + 1 + len(self.name) > 256:
            raise ValueError("namespace/name must be at most 256 characters")
        return self


def run_id_of(value: str) -> str:
    try:
        return str(_uuid.UUID(value))  # one spelling per run: lower case, hyphenated
    except (ValueError, AttributeError, TypeError):
        raise ValueError("runId must be a UUID") from None


class LineageRun(_Open):
    runId: str  # the spec's spelling, as for every field here
    facets: dict[str, Any] | None = None

    @field_validator("runId")
    @classmethod
    def _uuid(cls, value: str) -> str:
        return run_id_of(value)


def _event_time(value: str) -> str:
    if "t" not in value.lower():
        raise ValueError("eventTime must be an ISO 8601 date-time")
    try:
        instant(value)
    except (ValueError, OverflowError):  # overflow: year 1 or 9999 moved to UTC
        raise ValueError("eventTime must be an ISO 8601 date-time") from None
    return value


class _Timed(_Open):
    eventTime: str
    producer: str | None = None

    @field_validator("eventTime")
    @classmethod
    def _date_time(cls, value: str) -> str:
        return _event_time(value)


class RunEvent(_Timed):
    """The parts of an OpenLineage RunEvent the catalog reads."""

    eventType: EventType | None = None
    run: LineageRun
    job: LineageJob
    inputs: list[LineageDataset] | None = None
    outputs: list[LineageDataset] | None = None


class JobEvent(_Timed):
    """Static lineage: a job and the datasets it reads and writes, with no run."""

    job: LineageJob
    inputs: list[LineageDataset] | None = None
    outputs: list[LineageDataset] | None = None


class DatasetEvent(_Timed):
    """A dataset and its facets, with no run or job."""

    dataset: LineageDataset


def authenticate(catalog: Catalog, token: str | None) -> None:
    """Accept the configured ingestion key or the admin token, compared in constant time."""
    if not token:
        raise TokenRequired(
            "a bearer token (the OpenLineage ingestion key or the admin token) is required"
        )
    refusal = TokenInvalid("the token is neither the OpenLineage ingestion key nor the admin token")
    try:
        given = token.encode("utf-8")
    except (AttributeError, UnicodeEncodeError):  # not text (a reactor message's JSON)
        raise refusal from None
    key = catalog.settings.openlineage_key
    is_key = bool(key) and hmac.compare_digest(given, key.encode("utf-8"))
    if not (is_key or catalog.keys.is_admin(token)):
        raise refusal


def instant(event_time: str) -> str:
    """One spelling per instant (UTC; a zone-less time is read as UTC)."""
    moment = datetime.fromisoformat(event_time)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def event_id(run_id: str, event_type: str, event_time: str) -> str:
    """The stable event_id of a run's event: equal for every delivery of that event."""
    key = canonical_json(["openlineage", run_id, event_type, instant(event_time)])
    return "openlineage:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def body_id(kind: str, event: dict[str, Any]) -> str:
    """The event_id of a JobEvent or DatasetEvent: a digest of the whole event."""
    digest = hashlib.sha256(canonical_json(event).encode("utf-8")).hexdigest()[:32]
    return f"openlineage:{kind}:{digest}"


def normalise(namespace: str, name: str) -> tuple[str, str]:
    """The naming spec's one spelling: scheme and host in lower case, no trailing ``/`` on the
    namespace, ``file://`` with no host is ``file``; object-store names without a leading ``/``."""
    namespace = namespace.strip()
    parts = urlsplit(namespace)
    if parts.scheme and "://" in namespace:
        authority = parts.netloc
        if "@" not in authority:
            authority = authority.lower()
        namespace = f"{parts.scheme.lower()}://{authority}{parts.path.rstrip('/')}"
        if parts.scheme.lower() == "file" and not authority and not parts.path.strip("/"):
            namespace = "file"
        elif parts.scheme.lower() in ("s3", "s3a", "gs", "gcs", "abfs", "abfss", "wasbs"):
            name = name.lstrip("/") or name
    return namespace, name


def dataset_key(namespace: str, name: str) -> str:
    """What a dataset's UUID is derived from: its normalised ``<namespace>/<name>``."""
    namespace, name = normalise(namespace, name)
    return f"{namespace}/{name}"


def dataset_uri(namespace: str, name: str) -> str:
    """The dataset as a well-formed URI (``file`` + ``/data/x`` is ``file:///data/x``)."""
    if namespace == "file" or namespace.startswith("file://"):
        host = namespace[len("file://"):] if namespace != "file" else ""
        return f"file://{host}/{name.lstrip('/')}"
    if "://" not in namespace:
        return f"{namespace}:{name}"
    return f"{namespace}{'' if name.startswith('/') else '/'}{name}"


def check_facets(event: BaseModel) -> None:
    """Refuse a facet whose JSON is over MAX_FACET_BYTES, naming it and where it is."""
    def check(where: str, facets: dict[str, Any] | None) -> None:
        for facet, value in (facets or {}).items():
            size = len(json.dumps(value, separators=(",", ":")).encode("utf-8"))
            if size > MAX_FACET_BYTES:
                raise BodyTooLarge(f"facet {facet!r} of {where} is {size} bytes, over the "
                                   f"limit of {MAX_FACET_BYTES} bytes for one facet")

    for name in ("run", "job"):
        part = getattr(event, name, None)
        if part is not None and part.facets:
            check(name, part.facets)
    datasets = [("input", d) for d in getattr(event, "inputs", None) or []]
    datasets += [("output", d) for d in getattr(event, "outputs", None) or []]
    if isinstance(event, DatasetEvent):
        datasets.append(("dataset", event.dataset))
    for role, dataset in datasets:
        if not (dataset.facets or dataset.inputFacets or dataset.outputFacets):
            continue  # most datasets: no facets, nothing to name
        where = f"{role} dataset {dataset.namespace}/{dataset.name}"
        for field in ("facets", "inputFacets", "outputFacets"):
            check(where, getattr(dataset, field))


def unique_outputs(datasets: list[LineageDataset]) -> list[LineageDataset]:
    """The first of each dataset, in the order ``_entities`` keeps them."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for dataset in datasets:
        key = normalise(dataset.namespace, dataset.name)
        if key not in seen:
            seen.add(key)
            kept.append(dataset)
    return kept


def column_sources(dataset: LineageDataset) -> list[LineageDataset]:
    """The datasets a columnLineage facet says the output's columns come from."""
    facet = (dataset.facets or {}).get("columnLineage")
    fields = facet.get("fields") if isinstance(facet, dict) else None
    sources = []
    for column in fields.values() if isinstance(fields, dict) else []:
        for source in (column.get("inputFields") or []) if isinstance(column, dict) else []:
            if (isinstance(source, dict) and isinstance(source.get("namespace"), str)
                    and isinstance(source.get("name"), str)
                    and source["namespace"] and source["name"]):
                sources.append(LineageDataset(namespace=source["namespace"][:1024],
                                              name=source["name"][:1024]))
    return sources


def parent_runs(facets: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """The parent and root run ids of a parent facet (refused when not UUIDs)."""
    facet = (facets or {}).get("parent")
    if not isinstance(facet, dict):
        return None, None
    runs = []
    for part in (facet, facet.get("root")):
        run = part.get("run") if isinstance(part, dict) else None
        run_id = run.get("runId") if isinstance(run, dict) else None
        runs.append(run_id_of(run_id) if run_id is not None else None)
    return runs[0], runs[1]


