"""Where archived bytes live, behind one small interface (DESIGN §6).

Paths crossing this interface are *storage paths*: absolute POSIX paths inside the storage
root (``/products/v2/.../out.csv``). Every path is checked before use and refused when it could
escape the root (``..``, NUL, backslashes; symlinks out of the root for local storage).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from catalog.errors import UnsafePath

BLOCK_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)  # no __dict__: an index run holds one per file listed
class FileInfo:
    """A stored file: its storage path, size, modification time (epoch seconds), ETag if any."""

    path: str
    size: int
    mtime: float
    # What the store says identifies this content (an S3 ETag); mtimes alone are too coarse.
    etag: str | None = None
    # Why this entry cannot be read (a symlink pointing out of the archive root): listed so
    # that whoever asked for it is told, never followed (size and mtime are the link's own).
    refused: str | None = None


def check_storage_path(path: str, allow_root: bool = False, what: str = "storage path") -> str:
    """Validate a storage path and return it normalised (no trailing slash); ``what`` names
    it in errors the way the caller's user knows it (e.g. "archive path")."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise UnsafePath(f"{what} {path!r} must start with '/' (it is under the root)")
    if "\x00" in path or "\\" in path:
        raise UnsafePath(f"{what} {path!r} contains a NUL byte or a backslash")
    if ".." in path.split("/"):
        raise UnsafePath(f"{what} {path!r} must not contain '..'")
    normalised = posixpath.normpath(path)
    if normalised.startswith("//"):
        normalised = "/" + normalised.lstrip("/")
    if normalised == "/" and not allow_root:
        raise UnsafePath(f"{what} must name something below the root")
    return normalised


def relative_to(path: str, prefix: str) -> str:
    """``path`` relative to the directory ``prefix`` (both storage paths)."""
    prefix = prefix.rstrip("/") + "/"
    if not path.startswith(prefix):
        raise UnsafePath(f"{path} is not under {prefix}")
    return path[len(prefix):]


class Storage(Protocol):
    """What the catalog needs from an archive."""

    kind: str

    def list(self, prefix: str) -> Iterator[FileInfo]:
        """Every file under the directory ``prefix``, recursively, in path order.

        An entry that must not be read (a symlink out of the root) is listed with ``refused``
        saying why, and opening it is refused: a link nobody asked for stops nothing."""
        ...

    def stat(self, path: str) -> FileInfo:
        """Raises FileNotFoundError when there is no such file."""
        ...

    def open(self, path: str) -> BinaryIO:
        """A binary stream for reading (close it); FileNotFoundError when absent."""
        ...

    def write(self, path: str, data: bytes | BinaryIO) -> FileInfo:
        """Store ``data`` (bytes, or a stream read to its end) at ``path``, whole or not at
        all: nothing partial is ever listed."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every file under the directory ``prefix``; returns how many."""
        ...

    def link(self, path: str, target: str) -> bool:
        """Make ``target`` (a new absolute path of this machine) another name of the file at
        ``path``, sharing its storage; False where it cannot be so (another filesystem, an
        object store): the caller copies instead. FileNotFoundError when there is no file."""
        ...

    def uri(self, path: str) -> str:
        """``file:///...`` or ``s3://bucket/key`` for a storage path."""
        ...
