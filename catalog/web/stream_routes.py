"""The job-state stream: ``GET /jobs/stream``, server-sent events of job state changes.

Read-only and open to anyone, like the pages that show the same states (``catalog.web.ui``):
a change carries a job's uuid, pipeline, last event, state, version and time, never its data,
results or token.

A subscriber reads the jobs changed since its last read (``Store.changed_jobs``, a range of an
index on ``updated``) each time the store's watch wakes it (``catalog.queue.waits.watch``: this
process's events, inotify on SQLite, a change stream on MongoDB, and a bounded wait when none
of those can be had), never in a tight loop; each changed job's new steps come from its history
(``Store.history_page``), so every state a job went through is sent, in order, even when
several happened between two reads (up to ``MAX_STEPS`` per job and read: past that, the
latest). Reads reach ``OVERLAP_S`` back, so that an event dated just before one already sent
but committed after it is still seen; the version sent for each job is remembered, so nothing
is sent twice.

Each message's id is ``time|uuid|version``, from the history: a client that reconnects with
``Last-Event-ID`` gets the steps of every job dated after that point (``EventSource`` sends it
by itself), and other jobs' steps of that same millisecond again (dates have millisecond
resolution, and one of them may have been committed after the client's last read: at least
once, never lost). What it cannot get back: steps of a job deleted meanwhile, and steps of a job
whose history has moved on by more than ``MAX_STEPS`` since.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from catalog.catalog import Catalog
from catalog.errors import InvalidInput, TooManySubscribers
from catalog.identifiers import UUIDType, parse_uuid
from catalog.models import format_date, utc_now_text
from catalog.queue.waits import watch
from catalog.states import STATES

Jobs = Annotated[list[str] | None, Query(description="Only these jobs.")]
PipelineName = Annotated[str | None, Query(description="Only this pipeline (name or uuid).")]
States = Annotated[list[str] | None, Query(description="Only steps to these states.")]
MAX_SUBSCRIBERS = 16  # each holds a worker thread while it waits
MAX_JOBS = 100  # job=... filters of one subscriber
OVERLAP_S = 2.0  # how far back each read reaches (events dated before their commit)
BATCH = 500  # heads per read
MAX_STEPS = 100  # history entries of one job per read: past that, the latest are sent
KEEPALIVE_S = 15.0  # a comment line this often, so that proxies keep the connection
WATCHED_WAIT_S = 2.0  # a wake-up is to be had: a safety net, and how long a closed one lingers
UNWATCHED_WAIT_S = 1.0  # none is: a read this often
RECHECKS_S = (0.05, 0.3)  # reads again this soon after a wake-up


class _Places:
    """A bounded count of subscribers."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0
        self.lock = threading.Lock()

    def take(self) -> None:
        with self.lock:
            if self.taken >= self.limit:
                raise TooManySubscribers(
                    f"the job-state stream has {self.limit} subscribers already: try later")
            self.taken += 1

    def give_back(self) -> None:
        with self.lock:
            self.taken -= 1


def _earlier(text: str, seconds: float) -> str:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    return format_date(moment - timedelta(seconds=seconds))


Cursor = tuple[str, str, int]  # (time, uuid, version): a message's id


def parse_last_event_id(value: str | None) -> Cursor | None:
    """(time, uuid, version) from a ``Last-Event-ID`` this stream sent; a malformed one is
    refused."""
    if not value:
        return None
    parts = value.split("|")
    if len(parts) != 3 or not parts[2].isdigit():
        raise InvalidInput(f"Last-Event-ID must be updated|uuid|version as sent, not {value!r}")
    try:
        _earlier(parts[0], 0)
    except ValueError:
        raise InvalidInput(f"Last-Event-ID starts with a date, not {parts[0]!r}") from None
    return parts[0], parse_uuid(parts[1], UUIDType.pipelinejob), int(parts[2])


class Filter:
    """Which changes a subscriber wants: jobs, a pipeline, states (each optional)."""

    def __init__(self, catalog: Catalog, jobs: list[str], pipeline: str | None,
                 states: list[str]) -> None:
        if len(jobs) > MAX_JOBS:
            raise InvalidInput(f"follow at most {MAX_JOBS} jobs, not {len(jobs)}")
        self.jobs = {parse_uuid(job, UUIDType.pipelinejob) for job in jobs}
        self.pipeline = catalog.get_pipeline(pipeline).uuid if pipeline is not None else None
        unknown = [state for state in states if state.upper() not in STATES]
        if unknown:
            raise InvalidInput(f"unknown state {unknown[0]!r}; states: {', '.join(STATES)}")
        self.states = {state.upper() for state in states}

    def wants_job(self, head: dict[str, Any]) -> bool:
        return ((not self.jobs or head["uuid"] in self.jobs)
                and (self.pipeline is None or head["pipeline_uuid"] == self.pipeline))

    def wants_state(self, state: str) -> bool:
        return not self.states or state in self.states


