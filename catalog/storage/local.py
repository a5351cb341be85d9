"""Archive storage on the local filesystem, rooted at ``archive_root``."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat as stat_module
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from catalog.errors import UnsafePath
from catalog.storage.base import BLOCK_SIZE, FileInfo, check_storage_path

_PARENT_TTL_S = 1.0
_PARENT_CACHE_SIZE = 4096


class LocalStorage:
    """Files under one root directory; nothing outside it is ever read, written or removed."""

    kind = "local"

    def __init__(self, root: str | Path) -> None:
        self.root = os.path.realpath(root)
        # Resolved parent directories, briefly: indexing opens thousands of files in a few
        # directories, and realpath (an lstat per component) dominated opening small files.
        self._parents: dict[str, tuple[float, str]] = {}

    def _inside(self, resolved: str, path: str) -> str:
        if resolved != self.root and not resolved.startswith(self.root + os.sep):
            raise UnsafePath(f"storage path {path!r} resolves outside the archive root")
        return resolved

    def _resolve(self, path: str, allow_root: bool = False) -> str:
        """The real filesystem path of a storage path, refused if it resolves outside the root."""
        normalised = check_storage_path(path, allow_root)
        return self._inside(os.path.realpath(os.path.join(self.root, normalised.lstrip("/"))),
                            path)

    def _resolve_file(self, path: str) -> str:
        """``_resolve`` for a file, with its parent directory's resolution cached for a second
        (no longer than the check-then-open window any path check has)."""
        candidate = self._in_parent(path)
        if os.path.islink(candidate):
            return self._inside(os.path.realpath(candidate), path)
        return candidate

    def _in_parent(self, path: str) -> str:
        """The file's name in its parent directory, resolved (and cached) as ``_resolve_file``
        says; the name itself may still be a symlink."""
        normalised = check_storage_path(path)
        parent, name = normalised.rsplit("/", 1)
        now = time.monotonic()
        cached = self._parents.get(parent)
        if cached is None or now - cached[0] > _PARENT_TTL_S:
            if len(self._parents) > _PARENT_CACHE_SIZE:
                self._parents.clear()
            real_parent = self._inside(
                os.path.realpath(os.path.join(self.root, parent.lstrip("/"))), path)
            self._parents[parent] = (now, real_parent)
        else:
            real_parent = cached[1]
        return os.path.join(real_parent, name)

    def _storage_path(self, real: str) -> str:
        return "/" + os.path.relpath(real, self.root).replace(os.sep, "/")

    def list(self, prefix: str) -> Iterator[FileInfo]:
        top = self._resolve(prefix)
        if not os.path.isdir(top):
            return
        # Walk the directory as named (not its resolved form) so symlinks are seen as such.
        normalised = check_storage_path(prefix)
        yield from self._walk(os.path.join(self.root, normalised.lstrip("/")), normalised)

    def _walk(self, directory: str, storage_directory: str) -> Iterator[FileInfo]:
        """Files under ``directory`` in path order, as S3 lists keys (not os.walk's order)."""
        with os.scandir(directory) as scan:
            # A directory sorts as "name/", so "a-b" comes before everything in "a/".
            entries = sorted(scan, key=lambda entry: entry.name + "/"
                             if entry.is_dir(follow_symlinks=False) else entry.name)
        for entry in entries:
            storage_path = f"{storage_directory}/{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(entry.path, storage_path)
                continue
            if entry.is_symlink():
                real = os.path.realpath(entry.path)
                if not real.startswith(self.root + os.sep):
                    # Listed, not followed (the link's own date; open refuses it): an index
                    # request that matches it reports it, and an input a pipeline linked into
                    # its outputs, which no request matches, stops nothing.
                    yield FileInfo(storage_path, 0, entry.stat(follow_symlinks=False).st_mtime,
                                   refused="a symlink pointing out of the archive root")
                    continue
                if not os.path.isfile(real):
                    continue
                stat = os.stat(real)
            elif entry.is_file(follow_symlinks=False):
                stat = entry.stat(follow_symlinks=False)
            else:
                continue  # sockets, fifos, devices: not archive files
            # The directory is checked and a name from scandir has no "/" or NUL and is never
            # "." or "..": only a backslash in it is left to refuse. (A refused entry above is
            # never opened: open checks its path, and refuses it, itself.)
            if "\\" in entry.name:
                check_storage_path(storage_path)
            yield FileInfo(storage_path, stat.st_size, stat.st_mtime)

    def stat(self, path: str) -> FileInfo:
        real = self._resolve_file(path)
        if not os.path.isfile(real):
            raise FileNotFoundError(path)
        stat = os.stat(real)
        return FileInfo(check_storage_path(path), stat.st_size, stat.st_mtime)

    def open(self, path: str) -> BinaryIO:
        candidate = self._in_parent(path)
        try:
            # O_NOFOLLOW: a name that is a symlink fails (ELOOP) rather than being followed;
            # only then is it resolved, and followed only to a file inside the root. No lstat
            # first: indexing opens tens of thousands of plain files.
            descriptor = _open_no_follow(candidate, path)
        except _SymlinkName:
            real = self._inside(os.path.realpath(candidate), path)
            try:
                descriptor = _open_no_follow(real, path)
            except _SymlinkName:  # it changed since it was resolved
                raise UnsafePath(f"{path} changed into a symlink while being opened") from None
        if not stat_module.S_ISREG(os.fstat(descriptor).st_mode):
            os.close(descriptor)
            raise FileNotFoundError(path)
        return os.fdopen(descriptor, "rb", buffering=0)

    def write(self, path: str, data: bytes | BinaryIO) -> FileInfo:
        real = self._resolve(path)
        os.makedirs(os.path.dirname(real), exist_ok=True)
        real = self._resolve(path)  # a directory created above may not be a symlink out
        # A name of its own per write (threads of one process may write one path at once),
        # removed if the write fails, so no partial file is ever listed as archive content.
        temporary = f"{real}.{uuid.uuid4().hex}.partial"
        try:
            with open(temporary, "wb") as handle:
                if isinstance(data, bytes):
                    handle.write(data)
                elif hasattr(data, "read"):
                    shutil.copyfileobj(data, handle, BLOCK_SIZE)
                else:
                    raise TypeError(f"cannot write a {type(data).__name__}: bytes or a stream")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, real)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        return self.stat(path)

    def link(self, path: str, target: str) -> bool:
        """A hard link at ``target`` to the file at ``path``, resolved as ``open`` resolves
        it (a symlink only to a file inside the root); False where the filesystem refuses
        one (another device, a file this user may not link, no hard links there)."""
        real = self._resolve_file(path)
        try:
            os.link(real, target, follow_symlinks=False)
        except FileNotFoundError:
            if not os.path.lexists(real):
                raise FileNotFoundError(path) from None
            raise
        except OSError as exc:
            if exc.errno in _NO_LINK:
                return False
            raise
        return True

    def delete_prefix(self, prefix: str) -> int:
        top = self._resolve(prefix)
        if top != os.path.join(self.root, check_storage_path(prefix).lstrip("/")):
            # Through a symlink this could empty some other job's directory.
            raise UnsafePath(f"{prefix} passes through a symlink: refusing to delete under it")
        if not os.path.isdir(top):
            return 0
        count = sum(len(files) for _, _, files in os.walk(top))
        for entry in os.scandir(top):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)  # a symlink is removed, never what it points to
        return count

    def uri(self, path: str) -> str:
        return Path(self._resolve(path)).as_uri()


# Why a filesystem may refuse a hard link that a copy would make.
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP,
                      errno.EOPNOTSUPP})


class _SymlinkName(Exception):
    """The last component of a name opened with O_NOFOLLOW is a symlink."""


def _open_no_follow(real: str, path: str) -> int:
    try:
        return os.open(real, os.O_RDONLY | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(path) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _SymlinkName(path) from None
        raise
