"""Archive storage backends, chosen by the ``archive_root`` setting.

A directory (the default ``archive``) is local storage; ``s3://bucket/prefix`` is S3, with the
optional ``s3_endpoint_url`` setting for any S3-compatible store.
"""

from __future__ import annotations

from catalog.storage.base import FileInfo, Storage, check_storage_path, relative_to
from catalog.storage.local import LocalStorage
from catalog.storage.s3 import S3Storage

__all__ = ["FileInfo", "LocalStorage", "S3Storage", "Storage", "check_storage_path",
           "open_storage", "relative_to"]


def open_storage(archive_root: str, s3_endpoint_url: str | None = None) -> Storage:
    if archive_root.startswith("s3://"):
        return S3Storage.from_url(archive_root, s3_endpoint_url)
    return LocalStorage(archive_root)
