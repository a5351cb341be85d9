"""Conditions on other jobs (DESIGN §11): their JSON form, its checks and its evaluation.

A condition is an atom ``{"job": UUID, "is": "finished" | "failed" | "cancelled" | "ended"}``
or ``{"all": [...]}``, ``{"any": [...]}``, ``{"not": ...}`` of conditions. Each atom is TRUE,
FALSE (it can no longer become true: the job ended otherwise) or PENDING (the job has not
ended); ``all``, ``any`` and ``not`` follow Kleene's three-valued logic. Unlike park's ``Not``,
``not X`` is true only once X is false, never while X is pending (Slurm's ``afternotok``).

The Python form: ``Ref(uuid).finished & ~Ref(other).failed`` (or a submission's outcome's
``.finished``) builds the same JSON form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from enum import Enum
from typing import Any

from catalog.errors import CatalogError, InvalidCondition
from catalog.identifiers import UUIDType, parse_uuid
from catalog.states import ENDED_STATES

MAX_ATOMS = 1000
MAX_DEPTH = 32
OUTCOMES = ("finished", "failed", "cancelled", "ended")
# A job in one of these has run to success (catalog.queue.core.DONE_STATES).
_SUCCESS = frozenset({"FINISHED", "INDEXING", "VALIDATING", "VALIDATED", "FINALIZED"})
Condition = dict[str, Any]


class Value(Enum):
    FALSE = 0
    PENDING = 1
    TRUE = 2


# checking ---------------------------------------------------------------------------------
def check(condition: Any) -> tuple[Condition, dict[str, str]]:
    """The condition in its canonical JSON form and the jobs it names, each with the place
    it is first named (``when.all[0].job``), in order;
    InvalidCondition, naming the place (``when.all[2].job``), for anything malformed, more
    than MAX_ATOMS atoms or a nesting deeper than MAX_DEPTH."""
    jobs: dict[str, str] = {}
    atoms = [0]
    canonical = _check(condition, "when", 1, jobs, atoms)
    return canonical, jobs


def _check(node: Any, place: str, depth: int, jobs: dict[str, str],
           atoms: list[int]) -> Condition:
    if depth > MAX_DEPTH:
        raise InvalidCondition(f"{place}: nested deeper than {MAX_DEPTH}", place=place)
    if not isinstance(node, dict) or len(node) == 0:
        raise InvalidCondition(f"{place}: a condition is an object: an atom "
                               "{\"job\", \"is\"} or one of all, any, not", place=place)
    keys = set(node)
    if keys == {"job", "is"}:
        atoms[0] += 1
        if atoms[0] > MAX_ATOMS:
            raise InvalidCondition(f"{place}: more than {MAX_ATOMS} atoms", place=place)
        if node["is"] not in OUTCOMES:
            raise InvalidCondition(f"{place}.is: {node['is']!r} is not one of "
                                   f"{', '.join(OUTCOMES)}", place=f"{place}.is")
        if not isinstance(node["job"], str):
            raise InvalidCondition(f"{place}.job: a job UUID is a string", place=f"{place}.job")
        try:
            uuid = parse_uuid(node["job"], UUIDType.pipelinejob)
        except CatalogError as exc:
            raise InvalidCondition(f"{place}.job: {exc}", place=f"{place}.job") from exc
        jobs.setdefault(uuid, f"{place}.job")
        return {"job": uuid, "is": node["is"]}
    if keys in ({"all"}, {"any"}):
        (key,) = keys
        parts = node[key]
        if not isinstance(parts, list) or not parts:
            raise InvalidCondition(f"{place}.{key}: a non-empty list of conditions",
                                   place=f"{place}.{key}")
        return {key: [_check(part, f"{place}.{key}[{i}]", depth + 1, jobs, atoms)
                      for i, part in enumerate(parts)]}
    if keys == {"not"}:
        return {"not": _check(node["not"], f"{place}.not", depth + 1, jobs, atoms)}
    raise InvalidCondition(f"{place}: unknown keys {sorted(map(str, keys))}; expected job "
                           "and is, or one of all, any, not", place=place)


def find_cycle(uuid: str, jobs: list[str], condition_of: Callable[[str], Condition | None]
               ) -> list[str] | None:
    """A path from one of ``jobs`` back to ``uuid`` through the stored conditions, if any:
    ``uuid`` waiting on it would wait for ever."""
    parents: dict[str, str | None] = {job: None for job in jobs}
    stack = list(jobs)
    while stack:
        job = stack.pop()
        if job == uuid:
            path = [job]
            parent = parents[job]
            while parent is not None:
                path.append(parent)
                parent = parents[parent]
            return [uuid, *reversed(path)]
        condition = condition_of(job)
        if condition is None:
            continue
        for _, _, named in atoms(condition):
            if named not in parents:
                parents[named] = job
                stack.append(named)
    return None


def atoms(condition: Condition) -> Iterator[tuple[Condition, str, str]]:
    """Each atom of ``condition`` with its ``is`` and its job."""
    if "job" in condition:
        yield condition, str(condition["is"]), str(condition["job"])
        return
    if "not" in condition:
        yield from atoms(condition["not"])
        return
    for part in condition.get("all") or condition.get("any") or ():
        yield from atoms(part)


# evaluating --------------------------------------------------------------------------------
def has_ended(head: Mapping[str, Any]) -> bool:
    """Whether a job's work has ended: a failure is not final while the queue will retry it."""
    state = head["state"]
    if state not in ENDED_STATES:
        return False
    if state == "FAILED":
        queue = head.get("queue") or {}
        attempt = int(queue.get("attempt", 0))
        return not 0 < attempt < int(queue.get("retries", 0))
    return True


