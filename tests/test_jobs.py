"""The job API: ManagedPipelineJob and ManagedPipelineJobInstance on every store backend."""

from __future__ import annotations

import math
import os
import re
import uuid as uuid_module
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from catalog import Catalog, CatalogError, ManagedPipelineJob, ManagedPipelineJobInstance
from catalog.errors import (
    AdminRequired,
    EventNotAllowed,
    InvalidData,
    InvalidInput,
    JobDeleted,
    JobNotFound,
    MalformedIdentifier,
    PipelineNotFound,
    SchemaViolation,
    TokenInvalid,
    TokenRequired,
    UnknownEvent,
    UnsafePath,
    WrongIdentifierType,
)
from catalog.identifiers import UUIDType, digest, uuid_type
from catalog.models import Pipeline
from catalog.states import allowed_events

DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
INSTANCE_RE = re.compile(r"^(?P<head>[a-z]+-[a-z]+)-(?P<stamp>\d{8}T\d{6}Z)$")
DATA = {"parameters": {"window": 5, "method": "median"}, "inputs": ["file://raw/a.fits"]}


@pytest.fixture
def catalog(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Catalog]:
    """A freshly initialised catalog (secret file and archive root in ``tmp_path``)."""
    for name in list(os.environ):
        if name.startswith("CATALOG_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    opened, created = Catalog.init(store_url)
    assert created
    yield opened
    opened.close()


@pytest.fixture
def pipeline(catalog: Catalog) -> Pipeline:
    added, _ = catalog.add_pipeline("align", "1.0", [{"image": "align:1.0"}])
    return added


@pytest.fixture
def managed(catalog: Catalog, pipeline: Pipeline) -> ManagedPipelineJob:
    """A job that has been set up (state CREATED)."""
    job = ManagedPipelineJob(catalog, pipeline.name, DATA, measurement_id="measurement.lab.1")
    job.setup()
    return job


def upstream(catalog: Catalog, kind: UUIDType, name: str) -> str:
    return catalog.typed_uuid(kind, name)


def all_jobs(catalog: Catalog) -> list[dict[str, Any]]:
    return catalog.find_jobs(limit=1000).items


def snapshot(catalog: Catalog, uuid: str | None = None) -> dict[str, Any]:
    """Everything a refused call must leave as it was."""
    return {
        "job": catalog.get_job(uuid).model_dump() if uuid is not None else None,
        "jobs": all_jobs(catalog),
        "pipelines": catalog.list_pipelines().items,
    }


# -- pipelines -------------------------------------------------------------------------------


def test_add_pipeline_is_idempotent(catalog: Catalog) -> None:
    first, created_first = catalog.add_pipeline(
        "align", "1.0", [{"image": "align:1.0"}], description="first words"
    )
    stored = catalog.store.get_pipeline(first.uuid)
    again, created_again = catalog.add_pipeline(
        "align", "1.0", [{"image": "align:1.0"}], description="other words"
    )

    assert (created_first, created_again) == (True, False)
    assert uuid_type(first.uuid) is UUIDType.pipeline
    assert again == first  # the stored one, with its description and creation date
    assert again.description == "first words"
    assert catalog.store.get_pipeline(first.uuid) == stored
    assert [p["uuid"] for p in catalog.list_pipelines().items] == [first.uuid]
    assert catalog.get_pipeline("align") == first
    assert catalog.get_pipeline(first.uuid) == first


def test_pipeline_identity_includes_version_and_components(catalog: Catalog) -> None:
    base, _ = catalog.add_pipeline("align", "1.0", [{"image": "align:1.0"}])
    other_version, created_version = catalog.add_pipeline("align", "2.0", [{"image": "align:1.0"}])
    other_components, created_components = catalog.add_pipeline("align", "1.0", ["align:1.1"])

    assert created_version and created_components
    assert len({base.uuid, other_version.uuid, other_components.uuid}) == 3


# -- identity: upstream entities, UUID, archive path -------------------------------------------


def test_upstream_ids_become_sorted_unique_typed_child_of(
    catalog: Catalog, pipeline: Pipeline
) -> None:
    measurement_1 = upstream(catalog, UUIDType.measurement, "measurement.lab.1")
    measurement_2 = upstream(catalog, UUIDType.measurement, "measurement.lab.2")
    sample = upstream(catalog, UUIDType.sample, "sample.lab.7")
    experiment = upstream(catalog, UUIDType.experiment, "experiment.lab.3")
    observation = upstream(catalog, UUIDType.observation, "observation.chime.9")

    job = ManagedPipelineJob(
        catalog, pipeline.uuid, DATA,
        # strings, typed UUID strings (any case), uuid.UUID objects and duplicates mixed
        measurement_id=["measurement.lab.2", "measurement.lab.1", measurement_1.upper()],
        sample_id="sample.lab.7",
        experiment_id=experiment,
        observation_id=[uuid_module.UUID(observation), "observation.chime.9"],
    )

    expected = sorted({measurement_1, measurement_2, sample, experiment, observation})
    assert job.child_of == expected
    assert sorted(uuid[:3] for uuid in job.child_of) == ["102", "103", "104", "104", "126"]
    assert {uuid_type(u) for u in job.child_of} == {
        UUIDType.experiment, UUIDType.sample, UUIDType.measurement, UUIDType.observation
    }
    assert job.setup().child_of == expected
    assert catalog.get_job(job.uuid).child_of == expected


@pytest.mark.parametrize(
    "field, kind, name",
    [
        ("measurement_id", UUIDType.measurement, "measurement.tacc.123"),
        ("sample_id", UUIDType.sample, "sample.tacc.4"),
        ("experiment_id", UUIDType.experiment, "experiment.tacc.5"),
        ("observation_id", UUIDType.observation, "observation.chime.6"),
    ],
)
def test_single_upstream_id_as_string_or_uuid_gives_the_same_job(
    catalog: Catalog, pipeline: Pipeline, field: str, kind: UUIDType, name: str
) -> None:
    typed = upstream(catalog, kind, name)
    forms: list[Any] = [name, [name], typed, [typed, name], uuid_module.UUID(typed), (name,)]
    jobs = [ManagedPipelineJob(catalog, "align", DATA, **{field: form}) for form in forms]

    assert {tuple(job.child_of) for job in jobs} == {(typed,)}
    assert typed.startswith(kind.prefix)
    assert len({job.uuid for job in jobs}) == 1


def test_job_uuid_is_deterministic(catalog: Catalog, pipeline: Pipeline) -> None:
    def define(data: dict[str, Any], measurements: list[str]) -> ManagedPipelineJob:
        return ManagedPipelineJob(catalog, "align", data, measurement_id=measurements)

    one = define({"a": 1, "b": [1, 2]}, ["measurement.x.1", "measurement.x.2"])
    same = define({"b": [1, 2], "a": 1}, ["measurement.x.2", "measurement.x.1"])
    other_data = define({"a": 2, "b": [1, 2]}, ["measurement.x.1", "measurement.x.2"])
    other_order_in_list = define({"a": 1, "b": [2, 1]}, ["measurement.x.1", "measurement.x.2"])
    other_inputs = define({"a": 1, "b": [1, 2]}, ["measurement.x.1"])

    assert one.uuid == same.uuid
    assert uuid_type(one.uuid) is UUIDType.pipelinejob
    assert uuid_module.UUID(one.uuid).version == 5
    assert len({one.uuid, other_data.uuid, other_order_in_list.uuid, other_inputs.uuid}) == 4
    assert one.setup().uuid == one.uuid  # stored under the UUID it was defined with


def test_archive_path_shape(catalog: Catalog, pipeline: Pipeline) -> None:
    job = ManagedPipelineJob(catalog, "align", DATA, sample_id=["sample.a.2", "sample.a.1"])

    expected = "/".join([
        "/products/v2", uuid_module.UUID(pipeline.uuid).hex, digest(job.child_of), digest(DATA)
    ])
    assert job.archive_path == expected
    assert re.fullmatch(r"/products/v2/[0-9a-f]{32}/[0-9a-f]{16}/[0-9a-f]{16}", expected)
    assert job.setup().archive_path == expected


@pytest.mark.parametrize("session", [None, "night-run.1"])
def test_instanced_archive_path_adds_a_timestamped_directory(
    catalog: Catalog, pipeline: Pipeline, session: str | None
) -> None:
    plain = ManagedPipelineJob(catalog, "align", DATA)
    before = datetime.now(UTC).replace(microsecond=0)
    instanced = ManagedPipelineJob(catalog, "align", DATA, instanced=True, session=session)
    after = datetime.now(UTC)

    parent, _, leaf = instanced.archive_path.rpartition("/")
    assert parent == plain.archive_path
    assert instanced.uuid == plain.uuid  # where outputs go is not part of the identity
    if session is None:
        match = INSTANCE_RE.fullmatch(leaf)
        assert match is not None, leaf
        stamp = match["stamp"]
    else:
        assert leaf.startswith(f"{session}-")
        stamp = leaf[len(session) + 1:]
    when = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert before <= when <= after


# -- setup ------------------------------------------------------------------------------------


@pytest.mark.parametrize("instanced", [False, True])
def test_setup_again_returns_the_stored_job_unchanged(
    catalog: Catalog, pipeline: Pipeline, instanced: bool
) -> None:
    first = ManagedPipelineJob(catalog, "align", DATA, measurement_id="measurement.lab.1",
                               instanced=instanced, session="first" if instanced else None)
    created = first.setup()
    assert first.created is True
    assert (created.state, created.version, [e.name for e in created.history]) == (
        "CREATED", 1, ["create"]
    )
    first.run({"host": "node-1"}, event_id="run-1")
    stored = catalog.get_job(first.uuid).model_dump()

    again_same_object = first.setup()
    assert first.created is False
    second = ManagedPipelineJob(catalog, "align", DATA, measurement_id="measurement.lab.1",
                                instanced=instanced, session="second" if instanced else None)
    if instanced:
        assert second.archive_path != created.archive_path  # before setup: a new instance
    again_other_object = second.setup()

    assert second.created is False
    for again in (again_same_object, again_other_object):
        assert again.model_dump() == stored
        assert (again.uuid, again.state, again.archive_path) == (
            created.uuid, "RUNNING", created.archive_path
        )
        assert [e.name for e in again.history] == ["create", "run"]
    assert second.archive_path == created.archive_path  # adopts the stored one
    assert catalog.get_job(first.uuid).model_dump() == stored
    assert [j["uuid"] for j in all_jobs(catalog)] == [first.uuid]


def test_setup_stores_what_was_defined(catalog: Catalog, pipeline: Pipeline) -> None:
    job = ManagedPipelineJob(
        catalog, "align", DATA, sample_id="sample.lab.1",
        archive_patterns=[{"patterns": [r"\.fits$"], "level": 1}],
        product_patterns=[{"patterns": [r"\.png$"], "derived_from": ["raw"]}],
        agent="reactor-7", task="reduce",
    )
    stored = job.setup().stored

    assert stored.pipeline_uuid == pipeline.uuid
    assert stored.generated_by == [pipeline.uuid]
    assert stored.data == DATA
    assert stored.archive_patterns[0].level == "1"
    assert stored.product_patterns[0].derived_from == ["raw"]
    assert (stored.agent, stored.task, stored.archive_system) == ("reactor-7", "reduce", "local")
    assert stored.created == stored.updated == stored.history[0].date
    assert catalog.get_job(job.uuid) == stored


# -- tokens and webhooks ---------------------------------------------------------------------


def test_token_and_webhook(catalog: Catalog, managed: ManagedPipelineJob) -> None:
    other = ManagedPipelineJob(catalog, "align", {"other": True})
    token = managed.token

    assert re.fullmatch(r"[0-9a-f]{64}", token)
    assert token == catalog.job_token(managed.uuid)
    assert token != other.token
    assert token != catalog.admin_token()
    for base in ("https://catalog.example.org/api", "https://catalog.example.org/api/"):
        assert managed.build_webhook(base) == (
            f"https://catalog.example.org/api/jobs/{managed.uuid}/events?token={token}"
        )
    assert managed.build_webhook() == (
        f"{catalog.settings.base_url}/jobs/{managed.uuid}/events?token={token}"
    )
    instance = ManagedPipelineJobInstance(catalog, managed.uuid)
    instance.run()
    assert instance.token == token  # does not change as the job moves
    assert instance.build_webhook("http://h") == f"http://h/jobs/{managed.uuid}/events?token={token}"


# -- events ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        [("run", "RUNNING"), ("update", "RUNNING"), ("resource", "RUNNING"),
         ("finish", "FINISHED"), ("index", "INDEXING"), ("indexed", "FINISHED"),
         ("validate", "VALIDATING"), ("validated", "VALIDATED"), ("finalize", "FINALIZED"),
         ("retire", "RETIRED")],
        [("create", "CREATED"), ("run", "RUNNING"), ("run", "RUNNING"), ("fail", "FAILED"),
         ("retire", "RETIRED")],
        [("run", "RUNNING"), ("finish", "FINISHED"), ("validate", "VALIDATING"),
         ("update", "VALIDATING"), ("reject", "REJECTED")],
    ],
    ids=["to-retired", "failed", "rejected"],
)
def test_event_methods_drive_the_state_machine(
    catalog: Catalog, managed: ManagedPipelineJob, path: list[tuple[str, str]]
) -> None:
    for step, (name, expected) in enumerate(path, start=1):
        outcome = getattr(managed, name)({"step": step})
        assert (outcome.uuid, outcome.state, outcome.last_event, outcome.duplicate) == (
            managed.uuid, expected, name, False
        )
    job = catalog.get_job(managed.uuid)
    assert [(e.name, e.state) for e in job.history] == [("create", "CREATED"), *path]
    assert [e.data for e in job.history[1:]] == [{"step": i} for i in range(1, len(path) + 1)]
    assert (job.state, job.last_event, job.version) == (path[-1][1], path[-1][0], len(path) + 1)


