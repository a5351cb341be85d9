"""Indexing's SQLite writes as the catalog grows: per-chunk cost at 20,000 vs 200,000 files.

Prints one JSON document. A fresh SQLite store at default durability takes file records in
the shape ``catalog index`` writes them (a uuid from the storage system and path, xxh3_128 and
sha256 digests, a check, ``child_of``/``generated_by`` the job), in chunks of the indexer's
``UPSERT_CHUNK``, through ``upsert_files`` as the index run does, up to ``--files`` records.
For each chunk: its wall seconds and the process CPU seconds it took (the background
checkpointer's included). The figure is the mean of the last ``--window`` chunks before
``--tree-files`` records and before ``--files``: ``ratio`` is files/s of the chunks at the
large size over files/s of those at the small, measured in the same run (target: >= 0.9),
``cpu_ratio`` the same for CPU. With ``--pages``, the pages each b-tree had dirtied in the
WAL by the last chunk of each size (read from the WAL's frame headers and mapped to trees by
``dbstat``): the trees whose writes do not stay local show there. Peak RSS is this process's.
No file is read or hashed: only the store is measured (``bench/fixity.py`` (c) measures the
whole run).
Usage: ``python bench/fixity_store_scale.py [--files N] [--tree-files N] [--chunk N] [--pages]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import struct
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from catalog.fixity import check
from catalog.identifiers import UUIDType, typed_uuid
from catalog.indexer import UPSERT_CHUNK
from catalog.models import format_date, utc_now
from catalog.store.sqlite import SQLiteStore

STAMP = "2026-12-05T08:00:00.000000Z"
JOB = "00000000-0000-4000-8000-00000000abcd"
SYSTEM = "local"
NAMESPACE = "bench-store-scale"


def record(index: int, stamp: str = STAMP) -> dict[str, Any]:
    """The index's record of the tree's ``index``-th file (digests from its number), written
    by a chunk at ``stamp`` (the index dates each chunk's records with its own date)."""
    path = f"/tree/d{index // 200:04d}/f{index:06d}.bin"
    seed = index.to_bytes(8, "big")
    checksums = {"xxh3_128": hashlib.md5(seed).hexdigest(),
                 "sha256": hashlib.sha256(seed).hexdigest()}
    return {
        "uuid": typed_uuid(UUIDType.file, f"{SYSTEM}:{path}", NAMESPACE),
        "storage_system": SYSTEM, "path": path, "name": path.rsplit("/", 1)[1],
        "size": 4096, "mtime": STAMP, "etag": None, "media_type": "application/octet-stream",
        "kind": "archive", "level": "0", "checksums": checksums, "status": "ok",
        "fixity": [check(stamp, "indexed", 4096, checksums, [])], "checked": stamp,
        "version": 1, "versions": [], "child_of": [JOB], "generated_by": [JOB],
        "derived_from": [], "derived_using": [], "note": None, "created": stamp,
        "updated": stamp,
    }


def _wal_pages(wal: Path, start: int) -> tuple[list[int], int]:
    """The page numbers of the WAL's frames from byte ``start`` (the header's 32 if the WAL
    was restarted), and the WAL's end."""
    data = wal.read_bytes()
    page_size = struct.unpack(">I", data[8:12])[0]
    frame = 24 + page_size
    offset = start if start >= 32 else 32
    pages = []
    while offset + frame <= len(data):
        pages.append(struct.unpack(">I", data[offset:offset + 4])[0])
        offset += frame
    return pages, len(data)


def _trees(database: Path) -> dict[int, str]:
    conn = sqlite3.connect(database)
    try:
        return {page: name for name, page in conn.execute("SELECT name, pageno FROM dbstat")}
    finally:
        conn.close()


def _peak_rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM in /proc/self/status")


def store_cache_mib() -> float:
    from catalog.store import sqlite

    return round(sqlite._CACHE_KIB / 1024, 1)  # type: ignore[attr-defined]


def run(directory: Path, files: int, tree_files: int, window: int,
        pages: bool, chunk: int = UPSERT_CHUNK) -> dict[str, Any]:
    database = directory / "scale.db"
    store = SQLiteStore(database)
    wal = Path(f"{database}-wal")
    chunks: list[tuple[int, float, float]] = []  # (records after it, wall s, cpu s)
    dirtied: dict[int, dict[str, int]] = {}
    try:
        for first in range(0, files, chunk):
            stamp = format_date(utc_now())
            docs = [record(index, stamp)
                    for index in range(first, min(files, first + chunk))]
            done = first + len(docs)
            watch = pages and done in (tree_files, files)
            if watch:
                store._checkpointer.close()  # no checkpoint moves the WAL meanwhile
                store._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                wal_start = wal.stat().st_size if wal.exists() else 0
            wall, cpu = time.perf_counter(), time.process_time()
            store.upsert_files(docs)
            chunks.append((done, time.perf_counter() - wall, time.process_time() - cpu))
            if watch:
                written, _ = _wal_pages(wal, wal_start)
                names = _trees(database)
                dirtied[done] = dict(Counter(names.get(page, "?") for page in written)
                                     .most_common())
                store._checkpointer = type(store._checkpointer)(str(database))
    finally:
        store.close()
    size_mib = round(database.stat().st_size / 2**20, 1)

    def mean(upto: int) -> tuple[float, float]:
        last = [chunk for chunk in chunks if chunk[0] <= upto][-window:]
        records = sum(min(chunk, done) for done, _, _ in last)
        return records / sum(w for _, w, _ in last), sum(c for _, _, c in last) / len(last)

    small_rate, small_cpu = mean(tree_files)
    large_rate, large_cpu = mean(files)
    result: dict[str, Any] = {
        "benchmark": "fixity_store_scale",
        "chunk": chunk, "window_chunks": window,
        "tree_files": tree_files, "files": files,
        "tree_files_s": round(small_rate, 1), "files_s": round(large_rate, 1),
        "tree_chunk_cpu_s": round(small_cpu, 3), "chunk_cpu_s": round(large_cpu, 3),
        "ratio": round(large_rate / small_rate, 3),
        "cpu_ratio": round(small_cpu / large_cpu, 3),
        "database_mib": size_mib, "peak_rss_mib": _peak_rss_mib(),
        "cache_mib": store_cache_mib(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "target": {"ratio": ">= 0.9"},
    }
    if dirtied:
        result["pages_dirtied_by_chunk"] = {str(k): v for k, v in dirtied.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200000)
    parser.add_argument("--tree-files", type=int, default=20000)
    parser.add_argument("--window", type=int, default=3, help="chunks averaged at each size")
    parser.add_argument("--chunk", type=int, default=UPSERT_CHUNK,
                        help="records per write (default: the index's)")
    parser.add_argument("--pages", action="store_true", help="count the pages each tree dirtied")
    parser.add_argument("--dir", help="where the database goes (default: a temporary directory)")
    parser.add_argument("--cache-mib", type=int, help="the store's page cache (default: its own)")
    args = parser.parse_args()
    if args.cache_mib is not None:
        from catalog.store import sqlite

        sqlite._CACHE_KIB = args.cache_mib * 1024  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory(prefix="bench-store-scale-", dir=args.dir) as temporary:
        result = run(Path(temporary), args.files, args.tree_files, args.window, args.pages,
                     args.chunk)
    print(json.dumps(result, indent=2))
    os.sync()


if __name__ == "__main__":
    main()
