"""QCG-PilotJob's manager calls over the catalog's queue (DESIGN §13, issue 16 item 5).

An unmodified ``qcg.pilotjob.api.manager.Manager(address)`` sends JSON requests (``submit``,
``listJobs``, ``jobStatus``, ``jobInfo``, ``cancelJob``, ``removeJob``, ``resourcesInfo``,
``status``, ``finish``) and reads ``{"code", "message", "data"}`` answers; the ZeroMQ side lives
in ``catalog.compat.qcg_wire``. Here the requests become library calls: a QCG job is a catalog
job of the pipeline ``qcg-pilotjob`` (an iteration is one job per index, a sweep), ``after`` is
its condition, and the names map to job UUIDs per manager session (one client connection).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from datetime import datetime
from typing import Any

from catalog.catalog import Catalog
from catalog.compat.qcg_info import (
    FINAL,
    STATES,
    Named,
    QcgReading,
    Session,
    answer,
    qcg_state,
    refusal,
    whole_state,
)
from catalog.compat.qcg_jobs import (
    Planned,
    QcgError,
    cores_tag,
    plan,
)
from catalog.errors import CatalogError
from catalog.models import MAX_TIMEOUT_S
from catalog.queue import SubmitRequest, cancel, submit
from catalog.states import ENDED_STATES

__all__ = ["PIPELINE", "SOURCE", "STATES", "QcgService", "Session", "HANDLERS"]
PIPELINE = "qcg-pilotjob"
SOURCE = "qcg"
MAX_JOBS_PER_REQUEST = 100_000
_log = logging.getLogger(__name__)


# --- the requests --------------------------------------------------------------------------
class QcgService(QcgReading):
    """The manager's requests on one catalog; thread-safe (the wire thread and the publisher)."""

    def __init__(self, catalog: Catalog, cores: int, busy: Any = None) -> None:
        self.catalog = catalog
        self.cores = cores
        self.busy = busy or (lambda: 0)  # used cores, from the worker pool
        self.sessions: dict[str, Session] = {}
        self.lock = threading.RLock()
        self.started = datetime.now()
        self.submitted = threading.Event()  # set on every submit: the pool and publisher look
        self._pipeline_added = False

    def session(self, ident: str) -> Session:
        with self.lock:
            return self.sessions.setdefault(ident, Session(ident))

    def handle(self, session: Session, body: bytes) -> dict[str, Any]:
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return refusal(f"Invalid request: not JSON ({exc})")
        if not isinstance(request, dict) or not isinstance(request.get("request"), str):
            return refusal("Invalid request: Invalid request")
        handler = HANDLERS.get(request["request"])
        if handler is None:
            return refusal(f"Invalid request: Unknown request name: {request['request']}")
        if session.ended and request["request"] != "finish":
            return refusal("processing stopped")
        try:
            with self.lock:
                return handler(self, session, request)
        except QcgError as exc:
            return refusal(str(exc))
        except CatalogError as exc:
            return refusal(exc.message)
        except Exception as exc:  # the wire must answer, and live on, whatever happened
            _log.exception("QCG request %s failed", request["request"])
            return refusal(f"Failed to process request: {type(exc).__name__}")

    # status and resources -------------------------------------------------------------------
    def system_status(self, session: Session, request: dict[str, Any]) -> dict[str, Any]:
        options = request.get("options") or {}
        if not isinstance(options, dict):
            raise QcgError("Invalid request: Wrong status request - options are not an object")
        if options.get("allJobsFinished"):
            return answer({"AllJobsFinished": self.all_finished(session)})
        now = datetime.now()
        used = int(self.busy())
        counts: dict[str, int] = {}
        for named in session.names.values():
            state = self.state_of(named)
            counts[state] = counts.get(state, 0) + 1
        return answer({
            "System": {"InstanceId": f"catalog-{session.ident}", "Started": str(self.started),
                       "Generated": str(now), "Uptime": str(now - self.started),
                       "StatusPublisher": session.publisher, "Host": socket.gethostname(),
                       "Ifaces": ["zmq"]},
            "Resources": {"TotalNodes": 1, "TotalCores": self.cores, "UsedCores": used,
                          "FreeCores": self.cores - used},
            "JobStats": {"TotalJobs": len(session.names),
                         "InScheduleJobs": counts.get("QUEUED", 0),
                         "FailedJobs": counts.get("FAILED", 0),
                         "FinishedJobs": counts.get("SUCCEED", 0),
                         "ExecutingJobs": counts.get("EXECUTING", 0)}})

    def resources(self, session: Session, request: dict[str, Any]) -> dict[str, Any]:
        used = int(self.busy())
        return answer({"total_nodes": 1, "total_cores": self.cores, "used_cores": used,
                       "free_cores": self.cores - used})

    def finish(self, session: Session, request: dict[str, Any]) -> dict[str, Any]:
        """Ends the session (its names, its publisher); its jobs stay catalog jobs and run."""
        if session.ended:
            return refusal("Finish request already requested")
        session.ended = True
        return answer({"when": "0s"})

    # submit ----------------------------------------------------------------------------------
    def submit(self, session: Session, request: dict[str, Any]) -> dict[str, Any]:
        jobs = request.get("jobs")
        if not isinstance(jobs, list) or not jobs:
            raise QcgError("Invalid request: Wrong submit request - missing jobs data")
        planned: list[Planned] = []
        known: set[str] = set()
        for job in jobs:
            plans = plan(job, self.cores)
            if plans[0].name in session.names or plans[0].name in known:
                raise QcgError(f"Job {plans[0].name} already exist")
            for one in plans:
                for after in one.after:
                    base, _, index = after.partition(":")
                    if base == one.name and not (index.isdigit() and one.iteration is not None
                                                 and int(index) < one.iteration):
                        raise QcgError(f"Job {one.name}: it cannot wait on itself ({after!r})")
                    if not self._resolvable(session, after, planned):
                        raise QcgError(f"Job {one.name}: unknown dependency {after!r}")
                planned.append(one)
                known.add(one.name)
                if len(planned) > MAX_JOBS_PER_REQUEST:
                    raise QcgError(f"Invalid request: more than {MAX_JOBS_PER_REQUEST} jobs")
        # Everything is checked: from here on, only the catalog can refuse (and does not).
        if not self._pipeline_added:
            self.catalog.add_pipeline(PIPELINE)
            self._pipeline_added = True
        names: list[str] = []
        for one in planned:
            when = None
            if one.after:
                uuids = [u for after in one.after for u in self._lookup(session, after)]
                when = {"all": [{"job": u, "is": "finished"} for u in dict.fromkeys(uuids)]}
            outcome = submit(self.catalog, SubmitRequest(
                pipeline=PIPELINE, data=one.data, retries=0,
                timeout=min(one.timeout or MAX_TIMEOUT_S, MAX_TIMEOUT_S),
                tags=["qcg", cores_tag(one.cores)], when=when), SOURCE)
            named = session.names.get(one.name)
            if one.iteration is None:
                session.names[one.name] = Named([outcome.uuid])
                names.append(one.name)
            elif named is None:
                session.names[one.name] = Named([outcome.uuid], start=one.iteration)
                names.append(one.name)
            else:
                named.uuids.append(outcome.uuid)
        self.submitted.set()
        return answer({"submitted": len(names), "jobs": names}, f"{len(names)} jobs submitted")

    def _resolvable(self, session: Session, after: str, planned: list[Planned]) -> bool:
        if session.names.get(after) is not None or \
                (":" in after and self._lookup(session, after, strict=False)):
            return True
        base, _, index = after.partition(":")
        return any(p.name == base and (not index or str(p.iteration) == index)
                   for p in planned)

    # cancel and remove -----------------------------------------------------------------------
    def cancel_jobs(self, session: Session, request: dict[str, Any]) -> dict[str, Any]:
        cancelled, errors = 0, {}
        for name in self.job_names(request):
            try:
                uuids = self._lookup(session, name)
                heads = self._heads(uuids)
                live = [u for u, h in zip(uuids, heads, strict=True)
                        if h is not None and h["state"] not in ENDED_STATES]
                if not live:
                    raise QcgError(f"Job/iteration {name} already finished - can not be "
                                   "canceled")
                for uuid in live:
                    try:
                        cancel(self.catalog, uuid, "cancelled through QCG-PilotJob's "
                               f"cancelJob ({name})", SOURCE)
                    except CatalogError:
                        pass  # it ended meanwhile
                cancelled += 1
            except QcgError as exc:
                errors[name] = str(exc)
        data: dict[str, Any] = {"canceled": cancelled}
        if errors:
            data["errors"] = errors
        return answer(data)

    def remove_jobs(self, session: Session, request: dict[str, Any]) -> dict[str, Any]:
        """Forgets names (the catalog keeps the jobs and their provenance)."""
        removed, errors = 0, {}
        for name in self.job_names(request):
            named = session.names.get(name)
            if named is None:
                errors[name] = f"Job '{name}' doesn't exist"
            elif self.state_of(named) not in FINAL:
                errors[name] = f"Job '{name}' not finished - can not be removed"
            else:
                del session.names[name]
                removed += 1
        data: dict[str, Any] = {"removed": removed}
        if errors:
            data["errors"] = errors
        return answer(data)

    # published events ------------------------------------------------------------------------
    def pending(self) -> list[str]:
        """Every session's job UUIDs whose end has not been published yet."""
        with self.lock:
            return [uuid for s in self.sessions.values()
                    if not s.ended and s.publisher is not None
                    for named in s.names.values()
                    for position, uuid in enumerate(named.uuids)
                    if position not in named.finals]

    def ended_events(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(session, topic, data) for the jobs that ended since last asked: ``IFI`` per
        iteration, ``JFI`` per job, ``NOJ`` when nothing of the session is left running."""
        events: list[tuple[str, str, dict[str, Any]]] = []
        with self.lock:
            for session in self.sessions.values():
                if session.ended or session.publisher is None:
                    continue
                manager = f"catalog-{session.ident}"
                fresh = False
                for name, named in session.names.items():
                    if named.reported_whole:
                        continue
                    # Only what has not ended yet is read: a sweep's ended part costs nothing.
                    for position, uuid in enumerate(named.uuids):
                        if position in named.finals:
                            continue
                        state = qcg_state(self.catalog.store.get_job(uuid, history=False))
                        if state not in FINAL:
                            continue
                        named.finals[position] = state
                        fresh = True
                        if named.start is not None:
                            events.append((session.ident, "IFI", {
                                "manager": manager, "job": name,
                                "it": named.start + position, "state": state}))
                    if len(named.finals) == len(named.uuids):
                        named.reported_whole = True
                        states = [named.finals[p] for p in range(len(named.uuids))]
                        state = states[0] if named.start is None else whole_state(states)
                        events.append((session.ident, "JFI", {"manager": manager, "job": name,
                                                              "state": state}))
                if fresh and all(n.reported_whole for n in session.names.values()):
                    events.append((session.ident, "NOJ", {"manager": manager}))
        return events


HANDLERS = {
    "status": QcgService.system_status, "resourcesInfo": QcgService.resources,
    "finish": QcgService.finish, "submit": QcgService.submit,
    "jobStatus": QcgService.job_status, "listJobs": QcgService.list_jobs,
    "jobInfo": QcgService.job_info, "cancelJob": QcgService.cancel_jobs,
    "removeJob": QcgService.remove_jobs,
}
