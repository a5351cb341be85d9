"""Archive storage: one suite run against the local filesystem and a real moto S3 server."""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from s3server import CREDENTIAL_ENV

from catalog.errors import ConfigurationError, UnsafePath
from catalog.storage import FileInfo, LocalStorage, S3Storage, Storage, open_storage

S3_PREFIX = "archive/root"
MiB = 1024 * 1024
CLOCK_SLACK_S = 2.0  # filesystem and S3 timestamps are coarser than time.time()


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "root")
    return S3Storage(request.getfixturevalue("bucket"), prefix=S3_PREFIX,
                     endpoint_url=request.getfixturevalue("moto_endpoint"),
                     client=request.getfixturevalue("s3"))


@pytest.fixture
def s3_storage(bucket: str, moto_endpoint: str, s3: Any) -> S3Storage:
    return S3Storage(bucket, prefix=S3_PREFIX, endpoint_url=moto_endpoint, client=s3)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root").mkdir()
    return tmp_path / "root"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the archive root, with a file nothing may read, change or delete."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "secret.txt").write_bytes(b"secret")
    return directory


@pytest.fixture
def local(root: Path) -> LocalStorage:
    return LocalStorage(root)


# --- helpers --------------------------------------------------------------------------------


def put_behind_the_back(storage: Storage, path: str, data: bytes = b"x") -> None:
    """Store ``path`` without going through the storage layer (no checks at all)."""
    if isinstance(storage, S3Storage):
        storage.client.put_object(Bucket=storage.bucket, Key=f"{S3_PREFIX}{path}", Body=data)
    else:
        assert isinstance(storage, LocalStorage)
        target = Path(storage.root + path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def everything_stored(storage: Storage) -> list[str]:
    """Every object key in the bucket, or every file next to and under the local root."""
    if isinstance(storage, S3Storage):
        pages = storage.client.get_paginator("list_objects_v2").paginate(Bucket=storage.bucket)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]
    assert isinstance(storage, LocalStorage)
    top = Path(storage.root).parent
    return sorted(str(path.relative_to(top)) for path in top.rglob("*") if not path.is_dir())


def read_all(storage: Storage, path: str) -> bytes:
    """Read the way fixity does: a stream, in blocks."""
    with storage.open(path) as stream:
        return b"".join(iter(lambda: stream.read(MiB), b""))


def assert_plausible_mtime(info: FileInfo, before: float, after: float) -> None:
    assert before - CLOCK_SLACK_S <= info.mtime <= after + CLOCK_SLACK_S, (info, before, after)


# --- both backends --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 5 * MiB], ids=["0B", "1B", "5MiB"])
def test_write_stat_open_round_trip(storage: Storage, size: int) -> None:
    data = random.Random(size).randbytes(size)
    before = time.time()
    written = storage.write("/job/out.bin", data)
    after = time.time()

    assert (written.path, written.size) == ("/job/out.bin", size)
    assert_plausible_mtime(written, before, after)
    stat = storage.stat("/job/out.bin")
    assert (stat.path, stat.size) == ("/job/out.bin", size)
    assert_plausible_mtime(stat, before, after)
    assert read_all(storage, "/job/out.bin") == data


def test_write_replaces_the_whole_file(storage: Storage) -> None:
    storage.write("/job/out.txt", b"a much longer first version")
    assert storage.write("/job/out.txt", b"short").size == 5
    assert read_all(storage, "/job/out.txt") == b"short"
    assert [info.path for info in storage.list("/job")] == ["/job/out.txt"]


def test_paths_are_normalised(storage: Storage) -> None:
    assert storage.write("/job//sub/./out.txt", b"abc").path == "/job/sub/out.txt"
    assert storage.stat("/job/sub/out.txt/").path == "/job/sub/out.txt"
    assert read_all(storage, "//job/sub/out.txt") == b"abc"


