"""The job state machine against the table of DESIGN §4, written out in full."""

from __future__ import annotations

import re

import pytest

from catalog.errors import EventNotAllowed, UnknownEvent
from catalog.states import (
    ADMIN_EVENTS,
    EVENTS,
    INITIAL_STATE,
    STATES,
    JobStateController,
    allowed_events,
    is_event,
    mermaid_diagram,
    next_state,
    trigger,
)

JOB = "10712345-0000-5000-8000-000000000000"

EVENT_ORDER = (
    "create", "wait", "queue", "run", "update", "resource", "fail", "retry", "cancel", "finish",
    "index", "indexed", "validate", "validated", "reject", "finalize", "retire", "reset", "ready",
)
# Every (state, event) pair: "-" refused, "=" accepted keeping the state, else the destination.
# Columns follow EVENT_ORDER (DESIGN §4, with the queue's states and events of §10).
TABLE = {
    #             create     wait       queue      run        update     resource   fail       retry      cancel     finish     index      indexed    validate   validated  reject     finalize   retire     reset      ready  # noqa: E501
    "CREATED":    "CREATED    WAITING    QUEUED     RUNNING    =          =          FAILED     -          CANCELLED  -          -          -          -          -          -          -          -          RESET      -",  # noqa: E501
    "WAITING":    "-          -          QUEUED     -          -          -          -          -          CANCELLED  -          -          -          -          -          -          -          -          RESET      -",  # noqa: E501
    "QUEUED":     "-          -          -          RUNNING    -          -          FAILED     -          CANCELLED  -          -          -          -          -          -          -          -          RESET      -",  # noqa: E501
    "RUNNING":    "-          -          -          RUNNING    =          =          FAILED     -          CANCELLED  FINISHED   -          -          -          -          -          -          -          RESET      -",  # noqa: E501
    "FAILED":     "-          WAITING    -          -          -          -          -          QUEUED     -          -          -          -          -          -          -          -          RETIRED    RESET      -",  # noqa: E501
    "FINISHED":   "-          -          -          -          -          -          -          -          -          FINISHED   INDEXING   FINISHED   VALIDATING -          -          -          RETIRED    RESET      -",  # noqa: E501
    "INDEXING":   "-          -          -          -          =          -          FAILED     -          -          -          INDEXING   FINISHED   -          -          -          -          -          RESET      -",  # noqa: E501
    "VALIDATING": "-          -          -          -          =          -          FAILED     -          -          -          -          -          -          VALIDATED  REJECTED   -          RETIRED    RESET      -",  # noqa: E501
    "VALIDATED":  "-          -          -          -          -          -          -          -          -          -          -          -          VALIDATING VALIDATED  -          FINALIZED  RETIRED    RESET      -",  # noqa: E501
    "REJECTED":   "-          -          -          -          -          -          -          -          -          -          -          -          -          -          -          -          RETIRED    RESET      -",  # noqa: E501
    "FINALIZED":  "-          -          -          -          -          -          -          -          -          -          -          -          -          -          -          -          RETIRED    RESET      -",  # noqa: E501
    "RETIRED":    "-          -          -          -          -          -          -          -          -          -          -          -          -          -          -          -          -          RESET      -",  # noqa: E501
    "CANCELLED":  "-          WAITING    QUEUED     -          -          -          -          -          -          -          -          -          -          -          -          -          RETIRED    RESET      -",  # noqa: E501
    "RESET":      "-          -          -          -          -          -          -          -          -          -          -          -          -          -          -          -          -          RESET      CREATED",  # noqa: E501
}


def expected_moves() -> dict[tuple[str, str], str | None]:
    """(state, event) -> destination, or None when refused, for all 14 x 19 pairs."""
    moves: dict[tuple[str, str], str | None] = {}
    for state, row in TABLE.items():
        cells = row.split()
        assert len(cells) == len(EVENT_ORDER), state
        for event, cell in zip(EVENT_ORDER, cells, strict=True):
            moves[(state, event)] = None if cell == "-" else state if cell == "=" else cell
    return moves


MOVES = expected_moves()
PAIRS = sorted(MOVES)
UNKNOWN_EVENTS = ["explode", "RUN", "Run", "", "delete", "purge", "start", " run", "run "]