def test_admin_events_need_the_admin_token(catalog: Catalog, managed: ManagedPipelineJob) -> None:
    managed.run()
    admin = catalog.admin_token()

    assert managed.reset(token=admin).state == "RESET"
    assert managed.ready(token=admin).state == "CREATED"
    assert managed.run(token=admin).state == "RUNNING"  # the admin token opens every job
    assert [e.name for e in catalog.get_job(managed.uuid).history] == [
        "create", "run", "reset", "ready", "run"
    ]


def test_instance_handles_events(catalog: Catalog, managed: ManagedPipelineJob) -> None:
    instance = ManagedPipelineJobInstance(catalog, managed.uuid)
    outcome = instance.handle(
        {"name": "run", "data": {"host": "node-1", "cores": 8}, "event_id": "slurm-1"},
        token=managed.token,
    )

    assert outcome.model_dump() == {"uuid": managed.uuid, "state": "RUNNING", "last_event": "run",
                                    "event_id": "slurm-1", "duplicate": False}
    assert instance.job.state == "RUNNING"
    assert instance.state == "RUNNING"
    assert instance.archive_path == managed.archive_path
    entry = catalog.get_job(managed.uuid).history[-1]
    assert (entry.name, entry.data, entry.event_id, entry.state) == (
        "run", {"host": "node-1", "cores": 8}, "slurm-1", "RUNNING"
    )