def test_list_is_recursive_in_path_order_with_sizes_and_mtimes(storage: Storage) -> None:
    # '-' sorts before '/', so a-b.txt comes before the files inside a/: path order, not
    # "a directory's files, then its subdirectories".
    inside = ["/job/b.txt", "/job/a/z.bin", "/job/a-b.txt", "/job/a/b/c.txt", "/job/z/y/x.txt",
              "/job/A.txt", "/job/a/b.txt"]
    elsewhere = ["/job.txt", "/jobs/other.txt", "/jo/b.txt"]
    before = time.time()
    for index, path in enumerate(inside + elsewhere):
        storage.write(path, b"x" * index)
    after = time.time()
    sizes = {path: index for index, path in enumerate(inside)}

    listed = list(storage.list("/job"))

    assert [info.path for info in listed] == sorted(inside)
    assert {info.path: info.size for info in listed} == sizes
    for info in listed:
        assert_plausible_mtime(info, before, after)
    assert list(storage.list("/job/")) == listed
    assert [info.path for info in storage.list("/job/a")] == [
        "/job/a/b.txt", "/job/a/b/c.txt", "/job/a/z.bin"]


@pytest.mark.parametrize("prefix", ["/nothing", "/job/nothing", "/job/file.txt"])
def test_list_of_an_absent_prefix_is_empty(storage: Storage, prefix: str) -> None:
    storage.write("/job/file.txt", b"data")
    assert list(storage.list(prefix)) == []


@pytest.mark.parametrize("path", ["/missing.txt", "/job/missing.txt", "/job"])
def test_a_missing_file_is_not_found(storage: Storage, path: str) -> None:
    storage.write("/job/file.txt", b"data")  # so "/job" exists, as a directory only
    with pytest.raises(FileNotFoundError):
        storage.stat(path)
    with pytest.raises(FileNotFoundError):
        storage.open(path)


def test_delete_prefix_removes_exactly_the_files_under_it(storage: Storage) -> None:
    doomed = ["/a/b/1.txt", "/a/b/sub/2.txt", "/a/b/sub/deeper/3.txt"]
    kept = ["/a/bc/4.txt", "/a/b.txt", "/a/b-c/5.txt", "/a/x/6.txt", "/ab/7.txt"]
    for path in doomed + kept:
        storage.write(path, path.encode())

    assert storage.delete_prefix("/a/b") == len(doomed)

    assert list(storage.list("/a/b")) == []
    assert [info.path for info in storage.list("/a")] == sorted(p for p in kept if p != "/ab/7.txt")
    for path in kept:
        assert read_all(storage, path) == path.encode()
    assert storage.delete_prefix("/a/b") == 0
    assert storage.delete_prefix("/never/was") == 0


def test_uri(storage: Storage, tmp_path: Path) -> None:
    if isinstance(storage, S3Storage):
        expected = f"s3://{storage.bucket}/archive/root/job/out.csv"
    else:
        expected = (Path(os.path.realpath(tmp_path)) / "root" / "job" / "out.csv").as_uri()
        assert expected.startswith("file:///")
    assert storage.uri("/job/out.csv") == expected
    assert storage.uri("/job//./out.csv") == expected


UNSAFE_PATHS = {
    "dotdot": "../etc/passwd",
    "dotdot-absolute": "/../etc/passwd",
    "climbs-out": "/a/../../b",
    "dotdot-inside": "/a/../b",
    "dotdot-last": "/job/..",
    "relative": "a/b",
    "empty": "",
    "nul": "/a/b\x00c",
    "backslash": "/a\\..\\..\\b",
}
OPERATIONS: dict[str, Callable[[Storage, str], object]] = {
    "list": lambda storage, path: list(storage.list(path)),
    "stat": lambda storage, path: storage.stat(path),
    "open": lambda storage, path: storage.open(path).close(),
    "write": lambda storage, path: storage.write(path, b"x"),
    "delete_prefix": lambda storage, path: storage.delete_prefix(path),
    "uri": lambda storage, path: storage.uri(path),
}


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("path", UNSAFE_PATHS.values(), ids=UNSAFE_PATHS.keys())
def test_unsafe_paths_are_refused(storage: Storage, operation: str, path: str) -> None:
    storage.write("/a/b", b"keep")
    stored = everything_stored(storage)

    with pytest.raises(UnsafePath) as refused:
        OPERATIONS[operation](storage, path)

    assert (refused.value.status, refused.value.code) == (400, "unsafe_path")
    assert everything_stored(storage) == stored


