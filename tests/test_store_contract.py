"""One contract, every backend: SQLite, mongomock, a MongoDB-wire server and (when configured) a
real MongoDB."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import math
import random
import sqlite3
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import xxhash
from conftest import json_values
from hypothesis import HealthCheck, given, settings

from catalog.errors import (
    EntityNotFound,
    EventNotAllowed,
    FileNotFound,
    InvalidInput,
    JobNotFound,
    NotFound,
)
from catalog.identifiers import UUIDType, pipeline_uuid, random_typed_uuid, typed_uuid
from catalog.models import (
    AuditEntry,
    Entity,
    FileRecord,
    FixityCheck,
    HistoryEntry,
    Job,
    Pipeline,
    format_date,
    utc_now,
)
from catalog.store import Applied, JobQuery, Page, Store, open_store
from catalog.store.paging import cursor_after, encode_cursor, prefix_upper_bound
from catalog.store.records import JOB_LINK_FIELDS
from catalog.store.values import Decide, Doc

NOW = datetime(2026, 11, 21, 12, 0, 0, 123000, tzinfo=UTC)
PIPELINE_A = pipeline_uuid("align", "1.0")
PIPELINE_B = pipeline_uuid("call", "1.0")
EXPERIMENT = typed_uuid(UUIDType.experiment, "experiment.lab.1")
SAMPLE = typed_uuid(UUIDType.sample, "sample.lab.7")
UNKNOWN_JOB = typed_uuid(UUIDType.pipelinejob, "never inserted")


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def make_pipeline(name: str, version: str = "1.0", description: str | None = None) -> Doc:
    return Pipeline(
        uuid=pipeline_uuid(name, version), name=name, version=version,
        components=[{"image": f"{name}:{version}"}], description=description, created=at(0),
    ).model_dump(mode="json")


def make_entry(name: str = "create", state: str = "CREATED", date: datetime = NOW,
               event_id: str | None = None) -> Doc:
    return HistoryEntry(
        uuid=random_typed_uuid(UUIDType.pipelinejob_event), name=name, date=date,
        data={"by": name}, source="test",
        event_id=event_id or random_typed_uuid(UUIDType.generic), state=state,
    ).model_dump(mode="json")


def make_job(key: str, seconds: float = 0, state: str = "CREATED",
             pipeline: str = PIPELINE_A, child_of: tuple[str, ...] = ()) -> Doc:
    return Job(
        uuid=typed_uuid(UUIDType.pipelinejob, key), pipeline_uuid=pipeline,
        data={"key": key, "nested": {"values": [1, 2.5, None, "Ω"]}},
        state=state, last_event="create", version=1, child_of=list(child_of),
        generated_by=[typed_uuid(UUIDType.process, key)], archive_system="local",
        archive_path=f"/products/v2/{key}", session="s-1", created=at(seconds),
        updated=at(seconds), history=[make_entry(state=state, date=at(seconds))],
    ).model_dump(mode="json")


def make_audit(job_uuid: str, seconds: float, reason: str) -> Doc:
    return AuditEntry(
        job_uuid=job_uuid, name="finish", date=at(seconds), source="test", code="event_not_allowed",
        reason=reason, data={"seconds": seconds},
    ).model_dump(mode="json")


def without_history(job: Doc) -> Doc:
    return {k: v for k, v in job.items() if k != "history"}


def listed(job: Doc) -> Doc:
    """A job as listings give it: without its history and results (megabytes, maybe)."""
    return {k: v for k, v in job.items() if k not in ("history", "results")}


def deciding(state: str, entry: Doc, heads: list[Doc] | None = None) -> Decide:
    """A decide that records the heads it is shown and moves the job to ``state``."""

    def decide(head: Doc) -> tuple[str, Doc]:
        if heads is not None:
            heads.append(dict(head))
        return state, entry

    return decide


def must_not_decide(head: Doc) -> tuple[str, Doc]:
    raise AssertionError(f"decide was called with {head}")


def all_pages(fetch: Callable[[str | None], Page], limit: int) -> list[list[Doc]]:
    """Follow cursors to the end, checking every page but the last is full."""
    pages: list[list[Doc]] = []
    cursor: str | None = None
    while True:
        page = fetch(cursor)
        pages.append(page.items)
        if page.next is None:
            return pages
        assert len(page.items) == limit
        assert len(pages) <= 100, "pagination does not end"
        cursor = page.next


def test_kind(store: Store, request: pytest.FixtureRequest) -> None:
    backend = request.node.callspec.params["store_url"]
    assert store.kind == {"sqlite": "sqlite", "mongomock": "mongo", "mongowire": "mongo",
                          "mongodb": "mongo"}[backend]


def test_reopening_the_url_sees_the_same_catalog(store_url: str) -> None:
    pipeline = make_pipeline("align")
    first = open_store(store_url)
    try:
        assert first.insert_pipeline(pipeline) == (pipeline, True)
    finally:
        first.close()
    second = open_store(store_url)
    try:
        assert second.get_pipeline(pipeline["uuid"]) == pipeline
        assert second.insert_pipeline(pipeline) == (pipeline, False)
    finally:
        second.close()


# pipelines -------------------------------------------------------------------------------------


def test_insert_and_get_pipeline(store: Store) -> None:
    pipeline = make_pipeline("align", description="Align reads")
    assert store.insert_pipeline(pipeline) == (pipeline, True)
    assert store.get_pipeline(pipeline["uuid"]) == pipeline
    assert store.get_pipeline(pipeline_uuid("align", "2.0")) is None


def test_insert_pipeline_twice_returns_the_existing_one_unchanged(store: Store) -> None:
    pipeline = make_pipeline("align", description="first")
    store.insert_pipeline(pipeline)
    assert store.insert_pipeline({**pipeline, "description": "second"}) == (pipeline, False)
    assert store.get_pipeline(pipeline["uuid"]) == pipeline
    assert store.find_pipelines().items == [pipeline]


PIPELINES = [("qc", "1"), ("align", "2.0"), ("call", "1"), ("align", "1.0"), ("qc", "2"),
             ("align", "3.1"), ("call", "2")]


@pytest.mark.parametrize("limit", [1, 2, 3, 6, 7, 100])
@pytest.mark.parametrize("name", [None, "align", "call", "missing"])
def test_find_pipelines_pages_through_each_once_by_name_then_uuid(
    store: Store, name: str | None, limit: int
) -> None:
    docs = [make_pipeline(n, v) for n, v in PIPELINES]
    for doc in docs:
        store.insert_pipeline(doc)
    expected = sorted((d for d in docs if name in (None, d["name"])),
                      key=lambda d: (d["name"], d["uuid"]))

    pages = all_pages(lambda cursor: store.find_pipelines(name, limit, cursor), limit)

    assert [d for page in pages for d in page] == expected
    assert len(pages) == max(1, math.ceil(len(expected) / limit))


def test_find_pipelines_by_name(store: Store) -> None:
    docs = {(n, v): make_pipeline(n, v) for n, v in PIPELINES}
    for doc in docs.values():
        store.insert_pipeline(doc)
    found = store.find_pipelines("call")
    assert found.next is None
    assert {(d["name"], d["version"]) for d in found.items} == {("call", "1"), ("call", "2")}
    assert found.items == sorted([docs["call", "1"], docs["call", "2"]], key=lambda d: d["uuid"])


# jobs ----------------------------------------------------------------------------------------


def test_insert_and_get_job(store: Store) -> None:
    job = make_job("one", child_of=(EXPERIMENT, SAMPLE))
    assert store.insert_job(job) == (job, True)
    assert store.get_job(job["uuid"]) == job
    assert store.get_job(job["uuid"], history=False) == without_history(job)
    assert store.get_job(UNKNOWN_JOB) is None
    assert store.get_job(UNKNOWN_JOB, history=False) is None


def test_get_job_without_links_leaves_the_lists_out(store: Store) -> None:
    job = make_job("bare", child_of=(EXPERIMENT, SAMPLE))
    store.insert_job(job)
    bare = {k: v for k, v in without_history(job).items() if k not in JOB_LINK_FIELDS}
    assert store.get_job(job["uuid"], history=False, links=False) == bare
    assert store.get_job(job["uuid"], links=False) == {**bare, "history": job["history"]}
    assert store.get_job(UNKNOWN_JOB, links=False) is None


def test_job_head_is_the_head_alone(store: Store) -> None:
    job = make_job("head", state="RUNNING")
    store.insert_job(job)
    assert store.job_head(job["uuid"]) == {
        "uuid": job["uuid"], "state": "RUNNING", "version": 1, "last_event": "create",
        "created": job["created"]}
    assert store.job_head(UNKNOWN_JOB) is None


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values)
def test_any_accepted_json_comes_back_exactly(store: Store, value: Any) -> None:
    """A job's data and its history's come back as given, to the type and the order: 1 stays
    an int and 1.0 a float, -0.0 keeps its sign, text every character, keys their order."""
    job = make_job(f"json {uuid.uuid4()}")
    job["data"] = {"value": value}
    job["history"][0]["data"] = {"value": [value]}
    store.insert_job(job)
    stored = store.get_job(job["uuid"])
    assert stored is not None
    assert json.dumps(stored["data"]) == json.dumps(job["data"])
    assert json.dumps(stored["history"][0]["data"]) == json.dumps(job["history"][0]["data"])


def test_insert_job_twice_returns_the_existing_one_unchanged(store: Store) -> None:
    job = make_job("one", child_of=(EXPERIMENT,))
    store.insert_job(job)
    again = {**make_job("one", seconds=60, state="RUNNING", child_of=(SAMPLE,)),
             "data": {"other": True}}
    assert store.insert_job(again) == (job, False)
    assert store.get_job(job["uuid"]) == job
    assert store.find_jobs(JobQuery()).items == [listed(job)]
    assert store.find_jobs(JobQuery(child_of=SAMPLE)).items == []


# key: (seconds after NOW, state, pipeline, child_of); three jobs share one creation date.
JOBS: dict[str, tuple[int, str, str, tuple[str, ...]]] = {
    "j1": (0, "CREATED", PIPELINE_A, (EXPERIMENT,)),
    "j2": (10, "RUNNING", PIPELINE_A, (EXPERIMENT, SAMPLE)),
    "j3": (10, "RUNNING", PIPELINE_B, (SAMPLE,)),
    "j4": (10, "FAILED", PIPELINE_A, ()),
    "j5": (20, "CREATED", PIPELINE_B, (EXPERIMENT,)),
    "j6": (30, "RUNNING", PIPELINE_A, (SAMPLE,)),
}


def insert_jobs(store: Store) -> dict[str, Doc]:
    jobs = {key: make_job(key, s, state, p, c) for key, (s, state, p, c) in JOBS.items()}
    for key in ("j4", "j6", "j1", "j3", "j5", "j2"):  # not in creation order
        store.insert_job(jobs[key])
    return jobs


def in_order(jobs: dict[str, Doc], keys: list[str]) -> list[Doc]:
    return sorted((listed(jobs[k]) for k in keys), key=lambda d: (d["created"], d["uuid"]))


@pytest.mark.parametrize(
    ("filters", "keys"),
    [
        ({}, ["j1", "j2", "j3", "j4", "j5", "j6"]),
        ({"state": "RUNNING"}, ["j2", "j3", "j6"]),
        ({"state": "FINISHED"}, []),
        ({"pipeline_uuid": PIPELINE_B}, ["j3", "j5"]),
        ({"child_of": EXPERIMENT}, ["j1", "j2", "j5"]),
        ({"child_of": SAMPLE}, ["j2", "j3", "j6"]),
        ({"child_of": typed_uuid(UUIDType.sample, "unrelated")}, []),
        ({"state": "CREATED", "pipeline_uuid": PIPELINE_B}, ["j5"]),
        ({"child_of": SAMPLE, "pipeline_uuid": PIPELINE_A}, ["j2", "j6"]),
        ({"child_of": EXPERIMENT, "state": "RUNNING"}, ["j2"]),
        ({"child_of": SAMPLE, "state": "RUNNING", "pipeline_uuid": PIPELINE_B}, ["j3"]),
        ({"child_of": EXPERIMENT, "state": "FAILED"}, []),
    ],
)
def test_find_jobs_filters(store: Store, filters: dict[str, Any], keys: list[str]) -> None:
    jobs = insert_jobs(store)
    assert store.find_jobs(JobQuery(**filters)) == Page(in_order(jobs, keys), None)


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 6, 7])
@pytest.mark.parametrize(
    ("filters", "keys"),
    [
        ({}, ["j1", "j2", "j3", "j4", "j5", "j6"]),
        ({"state": "RUNNING"}, ["j2", "j3", "j6"]),
        ({"child_of": SAMPLE}, ["j2", "j3", "j6"]),
        ({"pipeline_uuid": PIPELINE_A, "child_of": EXPERIMENT}, ["j1", "j2"]),
    ],
)
def test_find_jobs_pages_through_each_once_by_created_then_uuid(
    store: Store, filters: dict[str, Any], keys: list[str], limit: int
) -> None:
    jobs = insert_jobs(store)
    pages = all_pages(
        lambda cursor: store.find_jobs(JobQuery(**filters, limit=limit, cursor=cursor)), limit
    )
    assert [d for page in pages for d in page] == in_order(jobs, keys)
    assert len(pages) == max(1, math.ceil(len(keys) / limit))


def fmt(seconds: float) -> str:
    return format_date(at(seconds))


@pytest.mark.parametrize(
    ("filters", "keys"),
    [
        ({"agent": "actor-1"}, ["j1", "j3", "j5"]),
        ({"agent": "nobody"}, []),
        ({"created_after": fmt(10)}, ["j2", "j3", "j4", "j5", "j6"]),
        ({"created_before": fmt(10)}, ["j1"]),
        ({"created_after": fmt(10), "created_before": fmt(30)}, ["j2", "j3", "j4", "j5"]),
        ({"created_after": fmt(10), "created_before": fmt(10)}, []),
        ({"agent": "actor-1", "created_after": fmt(5), "state": "CREATED"}, ["j5"]),
        ({"agent": "actor-2", "child_of": SAMPLE}, ["j2", "j6"]),
    ],
)
def test_find_jobs_by_agent_and_creation_window(store: Store, filters: dict[str, Any],
                                                keys: list[str]) -> None:
    jobs = {key: {**make_job(key, s, state, p, c), "agent": f"actor-{1 + n % 2}"}
            for n, (key, (s, state, p, c)) in enumerate(JOBS.items())}
    for job in jobs.values():
        store.insert_job(job)
    assert store.find_jobs(JobQuery(**filters)) == Page(in_order(jobs, keys), None)


@pytest.mark.parametrize("limit", [1, 2, 4, 6])
def test_find_jobs_newest_first_pages_through_each_once(store: Store, limit: int) -> None:
    jobs = insert_jobs(store)
    pages = all_pages(
        lambda cursor: store.find_jobs(JobQuery(sort="-created", limit=limit, cursor=cursor)),
        limit,
    )
    assert [d for page in pages for d in page] == in_order(jobs, list(JOBS))[::-1]


def test_a_cursor_belongs_to_its_sort_order(store: Store) -> None:
    insert_jobs(store)
    page = store.find_jobs(JobQuery(limit=2))
    assert page.next is not None
    with pytest.raises(InvalidInput, match="sorted by 'created', not '-created'"):
        store.find_jobs(JobQuery(sort="-created", cursor=page.next))
    with pytest.raises(InvalidInput, match="sort must be one of"):
        JobQuery(sort="updated")


def test_a_cursor_past_the_end_gives_an_empty_last_page(store: Store) -> None:
    insert_jobs(store)
    store.insert_pipeline(make_pipeline("align"))
    assert store.find_jobs(JobQuery(cursor=encode_cursor("created", "9999", ""))) == Page([], None)
    assert store.find_pipelines(cursor=encode_cursor("zzz", "")) == Page([], None)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not a cursor!",
        "%%%%",
        _b64(b"\xff\xfe"),
        _b64(b'{"created": "x", "uuid": "y"}'),
        _b64(b"[1, 2]"),
        encode_cursor("only one"),
        encode_cursor("one", "two", "three"),
    ],
)
def test_invalid_cursor_is_invalid_input(store: Store, cursor: str) -> None:
    insert_jobs(store)
    store.insert_pipeline(make_pipeline("align"))
    with pytest.raises(InvalidInput):
        store.find_jobs(JobQuery(cursor=cursor))
    with pytest.raises(InvalidInput):
        store.find_pipelines(cursor=cursor)


# events --------------------------------------------------------------------------------------


def test_apply_event_moves_the_job_and_appends_history_in_order(store: Store) -> None:
    job = make_job("one", child_of=(EXPERIMENT,))
    store.insert_job(job)
    heads: list[Doc] = []
    run = make_entry("run", "RUNNING", at(5), event_id="hook-run")
    finish = make_entry("finish", "FINISHED", at(9), event_id="hook-finish")

    assert store.apply_event(job["uuid"], "hook-run", deciding("RUNNING", run, heads)) == Applied(
        run, duplicate=False
    )
    assert store.apply_event(
        job["uuid"], "hook-finish", deciding("FINISHED", finish, heads)
    ) == Applied(finish, duplicate=False)

    assert heads == [
        {"uuid": job["uuid"], "state": "CREATED", "version": 1, "last_event": "create",
         "queue": None},
        {"uuid": job["uuid"], "state": "RUNNING", "version": 2, "last_event": "run",
         "queue": None},
    ]
    expected = {**job, "state": "FINISHED", "last_event": "finish", "version": 3,
                "updated": finish["date"], "history": [*job["history"], run, finish]}
    assert store.get_job(job["uuid"]) == expected
    assert store.get_job(job["uuid"], history=False) == without_history(expected)
    assert store.find_jobs(JobQuery(state="FINISHED")).items == [listed(expected)]
    assert store.find_jobs(JobQuery(state="CREATED")).items == []


def test_apply_event_without_event_id_is_never_a_duplicate(store: Store) -> None:
    job = make_job("one")
    store.insert_job(job)
    updates = [make_entry("update", "CREATED", at(i)) for i in (1, 2)]
    for update in updates:
        assert store.apply_event(job["uuid"], None, deciding("CREATED", update)) == Applied(
            update, duplicate=False
        )
    stored = store.get_job(job["uuid"])
    assert stored is not None
    assert (stored["version"], stored["last_event"]) == (3, "update")
    assert stored["history"] == [*job["history"], *updates]


def test_duplicate_event_id_returns_the_first_entry_and_writes_nothing(store: Store) -> None:
    job = make_job("one")
    store.insert_job(job)
    run = make_entry("run", "RUNNING", at(5), event_id="hook-1")
    store.apply_event(job["uuid"], "hook-1", deciding("RUNNING", run))
    before = store.get_job(job["uuid"])

    assert store.apply_event(job["uuid"], "hook-1", must_not_decide) == Applied(run, True)
    first = job["history"][0]
    assert store.apply_event(job["uuid"], first["event_id"], must_not_decide) == Applied(
        first, True
    )

    after = store.get_job(job["uuid"])
    assert after == before
    assert after is not None and after["version"] == 2


def test_event_ids_are_scoped_to_their_job(store: Store) -> None:
    one, two = make_job("one"), make_job("two")
    store.insert_job(one)
    store.insert_job(two)
    first = make_entry("run", "RUNNING", at(1), event_id="hook-1")
    second = make_entry("run", "RUNNING", at(2), event_id="hook-1")
    assert store.apply_event(one["uuid"], "hook-1", deciding("RUNNING", first)).duplicate is False
    assert store.apply_event(two["uuid"], "hook-1", deciding("RUNNING", second)) == Applied(
        second, False
    )


@pytest.mark.parametrize(
    "error",
    [
        EventNotAllowed(typed_uuid(UUIDType.pipelinejob, "one"), "finish", "CREATED", ["run"]),
        RuntimeError("decide failed"),
    ],
    ids=["refused", "crashed"],
)
def test_decide_raising_writes_nothing(store: Store, error: Exception) -> None:
    job = make_job("one")
    store.insert_job(job)

    def refuse(head: Doc) -> tuple[str, Doc]:
        raise error

    with pytest.raises(type(error)) as raised:
        store.apply_event(job["uuid"], "hook-1", refuse)
    assert raised.value is error
    assert store.get_job(job["uuid"]) == job
    # The event was not recorded, so a later delivery of it is applied.
    run = make_entry("run", "RUNNING", at(5), event_id="hook-1")
    assert store.apply_event(job["uuid"], "hook-1", deciding("RUNNING", run)) == Applied(
        run, False
    )


@pytest.mark.parametrize("event_id", [None, "hook-1"])
def test_apply_event_to_an_unknown_job_raises_job_not_found(
    store: Store, event_id: str | None
) -> None:
    store.insert_job(make_job("one"))
    with pytest.raises(JobNotFound) as raised:
        store.apply_event(UNKNOWN_JOB, event_id, must_not_decide)
    assert raised.value.details == {"uuid": UNKNOWN_JOB}


def test_concurrent_events_on_one_job_are_all_applied_once(store: Store) -> None:
    threads, events_per_thread = 8, 25
    job = make_job("busy")
    store.insert_job(job)
    start = threading.Barrier(threads)

    def send(thread: int) -> list[Applied]:
        def decide(head: Doc) -> tuple[str, Doc]:  # a fresh entry on every (re)try
            return head["state"], make_entry("update", head["state"], utc_now(), event_id)

        start.wait()
        applied = []
        for n in range(events_per_thread):
            event_id = f"thread-{thread}-event-{n}"
            applied.append(store.apply_event(job["uuid"], event_id, decide))
        return applied

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(send, range(threads)))

    stored = store.get_job(job["uuid"])
    assert stored is not None
    total = threads * events_per_thread
    assert stored["version"] == 1 + total
    history = stored["history"]
    assert len(history) == 1 + total
    assert history[0] == job["history"][0]
    event_ids = [entry["event_id"] for entry in history[1:]]
    assert sorted(event_ids) == sorted(
        f"thread-{t}-event-{n}" for t in range(threads) for n in range(events_per_thread)
    )
    assert len({entry["uuid"] for entry in history}) == 1 + total
    # Each thread's events are in the history in the order it sent them, as it was told.
    for thread, applied in enumerate(results):
        assert [a.duplicate for a in applied] == [False] * events_per_thread
        mine = [e for e in history if e["event_id"].startswith(f"thread-{thread}-")]
        assert mine == [a.entry for a in applied]
    assert (stored["last_event"], stored["updated"]) == ("update", history[-1]["date"])


def test_decide_always_sees_the_head_it_is_written_over(store: Store) -> None:
    """Another event lands while ours is being decided; either order is fine, a stale one not."""
    job = make_job("one")
    store.insert_job(job)
    shown: dict[str, list[Doc]] = {"ours": [], "theirs": []}
    errors: list[BaseException] = []

    def theirs() -> None:
        entry = make_entry("run", "RUNNING", at(1), event_id="theirs")
        try:
            store.apply_event(job["uuid"], "theirs", deciding("RUNNING", entry, shown["theirs"]))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    interloper = threading.Thread(target=theirs)

    def ours(head: Doc) -> tuple[str, Doc]:
        shown["ours"].append(dict(head))
        if len(shown["ours"]) == 1:
            interloper.start()
            interloper.join(timeout=0.3)  # CAS backends let it finish; locking ones make it wait
        state = "FINISHED" if head["state"] == "RUNNING" else "RUNNING"
        return state, make_entry("ours", state, at(2), event_id="ours")

    store.apply_event(job["uuid"], "ours", ours)
    interloper.join()
    assert errors == []

    stored = store.get_job(job["uuid"])
    assert stored is not None
    history = stored["history"]
    assert sorted(e["event_id"] for e in history[1:]) == ["ours", "theirs"]
    assert stored["version"] == 3
    for position, entry in enumerate(history[1:], start=1):
        before = history[position - 1]
        assert shown[entry["event_id"]][-1] == {
            "uuid": job["uuid"], "state": before["state"], "version": position,
            "last_event": before["name"], "queue": None,
        }
    assert (stored["state"], stored["last_event"]) == (history[-1]["state"], history[-1]["name"])


# deletion ------------------------------------------------------------------------------------


def test_delete_job(store: Store) -> None:
    jobs = insert_jobs(store)
    gone = jobs["j2"]
    run = make_entry("run", "RUNNING", at(11), event_id="hook-1")
    store.apply_event(gone["uuid"], "hook-1", deciding("RUNNING", run))

    assert store.delete_job(gone["uuid"]) is True
    assert store.delete_job(gone["uuid"]) is False
    assert store.delete_job(UNKNOWN_JOB) is False

    assert store.get_job(gone["uuid"]) is None
    assert store.find_jobs(JobQuery()).items == in_order(jobs, ["j1", "j3", "j4", "j5", "j6"])
    assert store.find_jobs(JobQuery(child_of=EXPERIMENT)).items == in_order(jobs, ["j1", "j5"])
    assert store.find_jobs(JobQuery(child_of=SAMPLE)).items == in_order(jobs, ["j3", "j6"])
    assert store.find_jobs(JobQuery(state="RUNNING")).items == in_order(jobs, ["j3", "j6"])
    with pytest.raises(JobNotFound):
        store.apply_event(gone["uuid"], "hook-1", must_not_decide)
    # Its history and links went with it: inserted again, it starts afresh.
    assert store.insert_job(gone) == (gone, True)
    assert store.get_job(gone["uuid"]) == gone
    assert store.find_jobs(JobQuery(child_of=SAMPLE)).items == in_order(jobs, ["j2", "j3", "j6"])


def test_dependents_come_from_the_reverse_index_each_once_and_go_with_the_job(
        store: Store) -> None:
    jobs = insert_jobs(store)
    j1, j2, j3 = jobs["j1"]["uuid"], jobs["j2"]["uuid"], jobs["j3"]["uuid"]
    assert store.dependents(j1) == []
    store.add_dependencies(j3, [j1, j2, j1])
    store.add_dependencies(j2, [j1])
    store.add_dependencies(j3, [j1])  # again: kept once
    assert store.dependents(j1) == sorted([j2, j3])
    assert store.dependents(j2) == [j3]
    assert store.dependents(j3) == []
    assert store.delete_job(j3) is True
    assert store.dependents(j1) == [j2] and store.dependents(j2) == []


# audit ---------------------------------------------------------------------------------------


def test_audit_is_listed_newest_first(store: Store) -> None:
    one, two = typed_uuid(UUIDType.pipelinejob, "one"), typed_uuid(UUIDType.pipelinejob, "two")
    a1 = make_audit(one, 0, "first")
    a2 = make_audit(two, 1, "second")
    a3 = make_audit(one, 2, "third")
    a4 = make_audit(one, 2, "fourth, same date as the third")
    a5 = make_audit(two, 3, "fifth")
    for entry in (a1, a2, a3, a4, a5):
        store.append_audit(entry)

    assert store.find_audit() == [a5, a4, a3, a2, a1]
    assert store.find_audit(limit=2) == [a5, a4]
    assert store.find_audit(one) == [a4, a3, a1]
    assert store.find_audit(one, limit=1) == [a4]
    assert store.find_audit(two) == [a5, a2]
    assert store.find_audit(UNKNOWN_JOB) == []


# what crosses the boundary ---------------------------------------------------------------------


def keys_anywhere(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value).union(*(keys_anywhere(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(keys_anywhere(v) for v in value))
    return set()


def test_documents_never_carry_the_database_id(store: Store) -> None:
    pipeline = make_pipeline("align")
    job = make_job("one", child_of=(SAMPLE,))
    entry = make_entry("run", "RUNNING", at(1), event_id="hook-1")
    returned: list[Any] = [
        store.insert_pipeline(pipeline), store.insert_pipeline(pipeline),
        store.insert_job(job), store.insert_job(job),
        store.apply_event(job["uuid"], "hook-1", deciding("RUNNING", entry)).entry,
        store.apply_event(job["uuid"], "hook-1", must_not_decide).entry,
        store.get_pipeline(pipeline["uuid"]),
        store.find_pipelines().items, store.find_pipelines("align").items,
        store.get_job(job["uuid"]), store.get_job(job["uuid"], history=False),
        store.find_jobs(JobQuery()).items, store.find_jobs(JobQuery(child_of=SAMPLE)).items,
        store.find_jobs(JobQuery(state="RUNNING", pipeline_uuid=PIPELINE_A)).items,
    ]
    store.append_audit(make_audit(job["uuid"], 2, "refused"))
    returned += [store.find_audit(), store.find_audit(job["uuid"])]

    assert "_id" not in keys_anywhere(returned)
    assert {"uuid", "history", "event_id", "reason"} <= keys_anywhere(returned)


def test_callers_documents_are_neither_changed_nor_shared(store: Store) -> None:
    pipeline = make_pipeline("align")
    job = make_job("one", child_of=(EXPERIMENT,))
    entry = make_entry("run", "RUNNING", at(1), event_id="hook-1")
    audit = make_audit(job["uuid"], 2, "refused")
    originals = copy.deepcopy([pipeline, job, entry, audit])

    store.insert_pipeline(pipeline)
    store.insert_job(job)
    store.apply_event(job["uuid"], "hook-1", deciding("RUNNING", entry))
    store.append_audit(audit)
    assert [pipeline, job, entry, audit] == originals

    # Changing the caller's documents, or what the store returned, changes nothing stored.
    stored_job = store.get_job(job["uuid"])
    assert stored_job is not None
    expected_job = copy.deepcopy(stored_job)
    pipeline["components"][0]["image"] = "changed"
    for doc in (job, entry, audit, stored_job):
        doc["data"]["changed"] = True
    job["history"][0]["name"] = "changed"
    stored_job["history"].append({"not": "stored"})
    assert store.get_job(originals[1]["uuid"]) == expected_job
    assert store.get_pipeline(originals[0]["uuid"]) == originals[0]
    assert store.find_audit() == [originals[3]]


# entities and links ----------------------------------------------------------------------------

REFERENCE = typed_uuid(UUIDType.reference, "s3://bucket/calibration.fits")
PRODUCT = typed_uuid(UUIDType.product, "s3://bucket/cube.fits")
UNKNOWN_PRODUCT = typed_uuid(UUIDType.product, "never inserted")


def make_entity(uri: str, kind: str = "product", seconds: float = 0, **links: list[str]) -> Doc:
    namespace, _, name = uri.rpartition("/")
    return Entity(
        uuid=typed_uuid(UUIDType[kind], uri), kind=kind, name=name, namespace=namespace,
        uri=uri, created=at(seconds), **links,
    ).model_dump(mode="json")


def ref(uri: str) -> str:
    return typed_uuid(UUIDType.reference, uri)


def test_upsert_and_get_entities(store: Store) -> None:
    reference = make_entity("s3://bucket/calibration.fits", "reference")
    product = make_entity("s3://bucket/cube.fits", generated_by=[UNKNOWN_JOB])
    store.upsert_entities([reference, product])
    assert store.get_entity(REFERENCE) == reference
    assert store.get_entity(PRODUCT) == product
    assert store.get_entity(UNKNOWN_PRODUCT) is None
    assert "_id" not in keys_anywhere([store.get_entity(REFERENCE), store.get_entity(PRODUCT)])
    store.upsert_entities([])


def test_upsert_entities_leaves_existing_ones_unchanged(store: Store) -> None:
    product = make_entity("s3://bucket/cube.fits", generated_by=[UNKNOWN_JOB])
    store.upsert_entities([product])
    changed = {**make_entity("s3://bucket/cube.fits", seconds=60), "name": "renamed"}
    other = make_entity("s3://bucket/other.fits")
    store.upsert_entities([changed, other, {**other, "name": "second of the batch"}])
    assert store.get_entity(PRODUCT) == product
    assert store.get_entity(other["uuid"]) == other


def test_upsert_entities_neither_changes_nor_shares_the_callers_docs(store: Store) -> None:
    product = make_entity("s3://bucket/cube.fits", generated_by=[UNKNOWN_JOB])
    original = copy.deepcopy(product)
    store.upsert_entities([product])
    assert product == original
    product["generated_by"].append("changed")
    stored = store.get_entity(PRODUCT)
    assert stored == original
    assert stored is not None
    stored["generated_by"].append("changed")
    assert store.get_entity(PRODUCT) == original


def test_add_links_to_a_job_is_idempotent_and_not_an_event(store: Store) -> None:
    job = make_job("one", child_of=(EXPERIMENT,))
    store.insert_job(job)
    first, second, third = ref("a"), ref("b"), ref("c")

    store.add_links(job["uuid"], "acted_on", [first, second, first])
    store.add_links(job["uuid"], "acted_on", [second, third])
    store.add_links(job["uuid"], "acted_on", [third])
    store.add_links(job["uuid"], "acted_on", [])
    store.add_links(job["uuid"], "generated_by", [PIPELINE_A])

    expected = {**job, "acted_on": [first, second, third],
                "generated_by": [*job["generated_by"], PIPELINE_A]}
    assert store.get_job(job["uuid"]) == expected  # version, updated and history as they were
    assert store.get_job(job["uuid"], history=False) == without_history(expected)
    assert store.find_jobs(JobQuery(child_of=EXPERIMENT)).items == [listed(expected)]


def test_add_child_of_links_are_found_by_child_of(store: Store) -> None:
    job = make_job("one")
    store.insert_job(job)
    store.add_links(job["uuid"], "child_of", [SAMPLE])
    found = store.find_jobs(JobQuery(child_of=SAMPLE)).items
    assert [d["uuid"] for d in found] == [job["uuid"]]
    assert found[0]["child_of"] == [SAMPLE]


def test_add_links_to_an_entity(store: Store) -> None:
    one, two = typed_uuid(UUIDType.pipelinejob, "one"), typed_uuid(UUIDType.pipelinejob, "two")
    store.upsert_entities([make_entity("s3://bucket/cube.fits", generated_by=[one])])
    store.add_links(PRODUCT, "generated_by", [one, two, two])
    store.add_links(PRODUCT, "derived_using", [REFERENCE])
    store.add_links(PRODUCT, "derived_using", [REFERENCE])
    assert store.get_entity(PRODUCT) == make_entity(
        "s3://bucket/cube.fits", generated_by=[one, two], derived_using=[REFERENCE]
    )


def test_links_and_events_on_one_job_do_not_lose_each_other(store: Store) -> None:
    job = make_job("busy")
    store.insert_job(job)
    count = 40
    start = threading.Barrier(2)

    def events() -> None:
        start.wait()
        for n in range(count):
            entry = make_entry("update", "CREATED", utc_now(), f"event-{n}")
            store.apply_event(job["uuid"], f"event-{n}", deciding("CREATED", entry))

    def links() -> None:
        start.wait()
        for n in range(count):
            store.add_links(job["uuid"], "acted_on", [ref(f"input-{n}")])

    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(events), pool.submit(links)]:
            done.result()

    stored = store.get_job(job["uuid"])
    assert stored is not None
    assert stored["version"] == 1 + count
    assert [e["event_id"] for e in stored["history"][1:]] == [f"event-{n}" for n in range(count)]
    assert stored["acted_on"] == [ref(f"input-{n}") for n in range(count)]


@pytest.mark.parametrize("targets", [[REFERENCE], []], ids=["some", "none"])
def test_add_links_from_an_unknown_source_raises_not_found(
    store: Store, targets: list[str]
) -> None:
    store.insert_job(make_job("one"))
    store.upsert_entities([make_entity("s3://bucket/cube.fits")])
    with pytest.raises(JobNotFound) as job_missing:
        store.add_links(UNKNOWN_JOB, "acted_on", targets)
    assert job_missing.value.details == {"uuid": UNKNOWN_JOB}
    with pytest.raises(EntityNotFound) as entity_missing:
        store.add_links(UNKNOWN_PRODUCT, "generated_by", targets)
    assert entity_missing.value.details == {"uuid": UNKNOWN_PRODUCT}
    assert store.get_entity(UNKNOWN_PRODUCT) is None
    assert store.get_job(UNKNOWN_JOB) is None


@pytest.mark.parametrize(
    ("source", "relation"),
    [("job", "derived_from"), ("job", "history"), ("job", "state"), ("entity", "acted_on"),
     ("entity", "name"), ("entity", "uuid")],
)
def test_add_links_refuses_a_relation_the_source_cannot_have(
    store: Store, source: str, relation: str
) -> None:
    job = make_job("one")
    product = make_entity("s3://bucket/cube.fits")
    store.insert_job(job)
    store.upsert_entities([product])
    src = job["uuid"] if source == "job" else PRODUCT
    with pytest.raises(InvalidInput):
        store.add_links(src, relation, [REFERENCE])
    assert store.get_job(job["uuid"]) == job
    assert store.get_entity(PRODUCT) == product


def test_sqlite_migrates_a_version_1_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from catalog.store import sqlite

    path = database_at_version(tmp_path / "old.db", 1, monkeypatch)
    job = make_job("one")
    write_v1_job(path, job)
    store = sqlite.SQLiteStore(path)
    try:
        assert [version for version, _ in store.migrations()] == sorted(
            version for version, _, _ in sqlite.MIGRATIONS)
        assert store.get_job(job["uuid"]) == job
        store.upsert_entities([make_entity("s3://bucket/cube.fits")])
        store.add_links(PRODUCT, "generated_by", [job["uuid"]])
        assert store.get_entity(PRODUCT) == make_entity("s3://bucket/cube.fits",
                                                        generated_by=[job["uuid"]])
    finally:
        store.close()


def test_sqlite_migrates_a_version_2_database_with_entities(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from catalog.store import sqlite

    path = database_at_version(tmp_path / "old.db", 2, monkeypatch)
    product = make_entity("s3://bucket/cube.fits")
    with closing(sqlite3.connect(path)) as conn, conn:  # as the code of version 2 wrote it
        conn.execute("INSERT INTO entities (uuid, kind, created, doc) VALUES (?, ?, ?, ?)",
                     (product["uuid"], product["kind"], product["created"], json.dumps(product)))
    store = sqlite.SQLiteStore(path)
    try:
        assert [version for version, _ in store.migrations()] == sorted(
            version for version, _, _ in sqlite.MIGRATIONS)
        assert store.get_entity(PRODUCT) == product
        record = make_file("/products/v2/a.csv")
        store.upsert_files([record])
        assert store.get_file(record["uuid"]) == record
    finally:
        store.close()


def test_sqlite_migrates_a_version_5_database_with_file_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from catalog.store import sqlite

    path = database_at_version(tmp_path / "old.db", 5, monkeypatch)
    docs = [make_file(f"/products/v2/{name}.csv") for name in "dbca"]
    product = make_entity("s3://bucket/cube.fits", generated_by=[FILE_JOB])
    children = [make_job(key, seconds, child_of=(EXPERIMENT,))
                for key, seconds in (("c1", 30), ("c2", 10), ("c3", 20))]
    for child in children:
        write_v1_job(path, child)
    with closing(sqlite3.connect(path)) as conn, conn:  # as the code of version 5 wrote them
        conn.executemany("INSERT INTO links (src, relation, dst) VALUES (?, 'child_of', ?)",
                         [(child["uuid"], EXPERIMENT) for child in children])
        conn.executemany(
            "INSERT INTO files (uuid, path, storage_system, status, kind, level, media_type, "
            "created, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(d["uuid"], d["path"], d["storage_system"], d["status"], d["kind"], d["level"],
              d["media_type"], d["created"], json.dumps(d)) for d in docs])
        conn.executemany("INSERT INTO links (src, relation, dst) VALUES (?, ?, ?)",
                         [(d["uuid"], relation, FILE_JOB) for d in docs
                          for relation in ("child_of", "generated_by")])
    store = sqlite.SQLiteStore(path)
    try:
        assert [version for version, _ in store.migrations()] == sorted(
            version for version, _, _ in sqlite.MIGRATIONS)
        pages = all_pages(lambda cursor: store.find_files(child_of=FILE_JOB, limit=3,
                                                          cursor=cursor), 3)
        assert [d for page in pages for d in page] == by_path(docs)
        pages = all_pages(lambda cursor: store.find_jobs(JobQuery(
            child_of=EXPERIMENT, limit=2, cursor=cursor)), 2)
        assert [j["uuid"] for page in pages for j in page] == [
            children[i]["uuid"] for i in (1, 2, 0)]  # by created
        store.upsert_entities([product])
        with closing(sqlite3.connect(path)) as conn:
            assert conn.execute("SELECT src FROM links WHERE src_key IS NULL").fetchall() == [
                (PRODUCT,)]  # only the entity's link has no key
        assert sources_of(store, "generated_by", FILE_JOB) == {
            *(d["uuid"] for d in docs), PRODUCT}
    finally:
        store.close()


def plan_of_last_query(store: Any, call: Callable[[], object]) -> str:
    """SQLite's query plan of the last statement ``call`` runs on this thread's connection,
    but for the one that reads the page's link lists (sqlite_links.attach)."""
    statements: list[str] = []
    connection = store._connection()
    connection.set_trace_callback(statements.append)
    try:
        call()
    finally:
        connection.set_trace_callback(None)
    listed = [sql for sql in statements if not sql.startswith("SELECT src, relation, dst")]
    return " ".join(str(row) for row in connection.execute(
        f"EXPLAIN QUERY PLAN {listed[-1]}"))


