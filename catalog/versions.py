"""Versions of a file record's content: changed content never silently becomes the truth.

A record's ``checksums`` are the truth its file is checked against. When indexing reads content
that differs from them, the record keeps them and is marked ``changed``; only an index that
accepts changes (``--accept-changes``) makes the new content the record's next ``version``,
keeping the old checksums in ``versions`` with the dates they were the truth, so that whoever
used the file then can still be told which content that was (``version_at``).
"""

from __future__ import annotations

from typing import Any

from catalog.fixity import check, compare
from catalog.store.values import Doc

__all__ = ["current_since", "settle", "version_at"]


def current_since(record: Doc) -> str:
    """When the record's current content became its truth."""
    versions = record.get("versions") or []
    return str(versions[-1]["superseded"] if versions else record["created"])


def version_at(record: Doc, date: str) -> int:
    """The version that was the record's truth at ``date`` (an ISO date as the models write
    them; the record's first version for a date before it was made)."""
    for version in record.get("versions") or []:
        if date < version["superseded"]:
            return int(version["version"])
    return int(record.get("version", 1))


def settle(record: Doc, old: Doc | None, size: int, checksums: dict[str, str], stamp: str,
           accept_by: str | None) -> str:
    """Fill ``record`` (built from a new listing of its file) from a reading of the file: its
    checksums, status, its check (which the store adds to the record's history) and
    versions. Returns the check's outcome: ``indexed`` (new
    content, or the recorded content read again), ``changed`` (content that differs from
    ``old``'s checksums: the record keeps them, and ``old``'s size, date and ETag, so the next
    index reads it again), or ``accepted`` (it differed, and ``accept_by``, the accepting job,
    made it the next version)."""
    if old is None or not old.get("checksums"):
        record["checksums"] = checksums
        record["fixity"] = [check(stamp, "indexed", size, checksums, [])]
        return "indexed"
    outcome, changed = compare(old["checksums"], old["size"], size, checksums)
    if outcome == "ok":
        # The truth read again (touched, or copied back): the new listing stands, and a digest
        # not recorded before (sha256 turned on) joins the recorded ones.
        record["checksums"] = {**checksums, **old["checksums"]}
        record["fixity"] = [check(stamp, "indexed", size, checksums, [])]
        return "indexed"
    if accept_by is None:
        record.update(size=old["size"], mtime=old["mtime"], etag=old.get("etag"),
                      checksums=old["checksums"], status="changed")
        record["fixity"] = [check(stamp, "changed", size, checksums, changed)]
        return "changed"
    earlier: dict[str, Any] = {
        "version": old.get("version", 1), "checksums": old["checksums"], "size": old["size"],
        "mtime": old["mtime"], "etag": old.get("etag"), "recorded": current_since(old),
        "superseded": stamp, "accepted_by": accept_by}
    record.update(checksums=checksums, version=old.get("version", 1) + 1,
                  versions=[*old.get("versions", []), earlier])
    record["fixity"] = [check(stamp, "accepted", size, checksums, changed)]
    return "accepted"