@pytest.mark.parametrize("operation", ["stat", "open", "write", "delete_prefix", "uri"])
@pytest.mark.parametrize("path", ["/", "//", "/.", "/a/.."])
def test_the_root_itself_is_refused(storage: Storage, operation: str, path: str) -> None:
    storage.write("/a/b", b"keep")
    stored = everything_stored(storage)
    with pytest.raises(UnsafePath):
        OPERATIONS[operation](storage, path)
    assert everything_stored(storage) == stored


def test_list_refuses_a_name_that_is_not_a_safe_path(storage: Storage) -> None:
    storage.write("/job/fine.txt", b"fine")
    put_behind_the_back(storage, "/job/sub/a\\b")
    with pytest.raises(UnsafePath, match=re.escape("a\\\\b")):
        list(storage.list("/job"))


# --- local filesystem only ------------------------------------------------------------------


def test_a_symlink_out_of_the_root_is_refused(local: LocalStorage, root: Path,
                                              outside: Path) -> None:
    (root / "job").mkdir()
    (root / "job" / "leak").symlink_to(outside / "secret.txt")

    local.write("/job/ok.txt", b"ok")
    for operation in ["stat", "open", "uri"]:
        with pytest.raises(UnsafePath):
            OPERATIONS[operation](local, "/job/leak")
    # Listed, never followed: the link's own date, no size of its target, and why it is refused.
    leak, ok = list(local.list("/job"))
    assert (leak.path, leak.size, leak.refused) == (
        "/job/leak", 0, "a symlink pointing out of the archive root")
    assert leak.mtime == os.lstat(root / "job" / "leak").st_mtime
    assert (ok.path, ok.size, ok.refused) == ("/job/ok.txt", 2, None)


def test_a_dangling_symlink_out_of_the_root_is_listed_as_refused(local: LocalStorage,
                                                                root: Path, outside: Path) -> None:
    (root / "job").mkdir()
    (root / "job" / "later").symlink_to(outside / "not-yet.txt")
    assert [(info.path, info.refused is not None) for info in local.list("/job")] == [
        ("/job/later", True)]


def test_a_symlinked_directory_out_of_the_root_is_refused(local: LocalStorage, root: Path,
                                                         outside: Path) -> None:
    (root / "job").mkdir()
    (root / "job" / "data").symlink_to(outside, target_is_directory=True)

    # listed as one refused entry, its contents neither listed nor read
    assert [(info.path, info.refused is not None) for info in local.list("/job")] == [
        ("/job/data", True)]
    with pytest.raises(UnsafePath):
        list(local.list("/job/data"))
    with pytest.raises(UnsafePath):
        local.stat("/job/data/secret.txt")
    with pytest.raises(UnsafePath):
        local.open("/job/data/secret.txt")


def test_a_symlink_to_a_file_inside_the_root_is_fine(local: LocalStorage, root: Path) -> None:
    local.write("/shared/real.txt", b"shared bytes")
    (root / "job").mkdir()
    (root / "job" / "alias.txt").symlink_to(root / "shared" / "real.txt")
    (root / "job" / "relative.txt").symlink_to(Path("..") / "shared" / "real.txt")

    assert local.stat("/job/alias.txt") == FileInfo("/job/alias.txt", 12,
                                                    local.stat("/shared/real.txt").mtime)
    assert read_all(local, "/job/relative.txt") == b"shared bytes"
    assert [(info.path, info.size) for info in local.list("/job")] == [
        ("/job/alias.txt", 12), ("/job/relative.txt", 12)]


def test_a_symlinked_root_is_fine(tmp_path: Path) -> None:
    (tmp_path / "real-root").mkdir()
    (tmp_path / "root-link").symlink_to(tmp_path / "real-root", target_is_directory=True)
    storage = LocalStorage(tmp_path / "root-link")

    storage.write("/job/out.txt", b"abc")

    assert (tmp_path / "real-root" / "job" / "out.txt").read_bytes() == b"abc"
    assert [info.path for info in storage.list("/job")] == ["/job/out.txt"]
    assert storage.delete_prefix("/job") == 1


