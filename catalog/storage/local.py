"""Archive storage on the local filesystem, rooted at ``archive_root``."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from catalog.errors import UnsafePath
from catalog.storage.base import FileInfo, check_storage_path


class LocalStorage:
    """Files under one root directory; nothing outside it is ever read, written or removed."""

    kind = "local"

    def __init__(self, root: str | Path) -> None:
        self.root = os.path.realpath(root)

    def _resolve(self, path: str, allow_root: bool = False) -> str:
        """The real filesystem path of a storage path, refused if it resolves outside the root."""
        normalised = check_storage_path(path, allow_root)
        resolved = os.path.realpath(os.path.join(self.root, normalised.lstrip("/")))
        if resolved != self.root and not resolved.startswith(self.root + os.sep):
            raise UnsafePath(f"storage path {path!r} resolves outside the archive root")
        return resolved

    def _storage_path(self, real: str) -> str:
        return "/" + os.path.relpath(real, self.root).replace(os.sep, "/")

    def list(self, prefix: str) -> Iterator[FileInfo]:
        top = self._resolve(prefix)
        if not os.path.isdir(top):
            return
        # Walk the directory as named (not its resolved form) so symlinks are seen as such.
        yield from self._walk(os.path.join(self.root, check_storage_path(prefix).lstrip("/")))

    def _walk(self, directory: str) -> Iterator[FileInfo]:
        """Files under ``directory`` in path order, as S3 lists keys (not os.walk's order)."""
        with os.scandir(directory) as scan:
            # A directory sorts as "name/", so "a-b" comes before everything in "a/".
            entries = sorted(scan, key=lambda entry: entry.name + "/"
                             if entry.is_dir(follow_symlinks=False) else entry.name)
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(entry.path)
                continue
            full = entry.path
            real = os.path.realpath(full)
            if real != full and not real.startswith(self.root + os.sep):
                raise UnsafePath(
                    f"{self._storage_path(full)} is a symlink pointing out of the archive root"
                )
            if not os.path.isfile(real):
                continue
            path = check_storage_path(self._storage_path(full))  # e.g. no backslash
            stat = os.stat(real)
            yield FileInfo(path, stat.st_size, stat.st_mtime)

    def stat(self, path: str) -> FileInfo:
        real = self._resolve(path)
        if not os.path.isfile(real):
            raise FileNotFoundError(path)
        stat = os.stat(real)
        return FileInfo(check_storage_path(path), stat.st_size, stat.st_mtime)

    def open(self, path: str) -> BinaryIO:
        real = self._resolve(path)
        if not os.path.isfile(real):
            raise FileNotFoundError(path)
        return open(real, "rb", buffering=0)  # noqa: SIM115 - the caller closes it

    def write(self, path: str, data: bytes) -> FileInfo:
        real = self._resolve(path)
        os.makedirs(os.path.dirname(real), exist_ok=True)
        real = self._resolve(path)  # a directory created above may not be a symlink out
        temporary = f"{real}.{os.getpid()}.partial"
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, real)
        return self.stat(path)

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
