"""The claim on MongoDB (``MongoStore.claim``): a window of queued times at a time.

One query for every QUEUED job of the pipelines, sorted, costs what the server pays for every
candidate: SecantusDB, the wire server the tests run, fetches and decodes each job the index
names, sorts them in memory and applies the limit last (IXSCAN, FETCH, SORT: 25 ms at 64
queued, 243 ms at 1,024). Here each query names one pipeline and one priority by equality and
a range of the claim index's next key, ``queue.queued``, so the server reads only the jobs
queued in that range:

- those queued before the mark (the queued time of the job this store last claimed there):
  the jobs other workers passed over, usually none;
- then windows from the mark on, each twice as wide as the one before, up to now; then the
  rest (dates from a clock ahead of this one).

The ranges cover every queued time, read in order, so the claim takes the job one sorted query
would have given: priorities 5 to 1, the pipelines' jobs of one priority merged oldest first,
the first that ``match`` accepts and that the compare-and-set wins. The mark only shortens the
reads; without one (this store's first claim there) the priority is read whole, once.

A server that takes the order from the claim index (``mongod``: its plan has no SORT stage)
is asked the one sorted query instead, a page at a time: one round trip per claim, where the
windows would cost one per priority and window. Which of the two a store uses is decided once,
from the server's ``explain`` of that query (``Claims.sorted_by_index``).
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pymongo import ASCENDING, DESCENDING

from catalog.errors import JobNotFound
from catalog.store.base import CLAIM_PAGE, ClaimMatch, claim_order
from catalog.store.paging import unique
from catalog.store.values import Applied, Claimed, ClaimLost, Decide, Doc

if TYPE_CHECKING:
    from catalog.store.mongo import MongoStore

PRIORITIES = (5, 4, 3, 2, 1)  # QueueInfo.priority's range, highest first
_FIRST_WINDOW = timedelta(milliseconds=250)
_CANDIDATE: Doc = {"_id": 0, "uuid": 1, "state": 1, "pipeline_uuid": 1, "queue": 1}
_DATE = "%Y-%m-%dT%H:%M:%S.%f"
CLAIM_ORDER = [("queue.priority", DESCENDING), ("queue.queued", ASCENDING), ("uuid", ASCENDING)]


def _date_text(value: datetime) -> str:
    return value.strftime(_DATE)[:-3] + "Z"


def _date(text: str) -> datetime | None:
    """A stored date (``2026-11-21T12:00:00.123Z``); None for anything else."""
    try:
        return datetime.strptime(text[:-1] + "000", _DATE).replace(tzinfo=UTC)
    except ValueError:
        return None


class Claims:
    """A store's claims, and the marks they leave (by pipeline and priority)."""

    def __init__(self, store: MongoStore) -> None:
        self.store = store
        self._marks: dict[tuple[str, int], tuple[str, datetime]] = {}
        self._lock = threading.Lock()
        self.sorted_by_index: bool | None = None  # decided at the first claim

    def claim(self, pipelines: list[str], match: ClaimMatch, decide: Decide,
              priority: int | None = None) -> Claimed | None:
        """The claim, with the job as it left it (None as well when an administrator deleted
        the job in between)."""
        claimed = self._claim(pipelines, match, decide, priority)
        if claimed is None:
            return None
        job = self.store.get_job(claimed[0], history=False, links=False)
        return None if job is None else Claimed(claimed[0], claimed[1], job)

    def _claim(self, pipelines: list[str], match: ClaimMatch, decide: Decide,
               priority: int | None = None) -> tuple[str, Applied] | None:
        def still_queued(head: Doc) -> tuple[str, Doc] | tuple[str, Doc, Doc]:
            if head["state"] != "QUEUED":
                raise ClaimLost(head["uuid"])
            return decide(head)

        if self.sorted_by_index is None:
            self.sorted_by_index = self._server_sorts_by_index()
        if self.sorted_by_index:
            return self._claim_sorted(pipelines, match, still_queued, priority)
        for level in PRIORITIES if priority is None else (priority,):
            candidates = heapq.merge(*(self._queued(pipeline, level)
                                       for pipeline in unique(pipelines)), key=claim_order)
            for head in candidates:
                if not match(head):
                    continue
                try:  # compare-and-set on version: of two claims of one job, one wins
                    applied = self.store.apply_event(head["uuid"], None, still_queued)
                except (ClaimLost, JobNotFound):
                    continue
                queued = (head.get("queue") or {}).get("queued")
                if isinstance(queued, str) and (when := _date(queued)) is not None:
                    with self._lock:
                        self._marks[(head["pipeline_uuid"], level)] = (queued, when)
                return head["uuid"], applied
        return None

    def _queued(self, pipeline: str, priority: int) -> Iterator[Doc]:
        """The QUEUED jobs of ``pipeline`` and ``priority`` in claim order, read lazily."""
        where: Doc = {"state": "QUEUED", "pipeline_uuid": pipeline, "queue.priority": priority}
        with self._lock:
            mark = self._marks.get((pipeline, priority))
        if mark is None:
            yield from self._read(where)
            return
        mark_text, start = mark
        yield from self._read({**where, "queue.queued": None})  # sorted first, as in one query
        yield from self._read({**where, "queue.queued": {"$lt": mark_text}})
        width = _FIRST_WINDOW
        now = datetime.now(UTC)
        while start <= now:
            end = start + width
            yield from self._read({**where, "queue.queued": {"$gte": _date_text(start),
                                                             "$lt": _date_text(end)}})
            start, width = end, width * 2
        yield from self._read({**where, "queue.queued": {"$gte": _date_text(start)}})

    def _read(self, where: Doc) -> list[Doc]:
        # No hint: SecantusDB answers a hinted find by walking the whole index (76 ms for
        # no job at 512 queued), an unhinted one by the index's range (10 ms for 10 jobs).
        with self.store._guard:
            return list(self.store._jobs.find(where, _CANDIDATE).sort(
                [("queue.queued", ASCENDING), ("uuid", ASCENDING)]))

    def _claim_sorted(self, pipelines: list[str], match: ClaimMatch, decide: Decide,
                      priority: int | None) -> tuple[str, Applied] | None:
        """The claim as one query sorted in claim order, read a page at a time."""
        query: Doc = {"state": "QUEUED", "pipeline_uuid": {"$in": unique(pipelines)}}
        if priority is not None:
            query["queue.priority"] = priority
        skip = 0
        while True:
            with self.store._guard:
                page = list(self.store._jobs.find(query, _CANDIDATE).sort(CLAIM_ORDER)
                            .skip(skip).limit(CLAIM_PAGE))
            for head in page:
                if not match(head):
                    continue
                try:  # compare-and-set on version: of two claims of one job, one wins
                    return head["uuid"], self.store.apply_event(head["uuid"], None, decide)
                except (ClaimLost, JobNotFound):
                    continue
            if len(page) < CLAIM_PAGE:
                return None
            skip += len(page)

    def _server_sorts_by_index(self) -> bool:
        """Whether the server's plan for the sorted claim query has no SORT stage (the order
        read from the claim index). A server that cannot explain is not trusted to."""
        query: Doc = {"state": "QUEUED", "pipeline_uuid": {"$in": [""]}}
        try:
            with self.store._guard:
                plan = self.store._jobs.find(query, _CANDIDATE).sort(CLAIM_ORDER).limit(1).explain()
        except Exception:  # noqa: BLE001 (mongomock: NotImplementedError; a server: its error)
            return False
        winning = (plan.get("queryPlanner") or {}).get("winningPlan")
        return isinstance(winning, dict) and not _has_stage(winning, "SORT")


def _has_stage(plan: object, stage: str) -> bool:
    """Whether an explained plan (nested dicts and lists of stages) has ``stage``."""
    if isinstance(plan, dict):
        return plan.get("stage") == stage or any(_has_stage(v, stage) for v in plan.values())
    if isinstance(plan, list):
        return any(_has_stage(item, stage) for item in plan)
    return False
