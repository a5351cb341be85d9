"""The JSON spool: long arrays of index and verify documents, kept out of memory."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catalog.spool import JSONSpool, stream_document

TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
ITEMS = st.lists(st.dictionaries(TEXT, st.one_of(
    st.none(), st.booleans(), st.integers(), TEXT, st.lists(TEXT, max_size=3)), max_size=4),
    max_size=12)
DOCUMENTS = st.dictionaries(TEXT, st.one_of(st.integers(), TEXT, st.lists(TEXT, max_size=2)),
                            max_size=3)


@settings(max_examples=80, deadline=None)
@given(pages=st.lists(ITEMS, max_size=4), before=DOCUMENTS, after=DOCUMENTS,
       compact=st.booleans(), memory=st.sampled_from([16, 1 << 20]))
def test_a_spool_renders_what_json_dumps_would(
    pages: list[list[dict[str, Any]]], before: dict[str, Any], after: dict[str, Any],
    compact: bool, memory: int,
) -> None:
    separators = (",", ":") if compact else (", ", ": ")
    key = "files é"
    after = {k: v for k, v in after.items() if k not in before and k != key}
    before = {k: v for k, v in before.items() if k != key}
    items = [item for page in pages for item in page]
    expected = json.dumps({**before, key: items, **after}, ensure_ascii=False,
                          separators=separators).encode()
    with JSONSpool(separators, memory) as spool:  # 16 bytes: to its temporary file at once
        for page in pages:
            spool(page)
        length, chunks = spool.document({**before, key: [], **after}, key)
        assert b"".join(chunks) == expected and length == len(expected)
        assert spool.count == len(items)


@settings(max_examples=80, deadline=None)
@given(pages=st.lists(ITEMS, max_size=4), before=DOCUMENTS, after=DOCUMENTS,
       compact=st.booleans())
def test_a_streamed_document_is_what_json_dumps_would_write(
    pages: list[list[dict[str, Any]]], before: dict[str, Any], after: dict[str, Any],
    compact: bool,
) -> None:
    separators = (",", ":") if compact else (", ", ": ")
    after = {k: v for k, v in after.items() if k not in before and k != "history"}
    before = {k: v for k, v in before.items() if k != "history"}
    items = [item for page in pages for item in page]
    expected = json.dumps({**before, "history": items, **after}, ensure_ascii=False,
                          separators=separators).encode()
    read: list[int] = []

    def lazily() -> Any:
        for number, page in enumerate(pages):
            read.append(number)
            yield page

    chunks = stream_document({**before, "history": [], **after}, "history", lazily(),
                             separators)
    head = next(chunks)
    assert read == []  # the head comes before any page is read
    assert head + b"".join(chunks) == expected
    assert read == list(range(len(pages)))


def test_the_document_must_leave_the_items_to_the_spool() -> None:
    with JSONSpool() as spool:
        spool([{"a": 1}])
        with pytest.raises(ValueError, match="'files' of the document must be an empty list"):
            spool.document({"files": [{"a": 1}]}, "files")
        with pytest.raises(ValueError):
            spool.document({"other": []}, "files")


def test_past_its_memory_a_spool_is_on_disk() -> None:
    items = [{"path": f"/a/{i}", "size": i} for i in range(100)]
    with JSONSpool(memory=1024) as spool:
        spool(items[:10])
        assert not spool._file._rolled  # type: ignore[attr-defined]
        spool(items[10:])
        assert spool._file._rolled  # type: ignore[attr-defined]
        _, chunks = spool.document({"n": 100, "items": []}, "items")
        assert json.loads(b"".join(chunks)) == {"n": 100, "items": items}