@pytest.mark.parametrize(
    "first, second",
    [
        ({"name": "update", "data": {"n": 1}}, {"name": "update", "data": {"n": 1}}),
        ({"name": "update", "data": {"n": 1}}, {"name": "update", "data": {"n": 2}}),
        ({"name": "run", "data": {"n": 1}}, {"name": "fail", "data": {}}),
    ],
    ids=["same", "other-data", "other-name"],
)
def test_same_event_id_is_applied_once(
    catalog: Catalog, managed: ManagedPipelineJob, first: dict[str, Any],
    second: dict[str, Any],
) -> None:
    managed.run()
    instance = ManagedPipelineJobInstance(catalog, managed.uuid)
    applied = instance.handle({**first, "event_id": "retry-1"})
    before = catalog.get_job(managed.uuid).model_dump()

    replayed = instance.handle({**second, "event_id": "retry-1"})

    assert applied.duplicate is False
    assert replayed.duplicate is True
    assert (replayed.state, replayed.last_event, replayed.event_id) == (
        applied.state, applied.last_event, "retry-1"
    )
    after = catalog.get_job(managed.uuid)
    assert after.model_dump() == before
    assert after.version == 3
    assert [e.event_id for e in after.history].count("retry-1") == 1
    assert after.history[-1].data == first["data"]


