"""One OpenLineage event's writes, handed to a store whole (``Store.apply_lineage``).

An OpenLineage run event is several writes: its job's pipeline and the run's job (each stored
if absent), the job's events (an implied ``run`` first, when a COMPLETE or FAIL finds the run
never started), the refusal of an event the job's state no longer takes (to the audit log),
and the event itself with its datasets and links. Made one by one, they cost a durable commit
each, and a crash between them left a job without its datasets. ``LineageWrite`` carries them
all, so that SQLite applies them in ONE transaction (committed with whatever else is queued:
``catalog.store.sqlite``) and MongoDB in as few round trips as its writes allow.

The decisions stay with the catalog: each step's ``decide`` (the state machine), ``only_in``
(the state a step needs, or it is skipped) and ``refused`` (whether a refusal of the last step
is kept as an audit entry rather than raised). ``run_steps`` applies the steps the same way
for every backend, given its own ``apply_event`` and audit append.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from catalog.errors import CatalogError
from catalog.store.values import Applied, Decide, Doc, Link, decided


@dataclass(frozen=True)
class LineageStep:
    """One event for the run's job; with ``only_in``, applied only in that state."""

    event_id: str
    decide: Decide
    only_in: str | None = None


@dataclass
class LineageWrite:
    """What one OpenLineage event writes (see the module docstring)."""

    record: Doc  # the event as kept (``add_lineage_event``'s doc; ``record_as`` below)
    entities: list[Doc] = field(default_factory=list)
    links: Sequence[Link] = ()
    pipeline: Doc | None = None  # stored if absent
    job: Doc | None = None  # a new job with its history, stored if absent
    uuid: str | None = None  # the job the steps go to
    steps: Sequence[LineageStep] = ()
    # The audit entry keeping a refusal of the last step (then the record is kept all the
    # same), or None: the refusal is raised and nothing is written.
    refused: Callable[[CatalogError], Doc | None] | None = None

    def record_as(self, refusal: CatalogError | None) -> Doc:
        """The record as kept: with ``applied`` false when its last step was refused."""
        return self.record if refusal is None else {**self.record, "applied": False}


@dataclass
class LineageApplied:
    """What ``apply_lineage`` did: whether the record was new, the last step's outcome (None
    when refused, with the refusal and the job's ``state`` and ``last_event`` as they stay)."""

    new: bool
    applied: Applied | None = None
    refusal: CatalogError | None = None
    head: Doc | None = None


class _NotInState(Exception):
    """A step's ``only_in`` does not hold: it is skipped, writing nothing."""


def _only_in(state: str, decide: Decide) -> Decide:
    def guarded(head: Doc) -> tuple[str, Doc] | tuple[str, Doc, Doc]:
        if head["state"] != state:
            raise _NotInState(state)
        return decide(head)

    return guarded


def run_steps(write: LineageWrite, apply_event: Callable[[str, str, Decide], Applied],
              append_audit: Callable[[Doc], None]) -> tuple[Applied | None, CatalogError | None]:
    """Apply ``write``'s steps in order; the last one's outcome, or its kept refusal."""
    applied: Applied | None = None
    for index, step in enumerate(write.steps):
        assert write.uuid is not None, "steps need the job they go to"
        decide = step.decide if step.only_in is None else _only_in(step.only_in, step.decide)
        try:
            applied = apply_event(write.uuid, step.event_id, decide)
        except _NotInState:
            continue
        except CatalogError as exc:
            last = index == len(write.steps) - 1
            audit = write.refused(exc) if last and write.refused is not None else None
            if audit is None:
                raise
            append_audit(audit)
            return None, exc
    return applied, None


def applied_to_new_job(write: LineageWrite) -> tuple[Doc, Applied | None] | None:
    """``write.job`` with ``write.steps`` applied to it, as a store applies them to the job once
    stored (its head moved, its history grown, ``updated`` the last entry's date), and the last
    step's outcome: a new job is then ONE insert, not an insert, then a read and an update
    per step. None when a step does more than that (a queue or results change) or is
    refused: then the job is stored as built and the steps applied to it (``run_steps``)."""
    job = write.job
    if job is None or not write.steps:
        return None
    assert write.uuid == job["uuid"], "the steps go to the new job"
    head = {"uuid": job["uuid"], "state": job["state"], "version": job["version"],
            "last_event": job["last_event"], "queue": job.get("queue")}
    history = list(job["history"])
    seen = {entry["event_id"] for entry in history}
    applied: Applied | None = None
    for step in write.steps:
        if step.event_id in seen:
            return None  # a duplicate: run_steps answers it as one
        decide = step.decide if step.only_in is None else _only_in(step.only_in, step.decide)
        try:
            state, entry, changes = decided(decide(head))
        except _NotInState:
            continue
        except CatalogError:
            return None
        if changes or entry["event_id"] in seen:
            return None
        seen.add(entry["event_id"])
        history.append(entry)
        head = {**head, "state": state, "version": head["version"] + 1,
                "last_event": entry["name"]}
        applied = Applied(entry, duplicate=False)
    if applied is None:
        return None
    return {**job, "state": head["state"], "version": head["version"],
            "last_event": head["last_event"], "updated": applied.entry["date"],
            "history": history}, applied
