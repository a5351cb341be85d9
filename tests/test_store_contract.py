"""One contract, every backend: SQLite, mongomock and (when configured) a real MongoDB."""

from __future__ import annotations

import base64
import copy
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from catalog.errors import EntityNotFound, EventNotAllowed, InvalidInput, JobNotFound
from catalog.identifiers import UUIDType, pipeline_uuid, random_typed_uuid, typed_uuid
from catalog.models import AuditEntry, Entity, HistoryEntry, Job, Pipeline, utc_now
from catalog.store import Applied, JobQuery, Page, Store, open_store
from catalog.store.base import Decide, Doc, encode_cursor

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
    assert store.kind == {"sqlite": "sqlite", "mongomock": "mongo", "mongodb": "mongo"}[backend]


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


def test_insert_job_twice_returns_the_existing_one_unchanged(store: Store) -> None:
    job = make_job("one", child_of=(EXPERIMENT,))
    store.insert_job(job)
    again = {**make_job("one", seconds=60, state="RUNNING", child_of=(SAMPLE,)),
             "data": {"other": True}}
    assert store.insert_job(again) == (job, False)
    assert store.get_job(job["uuid"]) == job
    assert store.find_jobs(JobQuery()).items == [without_history(job)]
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
    return sorted((without_history(jobs[k]) for k in keys), key=lambda d: (d["created"], d["uuid"]))


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


def test_a_cursor_past_the_end_gives_an_empty_last_page(store: Store) -> None:
    insert_jobs(store)
    store.insert_pipeline(make_pipeline("align"))
    assert store.find_jobs(JobQuery(cursor=encode_cursor("9999", ""))) == Page([], None)
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
        {"uuid": job["uuid"], "state": "CREATED", "version": 1, "last_event": "create"},
        {"uuid": job["uuid"], "state": "RUNNING", "version": 2, "last_event": "run"},
    ]
    expected = {**job, "state": "FINISHED", "last_event": "finish", "version": 3,
                "updated": finish["date"], "history": [*job["history"], run, finish]}
    assert store.get_job(job["uuid"]) == expected
    assert store.get_job(job["uuid"], history=False) == without_history(expected)
    assert store.find_jobs(JobQuery(state="FINISHED")).items == [without_history(expected)]
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
            "last_event": before["name"],
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
    assert store.find_jobs(JobQuery(child_of=EXPERIMENT)).items == [without_history(expected)]


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

    path = tmp_path / "old.db"
    with monkeypatch.context() as patched:
        patched.setattr(sqlite, "MIGRATIONS", sqlite.MIGRATIONS[:1])
        old = sqlite.SQLiteStore(path)
        assert [version for version, _ in old.migrations()] == [1]
        job = make_job("one")
        old.insert_job(job)
        old.close()
    store = sqlite.SQLiteStore(path)
    try:
        assert [version for version, _ in store.migrations()] == [1, 2]
        assert store.get_job(job["uuid"]) == job
        store.upsert_entities([make_entity("s3://bucket/cube.fits")])
        store.add_links(PRODUCT, "generated_by", [job["uuid"]])
        assert store.get_entity(PRODUCT) == make_entity("s3://bucket/cube.fits",
                                                        generated_by=[job["uuid"]])
    finally:
        store.close()
