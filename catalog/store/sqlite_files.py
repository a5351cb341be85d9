"""The SQLite store's file records: their upserts in bulk (checksums, links and fixity history
with them), reads, listings and the fixity checks recorded on them."""

from __future__ import annotations

import json
import sqlite3
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import orjson

from catalog.errors import FileNotFound
from catalog.store import sqlite_checkpoint, sqlite_file_keys
from catalog.store.fixity_sqlite import SET_LAST_CHECK, add_checks, add_checks_of_uuids
from catalog.store.paging import chunked, prefix_upper_bound, sorted_page, unique
from catalog.store.records import (
    ENTITY_LINK_FIELDS,
    FILE_JOB_LINK_FIELDS,
    FixityUpdate,
    check_algorithm,
    last_check,
    latest_files,
    without_link_fields,
)
from catalog.store.sqlite_links import attach, list_rows, without_lists
from catalog.store.sqlite_rows import IN_CHUNK, INSERT_LINK, dumps, keyset
from catalog.store.values import FILE_SORTS, Doc, Page, check_limit, check_sort

# A file record's row is read by orjson: reading a job's 20,000 records for a bag took 21 µs
# a record with json.loads, 12 with orjson and the link fields dropped in place (a record is
# read for every file a page, verify or bag goes through). Why the other rows are read by
# json.loads does not hold here: they may carry a client's JSON, written before integers
# beyond 64 bits were refused, which orjson would read as floats; a file record is built by
# the catalog (FileRecord: no free-form field), and its only integers are sizes and version
# numbers.
file_doc = orjson.loads

_UPSERT_FILE = (
    "INSERT INTO files (uuid, path, storage_system, status, kind, level, media_type, created, "
    "doc, checked) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (uuid) DO UPDATE SET path = excluded.path, "
    "storage_system = excluded.storage_system, status = excluded.status, "
    "kind = excluded.kind, level = excluded.level, media_type = excluded.media_type, "
    "created = excluded.created, doc = excluded.doc, "
    "checked = max(files.checked, excluded.checked)"
)


