"""What the SQLite store's parts share: a document's stored text, a job's rows, the statements
more than one part writes with, and keyset paging."""

from __future__ import annotations

from typing import Any

import orjson

from catalog.store.base import lease_expiry
from catalog.store.paging import decode_sorted_cursor
from catalog.store.records import JOB_LINK_FIELDS, check_new_job
from catalog.store.sqlite_links import list_rows, without_lists
from catalog.store.values import CHANGEABLE, FILE_SORTS, JOB_SORTS, Doc, check_sort

BULK_CHUNK = 10000  # events per transaction of apply_events, jobs per one of a sweep
IN_CHUNK = 500  # uuids per IN (...) list, well under SQLite's bound on parameters
INSERT_HISTORY = "INSERT INTO history (job_uuid, seq, uuid, event_id, doc) VALUES (?, ?, ?, ?, ?)"
# src_key: what its source is paged by, a file's path or a job's created (None for entities);
# pos: its place in its source's list (sqlite_links).
INSERT_LINK = ("INSERT OR IGNORE INTO links (src, relation, dst, src_key, pos) "
               "VALUES (?, ?, ?, ?, ?)")
JOB_COLUMNS = ("uuid, pipeline_uuid, state, version, last_event, created, updated, doc, "
               "queue")
INSERT_JOB = (f"INTO jobs ({JOB_COLUMNS}, priority, queued, lease_expiry, agent, results) "
              "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
# A job's fields kept in columns of their own (or in the history table), not in its doc.
_HEAD_FIELDS = frozenset({"uuid", "pipeline_uuid", "state", "version", "last_event", "created",
                          "updated", "history", *CHANGEABLE})


def dumps(doc: Any) -> str:
    """A document's stored text: compact JSON, UTF-8 as is. orjson takes a tenth of
    json.dumps's time, which was a quarter of indexing's writes. (Reading stays json.loads:
    orjson reads an integer beyond 64 bits as a float, and rows written before such integers
    were refused may hold one.)"""
    return orjson.dumps(doc).decode()


def queue_columns(queue: Doc | None) -> tuple[str | None, int | None, str | None, str | None]:
    """The jobs columns a job's queue document sets: the document, and what the claim and
    lease indexes read of it."""
    if queue is None:
        return None, None, None, None
    return dumps(queue), int(queue.get("priority", 3)), queue.get("queued"), lease_expiry(queue)


def job_row(doc: Doc) -> tuple[Any, ...]:
    """The jobs row of a new job (``INSERT_JOB``'s parameters)."""
    check_new_job(doc)
    body = without_lists({k: v for k, v in doc.items() if k not in _HEAD_FIELDS},
                         JOB_LINK_FIELDS)
    results = doc.get("results")
    return (doc["uuid"], doc["pipeline_uuid"], doc["state"], doc["version"],
            doc["last_event"], doc["created"], doc["updated"], dumps(body),
            *queue_columns(doc.get("queue")), doc.get("agent"),
            None if results is None else dumps(results))


def job_rows(doc: Doc) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """A new job's history rows and link rows."""
    return ([(doc["uuid"], seq, e["uuid"], e["event_id"], dumps(e))
             for seq, e in enumerate(doc.get("history", []), start=1)],
            list_rows(doc["uuid"], doc, JOB_LINK_FIELDS, doc["created"]))


def keyset(sort: str, cursor: str | None, table: str, where: list[str],
           params: list[Any]) -> str:
    """Add the condition "after the cursor" for ``sort``; return the ORDER BY clause.

    ``table`` "links" keys a source's sort value and uuid by its link row (src_key, src)."""
    column, descending = check_sort(sort, JOB_SORTS + FILE_SORTS)
    key_column, uuid_column = (f"{table}.{column}", f"{table}.uuid") if table != "links" else (
        "links.src_key", "links.src")
    if cursor is not None:
        key, uuid = decode_sorted_cursor(cursor, sort)
        where.append(f"({key_column}, {uuid_column}) {'<' if descending else '>'} (?, ?)")
        params += [key, uuid]
    direction = "DESC" if descending else "ASC"
    return f"{key_column} {direction}, {uuid_column} {direction}"