def test_delete_prefix_refuses_a_prefix_through_a_symlink(local: LocalStorage, root: Path,
                                                          outside: Path) -> None:
    local.write("/real/sub/file.txt", b"keep")
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    (root / "out").symlink_to(outside, target_is_directory=True)

    for prefix in ["/alias", "/alias/sub", "/out"]:
        with pytest.raises(UnsafePath):
            local.delete_prefix(prefix)

    assert (root / "real" / "sub" / "file.txt").read_bytes() == b"keep"
    assert (outside / "secret.txt").read_bytes() == b"secret"


def test_delete_prefix_removes_symlinks_never_their_targets(local: LocalStorage, root: Path,
                                                            outside: Path) -> None:
    local.write("/job/own.txt", b"own")
    local.write("/keep/kept.txt", b"kept")
    (root / "job" / "inside").symlink_to(root / "keep" / "kept.txt")
    (root / "job" / "sub").mkdir()
    (root / "job" / "sub" / "out").symlink_to(outside / "secret.txt")

    assert local.delete_prefix("/job") == 3

    assert os.listdir(root / "job") == []
    assert (root / "keep" / "kept.txt").read_bytes() == b"kept"
    assert (outside / "secret.txt").read_bytes() == b"secret"


def test_delete_prefix_removes_a_symlinked_directory_not_its_contents(
        local: LocalStorage, root: Path, outside: Path) -> None:
    local.write("/keep/kept.txt", b"kept")
    (root / "job").mkdir()
    (root / "job" / "inside").symlink_to(root / "keep", target_is_directory=True)
    (root / "job" / "out").symlink_to(outside, target_is_directory=True)

    local.delete_prefix("/job")

    assert os.listdir(root / "job") == []
    assert (root / "keep" / "kept.txt").read_bytes() == b"kept"
    assert (outside / "secret.txt").read_bytes() == b"secret"


def test_write_through_a_symlink_out_of_the_root_is_refused(local: LocalStorage, root: Path,
                                                            outside: Path) -> None:
    (root / "job").mkdir()
    (root / "job" / "data").symlink_to(outside, target_is_directory=True)
    (root / "job" / "leak").symlink_to(outside / "secret.txt")
    (root / "job" / "later").symlink_to(outside / "not-yet.txt")

    for path in ["/job/data/new.txt", "/job/data/deep/new.txt", "/job/data/secret.txt",
                 "/job/leak", "/job/later"]:
        with pytest.raises(UnsafePath):
            local.write(path, b"overwritten")

    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert (outside / "secret.txt").read_bytes() == b"secret"


# --- S3 only --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x/../y", "x/./y", "x//y", "x/.."])
def test_s3_list_refuses_a_key_that_is_not_a_safe_path(s3_storage: S3Storage, s3: Any,
                                                       name: str) -> None:
    key = f"{S3_PREFIX}/job/{name}"
    s3_storage.write("/job/fine.txt", b"fine")
    s3.put_object(Bucket=s3_storage.bucket, Key=key, Body=b"odd")

    with pytest.raises(UnsafePath, match=re.escape(repr(key))):
        list(s3_storage.list("/job"))
    with pytest.raises(UnsafePath):
        s3_storage.delete_prefix("/job")
    assert s3_storage.stat("/job/fine.txt").size == 4  # nothing was deleted


def test_s3_directory_markers_are_not_files(s3_storage: S3Storage, s3: Any) -> None:
    for marker in ["job/", "job/sub/", "job/sub/empty/"]:
        s3.put_object(Bucket=s3_storage.bucket, Key=f"{S3_PREFIX}/{marker}", Body=b"")
    s3_storage.write("/job/sub/file.txt", b"data")

    assert [info.path for info in s3_storage.list("/job")] == ["/job/sub/file.txt"]
    assert list(s3_storage.list("/job/sub/empty")) == []
    with pytest.raises(FileNotFoundError):
        s3_storage.stat("/job/sub")
    assert s3_storage.delete_prefix("/job") == 1
    assert list(s3_storage.list("/job")) == []


