"""Which files of a job's archive path its index requests select.

A request's patterns are regular expressions searched in the path relative to the archive path;
the first request that matches a file claims it, archive requests before product requests.
Indexing indexes what is claimed; verify tells a file no request selects (``ignored``) from one
a request selects but that has no record (``uncatalogued``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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


class Claimer:
    """Which request claims a file: the first with a pattern found in its relative path.
    Remembers which requests claimed something, for ``unmatched``."""

    def __init__(self, archive_path: str, requests: list[Request]) -> None:
        self._archive_path = archive_path
        self._requests = requests
        self._compiled = [[Pattern(p) for p in request.patterns] for request in requests]
        self.used = [False] * len(requests)

    def __call__(self, info: FileInfo) -> int | None:
        relative = relative_to(info.path, self._archive_path)
        for number, patterns in enumerate(self._compiled):
            if any(p.search(relative) for p in patterns):  # or PatternTooCostly
                self.used[number] = True
                return number
        return None

    def batches(self, files: Iterable[FileInfo], size: int) -> Iterator[Claimed]:
        """The claimed ones of ``files``, ``size`` at a time, read from ``files`` as they are
        needed: a listing of a million files is never held whole."""
        batch: Claimed = []
        for info in files:
            number = self(info)
            if number is not None:
                batch.append((info, number))
                if len(batch) >= size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def unmatched(self) -> list[str]:
        """The requests that claimed nothing so far, as results name them."""
        return [f"{type(r).__name__} {r.patterns}"
                for r, hit in zip(self._requests, self.used, strict=True) if not hit]


def claim(files: Iterable[FileInfo], archive_path: str, requests: list[Request]
          ) -> tuple[Claimed, list[str]]:
    """Each file to the first request with a pattern found in its relative path, and the
    requests that claimed nothing."""
    claimer = Claimer(archive_path, requests)
    claimed = [(info, number) for info in files if (number := claimer(info)) is not None]
    return claimed, claimer.unmatched()


class Selector:
    """Whether a request of ``requests`` selects a storage path under ``archive_path``."""

    def __init__(self, archive_path: str, requests: list[Request]) -> None:
        self._archive_path = archive_path
        self._patterns = [Pattern(p) for request in requests for p in request.patterns]

    def __call__(self, path: str) -> bool:
        relative = relative_to(path, self._archive_path)
        return any(p.search(relative) for p in self._patterns)  # or PatternTooCostly
