"""File records keyed by rowid in SQLite (migration 17): writes that stay on a few pages.

A file's uuid is a hash of its storage system and path, a digest is a hash of its content:
keys spread at random. Every tree keyed by them (the files' uuid key, ``file_checksums``
by (algorithm, digest, uuid), ``fixity_checks`` by (file uuid, date, outcome), the
last-check index by (checked, uuid)) took each row of an index run's chunk on a page of its
own, so each COMMIT wrote about one page per row per tree to the WAL, and a chunk cost more as
the trees grew (measured with ``bench/fixity_store_scale.py --pages``: 37,000 pages a chunk of
5,000 records at 200,000 files, against 7,700 at 20,000).

Now a record has an ``id`` (its rowid, given in the order records are first written), and the
trees written with it are keyed by that id: a chunk's check history, checksum rows and last
checks land side by side, a few pages each. Only two trees stay keyed at random, each as
compact as can be: the uuid (every lookup by uuid needs it) and ``file_checksums_key``, the
first 60 bits of each digest as an integer (an entry of about 16 bytes, where the digest and
uuid took about 110), which finds the records of a checksum; the digest itself is compared
in the row.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from catalog.store.paging import chunked
from catalog.store.values import Doc

_IN_CHUNK = 500  # uuids per IN (...) list, well under SQLite's bound on parameters
_HEX_KEY_DIGITS = 15  # 60 bits: a positive integer SQLite keeps in 8 bytes


def digest_key(digest: str) -> int:
    """The integer a digest is indexed by: its first 60 bits when it is hexadecimal (as every
    digest the catalog computes), else a hash of it (a digest given by hand)."""
    try:
        return int(digest[:_HEX_KEY_DIGITS], 16)
    except ValueError:
        return int.from_bytes(hashlib.blake2b(digest.encode(), digest_size=7).digest(), "big")


DIGEST_KEY_FUNCTION = "catalog_digest_key"  # the migration's name for digest_key

MIGRATION = (
    17,
    "file records keyed by an integer id given in the order they are written, referenced by "
    "their checksums and check history, and the last-check index by it: a chunk of an index "
    "run writes a few pages per tree, not one page per row per tree; a checksum is found "
    "through a compact integer index of its digest's first 60 bits",
    f"""
    CREATE TABLE files_v17 (
        id INTEGER PRIMARY KEY,
        uuid TEXT NOT NULL UNIQUE,
        path TEXT NOT NULL,
        storage_system TEXT NOT NULL,
        status TEXT NOT NULL,
        doc TEXT NOT NULL,
        kind TEXT,
        level TEXT,
        media_type TEXT,
        created TEXT,
        checked TEXT NOT NULL DEFAULT ''
    );
    INSERT INTO files_v17 (uuid, path, storage_system, status, doc, kind, level, media_type,
                           created, checked)
        SELECT uuid, path, storage_system, status, doc, kind, level, media_type, created,
               checked
        FROM files ORDER BY storage_system, path, uuid;
    CREATE TABLE file_checksums_v17 (
        file INTEGER NOT NULL,
        algorithm TEXT NOT NULL,
        digest TEXT NOT NULL,
        key INTEGER NOT NULL
    );
    INSERT INTO file_checksums_v17 (file, algorithm, digest, key)
        SELECT f.id, c.algorithm, c.digest, {DIGEST_KEY_FUNCTION}(c.digest)
        FROM file_checksums c JOIN files_v17 f ON f.uuid = c.uuid
        ORDER BY f.id, c.algorithm;
    CREATE TABLE fixity_checks_v17 (
        file INTEGER NOT NULL,
        date TEXT NOT NULL,
        outcome TEXT NOT NULL,
        doc TEXT NOT NULL,
        PRIMARY KEY (file, date, outcome)
    ) WITHOUT ROWID;
    INSERT INTO fixity_checks_v17 (file, date, outcome, doc)
        SELECT f.id, c.date, c.outcome, c.doc
        FROM fixity_checks c JOIN files_v17 f ON f.uuid = c.file
        ORDER BY f.id, c.date, c.outcome;
    DROP TABLE files;
    DROP TABLE file_checksums;
    DROP TABLE fixity_checks;
    ALTER TABLE files_v17 RENAME TO files;
    ALTER TABLE file_checksums_v17 RENAME TO file_checksums;
    ALTER TABLE fixity_checks_v17 RENAME TO fixity_checks;
    CREATE INDEX files_path ON files (path, uuid);
    CREATE INDEX files_status ON files (status, path, uuid);
    CREATE INDEX files_created ON files (created, uuid);
    CREATE INDEX files_checked ON files (storage_system, checked, id);
    CREATE INDEX file_checksums_file ON file_checksums (file);
    CREATE INDEX file_checksums_key ON file_checksums (key)
    """,
)

_INSERT_CHECKSUM = "INSERT INTO file_checksums (file, algorithm, digest, key) VALUES (?, ?, ?, ?)"


def register(conn: sqlite3.Connection) -> None:
    """Give ``conn`` the migration's function (it computes the keys of the stored digests)."""
    conn.create_function(DIGEST_KEY_FUNCTION, 1, digest_key, deterministic=True)


def file_ids(conn: sqlite3.Connection, uuids: Sequence[str]) -> dict[str, int]:
    """The id of each of ``uuids`` that has a record."""
    found: dict[str, int] = {}
    for chunk in chunked(list(uuids), _IN_CHUNK):
        found.update(conn.execute(
            f"SELECT uuid, id FROM files WHERE uuid IN ({', '.join('?' * len(chunk))})",
            chunk).fetchall())
    return found


def replace_checksums(conn: sqlite3.Connection, replaced: Iterable[int],
                      records: Iterable[tuple[int, Doc]]) -> None:
    """Drop the checksum rows of the ``replaced`` records, add those of ``(id, doc)``."""
    conn.executemany("DELETE FROM file_checksums WHERE file = ?",
                     [(file,) for file in sorted(replaced)])
    conn.executemany(_INSERT_CHECKSUM, sorted(
        (file, algorithm, digest, digest_key(digest)) for file, doc in records
        for algorithm, digest in (doc.get("checksums") or {}).items()))


def checksum_match(algorithm: str, digest: str) -> tuple[str, list[Any]]:
    """The condition (and its values) on ``file_checksums`` of the rows of a checksum: a
    range of the compact key, each candidate's digest compared."""
    return ("file_checksums.key = ? AND file_checksums.algorithm = ? "
            "AND file_checksums.digest = ?", [digest_key(digest), algorithm, digest])
