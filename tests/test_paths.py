"""Archive paths never escape the archive root (DESIGN §6)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from catalog.errors import UnsafePath
from catalog.paths import MAX_PATH_LENGTH, check_archive_path

LONGEST = "/" + "/".join(["abcdefg"] * 128)  # 1024 characters, no component too long


@pytest.fixture
def root(tmp_path: Path) -> Path:
    archive = tmp_path / "archive"
    (archive / "products" / "v2").mkdir(parents=True)
    return archive


def test_longest_is_the_limit() -> None:
    assert len(LONGEST) == MAX_PATH_LENGTH == 1024


@pytest.mark.parametrize(
    ("path", "normalised"),
    [
        ("/products/v2/a/b", "/products/v2/a/b"),
        ("/products/v2/a/b/", "/products/v2/a/b"),
        ("/products//v2/./a", "/products/v2/a"),
        ("//products/v2/a", "/products/v2/a"),  # posixpath keeps a leading "//"; we do not
        ("/a", "/a"),
        ("/products/v2/missing/not/yet/created", "/products/v2/missing/not/yet/created"),
        ("/products/v2/.../x", "/products/v2/.../x"),
        ("/products/v2/a..b", "/products/v2/a..b"),
        ("/products/v2/Zoë", "/products/v2/Zoë"),
        (LONGEST, LONGEST),
    ],
)
def test_accepts(root: Path, path: str, normalised: str) -> None:
    assert check_archive_path(path, root) == normalised
    assert check_archive_path(path, str(root)) == normalised


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("products/v2/a/b", id="relative"),
        pytest.param("./products/v2", id="dot-relative"),
        pytest.param("", id="empty"),
        pytest.param("/products/../../etc", id="dotdot-escape"),
        pytest.param("/products/v2/..", id="dotdot-last"),
        pytest.param("/../products", id="dotdot-first"),
        pytest.param("/products/v2/a/../b", id="dotdot-inside"),
        pytest.param("/products/v2/\x00/b", id="nul"),
        pytest.param("/products/v2/a\x00", id="nul-end"),
        pytest.param("/products\\v2", id="backslash"),
        pytest.param("/products/v2/..\\..\\etc", id="backslash-dotdot"),
        pytest.param("/", id="root"),
        pytest.param("//", id="double-slash"),
        pytest.param("/.", id="root-dot"),
        pytest.param("/./", id="root-dot-slash"),
        pytest.param(LONGEST + "h", id="overlong"),
        pytest.param("/" + "a" * 5000, id="very-long"),
        pytest.param(None, id="none"),
        pytest.param(b"/products/v2", id="bytes"),
    ],
)
def test_refuses(root: Path, path: Any) -> None:
    with pytest.raises(UnsafePath) as caught:
        check_archive_path(path, root)
    assert (caught.value.status, caught.value.code) == (400, "unsafe_path")


def test_refuses_a_symlink_out_of_the_root(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "products" / "v2" / "escape").symlink_to(outside, target_is_directory=True)
    (root / "up").symlink_to("..")
    for path in ("/products/v2/escape", "/products/v2/escape/data", "/up/outside/x", "/up"):
        with pytest.raises(UnsafePath) as caught:
            check_archive_path(path, root)
        assert "resolves outside the archive root" in caught.value.message


def test_refuses_a_symlink_to_the_root_itself(root: Path) -> None:
    (root / "self").symlink_to(root, target_is_directory=True)
    with pytest.raises(UnsafePath):
        check_archive_path("/self", root)
    assert check_archive_path("/self/products", root) == "/self/products"


def test_refuses_a_dangling_symlink_out_of_the_root(root: Path, tmp_path: Path) -> None:
    (root / "products" / "later").symlink_to(tmp_path / "not-yet")
    with pytest.raises(UnsafePath):
        check_archive_path("/products/later/x", root)


def test_accepts_symlinks_that_stay_inside(root: Path) -> None:
    (root / "alias").symlink_to(root / "products" / "v2", target_is_directory=True)
    assert check_archive_path("/alias/job", root) == "/alias/job"


def test_root_may_itself_be_a_symlink(root: Path, tmp_path: Path) -> None:
    link = tmp_path / "archive-link"
    link.symlink_to(root, target_is_directory=True)
    assert check_archive_path("/products/v2/a", link) == "/products/v2/a"
    (root / "escape").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(UnsafePath):
        check_archive_path("/escape/x", link)


def test_root_that_does_not_exist_yet(tmp_path: Path) -> None:
    root = tmp_path / "not" / "created"
    assert check_archive_path("/products/v2/a", root) == "/products/v2/a"
    assert not root.exists()
    with pytest.raises(UnsafePath):
        check_archive_path("/products/../..", root)


def test_relative_root_resolves_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "out").symlink_to(tmp_path, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    assert check_archive_path("/products/v2/a", "archive") == "/products/v2/a"
    with pytest.raises(UnsafePath):
        check_archive_path("/out/x", "archive")
