"""The SQLite store's entities (references, products) and the links between records (their
lists, kept in ``links`` alone: ``sqlite_links``)."""

from __future__ import annotations

import json
import sqlite3
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from catalog.store import sqlite_links
from catalog.store.paging import chunked, unique
from catalog.store.records import ENTITY_LINK_FIELDS, check_link, link_source_not_found
from catalog.store.sqlite_links import attach, list_rows, without_lists
from catalog.store.sqlite_rows import IN_CHUNK, INSERT_LINK, dumps
from catalog.store.values import Doc

_ENTITY_CHUNK = 200  # entities per INSERT (4 parameters each)
_LINK_KEY_COLUMNS = {"jobs": "created", "files": "path", "entities": "NULL"}
_LINK_SOURCE_TABLES = {"job": "jobs", "file": "files", "entity": "entities"}


class EntitiesSQLite:
    """The entities-and-links part of ``SQLiteStore``."""

    if TYPE_CHECKING:  # SQLiteStore's
        def _connection(self) -> sqlite3.Connection: ...

        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def upsert_entities(self, docs: list[Doc]) -> None:
        with self._write() as conn:
            self._insert_entities(conn, docs)

    @staticmethod
    def _insert_entities(conn: sqlite3.Connection, docs: list[Doc]) -> set[str]:
        """upsert_entities within the caller's write transaction: one statement per chunk,
        which answers the entities it inserted (their links are inserted with them); the
        UUIDs of those it inserted."""
        new: set[str] = set()
        for start in range(0, len(docs), _ENTITY_CHUNK):
            first: dict[str, Doc] = {}  # of a uuid given twice, the first is kept
            for doc in docs[start:start + _ENTITY_CHUNK]:
                first.setdefault(doc["uuid"], doc)
            rows = list(first.values())
            inserted = conn.execute(
                "INSERT OR IGNORE INTO entities (uuid, kind, created, doc) VALUES "
                f"{', '.join(['(?, ?, ?, ?)'] * len(rows))} RETURNING uuid",
                [value for doc in rows
                 for value in (doc["uuid"], doc["kind"], doc["created"],
                               dumps(without_lists(doc, ENTITY_LINK_FIELDS)))],
            ).fetchall()
            conn.executemany(
                INSERT_LINK,
                [row for uuid, in inserted for row in list_rows(
                    uuid, {field: unique(first[uuid].get(field) or [])
                           for field in ENTITY_LINK_FIELDS}, ENTITY_LINK_FIELDS, None)],
            )
            new.update(uuid for uuid, in inserted)
        return new

    def get_entity(self, uuid: str) -> Doc | None:
        conn = self._connection()
        row = conn.execute("SELECT doc FROM entities WHERE uuid = ?", (uuid,)).fetchone()
        if row is None:
            return None
        doc: Doc = json.loads(row[0])
        attach(conn, [doc], ENTITY_LINK_FIELDS)
        return doc

    def add_links(self, src: str, relation: str, targets: list[str]) -> None:
        with self._write() as conn:
            self._link(conn, src, relation, targets)

    @staticmethod
    def _link(conn: sqlite3.Connection, src: str, relation: str, targets: list[str]) -> None:
        """add_links within the caller's write transaction."""
        table = _LINK_SOURCE_TABLES[check_link(src, relation)]
        # The lists live in links alone (sqlite_links): the record's row is only read, for
        # its existence and its sort key, and a link already there is ignored by the key.
        row = conn.execute(f"SELECT {_LINK_KEY_COLUMNS[table]} FROM {table} "
                           "WHERE uuid = ?", (src,)).fetchone()
        if row is None:
            raise link_source_not_found(src)
        new = unique(targets)
        first = sqlite_links.added_pos.take(len(new))
        # In key order: both b-trees (the key and links_reverse) take sorted rows as
        # near-appends, random ones as a page search each.
        conn.executemany(INSERT_LINK, sorted(
            (src, relation, target, row[0], first + n) for n, target in enumerate(new)))

    def edges(self, uuids: list[str], direction: str,
              limit: int | None = None) -> list[tuple[str, str, str]]:
        # Both directions are served by an index: the key (src, relation, dst) and
        # links_reverse (dst, relation, src_key, src).
        column = "src" if direction == "up" else "dst"
        found: list[tuple[str, str, str]] = []
        conn = self._connection()
        for chunk in chunked(unique(uuids), IN_CHUNK):
            room = -1 if limit is None else limit - len(found)  # LIMIT -1: no limit
            if room == 0:
                break
            found += conn.execute(
                f"SELECT src, relation, dst FROM links WHERE {column} IN "
                f"({', '.join('?' * len(chunk))}) LIMIT ?",
                [*chunk, room],
            ).fetchall()
        return found
