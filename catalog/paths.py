"""Archive paths that can never escape the archive root."""

from __future__ import annotations

import os
from pathlib import Path

from catalog.errors import UnsafePath
from catalog.storage.base import check_storage_path

MAX_PATH_LENGTH = 1024


def check_archive_path(path: str, root: str | Path) -> str:
    """Validate an archive path (``/products/...``) and return it normalised.

    Refused: relative paths, ``..`` components, NUL bytes, backslashes, and anything that
    resolves (following symlinks already on disk) outside ``root``.
    """
    if not isinstance(path, str) or not path:
        raise UnsafePath("archive path must be a non-empty string")
    if len(path) > MAX_PATH_LENGTH:
        raise UnsafePath(f"archive path is longer than {MAX_PATH_LENGTH} characters")
    # The lexical rules every storage path follows, then what only a local root needs.
    normalised = check_storage_path(path, what="archive path")
    if str(root).startswith("s3://"):
        return normalised  # object keys: no symlinks to follow, the lexical checks suffice
    real_root = os.path.realpath(root)
    resolved = os.path.realpath(os.path.join(real_root, normalised.lstrip("/")))
    if os.path.commonpath([real_root, resolved]) != real_root or resolved == real_root:
        raise UnsafePath(f"archive path {path!r} resolves outside the archive root")
    return normalised