class Follower:
    """The changes of one subscriber, read from the store a batch at a time."""

    def __init__(self, catalog: Catalog, wanted: Filter,
                 resume: Cursor | None) -> None:
        self.catalog = catalog
        self.wanted = wanted
        now = utc_now_text()
        # Only changes after this (time, uuid, version): the reconnection's last event, or now.
        self.resume = resume if resume is not None else (now, "", 0)
        self.read_from = _earlier(self.resume[0], OVERLAP_S)
        self.versions: dict[str, tuple[int, str]] = {}  # uuid -> (version sent, its updated)
        self.pipelines: dict[str, str] = {}

    def changes(self) -> list[dict[str, Any]]:
        """The changes not sent yet, oldest first (blocking: call it in a thread).

        Oldest first is (time, uuid, version) within a read. Across reads two jobs' steps of
        one millisecond (the dates' resolution) can come in either order, which is why a
        reconnection resends the other jobs' steps of its last event's millisecond."""
        found: list[dict[str, Any]] = []
        while True:
            heads = self.catalog.store.changed_jobs(self.read_from, BATCH)
            for head in heads:
                found.extend(self._steps(head))
            if len(heads) < BATCH or heads[-1]["updated"] == self.read_from:
                break
            self.read_from = str(heads[-1]["updated"])  # a full batch: read on
        newest = max((updated for _, updated in self.versions.values()), default=None)
        if newest is not None:
            self.read_from = max(self.read_from, _earlier(newest, OVERLAP_S))
            self.versions = {uuid: seen for uuid, seen in self.versions.items()
                             if seen[1] >= self.read_from}
        found.sort(key=lambda message: (message["time"], message["uuid"], message["version"]))
        return found

    def _steps(self, head: dict[str, Any]) -> list[dict[str, Any]]:
        """The steps of one job not sent yet, from its history (at most ``MAX_STEPS``)."""
        uuid, version = str(head["uuid"]), int(head["version"])
        last = self.versions.get(uuid, (None, ""))[0]
        if last is not None and version <= last:
            return []
        self.versions[uuid] = (version, str(head["updated"]))
        if not self.wanted.wants_job(head):
            return []
        after = max(last or 0, version - MAX_STEPS)
        steps = []
        for seq, entry in enumerate(self.catalog.store.history_page(head, after, MAX_STEPS),
                                    start=after + 1):
            if last is None and self._sent_before(str(entry["date"]), uuid, seq):
                continue  # from before the subscription (or the reconnection's last event)
            if self.wanted.wants_state(str(entry["state"])):
                steps.append(self._message(head, seq, entry))
        return steps

    def _sent_before(self, date: str, uuid: str, seq: int) -> bool:
        """Whether a step came before the point this subscription starts from. Dates have
        millisecond resolution, and another job's step of the resumed millisecond may have
        been committed after the client's last read: those are sent again (at least once,
        never lost); the resumed job's own steps up to its version are not."""
        when, resumed_uuid, version = self.resume
        return date < when or (uuid == resumed_uuid and seq <= version)

    def _message(self, head: dict[str, Any], seq: int, entry: dict[str, Any]
                 ) -> dict[str, Any]:
        pipeline_uuid = str(head["pipeline_uuid"])
        if pipeline_uuid not in self.pipelines:
            doc = self.catalog.store.get_pipeline(pipeline_uuid)
            self.pipelines[pipeline_uuid] = str(doc["name"]) if doc else pipeline_uuid
        return {"uuid": head["uuid"], "pipeline": self.pipelines[pipeline_uuid],
                "pipeline_uuid": pipeline_uuid, "event": entry["name"],
                "state": entry["state"], "version": seq, "time": entry["date"]}


def sse(message: dict[str, Any]) -> str:
    """One server-sent event, ``state``, with its resumable id."""
    event_id = f"{message['time']}|{message['uuid']}|{message['version']}"
    return f"id: {event_id}\nevent: state\ndata: {json.dumps(message)}\n\n"


def add_stream_route(app: FastAPI, catalog: Catalog) -> None:
    """``GET /jobs/stream`` (register before ``/jobs/{uuid}``)."""
    places = _Places(MAX_SUBSCRIBERS)

    @app.get("/jobs/stream", responses={400: {}, 404: {}, 409: {}, 503: {}},
             response_class=StreamingResponse)
    def job_stream(request: Request, job: Jobs = None, pipeline: PipelineName = None,
                   state: States = None) -> StreamingResponse:
        """Server-sent events (``text/event-stream``), one ``state`` event per job state
        change: ``{"uuid", "pipeline", "pipeline_uuid", "event", "state", "version",
        "time"}``; resumable with ``Last-Event-ID``. Open to anyone (no data, no tokens)."""
        wanted = Filter(catalog, job or [], pipeline, state or [])
        follower = Follower(catalog, wanted,
                            parse_last_event_id(request.headers.get("last-event-id")))
        places.take()
        return StreamingResponse(_events(catalog, follower, places),
                                 media_type="text/event-stream",
                                 headers={"cache-control": "no-store",
                                          "x-accel-buffering": "no"})


async def _events(catalog: Catalog, follower: Follower, places: _Places) -> AsyncIterator[str]:
    try:
        with watch(catalog) as (woken, watcher):
            yield "retry: 2000\n\n"
            quiet = 0.0
            rechecks: list[float] = []
            while True:
                woken.clear()  # before reading: a change from now on wakes the wait below
                messages = await run_in_threadpool(follower.changes)
                for message in messages:
                    yield sse(message)
                if messages:
                    quiet = 0.0
                elif quiet >= KEEPALIVE_S:
                    yield ": keep-alive\n\n"
                    quiet = 0.0
                bound = WATCHED_WAIT_S if watcher is not None else UNWATCHED_WAIT_S
                bound = rechecks.pop(0) if rechecks else bound
                started = time.monotonic()
                if watcher is not None:
                    await run_in_threadpool(watcher.wait, bound, woken)
                else:
                    await run_in_threadpool(woken.wait, bound)
                waited = time.monotonic() - started
                quiet += waited
                if waited < bound * 0.9:
                    # Woken by a write to the WAL, which another process's reader can see a
                    # moment later (the index in -shm is updated through a mapping, which
                    # inotify does not see): look again shortly, twice.
                    rechecks = list(RECHECKS_S)
    finally:
        places.give_back()
