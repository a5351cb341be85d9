"""The SQLite store's work queue: claims (taken in the group commit, ``sqlite_claim``), leases,
the sweep, counts, submissions in bulk and the dependencies of conditions."""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from catalog.store import sqlite_bulk, sqlite_checkpoint
from catalog.store.base import ClaimMatch
from catalog.store.paging import unique
from catalog.store.sqlite_claim import PendingClaim
from catalog.store.sqlite_rows import (
    BULK_CHUNK,
    INSERT_HISTORY,
    INSERT_JOB,
    INSERT_LINK,
    job_row,
    job_rows,
    queue_columns,
)
from catalog.store.values import Claimed, Decide, Move, PlanSubmissions, PlanSweep, Submissions


class QueueSQLite:
    """The work-queue part of ``SQLiteStore``."""

    # Jobs per transaction of a sweep (a test makes it small): 10,000 expired leases in one
    # COMMIT. Measured on 1,000,000 jobs: a second COMMIT of 5,000 cost more wall time (its
    # fsync, its WAL pages) than holding the write lock for all 10,000 (2.7 / 1.6 / 2.3 s
    # against 3.8 / 3.3 / 3.1 s, same CPU, under a load of 9 on 2 cores).
    sweep_chunk = BULK_CHUNK
    _checkpointer: sqlite_checkpoint.BackgroundCheckpointer

    if TYPE_CHECKING:  # SQLiteStore's
        def _connection(self) -> sqlite3.Connection: ...

        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...

        def _apply_pending(self, pending: Any) -> Any: ...

    def claim(self, pipelines: list[str], match: ClaimMatch, decide: Decide,
              priority: int | None = None) -> Claimed | None:
        """In the group commit (``sqlite_claim``): the write lock makes choosing and moving
        one step, and claims share their COMMIT with whatever else is queued."""
        claimed: Claimed | None = self._apply_pending(
            PendingClaim(unique(pipelines), match, decide, priority))
        return claimed

    def renew_lease(self, uuid: str, worker: str, attempt: int, expiry: str) -> bool:
        with self._write() as conn:
            changed = conn.execute(
                "UPDATE jobs SET queue = json_set(queue, '$.lease.expiry', ?), lease_expiry = ? "
                "WHERE uuid = ? AND state = 'RUNNING' AND lease_expiry IS NOT NULL "
                "AND json_extract(queue, '$.lease.worker') = ? "
                "AND json_extract(queue, '$.lease.attempt') = ?",
                (expiry, expiry, uuid, worker, attempt)).rowcount
        return changed == 1

    def expired_leases(self, now: str, limit: int = 1000) -> list[str]:
        rows = self._connection().execute(
            "SELECT uuid FROM jobs WHERE lease_expiry IS NOT NULL AND lease_expiry < ? "
            "ORDER BY lease_expiry LIMIT ?", (now, limit))
        return [uuid for uuid, in rows]

    def sweep_leases(self, now: str, limit: int, plan: PlanSweep) -> tuple[int, list[Move]]:
        """Chunks of ``sweep_chunk`` jobs (a fail and a retry each), a transaction each,
        their COMMITs leaving the checkpoint to the store's thread (as ``apply_events``)."""
        read, moved = 0, []
        after: tuple[str, int] | None = None
        with sqlite_checkpoint.deferred(self._connection()):
            while read < limit:
                chunk = min(self.sweep_chunk, limit - read)
                with self._write() as conn, sqlite_bulk.roomy_cache(conn):
                    count, moves, after = sqlite_bulk.sweep_chunk(
                        conn, now, after, chunk, plan, queue_columns)
                read += count
                moved += moves
                if count < chunk:  # the walk reached the leases not yet expired
                    break
        if moved:
            self._checkpointer.request()
        return read, moved

    def queue_counts(self, pipelines: list[str] | None = None) -> list[tuple[str, str, int]]:
        sql = "SELECT pipeline_uuid, state, count(*) FROM jobs"
        params: list[str] = []
        if pipelines is not None:
            if not pipelines:
                return []
            sql += f" WHERE pipeline_uuid IN ({', '.join('?' * len(pipelines))})"
            params = list(pipelines)
        rows = self._connection().execute(sql + " GROUP BY pipeline_uuid, state", params)
        return [(str(p), str(state), int(n)) for p, state, n in rows]

    def delete_job(self, uuid: str) -> bool:
        with self._write() as conn:
            deleted = conn.execute("DELETE FROM jobs WHERE uuid = ?", (uuid,)).rowcount
            conn.execute("DELETE FROM history WHERE job_uuid = ?", (uuid,))
            conn.execute("DELETE FROM links WHERE src = ?", (uuid,))
            conn.execute("DELETE FROM dependencies WHERE dependent = ?", (uuid,))
            return deleted == 1

    def add_dependencies(self, dependent: str, dependencies: list[str]) -> None:
        with self._write() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO dependencies (dependency, dependent) VALUES (?, ?)",
                [(dependency, dependent) for dependency in unique(dependencies)])

    def submit_jobs(self, uuids: list[str], plan: PlanSubmissions) -> Submissions:
        """One transaction: the heads by ``uuid IN (...)``, the plan, then its new jobs,
        entries, head moves and dependencies each in one ``executemany``."""
        with self._write() as conn, sqlite_bulk.roomy_cache(conn):
            heads = sqlite_bulk.head_docs(conn, unique(uuids))
            planned = plan(heads)
            jobs, history, links = [], [], []
            for doc in planned.jobs:
                jobs.append(job_row(doc))
                entries, linked = job_rows(doc)
                history += entries
                links += linked
            conn.executemany(f"INSERT {INSERT_JOB}", jobs)
            history += sqlite_bulk.move_entries(planned.moves)
            conn.executemany(INSERT_HISTORY, sorted(history))
            conn.executemany(INSERT_LINK, links)
            sqlite_bulk.move_heads(conn, planned.moves, queue_columns)
            conn.executemany(
                "INSERT OR IGNORE INTO dependencies (dependency, dependent) VALUES (?, ?)",
                planned.dependencies)
        return planned

    def dependents(self, dependency: str) -> list[str]:
        rows = self._connection().execute(
            "SELECT dependent FROM dependencies WHERE dependency = ? ORDER BY dependent",
            (dependency,))
        return [uuid for uuid, in rows]
