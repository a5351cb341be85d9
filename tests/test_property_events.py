"""Random event sequences through the real catalog, on SQLite and on mongomock.

The expected behaviour is the table of DESIGN §4, written out here rather than imported, so a
change to the library's table cannot make this test agree with itself.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalog import Catalog, ManagedPipelineJob, ManagedPipelineJobInstance
from catalog.config import Settings
from catalog.errors import CatalogError, EventNotAllowed, UnknownEvent
from catalog.tokens import Keys

# event: (states it is allowed from, destination; None keeps the state)
TABLE: dict[str, tuple[frozenset[str], str | None]] = {
    "create": (frozenset({"CREATED"}), "CREATED"),
    "run": (frozenset({"CREATED", "RUNNING"}), "RUNNING"),
    "update": (frozenset({"CREATED", "RUNNING", "VALIDATING", "INDEXING"}), None),
    "resource": (frozenset({"CREATED", "RUNNING"}), None),
    "fail": (frozenset({"CREATED", "RUNNING", "VALIDATING", "INDEXING"}), "FAILED"),
    "finish": (frozenset({"RUNNING", "FINISHED"}), "FINISHED"),
    "index": (frozenset({"FINISHED", "INDEXING"}), "INDEXING"),
    "indexed": (frozenset({"FINISHED", "INDEXING"}), "FINISHED"),
    "validate": (frozenset({"FINISHED", "VALIDATED"}), "VALIDATING"),
    "validated": (frozenset({"VALIDATING", "VALIDATED"}), "VALIDATED"),
    "reject": (frozenset({"VALIDATING"}), "REJECTED"),
    "finalize": (frozenset({"VALIDATED"}), "FINALIZED"),
    "retire": (
        frozenset({"FAILED", "FINISHED", "VALIDATING", "VALIDATED", "REJECTED", "FINALIZED"}),
        "RETIRED",
    ),
    "reset": (
        frozenset({"CREATED", "RUNNING", "FAILED", "FINISHED", "INDEXING", "VALIDATING",
                   "VALIDATED", "REJECTED", "FINALIZED", "RETIRED", "RESET"}),
        "RESET",
    ),
    "ready": (frozenset({"RESET"}), "CREATED"),
}
ADMIN = {"reset", "ready"}
EVENT_NAMES = sorted(TABLE)
UNKNOWN_NAMES = ["explode", "delete", "purge", "RUN", "started"]
PIPELINE = "property-events"
# A short way into each state: examples start from a drawn one, so every state sees random events.
PATHS = {
    "CREATED": [],
    "RUNNING": ["run"],
    "FAILED": ["fail"],
    "FINISHED": ["run", "finish"],
    "INDEXING": ["run", "finish", "index"],
    "VALIDATING": ["run", "finish", "validate"],
    "VALIDATED": ["run", "finish", "validate", "validated"],
    "REJECTED": ["run", "finish", "validate", "reject"],
    "FINALIZED": ["run", "finish", "validate", "validated", "finalize"],
    "RETIRED": ["fail", "retire"],
    "RESET": ["reset"],
}


def expected_after(state: str, name: str) -> str | None:
    """The state after ``name``, or None when the event must be refused."""
    if name not in TABLE:
        return None
    sources, destination = TABLE[name]
    if state not in sources:
        return None
    return destination or state


@contextmanager
def open_catalog(backend: str) -> Iterator[Catalog]:
    """A new, empty catalog on a real SQLite file or a fresh mongomock database."""
    with tempfile.TemporaryDirectory() as root:
        if backend == "sqlite":
            url = f"sqlite:///{root}/c.db"
        else:
            url = f"mongomock://property_events_{uuid.uuid4().hex}"
        # NORMAL: no fsync per commit; durability is not what this test is about.
        config = Settings(db=url, archive_root=f"{root}/archive", sqlite_synchronous="NORMAL")
        keys = Keys(secret=b"property-test-secret", admin_key=b"property-test-admin-key")
        with Catalog.open(url, settings=config, keys=keys) as opened:
            opened.add_pipeline(PIPELINE, "1")
            yield opened


@pytest.fixture(scope="module", params=["sqlite", "mongomock"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def catalog(backend: str) -> Iterator[Catalog]:
    with open_catalog(backend) as opened:
        yield opened


def audit_count(catalog: Catalog, job_uuid: str) -> int:
    return len(catalog.audit_log(job_uuid, limit=1000))


def send(handle: ManagedPipelineJob | ManagedPipelineJobInstance, name: str, token: str,
         by_method: bool) -> str:
    """Send one event through the public API, as a method call or a raw event document."""
    # On an instance, index() runs the whole indexing flow rather than sending one event.
    indexing = name == "index" and isinstance(handle, ManagedPipelineJobInstance)
    if by_method and name in TABLE and not indexing:
        return getattr(handle, name)({"step": name}, token=token).state
    return handle.handle({"name": name, "data": {"step": name}}, token=token).state


class Model:
    """The job as the table says it should be, checked against the catalog after each event."""

    def __init__(self, catalog: Catalog, job: ManagedPipelineJob,
                 instance: ManagedPipelineJobInstance) -> None:
        self.catalog, self.job, self.instance = catalog, job, instance
        self.state = "CREATED"
        self.states = ["CREATED"]
        self.names = ["create"]

    def send_and_check(self, name: str, use_instance: bool, by_method: bool) -> None:
        catalog, uuid_ = self.catalog, self.job.uuid
        handle = self.instance if use_instance else self.job
        token = catalog.admin_token() if name in ADMIN else self.job.token
        before = catalog.get_job(uuid_)
        audited = audit_count(catalog, uuid_)
        expected = expected_after(self.state, name)
        if expected is not None:
            assert send(handle, name, token, by_method) == expected
            after = catalog.get_job(uuid_)
            assert (after.state, after.last_event) == (expected, name)
            assert after.version == before.version + 1
            assert len(after.history) == len(before.history) + 1
            assert after.history[:-1] == before.history
            assert (after.history[-1].name, after.history[-1].state) == (name, expected)
            assert after.history[-1].data == {"step": name}
            assert audit_count(catalog, uuid_) == audited
            self.state = expected
            self.states.append(expected)
            self.names.append(name)
        else:
            error: type[CatalogError] = EventNotAllowed if name in TABLE else UnknownEvent
            with pytest.raises(error) as caught:
                send(handle, name, token, by_method)
            if name in TABLE:
                assert caught.value.details["state"] == self.state
                assert caught.value.details["event"] == name
            after = catalog.get_job(uuid_)
            assert after == before  # state, version, history, updated: nothing changed
            log = catalog.audit_log(uuid_, limit=1000)
            assert len(log) == audited + 1
            newest = log[0]
            assert (newest.job_uuid, newest.name, newest.code) == (uuid_, name, caught.value.code)
            assert newest.reason == caught.value.message
        assert self.instance.state == self.state


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_event_sequences_follow_the_table(backend: str, data: st.DataObject) -> None:
    with open_catalog(backend) as catalog:
        check_random_sequence(catalog, data)


def check_random_sequence(catalog: Catalog, data: st.DataObject) -> None:
    job = ManagedPipelineJob(catalog, PIPELINE, {"example": uuid.uuid4().hex})
    created = job.setup()
    assert (created.state, created.version, len(created.history)) == ("CREATED", 1, 1)
    model = Model(catalog, job, ManagedPipelineJobInstance(catalog, job.uuid))
    assert catalog.admin_token() != job.token

    for name in PATHS[data.draw(st.sampled_from(sorted(PATHS)), label="start")]:
        model.send_and_check(name, use_instance=False, by_method=True)
    for _ in range(data.draw(st.integers(min_value=0, max_value=8), label="steps")):
        # Some events the state refuses (known and unknown names), then any event at all,
        # leaning towards those the state accepts so that long walks go somewhere.
        allowed = [name for name in EVENT_NAMES if expected_after(model.state, name) is not None]
        refused = [name for name in EVENT_NAMES if name not in allowed] + UNKNOWN_NAMES
        names = data.draw(st.lists(st.sampled_from(refused), max_size=2), label="refused")
        anything = st.sampled_from(allowed) | st.sampled_from(EVENT_NAMES + UNKNOWN_NAMES)
        names.append(data.draw(anything, label="event"))
        for name in names:
            model.send_and_check(name, data.draw(st.booleans(), label="instance"),
                                 data.draw(st.booleans(), label="by_method"))

    final = catalog.get_job(job.uuid)
    assert final.state == model.state
    assert len(final.history) == len(model.names)
    assert [entry.state for entry in final.history] == model.states
    assert [entry.name for entry in final.history] == model.names
    assert final.version == len(final.history)
    assert len({entry.uuid for entry in final.history}) == len(final.history)


# A fixed walk that visits every state, so each backend is seen to reach all of them.
WALK = [
    ("run", "RUNNING"), ("update", "RUNNING"), ("resource", "RUNNING"), ("finish", "FINISHED"),
    ("index", "INDEXING"), ("indexed", "FINISHED"), ("validate", "VALIDATING"),
    ("reject", "REJECTED"), ("reset", "RESET"), ("ready", "CREATED"), ("fail", "FAILED"),
    ("retire", "RETIRED"), ("run", None), ("reset", "RESET"), ("ready", "CREATED"),
    ("run", "RUNNING"), ("finish", "FINISHED"), ("validate", "VALIDATING"),
    ("validated", "VALIDATED"), ("finalize", "FINALIZED"), ("run", None),
    ("retire", "RETIRED"),
]


def test_walk_through_every_state(catalog: Catalog) -> None:
    job = ManagedPipelineJob(catalog, PIPELINE, {"walk": uuid.uuid4().hex})
    job.setup()
    seen = {"CREATED"}
    for name, expected in WALK:
        token = catalog.admin_token() if name in ADMIN else job.token
        if expected is None:
            with pytest.raises(EventNotAllowed):
                job.handle({"name": name}, token=token)
            continue
        assert job.handle({"name": name}, token=token).state == expected
        seen.add(expected)
    assert len(seen) == 11
    final = job.job
    assert final.version == len(final.history) == 1 + sum(e is not None for _, e in WALK)
    assert len(catalog.audit_log(job.uuid)) == sum(e is None for _, e in WALK)


@pytest.mark.parametrize("name", EVENT_NAMES + UNKNOWN_NAMES)
@pytest.mark.parametrize("start", sorted(PATHS))
def test_every_event_in_every_state(catalog: Catalog, start: str, name: str) -> None:
    """Each (state, event) pair once, on the real store: the random walk's exhaustive twin."""
    job = ManagedPipelineJob(catalog, PIPELINE, {"pair": [start, name], "n": uuid.uuid4().hex})
    job.setup()
    for step in PATHS[start]:
        job.handle({"name": step}, token=catalog.admin_token() if step in ADMIN else job.token)
    before = job.job
    assert before.state == start
    token = catalog.admin_token() if name in ADMIN else job.token
    expected = expected_after(start, name)
    if expected is None:
        with pytest.raises(EventNotAllowed if name in TABLE else UnknownEvent):
            job.handle({"name": name}, token=token)
        assert job.job == before
        assert catalog.audit_log(job.uuid)[0].name == name
    else:
        assert job.handle({"name": name}, token=token).state == expected
        after = job.job
        assert (after.state, after.version) == (expected, before.version + 1)
        assert [e.state for e in after.history] == [e.state for e in before.history] + [expected]
