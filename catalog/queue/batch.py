"""Submitting a whole graph at once (issue 16): ``submit_many``.

Each item is what ``submit`` takes (``pipeline``, ``data``, ``when`` and the queue fields)
plus an optional ``key``, a name local to the batch: an atom ``{"job": KEY, "is": ...}``
names the job of an earlier item. The whole batch is checked before anything is stored
(malformed items, unknown or later keys, unknown job UUIDs, conditions too large or too
deep); a bad item refuses the batch, naming the item and the place, and changes nothing.
The items are then played in order over the stored heads, with the memoisation of N single
submits, and written at once (``catalog.queue.bulk``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from catalog.errors import CatalogError, InvalidCondition, InvalidInput, JobDeleted
from catalog.identifiers import UUIDType, looks_like_uuid, typed_uuid
from catalog.queue.bulk import Planned, write
from catalog.queue.conditions import as_json, check
from catalog.queue.models import SubmitOutcome

if TYPE_CHECKING:
    from catalog.catalog import Catalog
    from catalog.jobs import ManagedPipelineJob
    from catalog.models import Pipeline
    from catalog.queue.models import SubmitRequest

MAX_BATCH = 10_000  # items of one HTTP request


class SubmitBatch(BaseModel):
    """``POST /queue/jobs/batch``'s body: submissions, each with an optional local ``key``."""

    model_config = ConfigDict(extra="forbid")
    jobs: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_BATCH)


class SubmitBatchOutcome(BaseModel):
    jobs: list[SubmitOutcome]


_PLACEHOLDER = typed_uuid(UUIDType.pipelinejob, "submit-many-placeholder")


class _Placeholders(Mapping[str, str]):
    """Every earlier key names the placeholder (a dict of them per item was quadratic)."""

    def __init__(self, earlier: dict[str, int]) -> None:
        self.earlier = earlier

    def __getitem__(self, key: str) -> str:
        if key not in self.earlier:
            raise KeyError(key)
        return _PLACEHOLDER

    def __iter__(self) -> Iterator[str]:
        return iter(self.earlier)

    def __len__(self) -> int:
        return len(self.earlier)


def _resolve(node: Any, keys: Mapping[str, str]) -> Any:
    """The condition with its local keys replaced by ``keys``' UUIDs."""
    if isinstance(node, dict):
        if set(node) == {"job", "is"} and isinstance(node["job"], str) \
                and node["job"] in keys:
            return {"job": keys[node["job"]], "is": node["is"]}
        return {k: _resolve(v, keys) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, keys) for v in node]
    return node


def _check_items(catalog: Catalog, items: list[dict[str, Any]], source: str
                 ) -> list[dict[str, Any]]:
    """The items with their conditions in JSON form; InvalidInput/InvalidCondition naming
    the item (``items[3].when.all[0].job``) for the first bad one."""
    checked: list[dict[str, Any]] = []
    earlier: dict[str, int] = {}
    pipelines: dict[str, Pipeline] = {}
    for i, raw in enumerate(items):
        if not isinstance(raw, dict):
            raise InvalidInput(f"items[{i}]: an item is an object", place=f"items[{i}]")
        item = dict(raw)
        key = item.pop("key", None)
        if key is not None:
            if not isinstance(key, str) or not key or looks_like_uuid(key):
                raise InvalidInput(f"items[{i}].key: a key is a non-empty name, not a UUID",
                                   place=f"items[{i}].key")
            if key in earlier:
                raise InvalidInput(f"items[{i}].key: {key!r} is also items[{earlier[key]}]"
                                   "'s key", place=f"items[{i}].key")
        when = item.get("when")
        if when is not None:
            when = as_json(when)
            try:
                _, places = check(_resolve(when, _Placeholders(earlier)))
            except InvalidCondition as error:
                place = error.details.get("place", "when")
                raise InvalidCondition(f"items[{i}].{error.message}",
                                       place=f"items[{i}].{place}") from None
            _check_named(catalog, i, when, earlier, places)
            item["when"] = when
        managed, request = _managed(catalog, i, item, source, pipelines)
        checked.append({"key": key, "item": item, "managed": managed, "request": request})
        if key is not None:
            earlier[key] = i
    return checked