def test_sqlite_pages_a_jobs_files_without_sorting_them_all(tmp_path: Path) -> None:
    from catalog.store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "plan.db")
    try:
        docs = [make_file(f"/products/v2/{n:03d}.csv") for n in range(30)]
        store.upsert_files(docs)
        other = make_file("/products/v1/linked.csv", child_of=(OTHER_JOB,))
        store.upsert_files([other])
        store.add_links(other["uuid"], "child_of", [FILE_JOB])  # a link added later
        expected = by_path([*docs, {**other, "child_of": [OTHER_JOB, FILE_JOB]}])
        for sort, order in (("path", expected), ("-path", expected[::-1])):
            pages = all_pages(lambda cursor, s=sort: store.find_files(
                child_of=FILE_JOB, limit=7, cursor=cursor, sort=s), 7)
            assert [d for page in pages for d in page] == order, sort
        plan = plan_of_last_query(store, lambda: store.find_files(
            child_of=FILE_JOB, limit=7, cursor=cursor_after(docs[9], "path")))
        assert "links_reverse" in plan and "TEMP B-TREE" not in plan, plan
    finally:
        store.close()


def test_sqlite_pages_a_jobs_children_without_sorting_them_all(tmp_path: Path) -> None:
    from catalog.store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "plan.db")
    try:
        children = [make_job(f"child-{n}", seconds=(n * 7) % 20, child_of=(EXPERIMENT,))
                    for n in range(20)]
        for child in children:
            store.insert_job(child)
        adopted = make_job("adopted", seconds=5)
        store.insert_job(adopted)
        store.add_links(adopted["uuid"], "child_of", [EXPERIMENT])  # a link added later
        everyone = [*children, {**adopted, "child_of": [EXPERIMENT]}]
        by_created = sorted(everyone, key=lambda job: (job["created"], job["uuid"]))
        for sort, order in (("created", by_created), ("-created", by_created[::-1])):
            pages = all_pages(lambda cursor, s=sort: store.find_jobs(JobQuery(
                child_of=EXPERIMENT, limit=6, cursor=cursor, sort=s)), 6)
            assert [j["uuid"] for page in pages for j in page] == [
                j["uuid"] for j in order], sort
        plan = plan_of_last_query(store, lambda: store.find_jobs(JobQuery(
            child_of=EXPERIMENT, limit=6, cursor=cursor_after(by_created[3], "created"))))
        assert "links_reverse" in plan and "TEMP B-TREE" not in plan, plan
    finally:
        store.close()


