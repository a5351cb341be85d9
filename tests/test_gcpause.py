"""The collector paused during bulk work: counted pauses, and the switch left as it was found."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from catalog.gcpause import gc_paused


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    (gc.enable if was else gc.disable)()


def test_a_pause_turns_the_collector_off_and_back_on() -> None:
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_the_collector_comes_back_only_when_the_last_pause_ends() -> None:
    outer = gc_paused()
    outer.__enter__()
    with gc_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()  # the outer pause still runs
    outer.__exit__(None, None, None)
    assert gc.isenabled()


def test_an_error_in_the_body_still_ends_the_pause() -> None:
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_collector_turned_off_by_someone_else_stays_off() -> None:
    gc.disable()
    with gc_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_pauses_overlapping_in_threads_end_with_the_collector_on() -> None:
    inside, release = threading.Barrier(5), threading.Event()
    seen: list[bool] = []

    def pause() -> None:
        with gc_paused():
            inside.wait()
            seen.append(gc.isenabled())
            release.wait()

    threads = [threading.Thread(target=pause) for _ in range(4)]
    for thread in threads:
        thread.start()
    inside.wait()
    release.set()
    for thread in threads:
        thread.join()
    assert seen == [False] * 4
    assert gc.isenabled()