def outcome(state: str) -> str:
    """How an ended job ended, in the atoms' words (RETIRED, REJECTED, RESET: none of them)."""
    if state in _SUCCESS:
        return "finished"
    if state == "FAILED":
        return "failed"
    if state == "CANCELLED":
        return "cancelled"
    return "other"


def atom_value(expected: str, head: Mapping[str, Any] | None) -> Value:
    if head is None:  # deleted by an administrator: it will never end as asked
        return Value.FALSE
    if not has_ended(head):
        return Value.PENDING
    if expected == "ended" or outcome(head["state"]) == expected:
        return Value.TRUE
    return Value.FALSE


def evaluate(condition: Condition, heads: Mapping[str, Mapping[str, Any] | None]) -> Value:
    """The condition's value, given the named jobs' heads (None: no such job)."""
    if "job" in condition:
        return atom_value(condition["is"], heads.get(condition["job"]))
    if "not" in condition:
        inner = evaluate(condition["not"], heads)
        return Value(2 - inner.value)
    values = [evaluate(part, heads) for part in condition.get("all") or condition["any"]]
    return min(values, key=lambda v: v.value) if "all" in condition else \
        max(values, key=lambda v: v.value)


def cause(condition: Condition, heads: Mapping[str, Mapping[str, Any] | None]) -> str:
    """Why a condition is false, in words: the first decided atom that made it so."""
    for _, _expected, job in atoms(condition):
        head = heads.get(job)
        if head is None:
            return f"job {job} no longer exists"
        if has_ended(head):
            return f"job {job} is {head['state']}"
    return "no job it names can end as asked"  # pragma: no cover - a false value has one


# the Python form ---------------------------------------------------------------------------
class Expr:
    """A condition being written in Python: combine with ``&``, ``|`` and ``~``."""

    def __init__(self, json: Condition) -> None:
        self.json = json

    def __and__(self, other: Expr) -> Expr:
        return Expr({"all": [*_flat(self.json, "all"), *_flat(as_json(other), "all")]})

    def __or__(self, other: Expr) -> Expr:
        return Expr({"any": [*_flat(self.json, "any"), *_flat(as_json(other), "any")]})

    def __invert__(self) -> Expr:
        return Expr({"not": self.json})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expr) and other.json == self.json

    def __hash__(self) -> int:
        return hash(repr(self.json))

    def __repr__(self) -> str:
        return f"Expr({self.json!r})"


def _flat(json: Condition, key: str) -> list[Condition]:
    return list(json[key]) if set(json) == {key} else [json]


def as_json(when: Expr | Condition) -> Condition:
    return when.json if isinstance(when, Expr) else when


class Ref:
    """A job named in a condition: ``Ref(uuid).finished``, ``.failed``, ``.cancelled``,
    ``.ended``."""

    def __init__(self, uuid: str) -> None:
        self.uuid = uuid

    @property
    def finished(self) -> Expr:
        return Expr({"job": self.uuid, "is": "finished"})

    @property
    def failed(self) -> Expr:
        return Expr({"job": self.uuid, "is": "failed"})

    @property
    def cancelled(self) -> Expr:
        return Expr({"job": self.uuid, "is": "cancelled"})

    @property
    def ended(self) -> Expr:
        return Expr({"job": self.uuid, "is": "ended"})
