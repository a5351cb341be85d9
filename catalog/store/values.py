"""The values that cross the Store protocol (``catalog.store.base``): records as JSON-ready
dicts, the decide a store runs inside its atomic section, listing queries and pages, and the
outcomes and batches its writes take and give."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from catalog.errors import InvalidInput

Doc = dict[str, Any]

# Called with the job's head {"uuid", "state", "version", "last_event", "queue"}; returns the new
# state and the history entry to append (whose "state" is the new state), and optionally the
# job fields the event replaces whole (only those in ``CHANGEABLE``; None clears one), or raises
# to write nothing.
Decide = Callable[[Doc], tuple[str, Doc] | tuple[str, Doc, Doc]]
CHANGEABLE = ("queue", "results")


class ClaimLost(Exception):
    """Raised by a claim's decide when the candidate left QUEUED meanwhile: try the next."""


def decided(outcome: tuple[str, Doc] | tuple[str, Doc, Doc]) -> tuple[str, Doc, Doc]:
    """A decide's outcome with its changes (empty when it gave none), changes checked."""
    if len(outcome) == 2:
        return outcome[0], outcome[1], {}
    state, entry, changes = outcome
    unknown = set(changes) - set(CHANGEABLE)
    if unknown:
        raise ValueError(f"an event cannot change {sorted(unknown)}")
    return state, entry, changes

MAX_LIMIT = 1000
LinkSource = Literal["job", "file", "entity"]
Link = tuple[str, str, list[str]]  # (src, relation, targets), as add_links takes them


def check_limit(limit: int) -> None:
    """Refuse page sizes outside 1..MAX_LIMIT (databases read 0 or -1 as "no limit")."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")


# Orders a listing can have: a field and a direction ("-" first: descending); the uuid breaks
# ties. Only fields that never change once written, so that paging by cursor cannot skip or
# repeat a record however the catalog changes meanwhile (state or updated would move).
JOB_SORTS = ("created", "-created")
FILE_SORTS = ("path", "-path", "created", "-created")


def check_sort(sort: str, allowed: tuple[str, ...]) -> tuple[str, bool]:
    """The field and direction (True: descending) of a sort name."""
    if sort not in allowed:
        raise InvalidInput(f"sort must be one of {', '.join(allowed)}, not {sort!r}")
    return sort.lstrip("-"), sort.startswith("-")


@dataclass(frozen=True)
class JobQuery:
    """Filters for listing jobs; results are ordered by ``sort`` then uuid.

    ``created_after`` is inclusive and ``created_before`` exclusive (dates in the stored
    text form), so consecutive windows tile without overlap.
    """

    state: str | None = None
    pipeline_uuid: str | None = None
    child_of: str | None = None
    agent: str | None = None
    created_after: str | None = None
    created_before: str | None = None
    sort: str = "created"
    limit: int = 100
    cursor: str | None = None

    def __post_init__(self) -> None:
        check_limit(self.limit)
        check_sort(self.sort, JOB_SORTS)


@dataclass
class Page:
    """One page of results and the opaque cursor of the next (None at the end)."""

    items: list[Doc] = field(default_factory=list)
    next: str | None = None


@dataclass(frozen=True)
class Applied:
    """The outcome of ``apply_event``: the history entry, and whether it was seen before."""

    entry: Doc
    duplicate: bool


class Claimed(NamedTuple):
    """A claim's outcome: the job's uuid, its ``run`` entry, and the job as the claim left it
    (its head and document, without history or link lists: what a worker needs to run it)."""

    uuid: str
    applied: Applied
    job: Doc


@dataclass
class Move:
    """Entries appended to an existing job by a batch of submissions, and the head they
    leave: ``state`` and ``queue`` after the last entry, on the head read at ``read_version``."""

    uuid: str
    read_version: int
    state: str
    entries: list[Doc]
    queue: Doc | None


@dataclass
class Submissions:
    """What a batch of submissions writes, decided on the heads read in the same atomic
    section: new jobs (each with its whole history), moves of existing ones, and the
    reverse index's (dependency, dependent) pairs."""

    jobs: list[Doc] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)
    dependencies: list[tuple[str, str]] = field(default_factory=list)


# Called with the heads ({"uuid", "state", "version", "last_event", "queue"}) of the jobs
# asked for that exist; returns what to write, or raises to write nothing.
PlanSubmissions = Callable[[dict[str, Doc]], Submissions]
# Called with the heads of jobs whose lease expired, soonest first; returns the moves to write
# (a job it leaves out stays as it is).
PlanSweep = Callable[[list[Doc]], list[Move]]
