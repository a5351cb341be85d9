"""The Store protocol: the small persistence contract every backend fulfils.

Documents cross this boundary as plain JSON-ready dicts (dates as ``...T..:..:..mmmZ`` text),
already validated by the models; stores never make business decisions. The one decision taken
inside a store's atomic section is the state transition, handed in as ``decide`` so that each
backend can run it under its own concurrency control (a write transaction in SQLite, a
compare-and-set on ``version`` retried on conflict in MongoDB).

The values that cross it are in ``values``, paging in ``paging``, and what a record is made of
in ``records``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Protocol

from catalog.store.records import FixityUpdate
from catalog.store.values import (
    Applied,
    Claimed,
    Decide,
    Doc,
    JobQuery,
    Link,
    Move,
    Page,
    PlanSubmissions,
    PlanSweep,
    Submissions,
)

if TYPE_CHECKING:
    from catalog.store.openlineage_write import LineageApplied, LineageWrite


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
