"""Deleted jobs in SQLite (migration 13): a tombstone per job deleted and not yet purged.

A deletion moves the job's head from ``jobs`` to ``tombstones`` in one transaction, so the job
leaves every listing, queue index and count without a filter in any of their queries; its
history, links and dependencies stay, for lineage to walk through it and for a purge to erase.
A purge unlinks the job's file records a page per transaction (a job of a million files never
holds the write lock for long), then erases the history a page at a time, and last, in one
transaction, the links, dependencies and the tombstone: until then a reader sees the tombstone,
and purging again finishes an interrupted purge.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import orjson

from catalog.store.records import FILE_JOB_LINK_FIELDS, JOB_LINK_FIELDS
from catalog.store.sqlite_links import attach, without_lists
from catalog.store.values import Doc, check_limit

MIGRATION = (
    13,
    "delete and purge: the tombstones of deleted jobs, out of the jobs table so that no "
    "listing or queue index sees them",
    """
    CREATE TABLE tombstones (
        uuid TEXT PRIMARY KEY,
        deleted TEXT NOT NULL,
        doc TEXT NOT NULL
    ) WITHOUT ROWID
    """,
)

_RELATIONS = ", ".join(f"'{relation}'" for relation in FILE_JOB_LINK_FIELDS)


def _dumps(doc: Any) -> str:
    return orjson.dumps(doc).decode()  # as SQLiteStore stores documents


class TombstonesSQLite:
    """The tombstones part of ``SQLiteStore`` (which provides the methods below)."""

    def _connection(self) -> sqlite3.Connection:
        raise NotImplementedError  # SQLiteStore's

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # SQLiteStore's

    def _read_job(self, conn: sqlite3.Connection, uuid: str, history: bool) -> Doc | None:
        raise NotImplementedError  # SQLiteStore's

    def tombstone_job(self, uuid: str, deleted: Doc,
                      check: Callable[[Doc], None]) -> Doc | None:
        with self._write() as conn:
            head = self._read_job(conn, uuid, history=False)
            if head is None:
                return None
            check(head)  # inside the transaction: no claim slips in between
            tombstone = {**head, "deleted": deleted}
            conn.execute("DELETE FROM jobs WHERE uuid = ?", (uuid,))
            # Its lists stay in links (until a purge), as a job's do (sqlite_links).
            conn.execute("INSERT OR REPLACE INTO tombstones (uuid, deleted, doc) VALUES (?, ?, ?)",
                         (uuid, deleted["date"],
                          _dumps(without_lists(tombstone, JOB_LINK_FIELDS))))
            return tombstone

    def get_tombstone(self, uuid: str) -> Doc | None:
        conn = self._connection()
        row = conn.execute("SELECT doc FROM tombstones WHERE uuid = ?", (uuid,)).fetchone()
        if row is None:
            return None
        doc: Doc = json.loads(row[0])
        attach(conn, [doc], JOB_LINK_FIELDS)
        return doc

    def purge_job(self, uuid: str, page: int = 1000) -> bool:
        check_limit(page)
        if self.get_tombstone(uuid) is None:
            return False
        while self._unlink_files_page(uuid, page) == page:
            pass
        while True:
            with self._write() as conn:
                erased = conn.execute(
                    "DELETE FROM history WHERE job_uuid = ? AND seq IN (SELECT seq FROM "
                    "history WHERE job_uuid = ? ORDER BY seq LIMIT ?)", (uuid, uuid, page)
                ).rowcount
            if erased < page:
                break
        with self._write() as conn:
            gone = conn.execute("DELETE FROM tombstones WHERE uuid = ?", (uuid,)).rowcount
            conn.execute("DELETE FROM history WHERE job_uuid = ?", (uuid,))
            conn.execute("DELETE FROM links WHERE src = ?", (uuid,))
            conn.execute("DELETE FROM links WHERE dst = ?", (uuid,))
            conn.execute("DELETE FROM dependencies WHERE dependent = ?", (uuid,))
            conn.execute("DELETE FROM dependencies WHERE dependency = ?", (uuid,))
        return gone == 1

    def _unlink_files_page(self, uuid: str, page: int) -> int:
        """Take ``uuid`` out of the links of up to ``page`` file records; how many links went.

        A record's lists are its links alone (sqlite_links): its row is not rewritten."""
        with self._write() as conn:
            links = conn.execute(
                f"SELECT src, relation FROM links WHERE dst = ? AND relation IN ({_RELATIONS})"
                " AND src IN (SELECT uuid FROM files WHERE uuid = links.src) LIMIT ?",
                (uuid, page)).fetchall()
            conn.executemany("DELETE FROM links WHERE src = ? AND relation = ? AND dst = ?",
                             [(src, relation, uuid) for src, relation in links])
            return len(links)
