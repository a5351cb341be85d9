"""Which files of a job's archive path its index requests select.

A request's patterns are regular expressions searched in the path relative to the archive path;
the first request that matches a file claims it, archive requests before product requests.
Indexing indexes what is claimed; verify tells a file no request selects (``ignored``) from one
a request selects but that has no record (``uncatalogued``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from catalog.jobs import parse_index_requests
from catalog.models import ArchiveIndexRequest, Job, ProductIndexRequest
from catalog.patterns import Pattern
from catalog.storage import FileInfo, relative_to

Request = ArchiveIndexRequest | ProductIndexRequest


def requests_of(job: Job, requests: Iterable[Any] | None) -> list[Request]:
    """The job's own requests (None), or ``requests`` parsed as index requests."""
    if requests is None:
        return [*job.archive_patterns, *job.product_patterns]
    archive: list[Any] = []
    product: list[Any] = []
    for value in requests:
        target = product if isinstance(value, ProductIndexRequest) or (
            isinstance(value, dict) and ("derived_from" in value or "derived_using" in value)
        ) else archive
        target.append(value)
    return [*parse_index_requests(ArchiveIndexRequest, archive, "archive requests"),
            *parse_index_requests(ProductIndexRequest, product, "product requests")]


Claimed = list[tuple[FileInfo, int]]  # files, each with the number of its request


def claim(files: Iterable[FileInfo], archive_path: str, requests: list[Request]
          ) -> tuple[Claimed, list[str]]:
    """Each file to the first request with a pattern found in its relative path, and the
    requests that claimed nothing."""
    compiled = [[Pattern(p) for p in request.patterns] for request in requests]
    claimed, used = [], [False] * len(requests)
    for info in files:
        relative = relative_to(info.path, archive_path)
        for number, patterns in enumerate(compiled):
            if any(p.search(relative) for p in patterns):  # or PatternTooCostly
                claimed.append((info, number))
                used[number] = True
                break
    unmatched = [f"{type(r).__name__} {r.patterns}" for r, hit in zip(requests, used, strict=True)
                 if not hit]
    return claimed, unmatched


class Selector:
    """Whether a request of ``requests`` selects a storage path under ``archive_path``."""

    def __init__(self, archive_path: str, requests: list[Request]) -> None:
        self._archive_path = archive_path
        self._patterns = [Pattern(p) for request in requests for p in request.patterns]

    def __call__(self, path: str) -> bool:
        relative = relative_to(path, self._archive_path)
        return any(p.search(relative) for p in self._patterns)  # or PatternTooCostly
