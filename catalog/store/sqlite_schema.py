"""The SQLite store's numbered migrations; each runs once, in order, recorded in
``schema_migrations`` (``SQLiteStore.migrate``)."""

from __future__ import annotations

from catalog.store.fixity_sqlite import MIGRATION as FIXITY_MIGRATION
from catalog.store.openlineage_sqlite import MIGRATION as OPENLINEAGE_MIGRATION
from catalog.store.sqlite_file_keys import MIGRATION as FILE_KEYS_MIGRATION
from catalog.store.sqlite_links import ADDED_MIGRATION as LINKS_ADDED_MIGRATION
from catalog.store.sqlite_links import MIGRATION as LINKS_MIGRATION
from catalog.store.tombstones_sqlite import MIGRATION as TOMBSTONES_MIGRATION

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "pipelines, jobs, history, links, audit",
        """
        CREATE TABLE pipelines (
            uuid TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            created TEXT NOT NULL,
            doc TEXT NOT NULL
        );
        CREATE INDEX pipelines_name ON pipelines (name, uuid);
        CREATE TABLE jobs (
            uuid TEXT PRIMARY KEY,
            pipeline_uuid TEXT NOT NULL,
            state TEXT NOT NULL,
            version INTEGER NOT NULL,
            last_event TEXT NOT NULL,
            created TEXT NOT NULL,
            updated TEXT NOT NULL,
            doc TEXT NOT NULL
        );
        CREATE INDEX jobs_created ON jobs (created, uuid);
        CREATE INDEX jobs_state ON jobs (state, created, uuid);
        CREATE INDEX jobs_pipeline ON jobs (pipeline_uuid, created, uuid);
        CREATE TABLE history (
            job_uuid TEXT NOT NULL,
            seq INTEGER NOT NULL,
            uuid TEXT NOT NULL UNIQUE,
            event_id TEXT NOT NULL,
            doc TEXT NOT NULL,
            PRIMARY KEY (job_uuid, seq),
            UNIQUE (job_uuid, event_id)
        );
        CREATE TABLE links (
            src TEXT NOT NULL,
            relation TEXT NOT NULL,
            dst TEXT NOT NULL,
            PRIMARY KEY (src, relation, dst)
        ) WITHOUT ROWID;
        CREATE INDEX links_reverse ON links (dst, relation, src);
        CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_uuid TEXT NOT NULL,
            date TEXT NOT NULL,
            doc TEXT NOT NULL
        );
        CREATE INDEX audit_job ON audit (job_uuid, id);
        """,
    ),
    (
        2,
        "entities (references, products)",
        """
        CREATE TABLE entities (
            uuid TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            created TEXT NOT NULL,
            doc TEXT NOT NULL
        );
        """,
    ),
    (
        3,
        "files, file checksums",
        """
        CREATE TABLE files (
            uuid TEXT PRIMARY KEY,
            path TEXT NOT NULL,
            storage_system TEXT NOT NULL,
            status TEXT NOT NULL,
            doc TEXT NOT NULL
        );
        CREATE INDEX files_path ON files (path, uuid);
        CREATE INDEX files_storage_path ON files (storage_system, path);
        CREATE INDEX files_status ON files (status, path, uuid);
        CREATE TABLE file_checksums (
            algorithm TEXT NOT NULL,
            digest TEXT NOT NULL,
            uuid TEXT NOT NULL,
            PRIMARY KEY (algorithm, digest, uuid)
        ) WITHOUT ROWID;
        """,
    ),
    (
        4,
        "columns to find jobs by agent, files by kind, level, media type, and sort by created; "
        "no (storage_system, path) index: the uuid is derived from both, nothing reads it",
        """
        ALTER TABLE jobs ADD COLUMN agent TEXT;
        UPDATE jobs SET agent = json_extract(doc, '$.agent');
        CREATE INDEX jobs_agent ON jobs (agent, created, uuid);
        ALTER TABLE files ADD COLUMN kind TEXT;
        ALTER TABLE files ADD COLUMN level TEXT;
        ALTER TABLE files ADD COLUMN media_type TEXT;
        ALTER TABLE files ADD COLUMN created TEXT;
        UPDATE files SET kind = json_extract(doc, '$.kind'), level = json_extract(doc, '$.level'),
            media_type = json_extract(doc, '$.media_type'),
            created = json_extract(doc, '$.created');
        CREATE INDEX files_created ON files (created, uuid);
        DROP INDEX files_storage_path;
        """,
    ),
    (
        5,
        "history without a unique index on the entry uuid: (job_uuid, event_id) is unique and "
        "the uuid is derived from it; nothing looks entries up by uuid, and every event paid "
        "for the index with a page written at random",
        """
        CREATE TABLE history_v5 (
            job_uuid TEXT NOT NULL,
            seq INTEGER NOT NULL,
            uuid TEXT NOT NULL,
            event_id TEXT NOT NULL,
            doc TEXT NOT NULL,
            PRIMARY KEY (job_uuid, seq),
            UNIQUE (job_uuid, event_id)
        );
        INSERT INTO history_v5 (job_uuid, seq, uuid, event_id, doc)
            SELECT job_uuid, seq, uuid, event_id, doc FROM history ORDER BY job_uuid, seq;
        DROP TABLE history;
        ALTER TABLE history_v5 RENAME TO history;
        """,
    ),
    (
        6,
        "links carry the key their source is paged by (a file's path, a job's created), and "
        "links_reverse orders a job's files and children by it: paging them (file list --job, "
        "verify, job list --child-of) read and sorted all of them for every page",
        """
        ALTER TABLE links ADD COLUMN src_key TEXT;
        UPDATE links SET src_key = (SELECT path FROM files WHERE files.uuid = links.src)
            WHERE src IN (SELECT uuid FROM files);
        UPDATE links SET src_key = (SELECT created FROM jobs WHERE jobs.uuid = links.src)
            WHERE src IN (SELECT uuid FROM jobs);
        DROP INDEX links_reverse;
        CREATE INDEX links_reverse ON links (dst, relation, src_key, src);
        """,
    ),
    (
        7,
        "the work queue: a job's queue attributes and results in columns of their own, the "
        "claim order of QUEUED jobs and the lease expiries in partial indexes (a claim and the "
        "sweep read only what they need), and counts by pipeline and state",
        """
        ALTER TABLE jobs ADD COLUMN queue TEXT;
        ALTER TABLE jobs ADD COLUMN results TEXT;
        ALTER TABLE jobs ADD COLUMN priority INTEGER;
        ALTER TABLE jobs ADD COLUMN queued TEXT;
        ALTER TABLE jobs ADD COLUMN lease_expiry TEXT;
        CREATE INDEX jobs_claim ON jobs (pipeline_uuid, priority DESC, queued, uuid)
            WHERE state = 'QUEUED';
        CREATE INDEX jobs_lease ON jobs (lease_expiry) WHERE lease_expiry IS NOT NULL;
        CREATE INDEX jobs_pipeline_state ON jobs (pipeline_uuid, state)
        """,
    ),
    (
        8,
        "scheduled fixity: a file's last check in a column ('' for never) indexed by storage "
        "system, so the oldest checks are found without a scan; a summary of each scheduled run",
        """
        ALTER TABLE files ADD COLUMN checked TEXT NOT NULL DEFAULT '';
        UPDATE files SET checked = coalesce(json_extract(doc, '$.checked'),
                                            json_extract(doc, '$.fixity[#-1].date'), '');
        CREATE INDEX files_checked ON files (storage_system, checked, uuid);
        CREATE TABLE fixity_runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            doc TEXT NOT NULL
        );
        """,
    ),
    OPENLINEAGE_MIGRATION,
    (
        11,
        "conditions: the reverse index of a job's dependencies, so that a job's end reaches "
        "the jobs waiting on it (and only them) without a scan",
        """
        CREATE TABLE dependencies (
            dependency TEXT NOT NULL,
            dependent TEXT NOT NULL,
            PRIMARY KEY (dependency, dependent)
        ) WITHOUT ROWID;
        CREATE INDEX dependencies_dependent ON dependencies (dependent)
        """,
    ),
    (
        12,
        "the job-state stream reads the jobs changed since its last read: a range of an index "
        "on updated, not a scan of every job each time it is woken",
        """
        CREATE INDEX jobs_updated ON jobs (updated, uuid)
        """,
    ),
    TOMBSTONES_MIGRATION,
    FIXITY_MIGRATION,  # 15 (14: another branch)
    LINKS_MIGRATION,  # 16
    FILE_KEYS_MIGRATION,  # 17
    LINKS_ADDED_MIGRATION,  # 18
)