def test_replayed_event_answers_its_first_outcome_after_the_job_moved_on(
    catalog: Catalog, managed: ManagedPipelineJob
) -> None:
    managed.run(event_id="run-1")
    managed.finish(event_id="finish-1")
    before = catalog.get_job(managed.uuid).model_dump()

    late = managed.run(event_id="run-1")  # a webhook sender retrying long after

    assert (late.duplicate, late.state, late.last_event) == (True, "RUNNING", "run")
    assert catalog.get_job(managed.uuid).model_dump() == before
    assert before["state"] == "FINISHED"


@pytest.mark.parametrize("event_id", ["create", "run", "1", "ready"])
def test_any_event_id_a_sender_chooses_is_accepted(
    catalog: Catalog, managed: ManagedPipelineJob, event_id: str
) -> None:
    """A sender's event_id is its own business: it must not collide with the catalog's entries.

    The ``create`` entry written by ``setup()`` gets the UUID the decider derives for an
    event whose event_id is ``"create"``, so such an event clashes with it.
    """
    outcome = managed.run(event_id=event_id)

    assert (outcome.state, outcome.event_id, outcome.duplicate) == ("RUNNING", event_id, False)
    job = catalog.get_job(managed.uuid)
    assert [(e.name, e.event_id) for e in job.history][1:] == [("run", event_id)]
    assert len({e.uuid for e in job.history}) == len(job.history) == job.version == 2


