"""The SQLite store's claim, taken in the group commit with the events of other threads.

A claim chooses the first QUEUED job that matches in claim order and moves it to RUNNING in the
transaction of whoever holds the write lock, alongside the events and claims queued meanwhile:
four workers claiming and completing share one COMMIT (one fsync) where each would otherwise
pay its own. Claims in one transaction run one after another on one connection, so the second
sees the first's job RUNNING and passes over it: no job is claimed twice.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from catalog.store.base import CLAIM_PAGE, ClaimMatch, claim_order
from catalog.store.records import JOB_LINK_FIELDS
from catalog.store.values import Applied, Claimed, Decide, Doc

_FIRST_PAGE = 4  # candidates in the first page read
ApplyOne = Callable[[sqlite3.Connection, str, "str | None", Decide], Applied]


@dataclass
class PendingClaim:
    """A claim waiting for the next group commit, and what became of it (None: no job)."""

    pipelines: list[str]
    match: ClaimMatch
    decide: Decide
    priority: int | None
    result: Claimed | None = None
    error: BaseException | None = None
    future: Future[Claimed | None] = field(default_factory=Future)

    def settle(self) -> None:
        if self.error is not None:
            self.future.set_exception(self.error)
        else:
            self.future.set_result(self.result)


def claim_in(conn: sqlite3.Connection, pipelines: list[str], match: ClaimMatch,
             decide: Decide, priority: int | None, apply_one: ApplyOne) -> Claimed | None:
    """The claim in an open write transaction: the best candidate over ``pipelines``, moved by
    ``decide``, with the job as it now stands (without history or link lists)."""
    best: Doc | None = None
    for pipeline in pipelines:
        found = first_match(conn, pipeline, priority, match)
        if found is not None and (best is None or claim_order(found) < claim_order(best)):
            best = found
    if best is None:
        return None
    uuid = best["uuid"]
    applied = apply_one(conn, uuid, None, decide)
    row = conn.execute("SELECT pipeline_uuid, state, version, last_event, created, updated, "
                       "doc, queue, results FROM jobs WHERE uuid = ?", (uuid,)).fetchone()
    pipeline_uuid, state, version, last_event, created, updated, body, queue, results = row
    job: Doc = json.loads(body)
    job.update(uuid=uuid, pipeline_uuid=pipeline_uuid, state=state, version=version,
               last_event=last_event, created=created, updated=updated,
               queue=None if queue is None else json.loads(queue),
               results=None if results is None else json.loads(results))
    for name in JOB_LINK_FIELDS:  # kept empty in the row (their lists are in links)
        job.pop(name, None)
    return Claimed(uuid, applied, job)


def first_match(conn: sqlite3.Connection, pipeline: str, priority: int | None,
                match: ClaimMatch) -> Doc | None:
    """The first QUEUED job of ``pipeline`` in claim order that ``match`` accepts: pages of
    the ``jobs_claim`` index, from where the last page ended, the first small (the first job
    is most often taken: reading 64 rows' queue documents cost more than the claim's write),
    the next ones growing to ``CLAIM_PAGE``."""
    where = "state = 'QUEUED' AND pipeline_uuid = ?"
    params: list[Any] = [pipeline]
    if priority is not None:
        where += " AND priority = ?"
        params.append(priority)
    after: tuple[int, str, str] | None = None
    size = _FIRST_PAGE
    while True:
        sql, page_params = f"SELECT uuid, priority, queued, queue FROM jobs WHERE {where}", \
            list(params)
        if after is not None:
            sql += " AND (priority < ? OR (priority = ? AND (queued, uuid) > (?, ?)))"
            page_params += [after[0], after[0], after[1], after[2]]
        rows = conn.execute(
            f"{sql} ORDER BY priority DESC, queued, uuid LIMIT {size}", page_params
        ).fetchall()
        for uuid, _priority, _queued, queue_text in rows:
            head = {"uuid": uuid, "state": "QUEUED", "queue": json.loads(queue_text)}
            if match(head):
                return head
        if len(rows) < size:
            return None
        last = rows[-1]
        after = (last[1], last[2], last[0])
        size = min(size * 4, CLAIM_PAGE)
