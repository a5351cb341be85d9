"""SQLite catalogs as earlier versions of the code left them, for migration tests."""

from __future__ import annotations

import sqlite3

# The files, file_checksums and fixity_checks tables as migrations 3 to 16 left them: keyed
# by uuid and digest, before migration 17 keyed them by the record's integer id.
_BEFORE_17 = """
    CREATE TABLE files_old (
        uuid TEXT PRIMARY KEY,
        path TEXT NOT NULL,
        storage_system TEXT NOT NULL,
        status TEXT NOT NULL,
        doc TEXT NOT NULL,
        kind TEXT, level TEXT, media_type TEXT, created TEXT,
        checked TEXT NOT NULL DEFAULT ''
    );
    INSERT INTO files_old SELECT uuid, path, storage_system, status, doc, kind, level,
        media_type, created, checked FROM files;
    CREATE TABLE file_checksums_old (
        algorithm TEXT NOT NULL, digest TEXT NOT NULL, uuid TEXT NOT NULL,
        PRIMARY KEY (algorithm, digest, uuid)
    ) WITHOUT ROWID;
    INSERT INTO file_checksums_old SELECT c.algorithm, c.digest, f.uuid
        FROM file_checksums c JOIN files f ON f.id = c.file;
    CREATE TABLE fixity_checks_old (
        file TEXT NOT NULL, date TEXT NOT NULL, outcome TEXT NOT NULL, doc TEXT NOT NULL,
        PRIMARY KEY (file, date, outcome)
    ) WITHOUT ROWID;
    INSERT INTO fixity_checks_old SELECT f.uuid, c.date, c.outcome, c.doc
        FROM fixity_checks c JOIN files f ON f.id = c.file;
    DROP TABLE files;
    DROP TABLE file_checksums;
    DROP TABLE fixity_checks;
    ALTER TABLE files_old RENAME TO files;
    ALTER TABLE file_checksums_old RENAME TO file_checksums;
    ALTER TABLE fixity_checks_old RENAME TO fixity_checks;
    CREATE INDEX files_path ON files (path, uuid);
    CREATE INDEX files_status ON files (status, path, uuid);
    CREATE INDEX files_created ON files (created, uuid);
    CREATE INDEX files_checked ON files (storage_system, checked, uuid);
    DELETE FROM schema_migrations WHERE version = 17
"""


def files_before_17(conn: sqlite3.Connection) -> None:
    """Give the catalog open on ``conn`` (in a transaction) its file tables as they were
    before migration 17, with the same rows: opening it again runs migration 17 on them."""
    for statement in _BEFORE_17.split(";"):
        conn.execute(statement)
