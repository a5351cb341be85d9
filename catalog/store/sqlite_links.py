"""A SQLite record's link lists live in ``links`` alone (migration 16), not in its JSON row.

Before, a job's, file's or entity's lists (``child_of``, ``generated_by``, ...) were kept in its
row's JSON as well as in ``links``: a dataset linked from 500,000 runs carried a 20 MB row,
rewritten whole by every link added to it. Now the row keeps an empty list in place of each
list it was written with (so a record reads back with the fields it had, and no row grows with
its links), and a read puts the lists back from ``links`` in their order.

That order is ``links.pos``: a list written with its record (a job at insert, an entity at
insert, a file record at each upsert) takes 0, 1, 2, ...; a link added later
(``add_links``) takes the nanosecond clock of the moment it was added (at least
``ADDED_FROM``, above any such index), kept increasing within the process: lists read back in
the order written, then added, as on MongoDB (``mongo_links``). A link added is one insert (a
repeat is ignored by the key), never a read of the list it joins.

The lists that grow long are the added ones (a dataset read by 500,000 runs). ``links_added``
(src, relation, pos, dst), partial on ``pos >= ADDED_FROM`` (migration 18), holds them in
their order, so their read is a range of it with no sort: a record of 500,000 links reads in
about 0.8 s (0.7 s when every link was in the index; its JSON list took 0.06 s; sorting them,
1.1 s), where each link added to it took a second. The lists written with their records are
short (a file's ``child_of`` and ``generated_by``) and sorted as read; keeping them out of the
index spares each file record written two random inserts into it, which at 200,000 files were
a quarter of the pages an index chunk wrote (from migration 16, ``links_ordered`` held every
link).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from itertools import groupby
from operator import itemgetter

from catalog.store.paging import chunked
from catalog.store.records import ENTITY_LINK_FIELDS, JOB_LINK_FIELDS
from catalog.store.values import Doc

_IN_CHUNK = 500  # uuids per IN (...) list, well under SQLite's bound on parameters
ADDED_FROM = 1 << 60  # the least pos of a link added later: 2006 in nanoseconds, above any index
_ENTITY_PATHS = ", ".join(f"'$.{field}', json('[]')" for field in ENTITY_LINK_FIELDS)
_JOB_PATHS = ", ".join(f"'$.{field}', json('[]')" for field in JOB_LINK_FIELDS)


def _moved_out(table: str, key: str, fields: tuple[str, ...]) -> str:
    """Insert (or give their place to) the links of every ``table`` row's JSON lists."""
    relations = " UNION ALL ".join(f"SELECT '{field}' AS relation" for field in fields)
    return f"""
    INSERT INTO links (src, relation, dst, src_key, pos)
        SELECT r.uuid, f.relation, j.value, {key}, j.key
        FROM {table} r JOIN ({relations}) f JOIN json_each(r.doc, '$.' || f.relation) j
        WHERE j.type = 'text'
    ON CONFLICT (src, relation, dst) DO UPDATE
        SET pos = coalesce(min(links.pos, excluded.pos), excluded.pos)
    """


MIGRATION = (
    16,
    "a record's link lists in links alone, in the order kept by links.pos: no row grows with "
    "the links of its record (a dataset of 500,000 runs weighed 20 MB, rewritten by each link)",
    f"""
    ALTER TABLE links ADD COLUMN pos INTEGER;
    {_moved_out("jobs", "r.created", JOB_LINK_FIELDS)};
    {_moved_out("files", "r.path", ENTITY_LINK_FIELDS)};
    {_moved_out("entities", "NULL", ENTITY_LINK_FIELDS)};
    {_moved_out("tombstones", "json_extract(r.doc, '$.created')", JOB_LINK_FIELDS)};
    UPDATE links SET pos = 0 WHERE pos IS NULL;
    CREATE INDEX links_ordered ON links (src, relation, pos, dst);
    UPDATE jobs SET doc = json_replace(doc, {_JOB_PATHS});
    UPDATE files SET doc = json_replace(doc, {_ENTITY_PATHS});
    UPDATE entities SET doc = json_replace(doc, {_ENTITY_PATHS});
    UPDATE tombstones SET doc = json_replace(doc, {_JOB_PATHS})
    """,
)

ADDED_MIGRATION = (
    18,
    "only the links added after their record was written (the lists that grow long) are held "
    "in their order by an index: a file record's own two links no longer cost two random "
    "inserts into it (a quarter of an index chunk's pages at 200,000 files)",
    f"""
    DROP INDEX links_ordered;
    CREATE INDEX links_added ON links (src, relation, pos, dst) WHERE pos >= {ADDED_FROM}
    """,
)


class _Clock:
    """The ``pos`` of links added later: nanoseconds, increasing within the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def take(self, count: int) -> int:
        """The first of ``count`` positions, each above every one taken before."""
        with self._lock:
            first = max(time.time_ns(), self._last + 1, ADDED_FROM)
            self._last = first + count
            return first


added_pos = _Clock()


def without_lists(doc: Doc, fields: tuple[str, ...]) -> Doc:
    """``doc`` as its row keeps it: each link list it has, empty."""
    if not any(doc.get(field) for field in fields):
        return doc
    return {**doc, **{field: [] for field in fields if field in doc}}


def list_rows(uuid: str, doc: Doc, fields: tuple[str, ...],
              key: str | None) -> list[tuple[str, str, str, str | None, int]]:
    """The links rows ``(src, relation, dst, src_key, pos)`` of a record's own lists."""
    return [(uuid, relation, target, key, pos) for relation in fields
            for pos, target in enumerate(doc.get(relation) or ())]


def attach(conn: sqlite3.Connection, docs: Iterable[Doc], fields: tuple[str, ...]) -> None:
    """Put each doc's link lists back from ``links``, in place, in their order: those written
    with the record (sorted as read), then those added (a range of ``links_added``)."""
    by_uuid = {doc["uuid"]: doc for doc in docs}
    if not by_uuid:
        return
    relations = ", ".join(f"'{field}'" for field in fields)
    for chunk in chunked(list(by_uuid), _IN_CHUNK):
        where = (f"src IN ({', '.join('?' * len(chunk))}) AND relation IN ({relations})")
        lists: dict[tuple[str, str], list[str]] = {}
        # The same constant as the index's condition, in the text: the planner then knows
        # the second read is a range of links_added.
        for condition in (f"pos < {ADDED_FROM}", f"pos >= {ADDED_FROM}"):
            rows = conn.execute(f"SELECT src, relation, dst FROM links WHERE {where} AND "
                                f"{condition} ORDER BY src, relation, pos, dst", chunk)
            for key, group in groupby(rows, key=itemgetter(0, 1)):
                lists.setdefault(key, []).extend(dst for _, _, dst in group)
        for (src, relation), targets in lists.items():
            by_uuid[src][relation] = targets