def test_instance_job_state_after_a_replayed_event(
    catalog: Catalog, managed: ManagedPipelineJob
) -> None:
    """``instance.job`` must not go back to an old state when an event is replayed."""
    instance = ManagedPipelineJobInstance(catalog, managed.uuid)
    instance.run(event_id="run-1")
    instance.finish(event_id="finish-1")
    assert instance.job.state == "FINISHED"

    replay = instance.run(event_id="run-1")

    assert (replay.duplicate, replay.state) == (True, "RUNNING")  # the first outcome
    assert catalog.get_job(managed.uuid).state == "FINISHED"
    assert instance.job.state == "FINISHED"


def test_history_entry_fields(catalog: Catalog, managed: ManagedPipelineJob) -> None:
    start = datetime.now(UTC) - timedelta(seconds=1)
    managed.run({"host": "node-1"}, event_id="sender-1")
    managed.update({"progress": 0.5, "nested": {"list": [1, "two", None, True]}})
    history = catalog.get_job(managed.uuid).model_dump(mode="json")["history"]

    assert [set(entry) for entry in history] == [
        {"uuid", "name", "date", "data", "source", "event_id", "state"}
    ] * 3
    create, run, update = history
    assert (create["name"], create["state"], create["data"]) == ("create", "CREATED", {})
    assert (run["name"], run["data"], run["event_id"], run["source"]) == (
        "run", {"host": "node-1"}, "sender-1", "python"
    )
    assert update["data"] == {"progress": 0.5, "nested": {"list": [1, "two", None, True]}}
    assert update["event_id"] == update["uuid"]  # none sent: the entry's own UUID
    for entry in history:
        assert uuid_type(entry["uuid"]) is UUIDType.pipelinejob_event
        assert DATE_RE.fullmatch(entry["date"]), entry["date"]
        date = datetime.strptime(entry["date"], "%Y-%m-%dT%H:%M:%S.%f%z")
        assert start <= date <= datetime.now(UTC)
    assert create["date"] <= run["date"] <= update["date"]
    assert len({entry["uuid"] for entry in history}) == 3


# -- delete -----------------------------------------------------------------------------------


def test_delete_with_the_admin_token(catalog: Catalog, managed: ManagedPipelineJob) -> None:
    kept = ManagedPipelineJob(catalog, "align", {"kept": True})
    kept.setup()
    instance = ManagedPipelineJobInstance(catalog, managed.uuid)

    instance.delete(catalog.admin_token())

    # A tombstone (catalog.deletion): gone (410) until purged.
    with pytest.raises(JobDeleted):
        catalog.get_job(managed.uuid)
    with pytest.raises(JobDeleted):
        ManagedPipelineJobInstance(catalog, managed.uuid)
    with pytest.raises(JobDeleted):
        catalog.delete_job(managed.uuid, catalog.admin_token())
    assert [job["uuid"] for job in all_jobs(catalog)] == [kept.uuid]
    assert catalog.audit_log(managed.uuid)[-1].code == "deleted"
    with pytest.raises(JobDeleted):
        ManagedPipelineJob(catalog, "align", DATA, measurement_id="measurement.lab.1").setup()
    catalog.purge_job(managed.uuid, catalog.admin_token(), managed.uuid)

    again = ManagedPipelineJob(catalog, "align", DATA, measurement_id="measurement.lab.1")
    recreated = again.setup()  # once purged, the same identity can be set up afresh
    assert again.created is True and recreated.uuid == managed.uuid
    assert [(e.name, e.state) for e in recreated.history] == [("create", "CREATED")]
    assert catalog.get_job(managed.uuid).version == 1


@pytest.mark.parametrize("token", ["job", None, "wrong"])
def test_delete_without_the_admin_token_is_refused(
    catalog: Catalog, managed: ManagedPipelineJob, token: str | None
) -> None:
    given = {"job": managed.token, "wrong": "0" * 64}.get(token or "")
    before = snapshot(catalog, managed.uuid)
    instance = ManagedPipelineJobInstance(catalog, managed.uuid)

    with pytest.raises((AdminRequired, TokenRequired)) as refused:
        instance.delete(given)

    assert refused.value.status == (401 if token is None else 403)
    assert snapshot(catalog, managed.uuid) == before


# -- bad input: refused events ------------------------------------------------------------------


def _other_token(catalog: Catalog) -> str:
    return ManagedPipelineJob(catalog, "align", {"someone": "else"}).token