def _check_named(catalog: Catalog, i: int, when: Any, earlier: dict[str, int],
                 places: dict[str, str]) -> None:
    """Every job the condition names is an earlier item's key or a stored job."""
    for node, place in _atoms(when, "when"):
        job = node["job"]
        if job in earlier:
            continue
        if not looks_like_uuid(job) or catalog.store.get_job(job, history=False) is None:
            tombstone = catalog.store.get_tombstone(job) if looks_like_uuid(job) else None
            if tombstone is not None:  # gone, not malformed (410)
                raise JobDeleted(job, tombstone["deleted"]["date"],
                                 tombstone["deleted"]["source"], place=f"items[{i}].{place}.job")
            raise InvalidCondition(
                f"items[{i}].{place}.job: {job!r} is neither an earlier item's key nor a "
                "stored job", job=job, place=f"items[{i}].{place}.job")
    del places


def _atoms(node: Any, place: str) -> list[tuple[dict[str, Any], str]]:
    if set(node) == {"job", "is"}:
        return [(node, place)]
    if "not" in node:
        return _atoms(node["not"], f"{place}.not")
    found: list[tuple[dict[str, Any], str]] = []
    for op in ("all", "any"):
        for j, child in enumerate(node.get(op, [])):
            found += _atoms(child, f"{place}.{op}[{j}]")
    return found


def _managed(catalog: Catalog, i: int, item: dict[str, Any], source: str,
             pipelines: dict[str, Pipeline]) -> tuple[ManagedPipelineJob, SubmitRequest]:
    """The item's job (its UUID computed, nothing stored) and its request."""
    from catalog.catalog import parse_document
    from catalog.jobs import ManagedPipelineJob
    from catalog.queue.models import SubmitRequest

    try:
        request = parse_document(SubmitRequest, {**item, "when": None}, "submission")
        if request.pipeline not in pipelines:  # looked up once a batch
            pipelines[request.pipeline] = catalog.get_pipeline(request.pipeline)
        return ManagedPipelineJob(
            catalog, pipelines[request.pipeline], request.data,
            measurement_id=request.measurement_id, sample_id=request.sample_id,
            experiment_id=request.experiment_id, observation_id=request.observation_id,
            agent=request.agent, source=source), request
    except CatalogError as error:
        raise type(error)(f"items[{i}]: {error.message}",
                          **{**error.details, "place": f"items[{i}]"}) from None


def read_batch(text: str) -> list[dict[str, Any]]:
    """The items of a JSON Lines batch (blank lines skipped); InvalidInput naming the line."""
    items: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as error:
            raise InvalidInput(f"line {number}: not JSON: {error}", line=number) from None
        if not isinstance(item, dict):
            raise InvalidInput(f"line {number}: a submission is a JSON object", line=number)
        items.append(item)
    return items


def submit_many(catalog: Catalog, items: list[dict[str, Any]], source: str = "python"
                ) -> list[SubmitOutcome]:
    """Submit every item (see the module's doc); their outcomes, in order."""
    from catalog.deletion import refuse_deleted

    if not isinstance(items, list):
        raise InvalidInput("a batch is a list of items")
    checked = _check_items(catalog, items, source)
    keys = {e["key"]: e["managed"].uuid for e in checked if e["key"] is not None}
    planned: list[Planned] = []
    for i, entry in enumerate(checked):
        managed, request = entry["managed"], entry["request"]
        when: dict[str, Any] | None = None
        places: dict[str, str] = {}
        if entry["item"].get("when") is not None:
            when, places = check(_resolve(entry["item"]["when"], keys))
        info = request.model_copy(update={"when": when}).queue_info()
        planned.append(Planned(i, managed, info, when, places))
    for uuid in dict.fromkeys(p.managed.uuid for p in planned):
        refuse_deleted(catalog, uuid)  # a tombstone stands until purged
    for p in planned:
        if p.managed.inputs.references:
            catalog.add_entities(p.managed.inputs.references)
    return write(catalog, planned, source)
