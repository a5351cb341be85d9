"""What the MongoDB store's parts share: projections, keyset conditions, sort specifications,
the stored form of dates."""

from __future__ import annotations

from datetime import UTC, datetime

from pymongo import ASCENDING, DESCENDING

from catalog.store.paging import decode_cursor, decode_sorted_cursor
from catalog.store.values import FILE_SORTS, JOB_SORTS, Doc, check_sort

NO_ID: Doc = {"_id": 0}
DUPLICATE_KEY = 11000
BY_PATH = [("path", ASCENDING), ("uuid", ASCENDING)]


def after(first: str, second: str, cursor: str) -> Doc:
    """Keyset condition (first, second) > cursor, with a range on ``first`` for the index."""
    after_first, after_second = decode_cursor(cursor, 2)
    return {
        first: {"$gte": after_first},
        "$or": [{first: {"$gt": after_first}}, {second: {"$gt": after_second}}],
    }


def sort_spec(sort: str, cursor: str | None, clauses: list[Doc]) -> list[tuple[str, int]]:
    """Add the condition "after the cursor" for ``sort``; return the sort specification."""
    field, descending = check_sort(sort, JOB_SORTS + FILE_SORTS)
    beyond = "$lt" if descending else "$gt"
    if cursor is not None:
        key, uuid = decode_sorted_cursor(cursor, sort)
        clauses.append({
            field: {"$lte" if descending else "$gte": key},
            "$or": [{field: {beyond: key}}, {"uuid": {beyond: uuid}}],
        })
    direction = DESCENDING if descending else ASCENDING
    return [(field, direction), ("uuid", direction)]


def all_of(clauses: list[Doc]) -> Doc:
    return {"$and": clauses} if clauses else {}


def utc_now_text() -> str:
    """Now, in the stored text form of dates."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