def test_s3_delete_prefix_over_more_than_one_batch(s3_storage: S3Storage, s3: Any) -> None:
    count = 1050  # DeleteObjects takes at most 1,000 keys; listing pages hold 1,000 too
    keys = [f"{S3_PREFIX}/bulk/{index:04d}" for index in range(count)]
    keys += [f"{S3_PREFIX}/bulkhead/keep", f"{S3_PREFIX}/bulk.txt"]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=s3_storage.bucket, Key=key, Body=b"."),
                      keys))

    listed = [info.path for info in s3_storage.list("/bulk")]
    assert listed == [f"/bulk/{index:04d}" for index in range(count)]

    assert s3_storage.delete_prefix("/bulk") == count

    assert list(s3_storage.list("/bulk")) == []
    assert sorted(everything_stored(s3_storage)) == [f"{S3_PREFIX}/bulk.txt",
                                                     f"{S3_PREFIX}/bulkhead/keep"]


def test_s3_prefix_is_normalised(bucket: str, s3: Any) -> None:
    storage = S3Storage(bucket, prefix="/archive/root/", client=s3)
    storage.write("/job/out.txt", b"abc")
    assert everything_stored(storage) == [f"{S3_PREFIX}/job/out.txt"]
    assert storage.uri("/job/out.txt") == f"s3://{bucket}/{S3_PREFIX}/job/out.txt"


# --- open_storage ---------------------------------------------------------------------------


@pytest.fixture
def s3_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials from the environment only, never from the machine's AWS configuration."""
    for name in ["AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name, value in CREDENTIAL_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("prefix", ["some/prefix", ""])
@pytest.mark.usefixtures("s3_environment")
def test_open_storage_s3(bucket: str, moto_endpoint: str, s3: Any, prefix: str) -> None:
    url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
    storage = open_storage(url, moto_endpoint)
    try:
        assert isinstance(storage, S3Storage)
        assert (storage.kind, storage.bucket, storage.prefix) == ("s3", bucket, prefix)
        key = f"{prefix}/job/out.txt" if prefix else "job/out.txt"
        assert storage.uri("/job/out.txt") == f"s3://{bucket}/{key}"

        storage.write("/job/out.txt", b"over real HTTP")  # so the endpoint was used

        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"over real HTTP"
        assert [info.path for info in storage.list("/job")] == ["/job/out.txt"]
    finally:
        storage.client.close()


@pytest.mark.parametrize("url", ["s3://", "s3:///prefix"])
def test_open_storage_s3_needs_a_bucket(url: str) -> None:
    with pytest.raises(ConfigurationError):
        open_storage(url)


def test_open_storage_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = open_storage(str(tmp_path / "archive"))
    assert isinstance(absolute, LocalStorage)
    assert absolute.kind == "local"
    assert absolute.root == os.path.realpath(tmp_path / "archive")

    monkeypatch.chdir(tmp_path)
    relative = open_storage("archive")
    assert isinstance(relative, LocalStorage)
    assert relative.root == absolute.root


def test_s3_delete_prefix_reports_objects_it_could_not_delete(bucket: str, s3: Any) -> None:
    from catalog.errors import StoreError

    storage = S3Storage(bucket, prefix=S3_PREFIX, client=s3)
    storage.write("/job/a", b"1")
    storage.write("/job/b", b"2")

    class RefusingOne:
        """moto cannot refuse a delete; everything but that goes to the real client."""

        def __getattr__(self, name: str) -> Any:
            return getattr(s3, name)

        def delete_objects(self, **kwargs: Any) -> dict[str, Any]:
            objects = kwargs["Delete"]["Objects"]
            s3.delete_objects(Bucket=kwargs["Bucket"],
                              Delete={"Objects": objects[1:], "Quiet": True})
            return {"Errors": [{"Key": objects[0]["Key"], "Code": "AccessDenied"}]}

    refusing = S3Storage(bucket, prefix=S3_PREFIX, client=RefusingOne())
    with pytest.raises(StoreError, match="AccessDenied"):
        refusing.delete_prefix("/job")
    assert [info.path for info in storage.list("/job")] == ["/job/a"]


def test_local_write_that_fails_leaves_no_partial_file(local: LocalStorage, root: Path) -> None:
    with pytest.raises(TypeError):
        local.write("/job/out.bin", 12345)  # type: ignore[arg-type]
    assert [p.name for p in (root / "job").iterdir()] == []
    assert list(local.list("/job")) == []