def database_at_version(path: Path, version: int, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty SQLite catalog at ``path`` made by the first ``version`` migrations only."""
    from catalog.store import sqlite

    with monkeypatch.context() as patched:
        patched.setattr(sqlite, "MIGRATIONS", sqlite.MIGRATIONS[:version])
        old = sqlite.SQLiteStore(path)
        assert [number for number, _ in old.migrations()] == list(range(1, version + 1))
        old.close()
    return path


def write_v1_job(path: Path, job: Doc) -> None:
    """Insert a job as the code of schema versions 1 to 3 did (no agent column)."""
    head = ("uuid", "pipeline_uuid", "state", "version", "last_event", "created", "updated")
    body = {k: v for k, v in job.items() if k not in head and k != "history"}
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(f"INSERT INTO jobs ({', '.join(head)}, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (*(job[k] for k in head), json.dumps(body)))
        conn.executemany("INSERT INTO history (job_uuid, seq, uuid, event_id, doc) "
                         "VALUES (?, ?, ?, ?, ?)",
                         [(job["uuid"], seq, e["uuid"], e["event_id"], json.dumps(e))
                          for seq, e in enumerate(job["history"], start=1)])


def test_sqlite_migration_4_fills_the_new_columns_from_existing_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from catalog.store import sqlite

    path = tmp_path / "old.db"
    job = {**make_job("agent"), "agent": "actor-7"}
    record = {**make_file("/products/v2/p.png"), "kind": "plot", "media_type": "image/png",
              "level": "2"}
    database_at_version(path, 3, monkeypatch)
    write_v1_job(path, job)
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("INSERT INTO files (uuid, path, storage_system, status, doc) "
                     "VALUES (?, ?, ?, ?, ?)", (record["uuid"], record["path"], "local", "ok",
                                                json.dumps(record)))
    store = sqlite.SQLiteStore(path)
    try:
        assert [version for version, _ in store.migrations()] == sorted(
            version for version, _, _ in sqlite.MIGRATIONS)
        assert store.find_jobs(JobQuery(agent="actor-7")).items == [listed(job)]
        for filters in ({"kind": "plot"}, {"media_type": "image/png"}, {"level": "2"},
                        {"sort": "-created"}):
            assert store.find_files(**filters).items == [record]
        assert store.find_files(kind="product").items == []
    finally:
        store.close()


def test_sqlite_migration_5_keeps_every_history_entry_and_still_refuses_a_duplicate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from catalog.store import sqlite

    path = tmp_path / "old.db"
    job = make_job("history")
    job["history"] += [make_entry("update", "CREATED", at(i), event_id=f"e{i}")
                       for i in range(1, 6)]
    job["version"] = len(job["history"])
    database_at_version(path, 4, monkeypatch)
    write_v1_job(path, job)
    store = sqlite.SQLiteStore(path)
    try:
        assert [version for version, _ in store.migrations()] == sorted(
            version for version, _, _ in sqlite.MIGRATIONS)
        assert store.get_job(job["uuid"]) == job  # every entry, in order
        again = make_entry("update", "CREATED", at(9), event_id="e3")
        assert store.apply_event(job["uuid"], "e3", deciding("CREATED", again)).duplicate
        with closing(sqlite3.connect(path)) as conn:
            indexed = {row[1] for row in conn.execute("PRAGMA index_list(history)")}
            columns = [[row[2] for row in conn.execute(f"PRAGMA index_info('{name}')")]
                       for name in indexed]
        assert sorted(columns) == [["job_uuid", "event_id"], ["job_uuid", "seq"]]
    finally:
        store.close()


# files ---------------------------------------------------------------------------------------

FILE_JOB = typed_uuid(UUIDType.pipelinejob, "writes files")
OTHER_JOB = typed_uuid(UUIDType.pipelinejob, "writes other files")
UNKNOWN_FILE = typed_uuid(UUIDType.file, "local:/never/indexed")
DEFAULT_ALGORITHMS = ("xxh3_128", "sha256")


def file_uuid(path: str, storage_system: str = "local") -> str:
    return typed_uuid(UUIDType.file, f"{storage_system}:{path}")


def digests(content: str, algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS) -> dict[str, str]:
    data = content.encode()
    computed = {"xxh3_128": xxhash.xxh3_128_hexdigest(data),
                "sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest(),
                "blake2b": hashlib.blake2b(data).hexdigest()}
    return {algorithm: computed[algorithm] for algorithm in algorithms}


def make_file(path: str, content: str | None = None, storage_system: str = "local",
              seconds: float = 0, algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS,
              child_of: tuple[str, ...] = (FILE_JOB,),
              generated_by: tuple[str, ...] | None = None, derived_from: tuple[str, ...] = (),
              derived_using: tuple[str, ...] = (), fixity: tuple[Doc, ...] = ()) -> Doc:
    content = path if content is None else content
    return FileRecord(
        uuid=file_uuid(path, storage_system), storage_system=storage_system, path=path,
        name=path.rpartition("/")[2], size=len(content.encode()), mtime=at(seconds),
        media_type="text/csv", kind="product", checksums=digests(content, algorithms),
        fixity=list(fixity), child_of=list(child_of),
        generated_by=list(child_of if generated_by is None else generated_by),
        derived_from=list(derived_from), derived_using=list(derived_using),
        created=at(seconds), updated=at(seconds),
    ).model_dump(mode="json")


def make_check(seconds: float, outcome: str = "ok", content: str = "x",
               changed: tuple[str, ...] = ()) -> Doc:
    return FixityCheck(
        date=at(seconds), outcome=outcome, size=len(content), checksums=digests(content),
        changed=list(changed),
    ).model_dump(mode="json")


def by_path(docs: list[Doc]) -> list[Doc]:
    return sorted(docs, key=lambda d: (d["path"], d["uuid"]))


def with_checksum(store: Store, algorithm: str, digest: str) -> list[Doc]:
    """Every file with that digest (one page of at most 1000 here)."""
    page = store.find_files(checksum=(algorithm, digest), limit=1000)
    assert page.next is None
    return page.items


def backend_of(request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.params["store_url"])


def edges_from(store: Store, src: str) -> set[tuple[str, str]]:
    """(relation, target) of every edge out of a file: the links table, or the doc's lists
    and the links added to it since (Mongo's ``links``)."""
    if store.kind == "sqlite":
        with sqlite3.connect(store.path) as conn:  # type: ignore[attr-defined]
            rows = conn.execute("SELECT relation, dst FROM links WHERE src = ?", (src,))
            return {(relation, dst) for relation, dst in rows}
    doc = store.database["files"].find_one({"uuid": src})  # type: ignore[attr-defined]
    assert doc is not None
    added = store.database["links"].find({"src": src})  # type: ignore[attr-defined]
    return {(relation, dst) for relation in ("child_of", "generated_by", "derived_from",
                                             "derived_using") for dst in doc[relation]} | {
        (link["rel"], link["dst"]) for link in added}


def sources_of(store: Store, relation: str, dst: str) -> set[str]:
    """Every file with an edge ``relation`` to ``dst``: reverse index, or a multikey query and
    the links added since (Mongo's ``links``)."""
    if store.kind == "sqlite":
        with sqlite3.connect(store.path) as conn:  # type: ignore[attr-defined]
            rows = conn.execute(
                "SELECT src FROM links WHERE dst = ? AND relation = ?", (dst, relation)
            )
            return {src for (src,) in rows}
    files = store.database["files"]  # type: ignore[attr-defined]
    added = store.database["links"].find(  # type: ignore[attr-defined]
        {"dst": dst, "rel": relation, "kind": "file"})
    return {doc["uuid"] for doc in files.find({relation: dst})} | {
        link["src"] for link in added}


def thousand_files() -> list[Doc]:
    """1,000 records: paths shared by two storage systems, shuffled, of two jobs."""
    docs = []
    for n in range(500):
        path = f"/products/v2/run/{n % 97:03d}/part-{n:04d}.csv"
        job = FILE_JOB if n % 3 else OTHER_JOB
        docs += [make_file(path, f"content {n}", "local", child_of=(job,)),
                 make_file(path, f"content {n}", "s3", child_of=(job,))]
    random.Random(4).shuffle(docs)
    return docs


def test_bulk_upsert_of_1000_files_then_get_and_page_through_each_once(store: Store) -> None:
    docs = thousand_files()
    store.upsert_files(docs)
    expected = by_path(docs)
    assert len({d["uuid"] for d in docs}) == 1000
    assert len({d["path"] for d in docs}) == 500  # ties on path are broken by uuid

    for doc in docs[:50]:
        assert store.get_file(doc["uuid"]) == doc
    assert store.get_file(UNKNOWN_FILE) is None
    uuids = [d["uuid"] for d in docs]
    assert store.get_files(uuids) == {d["uuid"]: d for d in docs}
    assert list(store.get_files(uuids)) == uuids  # more than one IN chunk, in the order asked
    asked = [docs[7]["uuid"], UNKNOWN_FILE, docs[3]["uuid"], docs[7]["uuid"]]
    assert store.get_files(asked) == {docs[7]["uuid"]: docs[7], docs[3]["uuid"]: docs[3]}
    assert store.get_files([]) == {}
    assert store.get_files([UNKNOWN_FILE]) == {}

    for limit in (150, 1000):
        pages = all_pages(
            lambda cursor, size=limit: store.find_files(limit=size, cursor=cursor), limit
        )
        assert [d for page in pages for d in page] == expected
        assert len(pages) == math.ceil(1000 / limit)
    assert store.find_files() == Page(expected[:100], encode_cursor(
        "path", expected[99]["path"], expected[99]["uuid"]))

    mine = [d for d in expected if d["child_of"] == [FILE_JOB]]
    pages = all_pages(lambda cursor: store.find_files(child_of=FILE_JOB, limit=50,
                                                      cursor=cursor), 50)
    assert [d for page in pages for d in page] == mine
    assert len(mine) == 666


def test_find_files_by_kind_level_and_media_type_in_every_sort_order(store: Store) -> None:
    records = []
    for n in range(12):
        kind = ("archive", "product", "plot")[n % 3]
        media = "image/png" if kind == "plot" else "text/csv"
        records.append({
            **make_file(f"/products/v2/{n % 5}/{n:02d}.{'png' if kind == 'plot' else 'csv'}",
                        seconds=(n * 7) % 12),
            "kind": kind, "media_type": media, "level": "1" if kind == "archive" else None,
        })
    store.upsert_files(records)

    def ordered(docs: list[Doc], sort: str) -> list[Doc]:
        field = sort.lstrip("-")
        return sorted(docs, key=lambda d: (d[field], d["uuid"]), reverse=sort.startswith("-"))

    for sort in ("path", "-path", "created", "-created"):
        for filters, keep in (
            ({}, lambda d: True),
            ({"kind": "plot"}, lambda d: d["kind"] == "plot"),
            ({"level": "1"}, lambda d: d["level"] == "1"),
            ({"media_type": "text/csv"}, lambda d: d["media_type"] == "text/csv"),
            ({"kind": "product", "path_prefix": "/products/v2/1/"},
             lambda d: d["kind"] == "product" and d["path"].startswith("/products/v2/1/")),
        ):
            expected = ordered([d for d in records if keep(d)], sort)
            pages = all_pages(lambda cursor, f=filters, s=sort: store.find_files(
                limit=2, cursor=cursor, sort=s, **f), 2)
            assert [d for page in pages for d in page] == expected, (sort, filters)
    with pytest.raises(InvalidInput, match="sort must be one of"):
        store.find_files(sort="size")


def test_find_files_refuses_bad_limits_and_cursors(store: Store) -> None:
    store.upsert_files([make_file("/products/v2/a.csv")])
    for limit in (0, -1, 1001):
        with pytest.raises(InvalidInput):
            store.find_files(limit=limit)
    for cursor in ("not a cursor!", encode_cursor("only one"), encode_cursor("/zzz", ""),
                   encode_cursor("created", "2026", ""), encode_cursor("size", "1", "")):
        with pytest.raises(InvalidInput):
            store.find_files(cursor=cursor)
    assert store.find_files(cursor=encode_cursor("path", "/zzz", "")) == Page([], None)


def test_upsert_files_replaces_a_record_and_its_checksum_lookups(store: Store) -> None:
    path = "/products/v2/out.csv"
    source, reference = file_uuid("/products/v2/in.csv"), ref("calibration")
    first = make_file(path, "first", algorithms=("xxh3_128", "sha256", "md5"),
                      derived_from=(source,), fixity=(make_check(0, "indexed", "first"),))
    other = make_file("/products/v2/other.csv", "first")  # same content, another file
    store.upsert_files([first, other])
    second = make_file(path, "second", seconds=60, child_of=(OTHER_JOB,),
                       derived_using=(reference,))
    store.upsert_files([second])
    # Replaced whole, but for the fixity log, which only grows.
    second_stored = {**second, "fixity": first["fixity"]}

    assert store.get_file(second["uuid"]) == second_stored
    assert store.find_files() == Page([other, second_stored], None)  # by path: other < out
    old, new = digests("first", ("xxh3_128", "sha256", "md5")), digests("second")
    for algorithm in ("xxh3_128", "sha256"):
        assert with_checksum(store, algorithm, old[algorithm]) == [other]
        assert with_checksum(store, algorithm, new[algorithm]) == [second_stored]
    assert with_checksum(store, "md5", old["md5"]) == []  # the new doc has no md5
    assert store.find_files(child_of=FILE_JOB).items == [other]
    assert store.find_files(child_of=OTHER_JOB).items == [second_stored]
    assert edges_from(store, second["uuid"]) == {
        ("child_of", OTHER_JOB), ("generated_by", OTHER_JOB), ("derived_using", reference),
    }
    assert sources_of(store, "derived_from", source) == set()
    assert sources_of(store, "child_of", FILE_JOB) == {other["uuid"]}

    store.upsert_files([second])  # the same doc again changes nothing
    assert store.find_files() == Page([other, second_stored], None)
    assert with_checksum(store, "sha256", new["sha256"]) == [second_stored]


def history(store: Store, uuid: str, limit: int = 100) -> list[Doc]:
    """A record's whole fixity history, read a page of ``limit`` at a time."""
    checks: list[Doc] = []
    cursor = None
    while True:
        page = store.fixity_checks(uuid, limit, cursor)
        checks += page.items
        if page.next is None:
            return checks
        cursor = page.next


def test_upsert_files_never_loses_a_fixity_check(store: Store) -> None:
    indexed, verified, reindexed = (make_check(0, "indexed"), make_check(30, "ok"),
                                    make_check(60, "indexed"))
    record = make_file("/products/v2/out.csv", fixity=(indexed,))
    store.upsert_files([record])
    # A verify records its check while an indexer works from the record as it read it before.
    store.record_fixity([(record["uuid"], verified, "ok")])
    store.upsert_files([{**record, "fixity": [indexed, reindexed]}])
    assert history(store, record["uuid"]) == [indexed, verified, reindexed]
    assert store.get_file(record["uuid"])["fixity"] == [reindexed]  # the last check only
    # Sending the log again (whole, a part of it, or none of it) adds nothing and loses nothing.
    for fixity in ([indexed, verified, reindexed], [indexed], [], [reindexed, indexed]):
        store.upsert_files([{**record, "fixity": fixity}])
        assert history(store, record["uuid"]) == [indexed, verified, reindexed]
        assert store.get_file(record["uuid"])["fixity"] == [reindexed]
    # A check with a "$" in a value is data, not an expression (MongoDB update pipelines).
    odd = {**make_check(90, "changed", changed=("sha256",)), "note": "$fixity"}
    store.upsert_files([{**record, "note": "$path", "fixity": [odd]}])
    stored = store.get_file(record["uuid"])
    assert stored["fixity"] == [odd]
    assert history(store, record["uuid"], 1) == [indexed, verified, reindexed, odd]
    assert stored["note"] == "$path"


def test_within_one_upsert_the_last_doc_of_a_uuid_wins(store: Store) -> None:
    path = "/products/v2/out.csv"
    first = make_file(path, "first")
    last = make_file(path, "last", derived_from=(UNKNOWN_FILE, UNKNOWN_FILE, PRODUCT),
                     child_of=(FILE_JOB, OTHER_JOB, FILE_JOB))
    store.upsert_files([first, last])
    expected = {**last, "derived_from": [UNKNOWN_FILE, PRODUCT],
                "child_of": [FILE_JOB, OTHER_JOB], "generated_by": [FILE_JOB, OTHER_JOB]}
    assert store.get_file(last["uuid"]) == expected
    assert store.find_files().items == [expected]
    assert with_checksum(store, "sha256", digests("first")["sha256"]) == []
    assert with_checksum(store, "sha256", digests("last")["sha256"]) == [expected]
    store.upsert_files([])
    assert store.find_files().items == [expected]


@pytest.mark.parametrize("algorithm", ["xxh3_128", "sha256", "md5", "blake2b"])
def test_find_files_by_checksum_per_algorithm(store: Store, algorithm: str) -> None:
    every = ("xxh3_128", "sha256", "md5", "blake2b")
    twins = [make_file("/products/v2/b/copy.csv", "same", algorithms=every),
             make_file("/products/v2/a/copy.csv", "same", "s3", algorithms=every),
             make_file("/products/v2/a/copy.csv", "same", "local", algorithms=every)]
    single = make_file("/products/v2/single.csv", "single", algorithms=every)
    store.upsert_files([*twins, single])

    assert with_checksum(store, algorithm, digests("same", every)[algorithm]) == by_path(
        twins)
    assert with_checksum(store, algorithm, digests("single", every)[algorithm]) == [
        single]
    assert with_checksum(store, algorithm, digests("absent", every)[algorithm]) == []
    # A digest is found only under its own algorithm.
    for other in every:
        if other != algorithm:
            assert with_checksum(store, other, digests("same", every)[algorithm]) == []


@pytest.mark.parametrize("sort", ["path", "-path", "created", "-created"])
@pytest.mark.parametrize("limit", [1, 2, 3, 7])
def test_files_sharing_a_digest_are_paged_like_any_others(store: Store, sort: str,
                                                          limit: int) -> None:
    """Every empty file has the same digests: a lookup by one must page, not answer them all."""
    other_job = typed_uuid(UUIDType.pipelinejob, "other files")
    empty = [make_file(f"/products/v2/{name}/empty.txt", "", seconds=seconds,
                       child_of=(FILE_JOB if seconds % 2 else other_job,))
             for seconds, name in enumerate("gcafedb")]
    store.upsert_files([*empty, make_file("/products/v2/a/full.txt", "full")])
    descending, field = sort.startswith("-"), sort.lstrip("-")
    expected = sorted(empty, key=lambda d: (d[field], d["uuid"]), reverse=descending)
    sha256 = digests("")["sha256"]

    pages = all_pages(lambda cursor: store.find_files(checksum=("sha256", sha256), limit=limit,
                                                      cursor=cursor, sort=sort), limit)
    assert [doc for page in pages for doc in page] == expected
    assert all(len(page) <= limit for page in pages)
    # with the other filters, in the same order
    mine = all_pages(lambda cursor: store.find_files(FILE_JOB, checksum=("sha256", sha256),
                                                     limit=limit, cursor=cursor, sort=sort),
                     limit)
    assert [doc for page in mine for doc in page] == [
        doc for doc in expected if FILE_JOB in doc["child_of"]]
    prefixed = store.find_files(path_prefix="/products/v2/a/", checksum=("sha256", sha256))
    assert [doc["path"] for doc in prefixed.items] == ["/products/v2/a/empty.txt"]


@pytest.mark.parametrize(
    "algorithm", ["", "SHA256", "sha-256", "sha256 ", "checksums.sha256", "$where", "a.b",
                  "x" * 33, "ш"],
)
def test_checksum_algorithm_names_are_checked(store: Store, algorithm: str) -> None:
    valid = make_file("/products/v2/valid.csv")
    with pytest.raises(InvalidInput):
        with_checksum(store, algorithm, "00")
    bad = {**make_file("/products/v2/bad.csv"), "checksums": {algorithm: "00"}}
    with pytest.raises(InvalidInput):
        store.upsert_files([valid, bad])
    assert store.get_files([valid["uuid"], bad["uuid"]]) == {}  # nothing of the batch written
    assert with_checksum(store, "x" * 32, "00") == []


PREFIX_PATHS = {
    "a": "/products/v2/run_1/a.csv",
    "b": "/products/v2/runX1/b.csv",  # would match run_1 if _ were a wildcard
    "c": "/products/v2/100%/c.csv",
    "d": "/products/v2/100abc/d.csv",  # would match 100% if % were a wildcard
    "e": "/Products/v2/run_1/e.csv",  # differs only in case
    "f": "/products/v2/run_10/f.csv",
    "g": "/products/v2/run_1\U0001f600/g.csv",  # above U+FFFF
    "h": "/max\U0010ffff/h.csv",
    "i": "/may/i.csv",
    "j": "/products/v2/run\\_1/j.csv",  # a backslash, LIKE's usual escape character
}


@pytest.mark.parametrize(
    ("prefix", "keys"),
    [
        ("/products/v2/run_1", "afg"),
        ("/products/v2/run_1/", "a"),
        ("/products/v2/100%", "c"),
        ("/products/v2/100%/c.csv", "c"),
        ("/products/v2/run\\", "j"),
        ("/Products", "e"),
        ("/products/v2/", "abcdfgj"),
        ("/products/v2/run_1\U0001f600", "g"),
        ("/max\U0010ffff", "h"),
        ("/", "abcdefghij"),
        ("", "abcdefghij"),
        (None, "abcdefghij"),
        ("/nothing", ""),
        ("/products/v2/run_1/a.csv/", ""),
    ],
)
def test_find_files_by_path_prefix_takes_the_prefix_literally(
    store: Store, prefix: str | None, keys: str
) -> None:
    docs = {key: make_file(path) for key, path in PREFIX_PATHS.items()}
    store.upsert_files(list(docs.values()))
    expected = by_path([docs[k] for k in keys])
    assert store.find_files(path_prefix=prefix) == Page(expected, None)
    pages = all_pages(lambda cursor: store.find_files(path_prefix=prefix, limit=2,
                                                      cursor=cursor), 2)
    assert [d for page in pages for d in page] == expected


@pytest.mark.parametrize(
    ("prefix", "bound"),
    [("", None), ("/a", "/b"), ("/a\U0010ffff", "/b"), ("\U0010ffff\U0010ffff", None),
     ("/\ud7ff", "/\ue000"), ("/\uffff", "/\U00010000")],
)
def test_prefix_upper_bound(prefix: str, bound: str | None) -> None:
    assert prefix_upper_bound(prefix) == bound


def test_find_files_filters_combine(store: Store) -> None:
    docs = [
        make_file("/products/v2/j1/a.csv", child_of=(FILE_JOB,)),
        make_file("/products/v2/j1/b.csv", child_of=(FILE_JOB, OTHER_JOB)),
        make_file("/products/v2/j2/c.csv", child_of=(OTHER_JOB,)),
        make_file("/products/v2/j1/d.csv", child_of=(FILE_JOB,), generated_by=(OTHER_JOB,)),
        make_file("/elsewhere/e.csv", child_of=(FILE_JOB,)),
    ]
    a, b, c, d, e = docs
    store.upsert_files(docs)
    store.record_fixity([(b["uuid"], make_check(10, "missing"), "missing"),
                         (c["uuid"], make_check(10, "missing"), "missing")])
    b_now, c_now = store.get_file(b["uuid"]), store.get_file(c["uuid"])
    assert b_now is not None and c_now is not None

    assert store.find_files(child_of=FILE_JOB).items == [e, a, b_now, d]
    assert store.find_files(child_of=OTHER_JOB).items == [b_now, c_now]  # not d: generated_by
    assert store.find_files(child_of=UNKNOWN_JOB).items == []
    assert store.find_files(child_of=FILE_JOB, path_prefix="/products/").items == [a, b_now, d]
    assert store.find_files(status="missing").items == [b_now, c_now]
    assert store.find_files(status="unchecked").items == [e, a, d]
    assert store.find_files(child_of=FILE_JOB, status="missing").items == [b_now]
    assert store.find_files(child_of=OTHER_JOB, status="missing",
                            path_prefix="/products/v2/j2").items == [c_now]
    pages = all_pages(lambda cursor: store.find_files(child_of=FILE_JOB, limit=1,
                                                      cursor=cursor), 1)
    assert pages == [[e], [a], [b_now], [d]]


def test_record_fixity_adds_checks_in_order(store: Store) -> None:
    indexed = make_check(0, "indexed")
    record = make_file("/products/v2/out.csv", fixity=(indexed,))
    neighbour = make_file("/products/v2/neighbour.csv")
    store.upsert_files([record, neighbour])
    checks = [(make_check(10, "ok"), "ok"),
              (make_check(20, "changed", "y", changed=("xxh3_128", "sha256")), "changed"),
              (make_check(30, "missing"), "missing")]
    store.record_fixity([(record["uuid"], *checks[0])])
    store.record_fixity([(record["uuid"], check, status) for check, status in checks[1:]])
    store.record_fixity([])

    last = at(30).strftime("%Y-%m-%dT%H:%M:%S.123Z")
    expected = {**record, "fixity": [checks[-1][0]], "status": "missing",
                "updated": last, "checked": last}
    assert store.get_file(record["uuid"]) == expected
    assert history(store, record["uuid"], 2) == [indexed, *(c for c, _ in checks)]
    assert history(store, neighbour["uuid"]) == []
    assert store.get_file(neighbour["uuid"]) == neighbour
    assert store.find_files(status="missing").items == [expected]
    assert store.find_files(status="unchecked").items == [neighbour]
    # The record's checksums stay the reference a check is compared with.
    assert with_checksum(store, "sha256", record["checksums"]["sha256"]) == [expected]
    assert with_checksum(store, "sha256", digests("y")["sha256"]) == []


def test_record_fixity_on_an_unknown_file_raises_file_not_found(store: Store) -> None:
    known = make_file("/products/v2/out.csv")
    store.upsert_files([known])
    with pytest.raises(FileNotFound) as raised:
        store.record_fixity([(known["uuid"], make_check(10), "ok"),
                             (UNKNOWN_FILE, make_check(10), "ok")])
    assert isinstance(raised.value, NotFound)
    assert raised.value.details == {"uuid": UNKNOWN_FILE}
    assert (raised.value.code, raised.value.status) == ("file_not_found", 404)
    assert store.get_file(UNKNOWN_FILE) is None
    assert store.get_file(known["uuid"]) == known  # nothing of the call was written
    assert history(store, known["uuid"]) == []


def test_unlink_job_files_keeps_the_records_and_their_fixity(store: Store) -> None:
    only_ours = make_file("/products/v2/ours.csv", derived_from=(UNKNOWN_FILE,))
    shared = make_file("/products/v2/shared.csv", child_of=(FILE_JOB, OTHER_JOB),
                       generated_by=(FILE_JOB,))
    theirs = make_file("/products/v2/theirs.csv", child_of=(OTHER_JOB,))
    generated = make_file("/products/v2/generated.csv", child_of=(), generated_by=(FILE_JOB,))
    product = make_entity("s3://bucket/cube.fits", generated_by=[FILE_JOB])
    store.upsert_files([only_ours, shared, theirs, generated])
    store.upsert_entities([product])
    check = make_check(10)
    store.record_fixity([(only_ours["uuid"], check, "ok")])

    assert store.unlink_job_files(FILE_JOB) == 3

    unlinked = {
        "ours": {**only_ours, "child_of": [], "generated_by": [], "fixity": [check],
                 "status": "ok", "updated": check["date"], "checked": check["date"]},
        "shared": {**shared, "child_of": [OTHER_JOB], "generated_by": []},
        "generated": {**generated, "generated_by": []},
    }
    assert store.get_files([d["uuid"] for d in (only_ours, shared, theirs, generated)]) == {
        only_ours["uuid"]: unlinked["ours"], shared["uuid"]: unlinked["shared"],
        theirs["uuid"]: theirs, generated["uuid"]: unlinked["generated"],
    }
    assert store.get_entity(PRODUCT) == product  # entities are not file records
    assert store.find_files(child_of=FILE_JOB).items == []
    assert store.find_files(child_of=OTHER_JOB).items == [unlinked["shared"], theirs]
    assert sources_of(store, "child_of", FILE_JOB) == set()
    assert sources_of(store, "generated_by", FILE_JOB) == (
        {PRODUCT} if store.kind == "sqlite" else set()  # Mongo's are not the files' here
    )
    assert edges_from(store, only_ours["uuid"]) == {("derived_from", UNKNOWN_FILE)}
    assert edges_from(store, shared["uuid"]) == {("child_of", OTHER_JOB)}

    assert store.unlink_job_files(FILE_JOB) == 0
    assert store.unlink_job_files(UNKNOWN_JOB) == 0
    assert store.get_file(only_ours["uuid"]) == unlinked["ours"]


def test_file_links_are_edges_in_both_directions(store: Store) -> None:
    source, reference = make_file("/products/v2/in.csv"), ref("calibration")
    product = make_file("/products/v2/out.csv", derived_from=(source["uuid"],),
                        derived_using=(reference,))
    store.upsert_files([source, product])

    assert edges_from(store, product["uuid"]) == {
        ("child_of", FILE_JOB), ("generated_by", FILE_JOB),
        ("derived_from", source["uuid"]), ("derived_using", reference),
    }
    assert sources_of(store, "child_of", FILE_JOB) == {source["uuid"], product["uuid"]}
    assert sources_of(store, "generated_by", FILE_JOB) == {source["uuid"], product["uuid"]}
    assert sources_of(store, "derived_from", source["uuid"]) == {product["uuid"]}
    assert sources_of(store, "derived_using", reference) == {product["uuid"]}

    store.add_links(product["uuid"], "derived_using", [ref("other"), reference])
    store.add_links(product["uuid"], "child_of", [OTHER_JOB])
    assert store.get_file(product["uuid"]) == {
        **product, "derived_using": [reference, ref("other")],
        "child_of": [FILE_JOB, OTHER_JOB],
    }  # updated as it was: links are not fixity
    assert sources_of(store, "derived_using", ref("other")) == {product["uuid"]}
    assert store.find_files(child_of=OTHER_JOB).items == [store.get_file(product["uuid"])]

    # A replacement's lists become the edges; add_links edges not in it are gone.
    store.upsert_files([product])
    assert store.get_file(product["uuid"]) == product
    assert sources_of(store, "derived_using", ref("other")) == set()
    assert sources_of(store, "child_of", OTHER_JOB) == set()
    assert edges_from(store, product["uuid"]) == {
        ("child_of", FILE_JOB), ("generated_by", FILE_JOB),
        ("derived_from", source["uuid"]), ("derived_using", reference),
    }


@pytest.mark.parametrize("targets", [[REFERENCE], []], ids=["some", "none"])
def test_add_links_from_an_unknown_file_raises_file_not_found(
    store: Store, targets: list[str]
) -> None:
    store.upsert_files([make_file("/products/v2/out.csv")])
    with pytest.raises(FileNotFound) as raised:
        store.add_links(UNKNOWN_FILE, "derived_using", targets)
    assert raised.value.details == {"uuid": UNKNOWN_FILE}
    assert store.get_file(UNKNOWN_FILE) is None


@pytest.mark.parametrize("relation", ["acted_on", "acted_using", "fixity", "status", "uuid"])
def test_add_links_refuses_a_relation_a_file_cannot_have(store: Store, relation: str) -> None:
    record = make_file("/products/v2/out.csv")
    store.upsert_files([record])
    with pytest.raises(InvalidInput):
        store.add_links(record["uuid"], relation, [REFERENCE])
    assert store.get_file(record["uuid"]) == record


def test_file_records_neither_carry_the_database_id_nor_share_the_callers_docs(
    store: Store,
) -> None:
    record = make_file("/products/v2/out.csv", derived_from=(UNKNOWN_FILE,),
                       fixity=(make_check(0, "indexed"),))
    check = make_check(10)
    originals = copy.deepcopy([record, check])
    store.upsert_files([record])
    store.record_fixity([(record["uuid"], check, "ok")])
    assert [record, check] == originals

    expected = {**originals[0], "fixity": [originals[1]], "status": "ok",
                "updated": originals[1]["date"], "checked": originals[1]["date"]}
    returned: list[Any] = [
        store.get_file(record["uuid"]), store.get_files([record["uuid"]]),
        store.find_files().items, store.find_files(child_of=FILE_JOB).items,
        store.find_files(path_prefix="/products").items, store.find_files(status="ok").items,
        with_checksum(store, "sha256", record["checksums"]["sha256"]),
    ]
    assert "_id" not in keys_anywhere(returned)
    assert returned[0] == expected

    # Changing the caller's documents, or what the store returned, changes nothing stored.
    record["checksums"]["sha256"] = "changed"
    record["derived_from"].append("changed")
    record["fixity"][0]["outcome"] = "changed"
    check["checksums"]["sha256"] = "changed"
    for doc in (returned[0], returned[1][record["uuid"]], returned[2][0]):
        doc["fixity"].append({"not": "stored"})
        doc["checksums"]["md5"] = "not stored"
    assert store.get_file(record["uuid"]) == expected
    assert history(store, record["uuid"]) == [originals[0]["fixity"][0], originals[1]]


def test_mongo_bulk_upsert_runs_one_unordered_bulk_write_and_retries_lost_races() -> None:
    """On a real server upserts go in one bulk_write; mongomock cannot run it, so emulate one."""
    import mongomock
    from pymongo import UpdateOne
    from pymongo.errors import BulkWriteError

    from catalog.store.mongo import MongoStore

    class OneRaceLost:
        """A collection whose bulk_write applies UpdateOne upserts, first losing one race."""

        def __init__(self, collection: Any) -> None:
            self.collection = collection
            self.calls: list[tuple[list[str], bool]] = []

        def __getattr__(self, name: str) -> Any:
            return getattr(self.collection, name)

        def bulk_write(self, requests: list[UpdateOne[Doc]], ordered: bool = True,
                       session: Any = None) -> None:
            assert session is None  # mongomock has no transactions
            self.calls.append(([op._filter["uuid"] for op in requests], ordered))
            errors = []
            for index, op in enumerate(requests):
                assert isinstance(op, UpdateOne) and op._upsert
                if len(self.calls) == 1 and index == 1:
                    errors.append({"index": index, "code": 11000, "errmsg": "E11000"})
                    continue
                self.collection.update_one(op._filter, op._doc, upsert=True)
            if errors:
                raise BulkWriteError({"writeErrors": errors, "writeConcernErrors": []})

    store = MongoStore(mongomock.MongoClient()["bulk"])
    try:
        fake = OneRaceLost(store._files)
        store._files = fake  # type: ignore[assignment]
        docs = [make_file(f"/products/v2/{n}.csv") for n in range(3)]
        store.upsert_files(docs)
        uuids = [d["uuid"] for d in docs]
        assert fake.calls == [(uuids, False), ([uuids[1]], False)]
        assert store.get_files(uuids) == {d["uuid"]: d for d in docs}
        assert "_id" not in keys_anywhere(docs)
    finally:
        store.close()


def test_changed_jobs_are_those_updated_since_oldest_change_first(store: Store) -> None:
    jobs = {key: make_job(key, seconds) for key, seconds in (("a", 1), ("b", 2), ("c", 3))}
    for job in jobs.values():
        store.insert_job(job)
    store.apply_event(jobs["a"]["uuid"], None,
                      deciding("RUNNING", make_entry("run", "RUNNING", at(4))))

    changed = store.changed_jobs(fmt(2))
    assert [(job["uuid"], job["state"], job["version"]) for job in changed] == [
        (jobs["b"]["uuid"], "CREATED", 1), (jobs["c"]["uuid"], "CREATED", 1),
        (jobs["a"]["uuid"], "RUNNING", 2)]
    assert changed[0] == listed(jobs["b"])
    assert [job["uuid"] for job in store.changed_jobs(fmt(0), limit=2)] == [
        jobs["b"]["uuid"], jobs["c"]["uuid"]]
    assert store.changed_jobs(fmt(5)) == []


def test_find_files_without_links_answers_the_same_files_and_pages_without_their_lists(
        store: Store) -> None:
    """``links=False`` (the bag export's read): every record and page as with the lists,
    each record without its link fields, the links added later included in the paging."""
    docs = [make_file(f"/products/v2/j1/{n:02d}.csv", child_of=(FILE_JOB,),
                      generated_by=(OTHER_JOB,)) for n in range(5)]
    store.upsert_files(docs)
    later = make_file("/products/v2/j1/later.csv", child_of=(OTHER_JOB,))
    store.upsert_files([later])
    store.add_links(later["uuid"], "child_of", [FILE_JOB])  # linked after it was written
    for limit in (2, 100):
        full, bare, cursor_full, cursor_bare = [], [], None, None
        while True:
            page = store.find_files(child_of=FILE_JOB, limit=limit, cursor=cursor_full)
            plain = store.find_files(child_of=FILE_JOB, limit=limit, cursor=cursor_bare,
                                     links=False)
            full += page.items
            bare += plain.items
            assert (page.next is None) == (plain.next is None)
            if page.next is None:
                break
            cursor_full, cursor_bare = page.next, plain.next
        assert [f["uuid"] for f in bare] == [f["uuid"] for f in full]
        assert len(full) == 6 and full[-1]["child_of"] == [OTHER_JOB, FILE_JOB]
        for with_lists, without in zip(full, bare, strict=True):
            assert without == {k: v for k, v in with_lists.items()
                               if k not in ("child_of", "generated_by", "derived_from",
                                            "derived_using")}