# (event, token: "job" | "admin" | None | a function of the catalog, error, status, code)
REFUSED_EVENTS: list[tuple[str, Any, Any, type[CatalogError], int, str]] = [
    ("unknown-name", {"name": "explode"}, "job", UnknownEvent, 422, "unknown_event"),
    ("not-allowed", {"name": "finish"}, "job", EventNotAllowed, 409, "event_not_allowed"),
    ("admin-reset", {"name": "reset"}, "job", AdminRequired, 403, "admin_required"),
    ("admin-ready", {"name": "ready"}, "job", AdminRequired, 403, "admin_required"),
    ("no-token", {"name": "run"}, None, TokenRequired, 401, "token_required"),
    ("empty-token", {"name": "run"}, "", TokenRequired, 401, "token_required"),
    ("other-job-token", {"name": "run"}, _other_token, TokenInvalid, 403, "token_invalid"),
    ("made-up-token", {"name": "run"}, "f" * 64, TokenInvalid, 403, "token_invalid"),
    ("data-set", {"name": "update", "data": {"a": {1, 2}}}, "job", InvalidData, 400,
     "invalid_data"),
    ("data-datetime", {"name": "update", "data": {"at": datetime.now(UTC)}}, "job", InvalidData,
     400, "invalid_data"),
    ("data-nan", {"name": "update", "data": {"x": math.nan}}, "job", InvalidData, 400,
     "invalid_data"),
    ("data-infinity", {"name": "update", "data": {"x": [-math.inf]}}, "job", InvalidData, 400,
     "invalid_data"),
    ("data-int-key", {"name": "update", "data": {"outer": {1: "one"}}}, "job", InvalidData, 400,
     "invalid_data"),
    ("data-list", {"name": "update", "data": [1, 2]}, "job", SchemaViolation,
     422, "schema_violation"),
    ("data-string", {"name": "update", "data": "text"}, "job", SchemaViolation,
     422, "schema_violation"),
    ("data-empty-list", {"name": "update", "data": []}, "job", SchemaViolation,
     422, "schema_violation"),
    ("event-not-object", ["run"], "job", SchemaViolation,
     422, "schema_violation"),
    ("extra-field", {"name": "run", "when": "now"}, "job", SchemaViolation,
     422, "schema_violation"),
    ("empty-event-id", {"name": "run", "event_id": ""}, "job", SchemaViolation,
     422, "schema_violation"),
    ("no-name", {"data": {}}, "job", SchemaViolation,
     422, "schema_violation"),
]


@pytest.mark.parametrize(
    "event, token, error, status, code",
    [case[1:] for case in REFUSED_EVENTS],
    ids=[case[0] for case in REFUSED_EVENTS],
)
def test_refused_event_changes_nothing_and_is_audited(
    catalog: Catalog, managed: ManagedPipelineJob, event: Any, token: Any,
    error: type[CatalogError], status: int, code: str,
) -> None:
    given = {"job": managed.token, "admin": catalog.admin_token()}.get(token, token)
    if callable(given):
        given = given(catalog)
    before = snapshot(catalog, managed.uuid)
    audited = len(catalog.audit_log(managed.uuid))

    with pytest.raises(error) as refused:
        catalog.handle_event(managed.uuid, event, given)

    assert (refused.value.status, refused.value.code) == (status, code)
    assert refused.value.to_dict() == {"error": {"code": code, "message": str(refused.value)}}
    assert snapshot(catalog, managed.uuid) == before
    audit = catalog.audit_log(managed.uuid)
    assert len(audit) == audited + 1
    assert (audit[0].job_uuid, audit[0].code, audit[0].reason) == (
        managed.uuid, code, refused.value.message
    )
    if isinstance(event, dict) and isinstance(event.get("name"), str):
        assert audit[0].name == event["name"]
    if given:
        assert given not in audit[0].reason  # tokens are never written down


def test_event_not_allowed_names_the_state_and_the_allowed_events(
    catalog: Catalog, managed: ManagedPipelineJob
) -> None:
    managed.run()
    managed.finish()
    before = snapshot(catalog, managed.uuid)

    with pytest.raises(EventNotAllowed) as refused:
        managed.run()  # a late run never drags a finished job back

    message = refused.value.message
    assert "FINISHED" in message and "'run'" in message and managed.uuid in message
    allowed = sorted(allowed_events("FINISHED"))
    assert allowed == ["finish", "index", "indexed", "reset", "retire", "validate"]
    assert f"allowed events: {', '.join(allowed)}" in message
    assert refused.value.details["allowed"] == allowed
    assert refused.value.details["state"] == "FINISHED"
    assert snapshot(catalog, managed.uuid) == before


