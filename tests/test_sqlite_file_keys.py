"""SQLite file records keyed by an integer id (migration 17, ``sqlite_file_keys``): a database
made before it keeps every record, checksum and check, and every lookup the catalog makes of
files (by uuid, path, checksum, job, last check; a record's checks) keeps its index."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import xxhash
from sqlite_shapes import files_before_17

from catalog.identifiers import UUIDType, typed_uuid
from catalog.models import FileRecord, FixityCheck
from catalog.store import sqlite
from catalog.store.sqlite import SQLiteStore
from catalog.store.sqlite_file_keys import digest_key
from catalog.store.values import Doc

NOW = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)
JOB = typed_uuid(UUIDType.pipelinejob, "file-keys-job")
OTHER_JOB = typed_uuid(UUIDType.pipelinejob, "file-keys-other-job")


def at(seconds: float) -> str:
    return (NOW + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def digests(content: str) -> dict[str, str]:
    return {"xxh3_128": xxhash.xxh3_128_hexdigest(content.encode()),
            "sha256": hashlib.sha256(content.encode()).hexdigest()}


def make_check(seconds: float, content: str, outcome: str = "ok") -> Doc:
    return FixityCheck(date=at(seconds), outcome=outcome, size=len(content),
                       checksums=digests(content)).model_dump(mode="json")


def make_file(path: str, content: str, checked: float = 0, job: str = JOB) -> Doc:
    return FileRecord(
        uuid=typed_uuid(UUIDType.file, f"local:{path}"), storage_system="local", path=path,
        name=path.rpartition("/")[2], size=len(content), mtime=at(0), media_type="text/csv",
        kind="product", checksums=digests(content), status="ok",
        fixity=[make_check(checked, content, "indexed")], checked=at(checked),
        child_of=[job], generated_by=[job], created=at(0), updated=at(checked),
    ).model_dump(mode="json")


def write_before_17(path: Path, docs: list[Doc], checks: dict[str, list[Doc]],
                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A catalog made by the migrations before 17, holding ``docs`` as the code before it
    wrote them: rows keyed by uuid, checksums by (algorithm, digest, uuid), the history of
    checks by (file uuid, date, outcome), each record keeping its last check."""
    with monkeypatch.context() as patched:
        patched.setattr(sqlite, "MIGRATIONS", tuple(
            migration for migration in sqlite.MIGRATIONS if migration[0] < 17))
        SQLiteStore(path).close()
    with closing(sqlite3.connect(path)) as conn, conn:
        for doc in docs:
            stored = {**doc, "child_of": [], "generated_by": [], "derived_from": [],
                      "derived_using": [], "fixity": [checks[doc["uuid"]][-1]]}
            conn.execute(
                "INSERT INTO files (uuid, path, storage_system, status, kind, level, "
                "media_type, created, doc, checked) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (doc["uuid"], doc["path"], doc["storage_system"], doc["status"], doc["kind"],
                 doc["level"], doc["media_type"], doc["created"], json.dumps(stored),
                 doc["checked"]))
            conn.executemany(
                "INSERT INTO file_checksums (algorithm, digest, uuid) VALUES (?, ?, ?)",
                [(algorithm, digest, doc["uuid"])
                 for algorithm, digest in doc["checksums"].items()])
            conn.executemany(
                "INSERT INTO fixity_checks (file, date, outcome, doc) VALUES (?, ?, ?, ?)",
                [(doc["uuid"], check["date"], check["outcome"], json.dumps(check))
                 for check in checks[doc["uuid"]]])
            conn.executemany(
                "INSERT INTO links (src, relation, dst, src_key, pos) VALUES (?, ?, ?, ?, 0)",
                [(doc["uuid"], relation, dst, doc["path"])
                 for relation in ("child_of", "generated_by") for dst in doc[relation]])


def history(store: SQLiteStore, uuid: str) -> list[Doc]:
    checks, cursor = [], None
    while True:
        page = store.fixity_checks(uuid, 2, cursor)
        checks += page.items
        if page.next is None:
            return checks
        cursor = page.next


