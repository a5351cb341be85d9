"""Submitting a whole graph at once (issue 16): ``submit_many``.

Each item is what ``submit`` takes (``pipeline``, ``data``, ``when`` and the queue fields)
plus an optional ``key``, a name local to the batch: an atom ``{"job": KEY, "is": ...}``
names the job of an earlier item. The whole batch is checked before anything is stored
(malformed items, unknown or later keys, unknown job UUIDs, conditions too large or too
deep); a bad item refuses the batch, naming the item and the place, and changes nothing.
The items are then submitted in order, with the memoisation of N single submits.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel, ConfigDict, Field

from catalog.errors import CatalogError, InvalidCondition, InvalidInput, JobDeleted
from catalog.identifiers import UUIDType, looks_like_uuid, typed_uuid
from catalog.queue.conditions import as_json, check, find_cycle
from catalog.queue.models import SubmitOutcome

if TYPE_CHECKING:
    from catalog.catalog import Catalog

MAX_BATCH = 10_000  # items of one HTTP request


class SubmitBatch(BaseModel):
    """``POST /queue/jobs/batch``'s body: submissions, each with an optional local ``key``."""

    model_config = ConfigDict(extra="forbid")
    jobs: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_BATCH)


class SubmitBatchOutcome(BaseModel):
    jobs: list[SubmitOutcome]


_PLACEHOLDER = typed_uuid(UUIDType.pipelinejob, "submit-many-placeholder")


def _resolve(node: Any, keys: dict[str, str]) -> Any:
    """The condition with its local keys replaced by ``keys``' UUIDs."""
    if isinstance(node, dict):
        if set(node) == {"job", "is"} and isinstance(node["job"], str) \
                and node["job"] in keys:
            return {"job": keys[node["job"]], "is": node["is"]}
        return {k: _resolve(v, keys) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, keys) for v in node]
    return node


def _check_items(catalog: Catalog, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The items with their conditions in JSON form; InvalidInput/InvalidCondition naming
    the item (``items[3].when.all[0].job``) for the first bad one."""
    checked: list[dict[str, Any]] = []
    earlier: dict[str, int] = {}
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
            named = {a: _PLACEHOLDER for a in earlier}
            try:
                _, places = check(_resolve(when, named))
            except InvalidCondition as error:
                place = error.details.get("place", "when")
                raise InvalidCondition(f"items[{i}].{error.message}",
                                       place=f"items[{i}].{place}") from None
            _check_named(catalog, i, when, earlier, places)
            item["when"] = when
        checked.append({"key": key, "item": item, "uuid": _job_uuid(catalog, i, item)})
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


def _job_uuid(catalog: Catalog, i: int, item: dict[str, Any]) -> str:
    """The UUID the item's job has (or will have): computed, nothing stored."""
    from catalog.catalog import parse_document
    from catalog.jobs import ManagedPipelineJob
    from catalog.queue.models import SubmitRequest

    try:
        request = parse_document(SubmitRequest, {**item, "when": None}, "submission")
        return ManagedPipelineJob(
            catalog, request.pipeline, request.data, measurement_id=request.measurement_id,
            sample_id=request.sample_id, experiment_id=request.experiment_id,
            observation_id=request.observation_id, agent=request.agent).uuid
    except CatalogError as error:
        raise type(error)(f"items[{i}]: {error.message}",
                          **{**error.details, "place": f"items[{i}]"}) from None


def _check_cycles(catalog: Catalog, checked: list[dict[str, Any]]) -> None:
    """No job of the batch waits, through the batch's and the stored conditions, on
    itself.

    As N single submits would have it: a job's condition is the one it has when it is first
    submitted; a later item for the same job, or one for a job already waiting, queued,
    running or done, leaves the job as it is and its condition is not taken."""
    from catalog.queue.core import DONE_STATES, IN_FLIGHT_STATES

    keys = {e["key"]: e["uuid"] for e in checked if e["key"] is not None}
    conditions: dict[str, Any] = {}  # the batch's conditions that will be taken (or None)
    for entry in checked:
        if entry["uuid"] in conditions:
            continue
        head = catalog.store.get_job(entry["uuid"], history=False)
        if head is not None and head["state"] in DONE_STATES | IN_FLIGHT_STATES:
            continue  # stays as it is: its stored condition (if any) counts
        when = entry["item"].get("when")
        conditions[entry["uuid"]] = None if when is None else _resolve(when, keys)

    def condition_of(job: str) -> dict[str, Any] | None:
        if job in conditions:
            return cast(dict[str, Any] | None, conditions[job])
        head = catalog.store.get_job(job, history=False)
        return cast(dict[str, Any] | None, ((head or {}).get("queue") or {}).get("when"))

    for i, entry in enumerate(checked):
        when = entry["item"].get("when")
        if when is None:  # a condition not taken is still checked, as a single submit does
            continue
        _, places = check(_resolve(when, keys))
        cycle = find_cycle(entry["uuid"], list(places), condition_of)
        if cycle is not None:
            place = f"items[{i}].{places[cycle[1]]}"
            raise InvalidCondition(f"{place}: a cycle: " + " waits on ".join(cycle),
                                   cycle=cycle, place=place)


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
    from catalog.queue.core import submit

    if not isinstance(items, list):
        raise InvalidInput("a batch is a list of items")
    checked = _check_items(catalog, items)
    _check_cycles(catalog, checked)
    keys: dict[str, str] = {}
    outcomes: list[SubmitOutcome] = []
    for entry in checked:
        item = dict(entry["item"])
        if item.get("when") is not None:
            item["when"] = _resolve(item["when"], keys)
        out = submit(catalog, item, source)
        outcomes.append(out)
        if entry["key"] is not None:
            keys[entry["key"]] = out.uuid
    return outcomes