def allowed_in(state: str) -> list[str]:
    return [event for event in EVENT_ORDER if MOVES[(state, event)] is not None]


def test_states_and_events_are_the_designed_ones() -> None:
    assert len(MOVES) == 14 * 19
    assert set(STATES) == set(TABLE)
    assert len(STATES) == 14
    assert EVENTS == EVENT_ORDER
    assert INITIAL_STATE == "CREATED"
    assert all(is_event(event) for event in EVENT_ORDER)


def test_admin_events() -> None:
    assert ADMIN_EVENTS == {"reset", "ready"}


@pytest.mark.parametrize(("state", "event"), PAIRS)
def test_next_state_follows_the_table(state: str, event: str) -> None:
    destination = MOVES[(state, event)]
    if destination is not None:
        assert next_state(JOB, state, event) == destination
        return
    with pytest.raises(EventNotAllowed) as caught:
        next_state(JOB, state, event)
    error = caught.value
    allowed = sorted(allowed_in(state))
    assert error.message == (
        f"event {event!r} is not allowed for job {JOB} in state {state}; "
        f"allowed events: {', '.join(allowed)}"
    )
    assert error.details == {"uuid": JOB, "event": event, "state": state, "allowed": allowed}
    assert (error.status, error.code) == (409, "event_not_allowed")


@pytest.mark.parametrize("state", list(TABLE))
def test_allowed_events_per_state(state: str) -> None:
    assert allowed_events(state) == tuple(allowed_in(state))


@pytest.mark.parametrize(("state", "event"), PAIRS)
def test_trigger_drives_the_machine_like_next_state(state: str, event: str) -> None:
    controller = JobStateController(state)
    try:
        expected = next_state(JOB, state, event)
    except EventNotAllowed as refused:
        with pytest.raises(EventNotAllowed) as caught:
            trigger(controller, event, JOB)
        assert caught.value.message == refused.message
        assert caught.value.details == refused.details
        assert controller.state == state
        return
    assert trigger(controller, event, JOB) == expected
    assert controller.state == expected == MOVES[(state, event)]


def test_trigger_leaves_controller_free_of_the_machine() -> None:
    controller = JobStateController()
    assert trigger(controller, "run") == "RUNNING"
    assert trigger(controller, "finish") == "FINISHED"
    assert trigger(controller, "index") == "INDEXING"
    assert controller.state == "INDEXING"
    # The controller can be driven again after each call (it is re-bound at its state).
    assert trigger(controller, "indexed") == "FINISHED"


@pytest.mark.parametrize("event", UNKNOWN_EVENTS)
@pytest.mark.parametrize("state", ["CREATED", "RESET", "RETIRED"])
def test_unknown_events(state: str, event: str) -> None:
    assert not is_event(event)
    with pytest.raises(UnknownEvent) as caught:
        next_state(JOB, state, event)
    assert caught.value.details == {"name": event, "known": sorted(EVENT_ORDER)}
    assert (caught.value.status, caught.value.code) == (422, "unknown_event")
    controller = JobStateController(state)
    with pytest.raises(UnknownEvent):
        trigger(controller, event, JOB)
    assert controller.state == state


EDGE_RE = re.compile(r"^\s*(\w+) --> (\w+): (.+)$")


def test_mermaid_diagram_draws_every_transition() -> None:
    text = mermaid_diagram()
    lines = text.splitlines()
    assert lines[0] == "---"
    assert lines[2] == "---"
    assert "stateDiagram-v2" in lines[3]
    drawn: set[tuple[str, str, str]] = set()
    for line in lines:
        match = EDGE_RE.match(line)
        if match is None:
            continue
        source, dest, labels = match.groups()
        for label in labels.split("|"):
            event = label.replace("[internal]", "").strip()
            drawn.add((source, event, dest))
    expected = {
        (state, event, dest) for (state, event), dest in MOVES.items() if dest is not None
    }
    assert drawn == expected
    stripped = {line.strip() for line in lines}
    assert {f'state "{state}" as {state}' for state in TABLE} <= stripped
    assert "[*] --> CREATED" in stripped
