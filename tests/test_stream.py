"""The job-state stream (``GET /jobs/stream``) against a real uvicorn server: changes arrive as
they happen (woken, not polled), filtered, resumable; bad requests are refused."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlparse

import httpx
import pytest
from browser import serving

from catalog import Catalog
from catalog.queue import end_attempt, submit, withdraw
from catalog.tokens import Keys
from catalog.web import stream_routes
from catalog.web.stream_routes import WATCHED_WAIT_S

KEYS = Keys(b"s" * 32, b"a" * 32)
ARRIVAL_S = 10.0  # how long a test waits for a message before it fails
_numbers = itertools.count()


@pytest.fixture
def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Catalog]:
    monkeypatch.chdir(tmp_path)
    opened = Catalog.open(f"sqlite:///{tmp_path}/c.db", keys=KEYS,
                          sqlite_synchronous="NORMAL")
    opened.add_pipeline("step")
    opened.add_pipeline("other")
    opened.add_pipeline("second")
    yield opened
    opened.close()


@pytest.fixture
def base_url(catalog: Catalog) -> Iterator[str]:
    with serving(catalog) as url:
        yield url


class Subscriber:
    """Reads a stream in a thread (http.client, whose socket can be shut down to stop the
    read at once); messages (id, data) land in a queue."""

    def __init__(self, url: str, params: dict[str, Any] | None = None,
                 last_event_id: str | None = None) -> None:
        self.messages: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        address = urlparse(url)
        self.connection = http.client.HTTPConnection(address.hostname or "", address.port,
                                                     timeout=10)
        headers = {"last-event-id": last_event_id} if last_event_id else {}
        self.connection.request("GET", "/jobs/stream?" + urlencode(params or {}, doseq=True),
                                headers=headers)
        self.response = self.connection.getresponse()
        assert self.response.status == 200, self.response.read()
        assert self.response.getheader("content-type", "").startswith("text/event-stream")
        assert self.connection.sock is not None
        self.connection.sock.settimeout(None)  # a quiet stream is no error: close() ends it
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        event_id, data = "", ""
        with contextlib.suppress(OSError, ValueError):  # shut down by close()
            while line := self.response.fp.readline():
                text = line.decode().rstrip("\r\n")
                if text.startswith("id: "):
                    event_id = text[4:]
                elif text.startswith("data: "):
                    data = text[6:]
                elif text == "" and data:
                    self.messages.put((event_id, json.loads(data)))
                    event_id, data = "", ""

    def next(self) -> tuple[str, dict[str, Any]]:
        return self.messages.get(timeout=ARRIVAL_S)

    def nothing_within(self, seconds: float) -> bool:
        try:
            self.messages.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        if self.connection.sock is not None:
            with contextlib.suppress(OSError):
                self.connection.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        self.connection.close()


@pytest.fixture
def subscribe(base_url: str) -> Iterator[Any]:
    opened: list[Subscriber] = []

    def open_(params: dict[str, Any] | None = None,
              last_event_id: str | None = None) -> Subscriber:
        subscriber = Subscriber(base_url, params, last_event_id)
        opened.append(subscriber)
        return subscriber

    yield open_
    for subscriber in opened:
        subscriber.close()


def queued(catalog: Catalog, pipeline: str = "step") -> str:
    """A new job (its data makes its UUID: each call's differs)."""
    return submit(catalog, {"pipeline": pipeline, "retries": 0,
                            "data": {"command": ["x", str(next(_numbers))]}}).uuid


def run_and_end(catalog: Catalog, uuid: str, pipeline: str = "step",
                error: str | None = None) -> None:
    job = withdraw(catalog, {"pipelines": [pipeline]}, "w")
    assert job is not None and job.uuid == uuid
    end_attempt(catalog, uuid, "w", error)


def test_each_change_arrives_as_it_happens(catalog: Catalog, subscribe: Any) -> None:
    subscriber = subscribe()
    started = time.monotonic()
    uuid = queued(catalog)
    created, (event_id, message) = subscriber.next()[1], subscriber.next()
    # woken by the commit (inotify), well before the watch's safety-net bound
    assert time.monotonic() - started < WATCHED_WAIT_S / 2
    assert (created["state"], created["event"], created["version"]) == ("CREATED", "create", 1)
    assert message == {"uuid": uuid, "pipeline": "step",
                       "pipeline_uuid": catalog.get_pipeline("step").uuid, "event": "queue",
                       "state": "QUEUED", "version": 2, "time": message["time"]}
    assert event_id == f"{message['time']}|{uuid}|2"
    assert message["time"] >= created["time"] and message["time"].endswith("Z")

    job = withdraw(catalog, {"pipelines": ["step"]}, "w")
    assert job is not None
    assert subscriber.next()[1]["state"] == "RUNNING"
    end_attempt(catalog, uuid, "w", None)
    assert subscriber.next()[1]["state"] == "FINISHED"
    assert catalog.get_job(uuid).state == "FINISHED"


def test_changes_from_before_the_subscription_are_not_sent(catalog: Catalog,
                                                            subscribe: Any) -> None:
    before = queued(catalog)
    subscriber = subscribe()
    after = queued(catalog)
    assert [subscriber.next()[1]["uuid"] for _ in range(2)] == [after, after]
    assert subscriber.nothing_within(0.5), before


def test_filters_by_state_pipeline_and_job(catalog: Catalog, subscribe: Any) -> None:
    finished = subscribe({"state": ["finished", "FAILED"]})
    other = subscribe({"pipeline": "other"})
    # a pipeline each: two jobs queued the same millisecond are withdrawn in UUID order
    a, b, c = queued(catalog), queued(catalog, "second"), queued(catalog, "other")
    one_job = subscribe({"job": [b]})
    run_and_end(catalog, a)
    run_and_end(catalog, b, "second", error="broken")
    # two jobs' changes dated the same millisecond have no order between them; each job's do
    ended = {(m["uuid"], m["state"]) for m in (finished.next()[1], finished.next()[1])}
    assert ended == {(a, "FINISHED"), (b, "FAILED")}
    assert [other.next()[1]["uuid"] for _ in range(2)] == [c, c]  # created, queued
    assert [one_job.next()[1]["state"], one_job.next()[1]["state"]] == ["RUNNING", "FAILED"]
    assert finished.nothing_within(0.3) and other.nothing_within(0.1)


def test_a_reconnection_resumes_after_its_last_event_id(catalog: Catalog,
                                                        subscribe: Any) -> None:
    first = subscribe()
    a = queued(catalog)
    first.next()
    last_id, _ = first.next()  # a QUEUED
    first.close()
    b, c = queued(catalog), queued(catalog)  # while away

    resumed = subscribe(last_event_id=last_id)
    got = [resumed.next()[1] for _ in range(4)]
    # each job's steps in order (b's and c's may share a millisecond: no order between them)
    assert [m["state"] for m in got if m["uuid"] == b] == ["CREATED", "QUEUED"]
    assert [m["state"] for m in got if m["uuid"] == c] == ["CREATED", "QUEUED"]
    assert resumed.nothing_within(0.3), a


def _cursor(event_id: str) -> tuple[str, str, int]:
    when, uuid, version = event_id.split("|")
    return when, uuid, int(version)


def test_a_reconnection_from_any_id_loses_nothing_sent_after_it(catalog: Catalog,
                                                                subscribe: Any) -> None:
    """A burst puts several jobs' steps in one millisecond, and a read can fall between two
    of them: resuming from any id gives every step sent after it (the other jobs' steps of
    its millisecond may come again: at least once, never lost), each job's in order."""
    first = subscribe()
    for _ in range(40):
        queued(catalog)
    sent = [first.next() for _ in range(80)]
    steps = [_cursor(event_id) for event_id, _ in sent]
    assert len(set(steps)) == len(steps)
    for uuid in {uuid for _, uuid, _ in steps}:  # each job's steps in order
        assert [version for _, job, version in steps if job == uuid] == [1, 2]
    for cut in (1, 25, 51, 79):
        resumed = subscribe(last_event_id=sent[cut - 1][0])
        when, uuid, version = steps[cut - 1]
        again = [s for s in steps[:cut] if s[0] == when and s[1] != uuid]
        rest = {_cursor(resumed.next()[0]) for _ in range(80 - cut + len(again))}
        assert rest == set(steps[cut:]) | set(again)
        assert resumed.nothing_within(0.2)
        resumed.close()


@pytest.mark.parametrize(("params", "headers", "status", "code"), [
    ({"state": "EXPLODED"}, {}, 400, "invalid_input"),
    ({"pipeline": "nobody"}, {}, 404, "pipeline_not_found"),
    ({"job": "not-a-uuid"}, {}, 400, "malformed_uuid"),
    ({}, {"last-event-id": "yesterday"}, 400, "invalid_input"),
    ({}, {"last-event-id": "2026-13-01T00:00:00.000Z|x|1"}, 400, "invalid_input"),
])
def test_bad_requests_are_refused_with_the_error_shape(
        base_url: str, params: dict[str, str], headers: dict[str, str], status: int,
        code: str) -> None:
    response = httpx.get(f"{base_url}/jobs/stream", params=params, headers=headers, timeout=10)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_subscribers_are_bounded(catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_routes, "MAX_SUBSCRIBERS", 1)
    with serving(catalog) as url:
        first = Subscriber(url)
        try:
            response = httpx.get(f"{url}/jobs/stream", timeout=10)
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "too_many_subscribers"
            uuid = queued(catalog)
            assert first.next()[1]["uuid"] == uuid  # the one admitted still streams
        finally:
            first.close()


def test_a_change_made_by_another_process_wakes_the_stream(catalog: Catalog, tmp_path: Path,
                                                           subscribe: Any) -> None:
    subscriber = subscribe({"state": "QUEUED"})
    script = ("import sys\nfrom catalog import Catalog\nfrom catalog.tokens import Keys\n"
              "c = Catalog.open(sys.argv[1], keys=Keys(b's' * 32, b'a' * 32))\n"
              "print(c.submit('step', {'from': 'elsewhere'}).uuid)\nc.close()\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script, f"sqlite:///{tmp_path}/c.db"],
                          capture_output=True, text=True, timeout=60, check=True)
    written = time.monotonic()
    _, message = subscriber.next()
    assert message["uuid"] == done.stdout.strip() and message["state"] == "QUEUED"
    # woken by inotify on the database, not by the safety-net bound of the wait
    arrived = datetime.now(UTC)
    sent = datetime.fromisoformat(message["time"].replace("Z", "+00:00"))
    assert (arrived - sent).total_seconds() < WATCHED_WAIT_S / 2, (arrived, sent,
                                                                   written - started)
