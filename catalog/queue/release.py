"""Release and cancellation (DESIGN §11): when a job ends, the jobs waiting on it are decided.

Only the dependents the reverse index names are read, so an event on a job nobody waits on
costs one index lookup. A WAITING job whose condition became true gets ``queue``; false,
``cancel`` with the reason (which job, which state), and its own dependents are decided in
turn, so a cancellation runs down the graph in one pass (a loop, never a recursion).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from catalog.queue.conditions import Value, atoms, cause, evaluate, has_ended
from catalog.states import ENDED_STATES, next_state
from catalog.store.values import Applied, ClaimLost, Decide, Doc

if TYPE_CHECKING:
    from catalog.catalog import Catalog

SOURCE = "queue"


def after_event(catalog: Catalog, uuid: str, applied: Applied) -> None:
    """Decide ``uuid``'s dependents if the event ended it (every path that applies an event
    calls this after its commit)."""
    if applied.duplicate or applied.entry["state"] not in ENDED_STATES:
        return
    release(catalog, uuid)


def release(catalog: Catalog, uuid: str) -> list[tuple[str, str]]:
    """Decide the jobs waiting on ``uuid`` (if it has ended), and on those cancelled, down
    the graph: the (job, new state) pairs of what moved. Wakes this process's waiters.

    A round decides every dependent of the jobs that ended in the round before, together
    (``apply_events``: a few commits for thousands of dependents, each condition evaluated in
    its job's compare-and-set on the head the store reads for it); the jobs it cancelled
    end the next round's jobs. A loop, never a recursion."""
    from catalog.queue.waits import announce

    announce(catalog)
    moved: list[tuple[str, str]] = []
    ended = [uuid]
    while ended:
        waiting: list[str] = []
        for job in ended:
            dependents = catalog.store.dependents(job)
            if not dependents:
                continue
            head = catalog.store.get_job(job, history=False)
            if head is not None and not has_ended(head):
                continue  # a failure the queue retries, or re-queued meanwhile
            waiting.extend(dependents)
        heads = _Heads(catalog)
        waiting = list(dict.fromkeys(waiting))
        outcomes = catalog.store.apply_events(
            [(dependent, None, _decider(catalog, dependent, heads)) for dependent in waiting])
        ended = []
        for dependent, outcome in zip(waiting, outcomes, strict=True):
            if isinstance(outcome, Applied):
                state = str(outcome.entry["state"])
                moved.append((dependent, state))
                if state == "CANCELLED":
                    ended.append(dependent)
            elif not isinstance(outcome, ClaimLost):
                raise outcome
        if ended:
            announce(catalog)
    return moved


class _Heads(dict[str, Doc | None]):
    """The heads of the jobs a round's conditions name, each read once (a fan-out of 50,000
    dependents names the same job 50,000 times)."""

    def __init__(self, catalog: Catalog) -> None:
        super().__init__()
        self.catalog = catalog

    def __missing__(self, uuid: str) -> Doc | None:
        head = self.catalog.store.get_job(uuid, history=False)
        self[uuid] = head
        return head


def _decider(catalog: Catalog, uuid: str, heads: _Heads) -> Decide:
    """The decide of a WAITING job's release: ``queue`` when its condition holds, ``cancel``
    (with the cause) when it can no longer; ClaimLost (nothing to do) otherwise."""

    def decide(current: Doc) -> tuple[str, Doc, Doc]:
        queue = current.get("queue") or {}
        condition = queue.get("when")
        if current["state"] != "WAITING" or not condition:
            raise ClaimLost(uuid)  # decided meanwhile by another release, or not waiting
        named = {job: heads[job] for _, _, job in atoms(condition)}
        value = evaluate(condition, named)
        if value is Value.PENDING:
            raise ClaimLost(uuid)
        return _decision(catalog, uuid, current, condition, value, named)

    return decide


def _decision(catalog: Catalog, uuid: str, current: Doc, condition: dict[str, Any],
              value: Value, heads: Mapping[str, Doc | None]) -> tuple[str, Doc, Doc]:
    """The event deciding a WAITING job whose condition is ``value`` (TRUE or FALSE)."""
    queue = dict(current["queue"])
    if value is Value.TRUE:
        state = next_state(uuid, current["state"], "queue")
        entry = catalog.history_entry(uuid, "queue", {"condition": "true"}, SOURCE, state)
        return state, entry, {"queue": {**queue, "queued": entry["date"]}}
    reason = f"its condition can no longer be met: {cause(condition, heads)}"
    state = next_state(uuid, current["state"], "cancel")
    entry = catalog.history_entry(uuid, "cancel", {"reason": reason}, SOURCE, state)
    return state, entry, {"queue": {**queue, "reason": reason}}


def settle(catalog: Catalog, uuid: str) -> str | None:
    """Queue or cancel a WAITING job whose condition is decided; its new state, or None
    when it stays as it is (not waiting, or its condition still pending)."""
    head = catalog.store.get_job(uuid, history=False)
    if head is None or head["state"] != "WAITING" or not (head.get("queue") or {}).get("when"):
        return None
    condition: dict[str, Any] = head["queue"]["when"]
    heads = {job: catalog.store.get_job(job, history=False) for _, _, job in atoms(condition)}
    value = evaluate(condition, heads)
    if value is Value.PENDING:
        return None

    def decide(current: Doc) -> tuple[str, Doc, Doc]:
        if current["state"] != "WAITING":
            raise ClaimLost(uuid)  # decided meanwhile by another release
        return _decision(catalog, uuid, current, condition, value, heads)

    try:
        applied = catalog.store.apply_event(uuid, None, decide)
    except ClaimLost:
        return None
    return str(applied.entry["state"])
