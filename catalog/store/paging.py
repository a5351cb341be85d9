"""Paging a listing by keyset: opaque cursors, pages of ``limit`` rows, and the helpers
the stores' queries share (a prefix's upper bound, chunks of an IN list)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator

from catalog.errors import InvalidInput
from catalog.store.values import Doc, Page


def prefix_upper_bound(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix`` (None: no bound).

    Both backends compare text by UTF-8 bytes, which is code point order, so ``prefix <= s <
    bound`` is exactly "s starts with prefix", served by an ordinary index, and no character of
    the prefix is a wildcard.
    """
    stripped = prefix.rstrip(chr(0x10FFFF))
    if not stripped:
        return None
    following = ord(stripped[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:  # surrogates are no characters: step over them
        following = 0xE000
    return stripped[:-1] + chr(following)


def chunked(values: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def unique(values: list[str]) -> list[str]:
    """``values`` without repeats, in first-seen order."""
    return list(dict.fromkeys(values))


def encode_cursor(*key: str) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, size: int) -> list[str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError):
        raise InvalidInput(f"cursor {cursor!r} is not valid") from None
    if not (isinstance(key, list) and len(key) == size and all(isinstance(k, str) for k in key)):
        raise InvalidInput(f"cursor {cursor!r} is not valid")
    return key


def page_of(rows: list[Doc], limit: int, *key_fields: str) -> Page:
    """Turn ``limit + 1`` fetched rows into a page and the cursor after its last item."""
    if len(rows) <= limit:
        return Page(rows, None)
    items = rows[:limit]
    last = items[-1]
    return Page(items, encode_cursor(*(str(last[f]) for f in key_fields)))


def sorted_page(rows: list[Doc], limit: int, sort: str) -> Page:
    """``page_of`` for a sorted listing: the cursor also names the sort it belongs to."""
    if len(rows) <= limit:
        return Page(rows, None)
    return Page(rows[:limit], cursor_after(rows[limit - 1], sort))


def cursor_after(doc: Doc, sort: str) -> str:
    """The cursor of the position just after ``doc`` in a listing sorted by ``sort``."""
    return encode_cursor(sort, str(doc[sort.lstrip("-")]), str(doc["uuid"]))


def decode_sorted_cursor(cursor: str, sort: str) -> tuple[str, str]:
    """The (sort field value, uuid) a cursor of this sort order stands after."""
    cursor_sort, key, uuid = decode_cursor(cursor, 3)
    if cursor_sort != sort:
        raise InvalidInput(
            f"cursor {cursor!r} belongs to a listing sorted by {cursor_sort!r}, not {sort!r}"
        )
    return key, uuid
