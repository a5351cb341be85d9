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
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

from catalog.errors import EntityNotFound, FileNotFound, InvalidInput, JobNotFound, NotFound
from catalog.identifiers import UUIDType

if TYPE_CHECKING:
    from catalog.store.openlineage_write import LineageApplied, LineageWrite

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
# Relations kept as edges so both directions can be queried (DESIGN §5); each is also a list
# field of the document it starts from.
JOB_LINK_FIELDS = ("child_of", "generated_by", "acted_on", "acted_using")
ENTITY_LINK_FIELDS = ("child_of", "generated_by", "derived_from", "derived_using")
# Links from a file to the job that wrote it; unlink_job_files removes these.
FILE_JOB_LINK_FIELDS = ("child_of", "generated_by")
# Checksum algorithms a file can be looked up by through an index (others work, by a scan).
INDEXED_CHECKSUMS = ("xxh3_128", "sha256", "md5")
_ALGORITHM = re.compile(r"[a-z0-9_]{1,32}")

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


def check_new_job(doc: Doc) -> None:
    if doc["version"] != len(doc.get("history", [])):
        raise ValueError("a job's version must equal the number of its history entries")


def is_job(uuid: str) -> bool:
    """Whether a link's source is a job, told by its typed-UUID prefix."""
    return uuid[:3] == UUIDType.pipelinejob.prefix


def link_source(uuid: str) -> LinkSource:
    """What kind of record a link starts from, told by its typed-UUID prefix."""
    if is_job(uuid):
        return "job"
    return "file" if uuid[:3] == UUIDType.file.prefix else "entity"


def check_link(src: str, relation: str) -> LinkSource:
    """Check ``relation`` can start from ``src``; return the kind of record ``src`` is."""
    kind = link_source(src)
    fields = JOB_LINK_FIELDS if kind == "job" else ENTITY_LINK_FIELDS
    if relation not in fields:
        article = "an" if kind == "entity" else "a"
        raise InvalidInput(
            f"{article} {kind} has no {relation!r} links; relations: {', '.join(fields)}"
        )
    return kind


def link_source_not_found(src: str) -> NotFound:
    kind = link_source(src)
    if kind == "job":
        return JobNotFound(src)
    return FileNotFound(src) if kind == "file" else EntityNotFound(src)


def check_algorithm(algorithm: str) -> str:
    """Refuse checksum algorithm names that could not be a plain field or column value."""
    if not _ALGORITHM.fullmatch(algorithm):
        raise InvalidInput(
            f"checksum algorithm {algorithm!r} is not a name of 1 to 32 characters a-z, 0-9, _"
        )
    return algorithm


def latest_files(docs: list[Doc]) -> dict[str, Doc]:
    """One doc per uuid (the last of each), checksum names checked, link lists without repeats.

    A doc with a repeat in a link list is returned as a new dict; the others are the docs
    given, not copies (a store that keeps or changes them copies them itself).
    """
    latest: dict[str, Doc] = {}
    checked: set[str] = set()
    for doc in docs:
        for algorithm in doc.get("checksums", {}):
            if algorithm not in checked:
                checked.add(check_algorithm(algorithm))
        # Only lists with a repeat are rebuilt: indexing upserts many thousands of docs whose
        # lists hold one uuid or none.
        repeats = {field: unique(doc[field]) for field in ENTITY_LINK_FIELDS
                   if len(doc.get(field) or ()) > 1 and len(set(doc[field])) < len(doc[field])}
        latest[doc["uuid"]] = {**doc, **repeats} if repeats else doc
    return latest


# (file uuid, FixityCheck dump, status): one check for ``Store.record_fixity``.
FixityUpdate = tuple[str, Doc, str]


def last_check(stored: list[Doc], given: list[Doc]) -> list[Doc]:
    """What a record keeps of its fixity after an upsert: its last check (the latest ``date``
    of those stored and ``given``; on a tie, the later one in that order), or nothing.

    The whole log is in the store's fixity history (``fixity_checks``), one row or document a
    check, so a record verified nightly stays the same size. An indexer builds its record from
    a reading taken before it hashed, so a check recorded meanwhile (``record_fixity`` from a
    verify) may be newer than the doc's: it stays the last."""
    best: Doc | None = None
    for check in (*stored[-1:], *given):
        if best is None or str(check["date"]) >= str(best["date"]):
            best = check
    return [] if best is None else [best]