def test_a_database_made_before_17_keeps_its_records_checksums_and_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "old.db"
    names = ["c", "a", "d", "b"]
    docs = [make_file(f"/products/{name}.csv", f"content {name}", checked=n)
            for n, name in enumerate(names)]
    checks = {doc["uuid"]: [make_check(-10, f"content {name}", "indexed"),
                            make_check(-5, f"content {name}"), doc["fixity"][0]]
              for doc, name in zip(docs, names, strict=True)}
    write_before_17(path, docs, checks, monkeypatch)
    store = SQLiteStore(path)
    try:
        assert 17 in [version for version, _ in store.migrations()]
        for doc in docs:
            assert store.get_file(doc["uuid"]) == doc
            assert history(store, doc["uuid"]) == checks[doc["uuid"]]
            for algorithm, digest in doc["checksums"].items():
                assert store.find_files(checksum=(algorithm, digest)).items == [doc]
        assert [d["path"] for d in store.oldest_checks("local", at(100), 10)] == [
            f"/products/{name}.csv" for name in names]
        assert [d["uuid"] for d in store.find_files(child_of=JOB).items] == [
            d["uuid"] for d in sorted(docs, key=lambda d: d["path"])]
        # Written on after the move: a new version's checksums replace the old ones, checks
        # join the history, a new record takes the next id.
        changed = {**make_file("/products/a.csv", "new content", checked=50)}
        new = make_file("/products/e.csv", "content e", checked=60)
        store.upsert_files([changed, new])
        store.record_fixity([(docs[0]["uuid"], make_check(70, "content c"), "ok")])
        assert store.find_files(checksum=("sha256", docs[1]["checksums"]["sha256"])).items == []
        assert store.find_files(checksum=("sha256", digests("new content")["sha256"])
                                ).items == [changed]
        assert history(store, changed["uuid"]) == [*checks[changed["uuid"]],
                                                   changed["fixity"][0]]
        assert history(store, docs[0]["uuid"])[-1] == make_check(70, "content c")
        with closing(sqlite3.connect(path)) as conn:
            ids = dict(conn.execute("SELECT path, id FROM files").fetchall())
            # the moved records in path order, then the new one
            assert sorted(ids, key=ids.__getitem__) == [
                *sorted(d["path"] for d in docs), new["path"]]
            keys = conn.execute("SELECT key, digest FROM file_checksums").fetchall()
            assert keys and all(key == digest_key(digest) for key, digest in keys)
    finally:
        store.close()


def test_a_catalog_moved_back_before_17_and_opened_again_is_the_same(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "again.db")
    docs = [make_file(f"/products/{n:02d}.csv", f"content {n}", checked=n) for n in range(12)]
    try:
        store.upsert_files(docs)
        store.record_fixity([(doc["uuid"], make_check(100, f"content {n}"), "ok")
                             for n, doc in enumerate(docs[:5])])
        before = {doc["uuid"]: (store.get_file(doc["uuid"]), history(store, doc["uuid"]))
                  for doc in docs}
        with store._write() as conn:
            files_before_17(conn)
    finally:
        store.close()
    store = SQLiteStore(tmp_path / "again.db")
    try:
        assert {doc["uuid"]: (store.get_file(doc["uuid"]), history(store, doc["uuid"]))
                for doc in docs} == before
    finally:
        store.close()


@pytest.mark.parametrize(("digest", "key"), [
    ("0123456789abcdef0123", 0x0123456789abcde),
    ("ABC", 0xABC),
    ("f" * 64, 2**60 - 1),
])
def test_a_hexadecimal_digest_is_keyed_by_its_first_60_bits(digest: str, key: int) -> None:
    assert digest_key(digest) == key


def test_a_digest_given_by_hand_is_keyed_by_a_hash_of_it() -> None:
    assert digest_key("not hex") == digest_key("not hex") != digest_key("not hex!")
    assert 0 <= digest_key("") < 2**56 and 0 <= digest_key("zz" * 32) < 2**56


def test_a_digest_given_by_hand_is_found(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "hand.db")
    try:
        doc = {**make_file("/products/hand.csv", "x"), "checksums": {"sha256": "not hex"}}
        store.upsert_files([doc])
        assert store.find_files(checksum=("sha256", "not hex")).items == [doc]
        assert store.find_files(checksum=("sha256", "not hex!")).items == []
        # another digest with the same first 60 bits: the same key, compared in the row
        stored = {**doc, "checksums": {"sha256": "ab" * 32}}
        store.upsert_files([stored])
        assert digest_key("ab" * 8 + "cd" * 24) == digest_key("ab" * 32)
        assert store.find_files(checksum=("sha256", "ab" * 8 + "cd" * 24)).items == []
        assert store.find_files(checksum=("sha256", "ab" * 32)).items == [stored]
        assert store.find_files(checksum=("md5", "ab" * 32)).items == []
    finally:
        store.close()


@pytest.fixture
def planned(tmp_path: Path) -> Iterator[tuple[SQLiteStore, list[Doc]]]:
    store = SQLiteStore(tmp_path / "plans.db")
    docs = [make_file(f"/products/{n:03d}.csv", f"content {n}", checked=n) for n in range(50)]
    docs += [make_file(f"/other/{n:03d}.csv", f"content {n}", job=OTHER_JOB) for n in range(5)]
    store.upsert_files(docs)
    with store._write() as conn:
        conn.execute("ANALYZE")  # the planner as a catalog that has run a while sees it
    yield store, docs
    store.close()