class FilesSQLite:
    """The file-records part of ``SQLiteStore``."""

    _checkpointer: sqlite_checkpoint.BackgroundCheckpointer

    if TYPE_CHECKING:  # SQLiteStore's
        def _connection(self) -> sqlite3.Connection: ...

        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def upsert_files(self, docs: list[Doc]) -> None:
        latest = latest_files(docs)
        if not latest:
            return
        # The COMMIT does not checkpoint (a chunk of an index run dirties thousands of pages
        # of its random-keyed trees: the checkpoint cost as much as the write); a thread of
        # the store does, after (sqlite_checkpoint). Durability is the WAL's, synced at COMMIT.
        with sqlite_checkpoint.deferred(self._connection()):
            self._upsert_files(latest)
        self._checkpointer.request()

    def _upsert_files(self, latest: dict[str, Doc]) -> None:
        with self._write() as conn:
            # A replaced record's checksum rows are found by its id, and its edges through
            # the links key (src, relation). Its last check is read under the write lock, to
            # be kept if newer (last_check).
            replaced: dict[str, int] = {}
            stored: dict[str, list[Doc]] = {}
            for chunk in chunked(list(latest), IN_CHUNK):
                rows = conn.execute(
                    "SELECT uuid, id, json_extract(doc, '$.fixity') "
                    f"FROM files WHERE uuid IN ({', '.join('?' * len(chunk))})",
                    chunk,
                )
                for uuid, file, fixity in rows:
                    replaced[uuid] = file
                    stored[uuid] = file_doc(fixity or "[]")
            # The doc's checks join the history (once the new records have their ids); the
            # record keeps its last check only.
            checks = [(uuid, check) for uuid, doc in latest.items()
                      for check in doc.get("fixity") or ()]
            for uuid, doc in latest.items():
                given = doc.get("fixity") or []
                kept = last_check(stored.get(uuid, []), given)
                if kept != given:
                    latest[uuid] = {**doc, "fixity": kept}
            conn.executemany(
                "DELETE FROM links WHERE src = ? AND relation = ?",
                [(uuid, relation) for uuid in replaced for relation in ENTITY_LINK_FIELDS],
            )
            # Rows in key order: a b-tree takes sorted keys as near-appends, and random ones
            # as a page search each. A new record's id is the next rowid: the trees keyed by
            # it (checksums, check history, last checks) take the chunk side by side
            # (sqlite_file_keys).
            conn.executemany(
                _UPSERT_FILE,
                [(doc["uuid"], doc["path"], doc["storage_system"], doc["status"],
                  doc.get("kind"), doc.get("level"), doc.get("media_type"), doc.get("created"),
                  dumps(without_lists(doc, ENTITY_LINK_FIELDS)), doc.get("checked") or "")
                 for _, doc in sorted(latest.items())],
            )
            ids = {**replaced, **sqlite_file_keys.file_ids(
                conn, [uuid for uuid in latest if uuid not in replaced])}
            sqlite_file_keys.replace_checksums(
                conn, replaced.values(), ((ids[uuid], doc) for uuid, doc in latest.items()))
            add_checks(conn, ((ids[uuid], check) for uuid, check in checks))
            conn.executemany(
                INSERT_LINK,
                sorted(row for doc in latest.values()
                       for row in list_rows(doc["uuid"], doc, ENTITY_LINK_FIELDS, doc["path"])),
            )

    def get_file(self, uuid: str) -> Doc | None:
        conn = self._connection()
        row = conn.execute("SELECT doc FROM files WHERE uuid = ?", (uuid,)).fetchone()
        if row is None:
            return None
        doc: Doc = file_doc(row[0])
        attach(conn, [doc], ENTITY_LINK_FIELDS)
        return doc

    def get_files(self, uuids: list[str]) -> dict[str, Doc]:
        wanted = unique(uuids)
        found: dict[str, Doc] = {}
        conn = self._connection()
        for chunk in chunked(wanted, IN_CHUNK):
            rows = conn.execute(
                f"SELECT uuid, doc FROM files WHERE uuid IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
            found.update((uuid, file_doc(body)) for uuid, body in rows)
        attach(conn, found.values(), ENTITY_LINK_FIELDS)
        return {uuid: found[uuid] for uuid in wanted if uuid in found}

    def find_files(self, child_of: str | None = None, path_prefix: str | None = None,
                   status: str | None = None, limit: int = 100,
                   cursor: str | None = None, *, kind: str | None = None,
                   level: str | None = None, media_type: str | None = None,
                   sort: str = "path", checksum: tuple[str, str] | None = None,
                   links: bool = True) -> Page:
        check_limit(limit)
        check_sort(sort, FILE_SORTS)
        where: list[str] = []
        params: list[Any] = []
        source, keyed = "files", "files"
        if checksum is not None:
            # Driven by file_checksums_key (the digest's first 60 bits): the matches of a
            # digest, sorted for the page (a sorter that keeps a page, however many files
            # share it).
            source = "file_checksums JOIN files ON files.id = file_checksums.file"
            condition, values = sqlite_file_keys.checksum_match(check_algorithm(checksum[0]),
                                                                checksum[1])
            where.append(condition)
            params += values
        if child_of is not None:
            if checksum is None:
                source = "links JOIN files ON files.uuid = links.src"
            else:
                source += " JOIN links ON links.src = files.uuid"
            where.append("links.dst = ? AND links.relation = 'child_of'")
            params.append(child_of)
            if sort.lstrip("-") == "path":
                # links_reverse (dst, relation, src_key, src) holds the job's files in the
                # page's order: each page is a range of it, not all the job's files sorted.
                keyed = "links"
        if path_prefix:
            # A range, not LIKE: LIKE ignores ASCII case in SQLite, so it would need escaping
            # and would still match /Products for /products (and could not use the index).
            where.append("files.path >= ?")
            params.append(path_prefix)
            upper = prefix_upper_bound(path_prefix)
            if upper is not None:
                where.append("files.path < ?")
                params.append(upper)
        for column, value in (("status", status), ("kind", kind), ("level", level),
                              ("media_type", media_type)):
            if value is not None:
                where.append(f"files.{column} = ?")
                params.append(value)
        order = keyset(sort, cursor, keyed, where, params)
        sql = f"SELECT files.doc FROM {source}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {order} LIMIT ?"
        conn = self._connection()
        rows = conn.execute(sql, (*params, limit + 1)).fetchall()
        page = sorted_page([file_doc(r[0]) for r in rows], limit, sort)
        if links:
            attach(conn, page.items, ENTITY_LINK_FIELDS)
        else:
            without_link_fields(page.items)
        return page

    def record_fixity(self, checks: list[FixityUpdate]) -> None:
        if not checks:
            return
        with self._write() as conn:
            # Set by SQLite's JSON functions: no record is parsed and rewritten in Python.
            appended = conn.executemany(
                SET_LAST_CHECK,
                [(status, check["date"], dumps(check), status, check["date"], check["date"],
                  uuid) for uuid, check, status in checks],
            ).rowcount
            if appended != len(checks):
                wanted = unique([uuid for uuid, _, _ in checks])
                found: set[str] = set()
                for chunk in chunked(wanted, IN_CHUNK):
                    found.update(uuid for (uuid,) in conn.execute(
                        f"SELECT uuid FROM files WHERE uuid IN ({', '.join('?' * len(chunk))})",
                        chunk))
                # Raised inside the transaction: it is rolled back, nothing is written.
                raise FileNotFound(next(uuid for uuid in wanted if uuid not in found))
            add_checks_of_uuids(conn, ((uuid, check) for uuid, check, _ in checks))

    def unlink_job_files(self, job_uuid: str) -> int:
        relations = ", ".join(f"'{relation}'" for relation in FILE_JOB_LINK_FIELDS)
        with self._write() as conn:  # the lists are in links alone (sqlite_links)
            rows = conn.execute(
                "SELECT uuid FROM files WHERE uuid IN "
                f"(SELECT src FROM links WHERE dst = ? AND relation IN ({relations}))",
                (job_uuid,),
            ).fetchall()
            conn.executemany(
                "DELETE FROM links WHERE src = ? AND relation = ? AND dst = ?",
                [(uuid, relation, job_uuid) for uuid, in rows
                 for relation in FILE_JOB_LINK_FIELDS],
            )
            return len(rows)

    def oldest_checks(self, storage_system: str, before: str, limit: int) -> list[Doc]:
        check_limit(limit)
        conn = self._connection()
        rows = conn.execute(
            "SELECT doc FROM files WHERE storage_system = ? AND checked < ? "
            "ORDER BY checked, id LIMIT ?", (storage_system, before, limit)).fetchall()
        docs = [file_doc(row[0]) for row in rows]
        attach(conn, docs, ENTITY_LINK_FIELDS)
        return docs

    def append_fixity_run(self, summary: Doc) -> None:
        with self._write() as conn:
            conn.execute("INSERT INTO fixity_runs (doc) VALUES (?)", (dumps(summary),))

    def find_fixity_runs(self, limit: int = 100) -> list[Doc]:
        check_limit(limit)
        rows = self._connection().execute(
            "SELECT doc FROM fixity_runs ORDER BY id DESC LIMIT ?", (limit,))
        return [json.loads(row[0]) for row in rows]