def check_identity(check: Doc) -> tuple[str, str]:
    """A check's key in a record's history: (date, outcome). The same check given again (an
    indexer's doc repeating the record's last check) is stored once."""
    return str(check["date"]), str(check["outcome"])


def prefix_upper_bound(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix`` (None: no bound).

    Both backends compare text by UTF-8 bytes, which is code point order, so ``prefix <= s <
    bound`` is exactly "s starts with prefix", served by an ordinary index, and no character of
    the prefix is a wildcard.
    """
    stripped = prefix.rstrip(chr(0x10FFFF))
    if not stripped:
        return None
    following = ord(stripped[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:  # surrogates are no characters: step over them
        following = 0xE000
    return stripped[:-1] + chr(following)


def chunked(values: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


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


def sorted_page(rows: list[Doc], limit: int, sort: str) -> Page:
    """``page_of`` for a sorted listing: the cursor also names the sort it belongs to."""
    if len(rows) <= limit:
        return Page(rows, None)
    return Page(rows[:limit], cursor_after(rows[limit - 1], sort))


def cursor_after(doc: Doc, sort: str) -> str:
    """The cursor of the position just after ``doc`` in a listing sorted by ``sort``."""
    return encode_cursor(sort, str(doc[sort.lstrip("-")]), str(doc["uuid"]))


def decode_sorted_cursor(cursor: str, sort: str) -> tuple[str, str]:
    """The (sort field value, uuid) a cursor of this sort order stands after."""
    cursor_sort, key, uuid = decode_cursor(cursor, 3)
    if cursor_sort != sort:
        raise InvalidInput(
            f"cursor {cursor!r} belongs to a listing sorted by {cursor_sort!r}, not {sort!r}"
        )
    return key, uuid


# Where a claim looks: the QUEUED jobs of these pipelines, highest priority first, then the
# oldest queued; ``match`` (given the candidate's head with its "queue") tells the rest of a
# worker's filter (site, tags, user, events), which no index serves.
ClaimMatch = Callable[[Doc], bool]
CLAIM_PAGE = 64  # candidates read at a time while looking for one that matches


def claim_order(head: Doc) -> tuple[int, str, str]:
    """The order a claim takes candidates in (lowest first)."""
    queue = head.get("queue") or {}
    return -int(queue.get("priority", 3)), str(queue.get("queued") or ""), str(head["uuid"])


def lease_expiry(queue: Doc | None) -> str | None:
    lease = (queue or {}).get("lease")
    return None if lease is None else str(lease["expiry"])


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

    def get_job(self, uuid: str, history: bool = True, links: bool = True) -> Doc | None:
        """The job with its link lists (``links=False``: without, one read less) and its
        history (``history=False``: without); None if there is none."""
        ...

    def job_head(self, uuid: str) -> Doc | None:
        """The job's head alone (``uuid``, ``state``, ``version``, ``last_event``,
        ``created``), in one read: no links, history or results."""
        ...

    def history_page(self, head: Doc, after: int = 0, limit: int = 1000) -> list[Doc]:
        """The entries of the job ``head`` (a ``get_job`` document) after its ``after``-th, up
        to its version (what the head has seen, even while events come), in order, at most
        ``limit``: the history a page at a time, for jobs of very many events. The n-th entry
        is the one after n - 1, so a page of n entries moves ``after`` on by n."""
        ...

    def find_jobs(self, query: JobQuery) -> Page:
        """Jobs without their history and results, filtered and ordered by (query.sort,
        uuid)."""
        ...

    def changed_jobs(self, since: str, limit: int = 1000) -> list[Doc]:
        """Heads (without history and results) of the jobs last changed at or after ``since``
        (their ``updated``), oldest change first, ties by uuid, at most ``limit``: what the
        job-state stream reads when it is woken, a range of an index."""
        ...

    def submit_event(self, uuid: str, event_id: str | None, decide: Decide) -> Future[Applied]:
        """``apply_event`` without waiting: the future holds its outcome (or its error)."""
        ...

    async def apply_event_async(self, uuid: str, event_id: str | None,
                                decide: Decide) -> Applied:
        """``apply_event`` awaited on an event loop, which it never blocks for long."""
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

    def apply_events(self, events: list[tuple[str, str | None, Decide]]
                     ) -> list[Applied | Exception]:
        """``apply_event`` for each (uuid, event_id, decide), in order, in as few commits as
        the backend allows (a release queues thousands of jobs at once); each item's outcome or
        the error that refused it alone. A job named twice gets its events in their order, the
        later one deciding on the head the earlier left (a ``fail`` then a ``retry``)."""
        ...

    def delete_job(self, uuid: str) -> bool:
        """Remove a job, its history and its edges; False if there was none."""
        ...

    # tombstones (catalog.deletion) ------------------------------------------------------
    def tombstone_job(self, uuid: str, deleted: Doc,
                      check: Callable[[Doc], None]) -> Doc | None:
        """Move the job's head (without history) from the jobs to the tombstones, with
        ``deleted`` (date, source, reason) added, in one atomic step after ``check(head)``
        (which may raise, changing nothing); the tombstone, or None when there is no such job.
        The job leaves every listing and index of jobs; its history, links and dependencies
        stay until ``purge_job``."""
        ...

    def get_tombstone(self, uuid: str) -> Doc | None:
        """The tombstone of a deleted (not yet purged) job."""
        ...

    def get_jobs(self, uuids: list[str]) -> dict[str, Doc]:
        """The heads (no history, no results) of the jobs of ``uuids`` that exist, by uuid,
        read a batch at a time (lineage describes a level of nodes in one query, not one
        query per node)."""
        ...

    def purge_job(self, uuid: str, page: int = 1000) -> bool:
        """Erase a tombstoned job: unlink its file records (``page`` at a time, the records
        and their fixity stay), then its history, links from and to it, its dependencies both
        ways and the tombstone, last, in one atomic step where the store has them. An
        interrupted purge leaves the tombstone and is finished by purging again. False when
        there is no tombstone."""
        ...

    # the queue ---------------------------------------------------------------------------
    def claim(self, pipelines: list[str], match: ClaimMatch, decide: Decide,
              priority: int | None = None) -> Claimed | None:
        """Apply ``decide`` (a ``run`` with its lease) to the first QUEUED job of
        ``pipelines`` (of that ``priority`` if given) that ``match`` accepts, in
        ``claim_order``, atomically: no job is claimed twice, whatever runs at once. None when
        no queued job matches. Reads candidates from an index, a page at a time; a candidate
        taken meanwhile by another claim (``decide`` raises ClaimLost) is passed over. Returns
        the claimed job's uuid, the outcome and the job as claimed (``Claimed``)."""
        ...

    def renew_lease(self, uuid: str, worker: str, attempt: int, expiry: str) -> bool:
        """Move the lease of a RUNNING job held by ``worker`` for ``attempt`` to ``expiry``;
        False if the job is not held so. Not an event: version and history stay as they are."""
        ...

    def expired_leases(self, now: str, limit: int = 1000) -> list[str]:
        """Uuids of jobs whose lease expired before ``now``, soonest expired first, from an
        index (never a scan of the jobs)."""
        ...

    def sweep_leases(self, now: str, limit: int, plan: PlanSweep) -> tuple[int, list[Move]]:
        """Read the heads of up to ``limit`` jobs whose lease expired before ``now`` from
        the lease index, soonest first, a chunk at a time, ``plan`` each chunk and write its
        moves: one transaction per chunk on SQLite, the heads read under its write lock;
        each entry its own compare-and-set on MongoDB (a job moved meanwhile is left out).
        Returns the number of heads read and the moves written."""
        ...

    def queue_counts(self, pipelines: list[str] | None = None) -> list[tuple[str, str, int]]:
        """(pipeline uuid, state, number of jobs) for every pair that has jobs."""
        ...

    def add_dependencies(self, dependent: str, dependencies: list[str]) -> None:
        """Note that ``dependent``'s condition names ``dependencies`` (the reverse index;
        adding a pair twice keeps one)."""
        ...

    def dependents(self, dependency: str) -> list[str]:
        """The jobs whose condition names ``dependency``, from an index, ordered."""
        ...

    def submit_jobs(self, uuids: list[str], plan: PlanSubmissions) -> Submissions:
        """Read the heads of ``uuids`` (one query), ``plan`` the batch on them and write
        what it says: in one transaction on SQLite; with bulk writes on MongoDB, each move
        a compare-and-set on the version read (ConcurrencyConflict if another writer moved
        the job meanwhile). Returns what was written."""
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

    def edges(self, uuids: list[str], direction: str,
              limit: int | None = None) -> list[tuple[str, str, str]]:
        """Every stored edge (src, relation, dst) leaving ``uuids`` (direction "up": they are
        the src) or arriving at them ("down": they are the dst), in no particular order; at
        most ``limit`` of them (which ones is then the store's choice), read no further."""
        ...

    def add_links(self, src: str, relation: str, targets: list[str]) -> None:
        """Add the edges (src, relation, target) that do not exist yet.

        ``src`` is a job (typed-UUID prefix 107; ``relation`` one of ``JOB_LINK_FIELDS``), a
        file record (prefix 105; ``ENTITY_LINK_FIELDS``) or an entity (``ENTITY_LINK_FIELDS``);
        the document's list field named ``relation`` gains the new targets in the order given,
        without repeats. Links are not state: the job's ``version``, ``updated`` and history
        (and a file's ``updated``) are unchanged. Raises InvalidInput for a relation the source
        cannot have, JobNotFound, FileNotFound or EntityNotFound for an unknown source (also
        when ``targets`` is empty, which otherwise writes nothing).
        """
        ...

    # files -------------------------------------------------------------------------------
    def upsert_files(self, docs: list[Doc]) -> None:
        """Insert or replace file records (``FileRecord`` dumps) by ``uuid``, all together.

        A replaced record is replaced whole, but for its ``fixity``: the doc's checks not
        stored yet join the record's history (``fixity_checks``), and the record keeps only
        its last check (``last_check``), so a check recorded while the doc was being made is
        never lost and no record grows with its checks. Its checksum lookups
        and its edges of the relations in ``ENTITY_LINK_FIELDS`` become those of the new doc.
        Link lists are stored without repeats (first-seen order); within ``docs`` the last doc
        of a uuid wins.
        Raises InvalidInput, writing nothing, when a ``checksums`` key is not a valid algorithm
        name (see ``find_files``' ``checksum``).
        """
        ...

    def get_file(self, uuid: str) -> Doc | None:
        """A file record, or None."""
        ...

    def get_files(self, uuids: list[str]) -> dict[str, Doc]:
        """The file records of ``uuids`` that exist, by uuid (unknown ones are left out)."""
        ...

    def find_files(self, child_of: str | None = None, path_prefix: str | None = None,
                   status: str | None = None, limit: int = 100,
                   cursor: str | None = None, *, kind: str | None = None,
                   level: str | None = None, media_type: str | None = None,
                   sort: str = "path", checksum: tuple[str, str] | None = None,
                   links: bool = True) -> Page:
        """File records ordered by (sort, uuid), filtered by all the filters given.

        ``child_of``: files whose ``child_of`` contains that job; ``path_prefix``: files whose
        path starts with that text, case-sensitive and with no wildcard characters; ``status``,
        ``kind``, ``level``, ``media_type``: files with that value; ``checksum``
        ``(algorithm, digest)``: files whose ``checksums[algorithm]`` is ``digest``, compared
        exactly as given (lower-case hex from the fixity module; InvalidInput when
        ``algorithm`` does not match ``[a-z0-9_]{1,32}``). Paged like every other filter:
        thousands of files may share a digest (every empty file does). ``sort`` is one of
        ``FILE_SORTS``. ``links=False``: the records without their link lists (the fields
        left out, not read), for a reader of the files alone (a bag export).
        """
        ...

    def record_fixity(self, checks: list[FixityUpdate]) -> None:
        """For each ``(uuid, check, status)``, in order: add ``check`` (a ``FixityCheck``
        dump) to the record's history (``fixity_checks``), make it the record's ``fixity``
        (its last check: the record does not grow), set its ``status``, and its ``updated`` and
        ``checked`` to ``check["date"]``; the record's ``checksums`` stay the reference they
        were.

        All in one write (a verify of thousands of files is not thousands of commits). Raises
        FileNotFound, writing nothing, when a uuid names no record.
        """
        ...

    def fixity_checks(self, uuid: str, limit: int = 100, cursor: str | None = None) -> Page:
        """A file record's fixity history, oldest first (by date, then outcome), a page at a
        time: every check recorded by ``record_fixity`` or brought by ``upsert_files``. An
        unknown uuid has an empty history."""
        ...

    def unlink_job_files(self, job_uuid: str) -> int:
        """Remove ``job_uuid`` from every file record's ``child_of`` and ``generated_by``.

        The records stay, with their fixity history and other links (and ``updated`` as it
        was); the edges go. Returns how many records were changed.
        """
        ...

    def oldest_checks(self, storage_system: str, before: str, limit: int) -> list[Doc]:
        """Up to ``limit`` file records of ``storage_system`` whose last check (``checked``)
        is before the date ``before``, never-checked ones first, then oldest first (by an
        index: a scheduled check does not scan the catalog)."""
        ...

    def append_fixity_run(self, summary: Doc) -> None:
        """Keep the summary of one scheduled fixity run (a ``FixityRun`` dump)."""
        ...

    def find_fixity_runs(self, limit: int = 100) -> list[Doc]:
        """Summaries of scheduled fixity runs, most recent first."""
        ...

    # audit -------------------------------------------------------------------------------
    def append_audit(self, entry: Doc) -> None: ...

    def find_audit(self, job_uuid: str | None = None, limit: int = 100) -> list[Doc]:
        """Most recent first."""
        ...

    # OpenLineage (store/openlineage_sqlite.py, store/openlineage_mongo.py) --------------------
    def add_lineage_event(self, doc: Doc, entities: Sequence[Doc] = (),
                          links: Sequence[Link] = ()) -> bool:
        """Keep an OpenLineage event (``event_id``, ``run_id``, ``parent_run_id``, ``job``,
        ``datasets``: uuids, ...) unless its ``event_id`` is stored, with its ``entities``
        (as ``upsert_entities``) and ``links`` (as ``add_links``); whether it was new."""
        ...

    def apply_lineage(self, write: LineageWrite) -> LineageApplied:
        """One OpenLineage event whole (``catalog.store.openlineage_write``): its pipeline and
        job stored if absent, its job's events applied (a kept refusal of the last one in the
        audit log), the event kept as ``add_lineage_event`` keeps it. In one transaction where
        the backend has them (SQLite: committed with the events queued meanwhile)."""
        ...

    async def apply_lineage_async(self, write: LineageWrite) -> LineageApplied:
        """``apply_lineage`` awaited on an event loop (SQLite: with the loop's job events)."""
        ...

    def lineage_events_of_runs(self, run_ids: list[str],
                               limit: int = 1000) -> dict[str, list[Doc]]:
        """The events of each of ``run_ids`` (the last ``limit`` of each, oldest first), by
        run id, in one batched read; runs without events are left out."""
        ...

    def lineage_events(self, *, run_id: str | None = None, parent_run_id: str | None = None,
                       job: str | None = None, dataset: str | None = None,
                       limit: int = 1000) -> list[Doc]:
        """The last ``limit`` events with the one filter given, oldest first."""
        ...

    def find_datasets(self, namespace: str | None = None, limit: int = 100,
                      cursor: str | None = None, offset: int = 0) -> Page:
        """Reference entities with a namespace, by (namespace, name, uuid)."""
        ...

    def count_datasets(self, namespace: str) -> int:
        """How many reference entities have this namespace."""
        ...

    def lineage_namespaces(self, name: str | None = None, limit: int = 100,
                           offset: int = 0) -> tuple[list[Doc], int]:
        """OpenLineage namespaces (of jobs' pipelines and of datasets) by name, each
        ``{"name", "created", "updated"}`` (its first and last record's creation), and how many
        there are (one when ``name`` is given and known)."""
        ...

    def lineage_jobs(self, namespace: str, limit: int = 100,
                     offset: int = 0) -> tuple[list[Doc], int]:
        """The pipelines of OpenLineage jobs in ``namespace`` by (name, uuid), and how many."""
        ...


def settle_future(future: Future[Any], result: Any, error: BaseException | None) -> None:
    """Answer a write's waiting thread: its error, else its result (which must be there)."""
    if error is not None:
        future.set_exception(error)
    else:
        assert result is not None
        future.set_result(result)


def without_link_fields(docs: list[Doc]) -> list[Doc]:
    """File or entity records without their link lists (``find_files(links=False)``)."""
    return [{key: value for key, value in doc.items() if key not in ENTITY_LINK_FIELDS}
            for doc in docs]
