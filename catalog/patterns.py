"""Patterns from users (index requests' regular expressions, path globs), matched in bounded time.

Python's ``re`` cannot be stopped, and holds the GIL while it backtracks: the path glob
``**a**a**a**a**a**a**a**a**a**a**a**a**b`` sent once to the public ``GET /files`` kept the
service at 100% CPU for good, every other request (``/health`` too) waiting behind it. A job
token's index request could do the same with a regular expression. Here patterns are compiled
with the ``regex`` package, in its ``re``-compatible dialect (VERSION0), which lets other
threads run while it matches and stops a match after ``MATCH_TIMEOUT_S``: the request is then
refused (``PatternTooCostly``, 400) naming the pattern and the path it was matched against.
Ordinary patterns take microseconds on a path; the limit is thousands of times that.
"""

from __future__ import annotations

import regex

from catalog.errors import InvalidPattern, PatternTooCostly

MATCH_TIMEOUT_S = 0.1


class Pattern:
    """A compiled user pattern whose every match is limited to ``MATCH_TIMEOUT_S``.

    ``text`` is how the user wrote it (a regular expression or a glob), to name it in errors.
    """

    __slots__ = ("text", "_compiled")

    def __init__(self, text: str, expression: str | None = None, flags: int = 0) -> None:
        self.text = text
        # Refused: what regex cannot compile, and "(?V1)" (another dialect: a ValueError).
        try:
            self._compiled = regex.compile(text if expression is None else expression,
                                           flags | regex.VERSION0)
        except (regex.error, ValueError, OverflowError, RecursionError) as exc:
            raise InvalidPattern(
                f"pattern {text!r} is not a valid regular expression: {exc}") from None

    def search(self, string: str) -> bool:
        """Whether the pattern is found anywhere in ``string``."""
        try:
            return self._compiled.search(string, timeout=MATCH_TIMEOUT_S) is not None
        except TimeoutError:
            raise self._too_costly(string) from None

    def fullmatch(self, string: str) -> bool:
        """Whether the pattern matches all of ``string``."""
        try:
            return self._compiled.fullmatch(string, timeout=MATCH_TIMEOUT_S) is not None
        except TimeoutError:
            raise self._too_costly(string) from None

    def _too_costly(self, string: str) -> PatternTooCostly:
        shown = string if len(string) <= 200 else string[:200] + "..."
        return PatternTooCostly(
            f"pattern {self.text!r} took more than {MATCH_TIMEOUT_S:g} s to match {shown!r} "
            "(it backtracks without end: nested or overlapping repeats such as (a|aa)+ or "
            "(.*)*); write it without them")


def check_pattern(text: str) -> str:
    """``text`` if it compiles as a user pattern, else raise ``InvalidPattern``."""
    Pattern(text)
    return text
