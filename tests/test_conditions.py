"""Conditions on other jobs (DESIGN §11): the logic, the checks at submit, release and
cancellation when a job ends, on every store."""

from __future__ import annotations

import os
import tempfile
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalog import Catalog
from catalog.errors import InvalidCondition
from catalog.identifiers import UUIDType, typed_uuid
from catalog.jobs import ManagedPipelineJob
from catalog.queue import cancel, end_attempt, submit, withdraw
from catalog.queue.conditions import (
    MAX_ATOMS,
    MAX_DEPTH,
    Expr,
    Ref,
    Value,
    atoms,
    check,
    evaluate,
)
from catalog.tokens import Keys

KEYS = Keys(b"c" * 32, b"a" * 32)
J = typed_uuid(UUIDType.pipelinejob, "j")
T, F, P = Value.TRUE, Value.FALSE, Value.PENDING


@pytest.fixture
def catalog(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[Catalog]:
    monkeypatch.chdir(tmp_path)
    opened = Catalog.open(store_url, keys=KEYS, sqlite_synchronous="NORMAL")
    opened.add_pipeline("step")
    yield opened
    opened.close()


def work(n: int, **queue: Any) -> dict[str, Any]:
    return {"pipeline": "step", "data": {"command": ["step", str(n)]}, **queue}


def run(catalog: Catalog, uuid: str, error: str | None = None) -> str:
    """Withdraw ``uuid`` (the only queued job) and end its attempt."""
    job = withdraw(catalog, {"pipelines": ["step"]}, "w")
    assert job is not None and job.uuid == uuid
    return end_attempt(catalog, uuid, "w", error)


def state(catalog: Catalog, uuid: str) -> str:
    return catalog.get_job(uuid, history=False).state


# the logic -------------------------------------------------------------------------------
# Three jobs whose atoms ``{"is": "finished"}`` are true, pending and false: park's ``true``
# (ready), ``false`` (not ready, not cancelled) and ``cancelled``.
HEADS = {"t": {"state": "FINISHED"}, "p": {"state": "RUNNING"}, "f": {"state": "CANCELLED"}}
true, pending, false = (Expr({"job": name, "is": "finished"}) for name in "tpf")


@pytest.mark.parametrize(("expr", "value", "depends"), [
    # park's _check vectors: ready True -> TRUE, ready False -> PENDING, Cancelled -> FALSE
    ((true | pending) & true, T, {"t", "p"}),
    (false | true, T, {"t", "f"}),
    (false | pending, P, {"p", "f"}),
    (false | false, F, {"f"}),
    (false & true, F, {"t", "f"}),
    (false & pending, F, {"p", "f"}),
    (false & false, F, {"f"}),
])
def test_the_seeds_truth_table_holds(expr: Expr, value: Value, depends: set[str]) -> None:
    assert evaluate(expr.json, HEADS) is value
    assert {job for _, _, job in atoms(expr.json)} == depends


@pytest.mark.parametrize(("expr", "value"), [
    # park: ~true waits, ~pending is ready, ~cancelled is cancelled. Ours (Kleene): not X is
    # true only once X can no longer become true, and waits while X is pending.
    (~true, F), (~pending, P), (~false, T), (~~pending, P), (~(false | pending), P),
    (~(false & pending), T),
])
def test_not_is_true_only_once_its_operand_can_no_longer_be(expr: Expr, value: Value) -> None:
    assert evaluate(expr.json, HEADS) is value


@pytest.mark.parametrize(("state", "queue", "values"), [
    ("FINISHED", None, {"finished": T, "failed": F, "cancelled": F, "ended": T}),
    ("VALIDATED", None, {"finished": T, "failed": F, "cancelled": F, "ended": T}),
    ("FAILED", {"attempt": 2, "retries": 2}, {"finished": F, "failed": T, "cancelled": F,
                                              "ended": T}),
    ("FAILED", None, {"finished": F, "failed": T, "cancelled": F, "ended": T}),
    # the queue retries it: not ended yet
    ("FAILED", {"attempt": 1, "retries": 2}, {"finished": P, "failed": P, "cancelled": P,
                                              "ended": P}),
    ("CANCELLED", None, {"finished": F, "failed": F, "cancelled": T, "ended": T}),
    ("RETIRED", None, {"finished": F, "failed": F, "cancelled": F, "ended": T}),
    ("WAITING", None, {"finished": P, "failed": P, "cancelled": P, "ended": P}),
    ("QUEUED", None, {"finished": P, "failed": P, "cancelled": P, "ended": P}),
])
def test_atoms_over_job_states(state: str, queue: dict[str, int] | None,
                               values: dict[str, Value]) -> None:
    heads = {"j": {"state": state, "queue": queue}}
    assert {is_: evaluate({"job": "j", "is": is_}, heads) for is_ in values} == values


def test_the_python_form_writes_the_json_form() -> None:
    a, b, c = (Ref(typed_uuid(UUIDType.pipelinejob, n)) for n in "abc")
    expr = a.finished & b.finished & ~(c.failed | c.cancelled)
    assert expr.json == {"all": [
        {"job": a.uuid, "is": "finished"}, {"job": b.uuid, "is": "finished"},
        {"not": {"any": [{"job": c.uuid, "is": "failed"}, {"job": c.uuid, "is": "cancelled"}]}},
    ]}
    assert (a.ended | b.ended).json == {"any": [{"job": a.uuid, "is": "ended"},
                                                {"job": b.uuid, "is": "ended"}]}


def nested(depth: int, job: str = "x") -> dict[str, Any]:
    condition: dict[str, Any] = {"job": job, "is": "ended"}
    for _ in range(depth - 1):
        condition = {"not": condition}
    return condition


@pytest.mark.parametrize(("condition", "place"), [
    ([], "when"),
    ({}, "when"),
    ({"job": J}, "when"),
    ({"job": J, "is": "done"}, "when.is"),
    ({"all": [{"job": 3, "is": "ended"}]}, "when.all[0].job"),
    ({"any": []}, "when.any"),
    ({"all": {"job": J, "is": "ended"}}, "when.all"),
    ({"all": [{"job": J, "is": "ended"}], "any": []}, "when"),
    ({"not": {"job": J, "is": "ended", "extra": 1}}, "when.not"),
    ({"any": [{"job": J, "is": "ended"}, {"nor": []}]}, "when.any[1]"),
])
def test_malformed_conditions_are_refused_naming_the_place(condition: Any, place: str) -> None:
    with pytest.raises(InvalidCondition) as raised:
        check(condition)
    assert raised.value.details["place"] == place
    assert raised.value.message.startswith(place)


def test_limits_on_size_and_depth() -> None:
    job = J
    assert list(check(nested(MAX_DEPTH, job))[1]) == [job]
    with pytest.raises(InvalidCondition, match="nested deeper than 32"):
        check(nested(MAX_DEPTH + 1, job))
    many = {"all": [{"job": job, "is": "ended"}] * MAX_ATOMS}
    assert check(many)[1] == {job: "when.all[0].job"}
    with pytest.raises(InvalidCondition, match=r"when.all\[1000\]: more than 1000 atoms"):
        check({"all": [{"job": job, "is": "ended"}] * (MAX_ATOMS + 1)})


# submit, release, cancellation ------------------------------------------------------------
def test_a_job_waits_until_its_condition_holds_then_is_queued(catalog: Catalog) -> None:
    a = catalog.submit("step", work(1)["data"])
    # b after a whatever their queued times (the same millisecond: the uuid would decide)
    b = catalog.submit("step", work(2)["data"], priority=2)
    c = catalog.submit("step", work(3)["data"], when=a.finished & b.finished)
    assert (c.state, c.queued, c.created) == ("WAITING", True, True)
    stored = catalog.get_job(c.uuid)
    assert stored.queue is not None and stored.queue.when == (a.finished & b.finished).json
    assert [(e.name, e.state) for e in stored.history] == [("create", "CREATED"),
                                                           ("wait", "WAITING")]
    # the same submission again is the same job, still waiting
    assert catalog.submit("step", work(3)["data"], when=a.finished).state == "WAITING"
    assert run(catalog, a.uuid) == "FINISHED"
    assert state(catalog, c.uuid) == "WAITING"
    assert run(catalog, b.uuid) == "FINISHED"
    assert state(catalog, c.uuid) == "QUEUED"
    assert [e.name for e in catalog.get_job(c.uuid).history][-1] == "queue"
    assert run(catalog, c.uuid) == "FINISHED"


def test_a_condition_already_true_queues_and_one_already_false_cancels(
        catalog: Catalog) -> None:
    a = catalog.submit("step", work(1)["data"], retries=0)
    assert run(catalog, a.uuid, "boom") == "FAILED"
    now = catalog.submit("step", work(2)["data"], when=a.failed)
    assert now.state == "QUEUED"
    never = catalog.submit("step", work(3)["data"], when=a.finished)
    assert never.state == "CANCELLED"
    job = catalog.get_job(never.uuid)
    assert job.queue is not None and job.queue.reason == (
        f"its condition can no longer be met: job {a.uuid} is FAILED")


def test_a_failure_cancels_down_the_graph_and_a_resubmission_after_the_fix_runs_the_rest(
        catalog: Catalog) -> None:
    a = submit(catalog, work(1))
    b = submit(catalog, work(2, retries=0, when=a.finished.json))
    c = submit(catalog, work(3, when=b.finished.json))
    d = submit(catalog, work(4, when=(b.failed | c.finished).json))
    e = submit(catalog, work(5, when=d.finished.json))
    assert [x.state for x in (b, c, d, e)] == ["WAITING"] * 4
    run(catalog, a.uuid)
    assert run(catalog, b.uuid, "bad input") == "FAILED"
    # c can never run; d runs because b failed; e still waits on d
    assert state(catalog, c.uuid) == "CANCELLED"
    reason = catalog.get_job(c.uuid).queue.reason  # type: ignore[union-attr]
    assert reason is not None and b.uuid in reason and "FAILED" in reason
    assert (state(catalog, d.uuid), state(catalog, e.uuid)) == ("QUEUED", "WAITING")
    cancel(catalog, d.uuid, "not needed")
    # cancelling by hand decides the dependents too, down the graph
    assert state(catalog, e.uuid) == "CANCELLED"
    assert d.uuid in (catalog.get_job(e.uuid).queue.reason or "")  # type: ignore[union-attr]

    # after the fix, the same script again: a is memoised, b queued again, the rest wait
    again = [submit(catalog, work(1)), submit(catalog, work(2, retries=0, when=a.finished.json)),
             submit(catalog, work(3, when=b.finished.json)),
             submit(catalog, work(4, when=(b.failed | c.finished).json)),
             submit(catalog, work(5, when=d.finished.json))]
    assert [(x.state, x.memoised) for x in again] == [
        ("FINISHED", True), ("QUEUED", False), ("WAITING", False), ("WAITING", False),
        ("WAITING", False)]
    for job in (b, c, d, e):
        assert run(catalog, job.uuid) == "FINISHED"


def test_conditions_are_checked_before_anything_is_stored(catalog: Catalog) -> None:
    a = submit(catalog, work(1))
    before = catalog.find_jobs(limit=100).items
    unknown = typed_uuid(UUIDType.pipelinejob, "nobody")
    with pytest.raises(InvalidCondition, match=rf"^when.all\[1\].job: no job {unknown}$"):
        submit(catalog, work(2, when={"all": [{"job": a.uuid, "is": "ended"},
                                              {"job": unknown, "is": "ended"}]}))
    with pytest.raises(InvalidCondition, match=r"when.is"):
        submit(catalog, work(2, when={"job": a.uuid, "is": "won"}))
    with pytest.raises(InvalidCondition, match="nested deeper"):
        submit(catalog, work(2, when=nested(40, a.uuid)))
    assert catalog.find_jobs(limit=100).items == before
    assert catalog.store.dependents(a.uuid) == []


def test_a_condition_that_would_wait_on_itself_is_refused(catalog: Catalog) -> None:
    a = submit(catalog, work(1))
    b = submit(catalog, work(2, when=a.finished.json))
    c = submit(catalog, work(3, when=b.finished.json))
    cancel(catalog, a.uuid)  # ends a: b and c cancelled, so a may be submitted again...
    assert state(catalog, c.uuid) == "CANCELLED"
    history_before = len(catalog.get_job(a.uuid).history)
    # ...but not waiting on c, which waits (through b) on a
    with pytest.raises(InvalidCondition, match="^when.job: a cycle") as raised:
        submit(catalog, work(1, when=c.finished.json))
    assert raised.value.details["cycle"] == [a.uuid, c.uuid, b.uuid, a.uuid]
    with pytest.raises(InvalidCondition, match="a cycle"):
        submit(catalog, work(1, when=a.finished.json))
    assert len(catalog.get_job(a.uuid).history) == history_before
    assert catalog.store.dependents(c.uuid) == []


def test_an_ending_webhook_event_releases_the_dependents(catalog: Catalog) -> None:
    a = ManagedPipelineJob(catalog, "step", {"outside": "the queue"}).setup()  # CREATED
    b = submit(catalog, work(2, when=Ref(a.uuid).ended.json))
    token = catalog.job_token(a.uuid)
    catalog.handle_event(a.uuid, {"name": "run"}, token, source="webhook")
    assert state(catalog, b.uuid) == "WAITING"
    catalog.handle_event(a.uuid, {"name": "fail", "data": {"error": "x"}}, token,
                         source="webhook")
    assert state(catalog, b.uuid) == "QUEUED"


def test_a_retried_failure_decides_nothing_until_it_is_final(catalog: Catalog) -> None:
    a = submit(catalog, work(1, retries=2))
    b = submit(catalog, work(2, when=a.finished.json))
    assert run(catalog, a.uuid, "flaky") == "QUEUED"
    assert state(catalog, b.uuid) == "WAITING"
    assert run(catalog, a.uuid, "flaky again") == "FAILED"
    assert state(catalog, b.uuid) == "CANCELLED"


# the property ------------------------------------------------------------------------------
def conditions(count: int) -> st.SearchStrategy[dict[str, Any] | None]:
    """A condition on jobs 0..count-1, as indices (made UUIDs once they exist)."""
    atom = st.builds(lambda job, is_: {"job": job, "is": is_},
                     st.integers(0, count - 1),
                     st.sampled_from(["finished", "failed", "cancelled", "ended"]))
    tree = st.recursive(atom, lambda inner: st.one_of(
        st.builds(lambda parts: {"all": parts}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda parts: {"any": parts}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda part: {"not": part}, inner)), max_leaves=6)
    return st.none() | tree


def named(condition: Any, uuids: list[str]) -> Any:
    if isinstance(condition, dict):
        return {key: uuids[value] if key == "job" else named(value, uuids)
                for key, value in condition.items()}
    if isinstance(condition, list):
        return [named(part, uuids) for part in condition]
    return condition


def play(url: str, graph: list[tuple[dict[str, Any] | None, bool]]) -> list[str]:
    """Submit the graph, run every job a worker can get, check the rules on the way; the
    final states in submission order."""
    catalog = Catalog.open(url, keys=KEYS, sqlite_synchronous="OFF")
    try:
        catalog.add_pipeline("step")
        uuids: list[str] = []
        outcomes: dict[str, bool] = {}
        whens: dict[str, Any] = {}
        for index, (condition, succeeds) in enumerate(graph):
            when = named(condition, uuids) if condition is not None else None
            outcome = submit(catalog, work(index, retries=0, when=when))
            uuids.append(outcome.uuid)
            outcomes[outcome.uuid] = succeeds
            whens[outcome.uuid] = when
        ran: set[str] = set()
        while (job := withdraw(catalog, {"pipelines": ["step"]}, "w")) is not None:
            when = whens[job.uuid]
            if when is not None:  # it runs only once its condition holds
                heads = {j: catalog.store.get_job(j, history=False) for _, _, j in atoms(when)}
                assert evaluate(when, heads) is Value.TRUE
            ran.add(job.uuid)
            end_attempt(catalog, job.uuid, "w", None if outcomes[job.uuid] else "no")
        heads = {u: catalog.store.get_job(u, history=False) for u in uuids}
        final: list[str] = []
        for index, uuid in enumerate(uuids):
            head = heads[uuid]
            assert head is not None and head["state"] != "WAITING"
            when = whens[uuid]
            value = Value.TRUE if when is None else evaluate(when, heads)
            # it ran exactly when its condition became true, and was cancelled otherwise
            assert (uuid in ran) == (value is Value.TRUE), (index, when)
            if head["state"] == "CANCELLED":
                assert value is Value.FALSE
                reason = head["queue"]["reason"]
                # its cause: a job its condition names, ended
                cause = [j for _, _, j in atoms(when) if f"job {j} is " in reason]
                assert cause and reason.startswith("its condition can no longer be met: job")
                assert f"job {cause[0]} is {heads[cause[0]]['state']}" in reason  # type: ignore[index]
            else:
                assert head["state"] == ("FINISHED" if outcomes[uuid] else "FAILED")
            final.append(head["state"])
        return final
    finally:
        catalog.close()


@st.composite
def graphs(draw: st.DrawFn) -> list[tuple[dict[str, Any] | None, bool]]:
    size = draw(st.integers(1, 200))
    graph: list[tuple[dict[str, Any] | None, bool]] = []
    for index in range(size):
        condition = draw(conditions(index)) if index else None
        graph.append((condition, draw(st.booleans())))
    return graph


@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(graphs())
def test_random_graphs_end_with_nothing_waiting_the_same_on_both_stores(
        graph: list[tuple[dict[str, Any] | None, bool]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        cwd = Path.cwd()
        os.chdir(directory)
        try:
            on_sqlite = play(f"sqlite:///{directory}/c.db", graph)
            on_mongo = play(f"mongomock://graph-{uuidlib.uuid4().hex}", graph)
        finally:
            os.chdir(cwd)
    assert on_sqlite == on_mongo
