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
from collections.abc import Iterable, Iterator
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
        encoded = [self._encode(item) for item in items]
        if not encoded:
            return
        self._file.write(((self._item if self.count else "") + self._item.join(encoded)).encode())
        self.count += len(encoded)

    def document(self, document: dict[str, Any], key: str) -> tuple[int, Iterator[bytes]]:
        """The length in bytes and the chunks of ``document`` with the spooled items as the
        value of ``key`` (which must hold an empty list: the items went here instead)."""
        if document.get(key) != []:
            raise ValueError(f"{key!r} of the document must be an empty list, not the items")
        keys = list(document)
        at = keys.index(key)
        before = {k: document[k] for k in keys[:at]}
        after = {k: document[k] for k in keys[at + 1:]}
        head = self._encode(before)[:-1] + (self._item if before else "")
        head += f"{self._encode(key)}{self._key}["
        tail = "]" + (self._item + self._encode(after)[1:] if after else "}")
        encoded_head, encoded_tail = head.encode(), tail.encode()
        size = self._file.tell()

        def chunks() -> Iterator[bytes]:
            yield encoded_head
            self._file.seek(0)
            while block := self._file.read(_BLOCK):
                yield block
            yield encoded_tail

        return len(encoded_head) + size + len(encoded_tail), chunks()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JSONSpool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
