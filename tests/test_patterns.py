"""Users' patterns are matched in bounded time, in the dialect of Python's re."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

import pytest

from catalog import patterns
from catalog.errors import InvalidPattern, PatternTooCostly
from catalog.patterns import Pattern, check_pattern
from catalog.queries import glob_regex

# Each backtracks without end in re: (?:a|aa)+ tries every way to split the a's.
COSTLY = r"(?:a|aa)+$"
COSTLY_PATH = "a" * 60 + "b"
# The glob sent to GET /files that kept the service at 100% CPU, for good, under re.
FROZE_THE_SERVICE = "**a" * 12 + "**b"


def finishes(call: Callable[[], Any], seconds: float = 30) -> Any:
    """``call()``'s result or error, or a failed test if it runs on (a daemon thread is left
    behind then, not a hung test run)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still matching after {seconds} s"
    return outcome[0]


@pytest.mark.parametrize(("pattern", "text"), [
    (r"\.csv$", "data/table.csv"), (r"\.csv$", "data/table.csv.gz"), (r"^plots/", "plots/a.png"),
    (r"(?i)README", "docs/readme.md"), (r"^(?!tmp/).*\.fits$", "tmp/sky.fits"),
    (r"^(?!tmp/).*\.fits$", "obs/sky.fits"), (r"(\w+)-\1", "run-run.log"),
    (r"\d{4}-\d{2}", "2026-12/x"), ("é+", "café"),
])
def test_patterns_match_as_re_does(pattern: str, text: str) -> None:
    assert Pattern(pattern).search(text) is (re.search(pattern, text) is not None)
    assert Pattern(pattern).fullmatch(text) is (re.fullmatch(pattern, text) is not None)


@pytest.mark.parametrize("pattern", ["(unclosed", "a{2,1}", "[z-a]", "*", "a{4294967295}",
                                     "(" * 5000 + ")" * 5000, "(?V1)[[a-z]--[aeiou]]"])
def test_an_invalid_pattern_is_refused_naming_it(pattern: str) -> None:
    with pytest.raises(InvalidPattern, match=re.escape(repr(pattern))):
        check_pattern(pattern)


def test_a_pattern_that_backtracks_without_end_is_refused_naming_it_and_the_path() -> None:
    error = finishes(lambda: Pattern(COSTLY).search(COSTLY_PATH))
    assert isinstance(error, PatternTooCostly)
    assert (error.status, error.code) == (400, "pattern_too_costly")
    assert repr(COSTLY) in error.message and repr(COSTLY_PATH) in error.message
    assert Pattern(COSTLY).search("a" * 60)  # what it can answer, it answers


def test_the_glob_that_froze_the_service_is_answered() -> None:
    glob = glob_regex(FROZE_THE_SERVICE)
    assert finishes(lambda: glob.fullmatch("/" + "a" * 80)) is False
    assert finishes(lambda: glob.fullmatch("/" + "a" * 80 + "b")) is True


def test_a_glob_past_the_time_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(patterns, "MATCH_TIMEOUT_S", 0)  # every match runs out at once
    with pytest.raises(PatternTooCostly, match=r"'/data/\*\*/\*\.csv'"):
        glob_regex("/data/**/*.csv").fullmatch("/data/x/table.csv")