def test_event_methods_refuse_data_that_is_not_an_object(
    catalog: Catalog, managed: ManagedPipelineJob
) -> None:
    """``job.update(x)`` must refuse every non-object ``x``, falsy ones included."""
    before = snapshot(catalog, managed.uuid)
    accepted = []
    for data in ([1], "text", 3, [], 0, "", False):
        try:
            managed.update(data)
        except InvalidData:
            continue
        accepted.append(data)

    assert accepted == []
    assert snapshot(catalog, managed.uuid) == before


def test_unknown_job(catalog: Catalog, managed: ManagedPipelineJob) -> None:
    unknown = catalog.typed_uuid(UUIDType.pipelinejob, "never created")
    before = snapshot(catalog, managed.uuid)

    with pytest.raises(JobNotFound) as refused:
        catalog.handle_event(unknown, {"name": "run"}, catalog.admin_token())
    assert (refused.value.status, refused.value.code) == (404, "job_not_found")
    assert catalog.audit_log(unknown)[0].code == "job_not_found"
    with pytest.raises(JobNotFound):
        ManagedPipelineJobInstance(catalog, unknown)
    with pytest.raises(JobNotFound):
        catalog.get_job(unknown)
    assert snapshot(catalog, managed.uuid) == before


@pytest.mark.parametrize("name_or_uuid", ["no-such-pipeline", "uuid"])
def test_unknown_pipeline(catalog: Catalog, pipeline: Pipeline, name_or_uuid: str) -> None:
    if name_or_uuid == "uuid":
        name_or_uuid = catalog.typed_uuid(UUIDType.pipeline, "never added")
    before = snapshot(catalog)

    with pytest.raises(PipelineNotFound) as refused:
        ManagedPipelineJob(catalog, name_or_uuid, DATA)
    assert (refused.value.status, refused.value.code) == (404, "pipeline_not_found")
    with pytest.raises(PipelineNotFound):
        catalog.find_jobs(pipeline=name_or_uuid)
    assert snapshot(catalog) == before


def _job_instance(value: Callable[[Catalog, ManagedPipelineJob], str]) -> Any:
    return lambda catalog, job: ManagedPipelineJobInstance(catalog, value(catalog, job))


def _event_to(value: Callable[[Catalog, ManagedPipelineJob], str]) -> Any:
    return lambda catalog, job: catalog.handle_event(value(catalog, job), {"name": "run"},
                                                     catalog.admin_token())


def _pipeline_uuid(catalog: Catalog, job: ManagedPipelineJob) -> str:
    return job.pipeline.uuid


def _sample_uuid(catalog: Catalog, job: ManagedPipelineJob) -> str:
    return catalog.typed_uuid(UUIDType.sample, "sample.lab.1")


BAD_IDENTIFIERS: list[tuple[str, Any, type[CatalogError]]] = [
    ("instance-not-a-uuid", _job_instance(lambda c, j: "not-a-uuid"), MalformedIdentifier),
    ("instance-uuid4", _job_instance(lambda c, j: str(uuid_module.uuid4())), MalformedIdentifier),
    ("instance-truncated", _job_instance(lambda c, j: j.uuid[:-1]), MalformedIdentifier),
    ("instance-pipeline-uuid", _job_instance(_pipeline_uuid), WrongIdentifierType),
    ("event-not-a-uuid", _event_to(lambda c, j: "123"), MalformedIdentifier),
    ("event-pipeline-uuid", _event_to(_pipeline_uuid), WrongIdentifierType),
    ("event-sample-uuid", _event_to(_sample_uuid), WrongIdentifierType),
    ("get-pipeline-uuid", lambda c, j: c.get_job(j.pipeline.uuid), WrongIdentifierType),
    ("delete-pipeline-uuid", lambda c, j: c.delete_job(j.pipeline.uuid, c.admin_token()),
     WrongIdentifierType),
    ("pipeline-job-uuid", lambda c, j: ManagedPipelineJob(c, j.uuid), WrongIdentifierType),
    ("measurement-sample-uuid",
     lambda c, j: ManagedPipelineJob(c, "align", measurement_id=[_sample_uuid(c, j)]),
     WrongIdentifierType),
    ("measurement-sample-id",
     lambda c, j: ManagedPipelineJob(c, "align", measurement_id="sample.lab.1"),
     WrongIdentifierType),
    ("measurement-malformed-uuid",
     lambda c, j: ManagedPipelineJob(c, "align", measurement_id=[str(uuid_module.uuid4())]),
     MalformedIdentifier),
    ("list-child-of-pipeline-uuid", lambda c, j: c.find_jobs(child_of=j.pipeline.uuid),
     WrongIdentifierType),
]


