"""File records' fixity history in SQLite (migration 15): a row a check, out of the record.

A record verified nightly used to append each check to its ``fixity`` list, so its row grew
without bound and every read of it parsed the whole log. The log is now the ``fixity_checks``
table, keyed by (file, date, outcome): a record's history is a range of that key, read a page
at a time (``fixity_checks``), and a check given again (an indexer's doc repeating the
record's last check) is stored once. The record keeps only its last check.

Since migration 17 (``sqlite_file_keys``) the table's ``file`` is the record's integer id, not
its uuid: the checks of the records written together land together.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

import orjson

from catalog.store.paging import decode_cursor, encode_cursor
from catalog.store.records import check_identity
from catalog.store.values import Doc, Page, check_limit

MIGRATION = (
    15,
    "fixity history in its own table, keyed by file and date, so that no record grows with "
    "its checks; each record keeps its last check",
    """
    CREATE TABLE fixity_checks (
        file TEXT NOT NULL,
        date TEXT NOT NULL,
        outcome TEXT NOT NULL,
        doc TEXT NOT NULL,
        PRIMARY KEY (file, date, outcome)
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO fixity_checks (file, date, outcome, doc)
        SELECT files.uuid, json_extract(c.value, '$.date'), json_extract(c.value, '$.outcome'),
               c.value
        FROM files, json_each(files.doc, '$.fixity') AS c;
    UPDATE files SET doc = json_set(doc, '$.fixity',
                                    json_array(json(json_extract(doc, '$.fixity[#-1]'))))
        WHERE json_array_length(doc, '$.fixity') > 1
    """,
)

# A check recorded: the record's last check replaced (and its status set); the history row
# added by _ADD_CHECK in the same transaction.
SET_LAST_CHECK = (
    "UPDATE files SET status = ?, checked = ?, "
    "doc = json_set(doc, '$.fixity', json_array(json(?)), '$.status', ?, '$.updated', ?, "
    "'$.checked', ?) WHERE uuid = ?"
)
_ADD_CHECK = "INSERT OR IGNORE INTO fixity_checks (file, date, outcome, doc) VALUES (?, ?, ?, ?)"
_ADD_CHECK_OF_UUID = ("INSERT OR IGNORE INTO fixity_checks (file, date, outcome, doc) "
                      "SELECT id, ?, ?, ? FROM files WHERE uuid = ?")


def add_checks(conn: sqlite3.Connection, checks: Iterable[tuple[int, Doc]]) -> None:
    """Add ``(file id, check)`` to the history (a check already there is left as it is), in
    key order: the rows of neighbouring ids share their pages."""
    conn.executemany(_ADD_CHECK, sorted(
        (file, *check_identity(check), orjson.dumps(check).decode()) for file, check in checks))


def add_checks_of_uuids(conn: sqlite3.Connection, checks: Iterable[tuple[str, Doc]]) -> None:
    """Add ``(file uuid, check)`` to the history (a uuid with no record adds nothing)."""
    conn.executemany(_ADD_CHECK_OF_UUID, [(*check_identity(check), orjson.dumps(check).decode(),
                                           uuid) for uuid, check in checks])


class FixitySQLite:
    """The fixity-history part of ``SQLiteStore`` (which provides ``_connection``)."""

    def _connection(self) -> sqlite3.Connection:
        raise NotImplementedError  # SQLiteStore's

    def fixity_checks(self, uuid: str, limit: int = 100, cursor: str | None = None) -> Page:
        check_limit(limit)
        sql = ("SELECT date, outcome, doc FROM fixity_checks "
               "WHERE file = (SELECT id FROM files WHERE uuid = ?)")
        params = [uuid]
        if cursor is not None:
            date, outcome = decode_cursor(cursor, 2)
            sql += " AND (date, outcome) > (?, ?)"
            params += [date, outcome]
        rows = self._connection().execute(
            sql + " ORDER BY date, outcome LIMIT ?", (*params, limit + 1)).fetchall()
        items = [json.loads(doc) for _, _, doc in rows[:limit]]
        after = encode_cursor(rows[limit - 1][0], rows[limit - 1][1]) if len(rows) > limit \
            else None
        return Page(items, after)
