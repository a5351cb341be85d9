"""A JSON document with one long array, written without holding the array in memory.

Indexing and verifying a tree of a million files produce a million records or verdicts, and
their ``--json`` documents (and the API's answer) list them all. The runs hand them over a page
at a time to a ``JSONSpool``, which keeps them as JSON text (in memory up to ``MEMORY`` bytes,
in an unnamed temporary file beyond); the document is then rendered around them, byte for byte
what ``json.dumps`` of the whole document would have written.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

MEMORY = 32 * 1024 * 1024  # bytes of JSON kept in memory before the spool goes to disk
_BLOCK = 1024 * 1024


class JSONSpool:
    """Items of one JSON array, appended in pages and rendered inside their document later.

    ``separators`` are ``json.dumps``' own: its defaults (the CLI's) or ``(",", ":")``
    (Starlette's JSONResponse); past ``memory`` bytes the items go to a temporary file."""

    def __init__(self, separators: tuple[str, str] = (", ", ": "), memory: int = MEMORY
                 ) -> None:
        self._encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False,
                                        separators=separators).encode
        self._item, self._key = separators
        self._file = tempfile.SpooledTemporaryFile(max_size=memory)  # noqa: SIM115
        self.count = 0

    def __call__(self, items: Iterable[Any]) -> None:
        count, text = _joined(items, self._encode, self._item, first=not self.count)
        self._file.write(text)
        self.count += count

    def document(self, document: dict[str, Any], key: str) -> tuple[int, Iterator[bytes]]:
        """The length in bytes and the chunks of ``document`` with the spooled items as the
        value of ``key`` (which must hold an empty list: the items went here instead)."""
        head, tail = _around(document, key, self._encode, self._item, self._key)
        size = self._file.tell()

        def chunks() -> Iterator[bytes]:
            yield head
            self._file.seek(0)
            while block := self._file.read(_BLOCK):
                yield block
            yield tail

        return len(head) + size + len(tail), chunks()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JSONSpool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def stream_document(document: dict[str, Any], key: str, pages: Iterable[Iterable[Any]],
                    separators: tuple[str, str] = (", ", ": ")) -> Iterator[bytes]:
    """The chunks of ``document`` with the items of ``pages``, read one page at a time, as
    the value of ``key`` (an empty list in ``document``); ``json.dumps``' bytes, as above."""
    encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False,
                              separators=separators).encode
    item = separators[0]
    head, tail = _around(document, key, encode, item, separators[1])
    yield head
    first = True
    for page in pages:
        count, text = _joined(page, encode, item, first)
        if count:
            yield text
            first = False
    yield tail


def _joined(items: Iterable[Any], encode: Callable[[Any], str], item: str,
            first: bool) -> tuple[int, bytes]:
    """How many ``items`` there are, and their JSON as the array's next elements (led by the
    separator unless they are its first)."""
    encoded = [encode(value) for value in items]
    if not encoded:
        return 0, b""
    return len(encoded), (("" if first else item) + item.join(encoded)).encode()


def _around(document: dict[str, Any], key: str, encode: Callable[[Any], str], item: str,
            colon: str) -> tuple[bytes, bytes]:
    """The bytes of ``document`` before and after the items of its (empty) list ``key``."""
    if document.get(key) != []:
        raise ValueError(f"{key!r} of the document must be an empty list, not the items")
    keys = list(document)
    at = keys.index(key)
    before = {k: document[k] for k in keys[:at]}
    after = {k: document[k] for k in keys[at + 1:]}
    head = encode(before)[:-1] + (item if before else "") + f"{encode(key)}{colon}["
    tail = "]" + (item + encode(after)[1:] if after else "}")
    return head.encode(), tail.encode()