@pytest.mark.parametrize(
    "call, error", [case[1:] for case in BAD_IDENTIFIERS], ids=[case[0] for case in BAD_IDENTIFIERS]
)
def test_bad_identifiers_are_refused(
    catalog: Catalog, managed: ManagedPipelineJob,
    call: Callable[[Catalog, ManagedPipelineJob], Any], error: type[CatalogError],
) -> None:
    before = snapshot(catalog, managed.uuid)

    with pytest.raises(error) as refused:
        call(catalog, managed)

    assert refused.value.status == 400
    assert refused.value.code == {MalformedIdentifier: "malformed_uuid",
                                  WrongIdentifierType: "wrong_uuid_type"}[error]
    assert snapshot(catalog, managed.uuid) == before


@pytest.mark.parametrize(
    "data",
    [
        {"inputs": {"a", "b"}},
        {"when": datetime(2026, 1, 1, tzinfo=UTC)},
        {"x": math.nan},
        {"x": math.inf},
        {"nested": {1: "int key"}},
        {"nested": [{"bytes": b"raw"}]},
        {"t": (1, 2)},
        [1, 2],
        "text",
    ],
    ids=["set", "datetime", "nan", "infinity", "int-key", "bytes", "tuple", "list", "string"],
)
def test_job_data_must_be_a_json_object(
    catalog: Catalog, pipeline: Pipeline, data: Any
) -> None:
    before = snapshot(catalog)

    with pytest.raises(InvalidData) as refused:
        ManagedPipelineJob(catalog, "align", data).setup()

    # Values JSON cannot carry are invalid data (400); JSON of the wrong shape a 422.
    expected = "schema_violation" if isinstance(data, list | str) else "invalid_data"
    assert refused.value.code == expected
    assert snapshot(catalog) == before


@pytest.mark.parametrize(
    "archive_path",
    ["/../etc", "relative/path", "/products/../../etc", "/", "", "/products/a\x00b",
     "/link-out/products", "/link-out"],
)
def test_archive_path_escaping_the_root_is_refused(
    catalog: Catalog, pipeline: Pipeline, tmp_path: Path, archive_path: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (catalog.archive_root / "link-out").symlink_to(outside, target_is_directory=True)
    before = snapshot(catalog)

    with pytest.raises(UnsafePath) as refused:
        ManagedPipelineJob(catalog, "align", DATA, archive_path=archive_path).setup()

    assert refused.value.code == "unsafe_path"
    assert snapshot(catalog) == before
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("session", ["../../etc", "a/b", "", "-starts-with-dash", "x" * 65])
def test_unsafe_session_names_are_refused(
    catalog: Catalog, pipeline: Pipeline, session: str
) -> None:
    before = snapshot(catalog)

    with pytest.raises(InvalidInput):
        ManagedPipelineJob(catalog, "align", DATA, instanced=True, session=session).setup()

    assert snapshot(catalog) == before


def test_explicit_archive_path_inside_the_root(catalog: Catalog, pipeline: Pipeline) -> None:
    job = ManagedPipelineJob(catalog, "align", DATA, archive_path="/products/./manual//run-1/")

    assert job.setup().archive_path == "/products/manual/run-1"


@pytest.mark.parametrize(
    "field, requests",
    [
        ("archive_patterns", [{"patterns": ["("]}]),
        ("archive_patterns", [{"patterns": [r"\.fits$", "[unclosed"]}]),
        ("archive_patterns", [{"patterns": []}]),
        ("archive_patterns", [{"patterns": [r"\.fits$"], "level": "9"}]),
        ("archive_patterns", {"patterns": [r"\.fits$"]}),
        ("product_patterns", [{"patterns": ["*.png"]}]),
        ("product_patterns", [{"patterns": [r"\.png$"], "unknown": 1}]),
    ],
    ids=["paren", "bracket", "empty", "level", "not-a-list", "product-star", "product-extra"],
)
def test_invalid_index_requests_are_refused(
    catalog: Catalog, pipeline: Pipeline, field: str, requests: Any
) -> None:
    before = snapshot(catalog)

    with pytest.raises(InvalidInput) as refused:
        ManagedPipelineJob(catalog, "align", DATA, **{field: requests}).setup()

    assert refused.value.status == 400
    assert field in refused.value.message
    assert snapshot(catalog) == before
