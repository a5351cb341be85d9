"""Filters the stores cannot answer from an index: path globs, text in job data, dates.

Stores answer equality filters and ranges from their indexes; a glob or a text search is
answered here, the same for every store: the store pages through its sorted, pre-filtered
listing (a glob's literal start becomes a path range) and each document is tested in Python.
One call scans at most ``SCAN_BUDGET`` documents; when that runs out before the page is full,
the page comes back short with a cursor that resumes the scan, so no request is unbounded and
paging still neither skips nor repeats.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import regex

from catalog.errors import InvalidInput
from catalog.models import format_date
from catalog.patterns import Pattern
from catalog.store.paging import cursor_after
from catalog.store.values import MAX_LIMIT, Doc, Page

SCAN_BUDGET = 20_000
_MAX_TEXT = 256
_MAX_GLOB = 1024
_WILDCARDS = "*?["


def glob_regex(pattern: str) -> Pattern:
    """The regular expression of a path glob (matched in bounded time, ``catalog.patterns``).

    ``*`` matches within one path segment, ``**`` across segments (``**/`` also matches no
    directory at all), ``?`` one character other than ``/``, ``[abc]`` / ``[!abc]`` a
    character in or not in the set. A glob that does not start with ``/`` matches at any
    depth, as if it began with ``**/``. The whole path must match.
    """
    if not isinstance(pattern, str) or not pattern or len(pattern) > _MAX_GLOB:
        raise InvalidInput(f"a path glob must be 1 to {_MAX_GLOB} characters")
    if "\x00" in pattern:
        raise InvalidInput("a path glob cannot contain NUL")
    given = pattern  # errors name the glob as the user wrote it
    if not pattern.startswith("/"):
        pattern = "**/" + pattern
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            i = _character_class(pattern, i, out)
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return Pattern(given, "".join(out), regex.DOTALL)


def _character_class(pattern: str, start: int, out: list[str]) -> int:
    """Translate ``[...]`` at ``start`` (a lone ``[`` is literal); return where it ends."""
    i = start + 1
    negate = i < len(pattern) and pattern[i] in "!^"
    if negate:
        i += 1
    first = i
    if i < len(pattern) and pattern[i] == "]":  # a leading ] is a member, as in fnmatch
        i += 1
    while i < len(pattern) and pattern[i] != "]":
        i += 1
    if i >= len(pattern):
        out.append(re.escape("["))
        return start + 1
    members = "".join("\\" + c if c in "\\^[]" else c for c in pattern[first:i])
    out.append(f"[{'^' if negate else ''}{members}]")
    return i + 1


def glob_prefix(pattern: str) -> str:
    """The literal start of an anchored glob (what every match starts with), else ""."""
    if not pattern.startswith("/"):
        return ""
    cut = min((pattern.find(c) for c in _WILDCARDS if c in pattern), default=len(pattern))
    return pattern[:cut]


def parse_date(value: str, name: str) -> str:
    """An ISO 8601 date or date-time (UTC when it names no zone) in the stored text form."""
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidInput(
            f"{name} must be an ISO 8601 date or date-time, e.g. 2026-11-01 or "
            f"2026-11-01T12:00:00Z, not {value!r}"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return format_date(parsed)


def check_text(text: str) -> str:
    if not text or len(text) > _MAX_TEXT:
        raise InvalidInput(f"search text must be 1 to {_MAX_TEXT} characters")
    return text.casefold()


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)


def data_contains(data: Any, needle: str) -> bool:
    """Whether a key or string value anywhere in ``data`` contains ``needle`` (casefolded)."""
    return any(needle in text.casefold() for text in _strings(data))


def scan(fetch: Callable[[str | None, int], Page], keep: Callable[[Doc], bool], limit: int,
         cursor: str | None, sort: str) -> Page:
    """A page of ``limit`` documents that ``keep`` accepts, read through ``fetch``."""
    found: list[Doc] = []
    scanned = 0
    while True:
        page = fetch(cursor, MAX_LIMIT)
        for number, doc in enumerate(page.items, start=1):
            scanned += 1
            at_end = page.next is None and number == len(page.items)
            if keep(doc):
                found.append(doc)
                if len(found) == limit:
                    # Full: the cursor stands after this document (the next page may turn out
                    # empty, the price of not reading ahead through what may be a long scan).
                    return Page(found, None if at_end else cursor_after(doc, sort))
            if scanned >= SCAN_BUDGET and not at_end:
                return Page(found, cursor_after(doc, sort))
        if page.next is None:
            return Page(found, None)
        cursor = page.next
