"""The job state machine, defined once (DESIGN §4).

``TRANSITIONS`` is the table; the ``transitions`` Machine is built from it and every other view
(the lookup used on the hot path, allowed events per state, the mermaid diagram) is derived from
that machine, so nothing can drift from the table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from transitions import Machine

from catalog.errors import EventNotAllowed, UnknownEvent

STATES = (
    "CREATED",
    "WAITING",
    "QUEUED",
    "RUNNING",
    "FAILED",
    "FINISHED",
    "INDEXING",
    "VALIDATING",
    "VALIDATED",
    "REJECTED",
    "FINALIZED",
    "RETIRED",
    "CANCELLED",
    "RESET",
)
INITIAL_STATE = "CREATED"

# (event, allowed source states, destination; None keeps the state unchanged)
TRANSITIONS: tuple[tuple[str, tuple[str, ...], str | None], ...] = (
    ("create", ("CREATED",), "CREATED"),
    # The queue (DESIGN §10): submit sends wait or queue, a worker's withdraw sends run.
    # A failed or cancelled job submitted again waits if its condition is not yet met.
    ("wait", ("CREATED", "FAILED", "CANCELLED"), "WAITING"),
    ("queue", ("CREATED", "WAITING", "CANCELLED"), "QUEUED"),
    ("run", ("CREATED", "QUEUED", "RUNNING"), "RUNNING"),
    ("update", ("CREATED", "RUNNING", "VALIDATING", "INDEXING"), None),
    ("resource", ("CREATED", "RUNNING"), None),
    ("fail", ("CREATED", "QUEUED", "RUNNING", "VALIDATING", "INDEXING"), "FAILED"),
    ("retry", ("FAILED",), "QUEUED"),
    ("cancel", ("CREATED", "WAITING", "QUEUED", "RUNNING"), "CANCELLED"),
    ("finish", ("RUNNING", "FINISHED"), "FINISHED"),
    ("index", ("FINISHED", "INDEXING"), "INDEXING"),
    ("indexed", ("FINISHED", "INDEXING"), "FINISHED"),
    ("validate", ("FINISHED", "VALIDATED"), "VALIDATING"),
    ("validated", ("VALIDATING", "VALIDATED"), "VALIDATED"),
    ("reject", ("VALIDATING",), "REJECTED"),
    ("finalize", ("VALIDATED",), "FINALIZED"),
    (
        "retire",
        ("FAILED", "FINISHED", "VALIDATING", "VALIDATED", "REJECTED", "FINALIZED", "CANCELLED"),
        "RETIRED",
    ),
    ("reset", STATES, "RESET"),
    ("ready", ("RESET",), "CREATED"),
)
ADMIN_EVENTS = frozenset({"reset", "ready"})
# Events only the queue sends (submit, sweep, cancel), and where to ask for them instead: as
# plain events they would bypass the attempt count, the lease and the running process.
QUEUE_EVENTS = {
    "wait": "'catalog submit' (POST /queue/jobs) with a condition",
    "queue": "'catalog submit' (POST /queue/jobs)",
    "retry": "'catalog retry' (POST /jobs/{uuid}/retry)",
    "cancel": "'catalog cancel' (POST /jobs/{uuid}/cancel)",
}
# States a job's work has ended in, for good or until someone acts on it.
ENDED_STATES = frozenset({"FINISHED", "INDEXING", "VALIDATING", "VALIDATED", "REJECTED",
                          "FINALIZED", "RETIRED", "FAILED", "CANCELLED", "RESET"})
EVENTS = tuple(event for event, _, _ in TRANSITIONS)


def _machine_spec() -> dict[str, Any]:
    return {
        "states": list(STATES),
        "transitions": [
            {"trigger": event, "source": list(sources), "dest": dest}
            for event, sources, dest in TRANSITIONS
        ],
        "initial": INITIAL_STATE,
        "auto_transitions": False,
        "send_event": True,
    }


class JobStateController:
    """The plain object the machine is bound to (never a pydantic model, see STYLE.md)."""

    state: str

    def __init__(self, state: str = INITIAL_STATE) -> None:
        self.state = state


@dataclass(frozen=True)
class _Table:
    moves: dict[tuple[str, str], str]
    allowed: dict[str, tuple[str, ...]]


@lru_cache(maxsize=1)
def machine() -> Machine:
    return Machine(model=None, **_machine_spec())


@lru_cache(maxsize=1)
def _table() -> _Table:
    """Derive the (state, event) -> state lookup from the machine itself."""
    built = machine()
    moves: dict[tuple[str, str], str] = {}
    for name, event in built.events.items():
        for source, transitions in event.transitions.items():
            for transition in transitions:
                moves[(source, name)] = transition.dest or source
    allowed = {
        state: tuple(e for e in EVENTS if (state, e) in moves) for state in STATES
    }
    return _Table(moves, allowed)


def allowed_events(state: str) -> tuple[str, ...]:
    """Events the given state accepts, in table order."""
    return _table().allowed.get(state, ())


def is_event(name: str) -> bool:
    return name in EVENTS


def next_state(uuid: str, state: str, event: str) -> str:
    """The state after ``event``; raises UnknownEvent or EventNotAllowed (naming what is)."""
    if event not in EVENTS:
        raise UnknownEvent(event, EVENTS)
    dest = _table().moves.get((state, event))
    if dest is None:
        raise EventNotAllowed(uuid, event, state, allowed_events(state))
    return dest


def trigger(controller: JobStateController, event: str, uuid: str = "") -> str:
    """Drive a controller through the machine itself (used by tests and tools, not hot paths)."""
    if event not in EVENTS:
        raise UnknownEvent(event, EVENTS)
    built = machine()
    built.add_model(controller, initial=controller.state)
    try:
        if not getattr(controller, f"may_{event}")():
            raise EventNotAllowed(uuid, event, controller.state, allowed_events(controller.state))
        getattr(controller, event)()
        return controller.state
    finally:
        built.remove_model(controller)


def mermaid_diagram() -> str:
    """A mermaid ``stateDiagram-v2`` generated from the machine (for the README)."""
    from transitions.extensions import GraphMachine

    graph = GraphMachine(model=None, graph_engine="mermaid", title="Job states",
                         show_state_attributes=False, **_machine_spec())
    controller = JobStateController()
    graph.add_model(controller)
    text: str = controller.get_graph().draw(None)  # type: ignore[attr-defined]
    # Styling classes (and the active-state highlight) are noise in a static diagram.
    lines = [line.rstrip() for line in text.splitlines()
             if not line.strip().startswith(("classDef ", "Class "))]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"