def plans(store: SQLiteStore, call: Callable[[], object]) -> list[str]:
    """The query plan of every distinct statement ``call`` runs on this thread's connection
    that reads a file table (plain INSERT ... VALUES has none to speak of)."""
    statements: list[str] = []
    connection = store._connection()
    connection.set_trace_callback(statements.append)
    try:
        call()
    finally:
        connection.set_trace_callback(None)
    found = []
    for sql in dict.fromkeys(statements):
        if sql.startswith(("BEGIN", "COMMIT", "PRAGMA", "ROLLBACK")) or (
                sql.startswith("INSERT") and " SELECT " not in sql):
            continue
        found.append(" | ".join(row[3] for row in connection.execute(
            f"EXPLAIN QUERY PLAN {sql}")))
    return found


def _scans(found: list[str]) -> list[str]:
    """Plans that read a whole file table (a SCAN, not a SEARCH of an index)."""
    return [plan for plan in found for step in plan.split(" | ")
            if step.startswith("SCAN") and any(
                table in step for table in ("files", "file_checksums", "fixity_checks"))]


def test_every_file_lookup_keeps_its_index(planned: tuple[SQLiteStore, list[Doc]]) -> None:
    store, docs = planned
    doc = docs[7]
    sha256 = doc["checksums"]["sha256"]
    by_uuid = "SEARCH files USING INDEX sqlite_autoindex_files_1 (uuid=?)"
    covering_uuid = "SEARCH files USING COVERING INDEX sqlite_autoindex_files_1 (uuid=?)"
    expectations: list[tuple[str, Callable[[], object], list[str]]] = [
        ("by uuid", lambda: store.get_file(doc["uuid"]), [by_uuid]),
        ("by uuids", lambda: store.get_files([d["uuid"] for d in docs[:3]]), [by_uuid]),
        ("by path", lambda: store.find_files(path_prefix="/products/00"),
         ["SEARCH files USING INDEX files_path (path>? AND path<?)"]),
        ("by checksum", lambda: store.find_files(checksum=("sha256", sha256)),
         ["SEARCH file_checksums USING INDEX file_checksums_key (key=?)",
          "SEARCH files USING INTEGER PRIMARY KEY (rowid=?)"]),
        ("by job", lambda: store.find_files(child_of=OTHER_JOB),
         ["SEARCH links USING COVERING INDEX links_reverse (dst=? AND relation=?)"]),
        ("history", lambda: store.fixity_checks(doc["uuid"]),
         ["SEARCH fixity_checks USING PRIMARY KEY (file=?)", covering_uuid]),
        ("oldest checks", lambda: store.oldest_checks("local", at(30), 5),
         ["SEARCH files USING INDEX files_checked (storage_system=? AND checked<?)"]),
        ("a check recorded", lambda: store.record_fixity(
            [(doc["uuid"], make_check(500, "content 7"), "ok")]), [covering_uuid]),
        ("records replaced", lambda: store.upsert_files(docs[:3]),
         ["SEARCH file_checksums USING INDEX file_checksums_file (file=?)",
          "(src=? AND relation=?)"]),
        ("lineage up", lambda: store.edges([doc["uuid"]], "up"),
         ["SEARCH links USING"]),
        ("lineage down", lambda: store.edges([JOB], "down"),
         ["SEARCH links USING"]),
    ]
    # The lists a record was written with (a file's child_of and generated_by) are short and
    # sorted as read (sqlite_links): the only sort allowed besides the checksum's.
    own_lists = {f"SEARCH links USING PRIMARY KEY ({key}) | USE TEMP B-TREE FOR RIGHT PART "
                 "OF ORDER BY" for key in ("src=?", "src=? AND relation=?")}
    for name, call, wanted in expectations:
        found = plans(store, call)
        text = " || ".join(found)
        assert not _scans(found), (name, found)
        sorted_ = [plan for plan in found if "TEMP B-TREE" in plan and plan not in own_lists]
        assert not sorted_ or name == "by checksum", (name, found)
        for step in wanted:
            assert step in text, (name, step, found)


def test_the_chunk_of_an_index_run_writes_its_id_keyed_trees_in_order(tmp_path: Path) -> None:
    """Records written together take neighbouring ids, so their checksums and checks are
    neighbours in the trees keyed by id (the point of migration 17)."""
    store = SQLiteStore(tmp_path / "order.db")
    try:
        first = [make_file(f"/products/{n:03d}.csv", f"a{n}") for n in range(40)]
        second = [make_file(f"/products/{n:03d}.csv", f"b{n}") for n in range(40, 80)]
        store.upsert_files(first)
        store.upsert_files(second)
        conn = store._connection()
        ids = dict(conn.execute("SELECT uuid, id FROM files").fetchall())
        assert sorted(ids[d["uuid"]] for d in first) == list(range(1, 41))
        assert sorted(ids[d["uuid"]] for d in second) == list(range(41, 81))
        files_of_checks = [file for file, in conn.execute("SELECT file FROM fixity_checks")]
        assert files_of_checks == list(range(1, 81))
        rowids = conn.execute("SELECT file FROM file_checksums ORDER BY rowid").fetchall()
        assert [file for file, in rowids] == sorted(file for file, in rowids)
    finally:
        store.close()
