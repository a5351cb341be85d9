"""The Store protocol: the small persistence contract every backend fulfils.

Documents cross this boundary as plain JSON-ready dicts (dates as ``...T..:..:..mmmZ`` text),
already validated by the models; stores never make business decisions. The one decision taken
inside a store's atomic section is the state transition, handed in as ``decide`` so that each
backend can run it under its own concurrency control (a write transaction in SQLite, a
compare-and-set on ``version`` retried on conflict in MongoDB).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from catalog.errors import EntityNotFound, InvalidInput, JobNotFound, NotFound
from catalog.identifiers import UUIDType

Doc = dict[str, Any]

# Called with the job's head {"uuid", "state", "version", "last_event"}; returns the new state and
# the history entry to append (whose "state" is the new state), or raises to write nothing.
Decide = Callable[[Doc], tuple[str, Doc]]

MAX_LIMIT = 1000
# Relations kept as edges so both directions can be queried (DESIGN §5); each is also a list
# field of the document it starts from.
JOB_LINK_FIELDS = ("child_of", "generated_by", "acted_on", "acted_using")
ENTITY_LINK_FIELDS = ("child_of", "generated_by", "derived_from", "derived_using")


def check_limit(limit: int) -> None:
    """Refuse page sizes outside 1..MAX_LIMIT (databases read 0 or -1 as "no limit")."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")


@dataclass(frozen=True)
class JobQuery:
    """Filters for listing jobs; results are ordered by (created, uuid)."""

    state: str | None = None
    pipeline_uuid: str | None = None
    child_of: str | None = None
    limit: int = 100
    cursor: str | None = None

    def __post_init__(self) -> None:
        check_limit(self.limit)


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


def check_new_job(doc: Doc) -> None:
    if doc["version"] != len(doc.get("history", [])):
        raise ValueError("a job's version must equal the number of its history entries")


def is_job(uuid: str) -> bool:
    """Whether a link's source is a job (else an entity), told by its typed-UUID prefix."""
    return uuid[:3] == UUIDType.pipelinejob.prefix


def check_link(src: str, relation: str) -> bool:
    """Check ``relation`` can start from ``src``; True when ``src`` is a job."""
    job = is_job(src)
    fields = JOB_LINK_FIELDS if job else ENTITY_LINK_FIELDS
    if relation not in fields:
        raise InvalidInput(
            f"{'a job' if job else 'an entity'} has no {relation!r} links; "
            f"relations: {', '.join(fields)}"
        )
    return job


def link_source_not_found(src: str) -> NotFound:
    return JobNotFound(src) if is_job(src) else EntityNotFound(src)


def unique(values: list[str]) -> list[str]:
    """``values`` without repeats, in first-seen order."""
    return list(dict.fromkeys(values))


def encode_cursor(*key: str) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, size: int) -> list[str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError):
        raise InvalidInput(f"cursor {cursor!r} is not valid") from None
    if not (isinstance(key, list) and len(key) == size and all(isinstance(k, str) for k in key)):
        raise InvalidInput(f"cursor {cursor!r} is not valid")
    return key


def page_of(rows: list[Doc], limit: int, *key_fields: str) -> Page:
    """Turn ``limit + 1`` fetched rows into a page and the cursor after its last item."""
    if len(rows) <= limit:
        return Page(rows, None)
    items = rows[:limit]
    last = items[-1]
    return Page(items, encode_cursor(*(str(last[f]) for f in key_fields)))


class Store(Protocol):
    """What the catalog needs from a database."""

    kind: str

    def close(self) -> None: ...

    # pipelines ---------------------------------------------------------------------------
    def insert_pipeline(self, doc: Doc) -> tuple[Doc, bool]:
        """Insert if no pipeline has this uuid; return the stored doc and whether it is new."""
        ...

    def get_pipeline(self, uuid: str) -> Doc | None: ...

    def find_pipelines(self, name: str | None = None, limit: int = 100,
                       cursor: str | None = None) -> Page:
        """Pipelines (optionally of one name) ordered by (name, uuid)."""
        ...

    # jobs --------------------------------------------------------------------------------
    def insert_job(self, doc: Doc) -> tuple[Doc, bool]:
        """Insert if absent; return the stored doc and whether it is new.

        ``doc`` carries its history so far, and ``version == len(doc["history"])``: a job's
        version always counts its history entries.
        """
        ...

    def get_job(self, uuid: str, history: bool = True) -> Doc | None: ...

    def find_jobs(self, query: JobQuery) -> Page:
        """Jobs without their history, filtered and ordered by (created, uuid)."""
        ...

    def submit_event(self, uuid: str, event_id: str | None, decide: Decide) -> Future[Applied]:
        """``apply_event`` without waiting: the future holds its outcome (or its error)."""
        ...

    def apply_event(self, uuid: str, event_id: str | None, decide: Decide) -> Applied:
        """Atomically apply one event to a job.

        If ``event_id`` is already in the job's history, return that entry as a duplicate and
        write nothing. Otherwise call ``decide`` with the job's head and write the new state,
        ``last_event``, ``updated``, ``version + 1`` and the appended entry, compare-and-set on
        ``version`` and retried on conflict. The entry's ``event_id`` equals ``event_id`` when
        one is given, and is otherwise fresh (the entry's own uuid). Raises JobNotFound for an
        unknown job,
        ConcurrencyConflict when retries run out, and whatever ``decide`` raises.
        """
        ...

    def delete_job(self, uuid: str) -> bool:
        """Remove a job, its history and its edges; False if there was none."""
        ...

    # entities and links ------------------------------------------------------------------
    def upsert_entities(self, docs: list[Doc]) -> None:
        """Insert each entity (``uuid``, ``kind``, ``created``, ...) unless its uuid exists.

        Entities are records of other kinds than jobs and pipelines (references, products).
        Existing ones are left unchanged, whatever the new doc says: their links grow only
        through ``add_links``. Link list fields (``ENTITY_LINK_FIELDS``) of a new doc are
        stored as edges too. Within ``docs`` the first doc of a uuid wins.
        """
        ...

    def get_entity(self, uuid: str) -> Doc | None:
        """An entity's doc with its link lists, or None."""
        ...

    def add_links(self, src: str, relation: str, targets: list[str]) -> None:
        """Add the edges (src, relation, target) that do not exist yet.

        ``src`` is a job (typed-UUID prefix 107; ``relation`` one of ``JOB_LINK_FIELDS``) or an
        entity (``ENTITY_LINK_FIELDS``); the document's list field named ``relation`` gains the
        new targets in the order given, without repeats. Links are not state: the job's
        ``version``, ``updated`` and history are unchanged. Raises InvalidInput for a relation
        the source cannot have, JobNotFound or EntityNotFound for an unknown source (also when
        ``targets`` is empty, which otherwise writes nothing).
        """
        ...

    # audit -------------------------------------------------------------------------------
    def append_audit(self, entry: Doc) -> None: ...

    def find_audit(self, job_uuid: str | None = None, limit: int = 100) -> list[Doc]:
        """Most recent first."""
        ...
