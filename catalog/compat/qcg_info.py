"""QCG-PilotJob's vocabulary over the catalog's (``catalog.compat.qcg``): the states as QCG
names them, its answers, a manager session's names, and the read-only requests (``jobStatus``,
``listJobs``, ``jobInfo``) that answer from the jobs' heads and histories."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from catalog.catalog import Catalog
from catalog.compat.qcg_jobs import QcgError, qcg_date, run_time, working_directory

# --- translation tables (data) ----------------------------------------------------------------
OK, ERROR = 0, 1  # QCG's ResponseCode
# The catalog's states as QCG names them; CANCELLED is CANCELED, or OMITTED when the catalog
# cancelled the job because a dependency made its condition impossible (OMITTED_REASON).
STATES: dict[str, str] = {
    "CREATED": "QUEUED", "WAITING": "QUEUED", "QUEUED": "QUEUED", "RUNNING": "EXECUTING",
    "FAILED": "FAILED", "FINISHED": "SUCCEED", "INDEXING": "SUCCEED", "VALIDATING": "SUCCEED",
    "VALIDATED": "SUCCEED", "FINALIZED": "SUCCEED", "REJECTED": "FAILED", "RETIRED": "CANCELED",
    "CANCELLED": "CANCELED", "RESET": "CANCELED",
}
OMITTED_REASON = "its condition can no longer be met"
FINAL = frozenset({"SUCCEED", "FAILED", "CANCELED", "OMITTED"})
EXIT_CODE = re.compile(r"exited with code (-?\d+)")


def answer(data: Any = None, message: str | None = None) -> dict[str, Any]:
    reply: dict[str, Any] = {"code": OK}
    if message is not None:
        reply["message"] = message
    if data is not None:
        reply["data"] = data
    return reply


def refusal(message: str) -> dict[str, Any]:
    return {"code": ERROR, "message": message}


# --- sessions ------------------------------------------------------------------------------
@dataclass
class Named:
    """A QCG job name in a session: one catalog job, or one per iteration."""

    uuids: list[str]
    start: int | None = None  # iterations' first index (None: not iterated)
    finals: dict[int, str] = field(default_factory=dict)  # ends published, by position
    reported_whole: bool = False

    def iteration(self, index: int) -> str | None:
        if self.start is None or not self.start <= index < self.start + len(self.uuids):
            return None
        return self.uuids[index - self.start]


@dataclass
class Session:
    """One client connection's names (QCG's job registry) and its status publisher."""

    ident: str
    names: dict[str, Named] = field(default_factory=dict)
    publisher: str | None = None  # the PUB socket's address, once the client asked
    ended: bool = False
    seen: float = 0.0  # time.monotonic() of its last request


def qcg_state(head: dict[str, Any] | None) -> str:
    if head is None:
        return "CANCELED"
    state = STATES.get(str(head["state"]), "QUEUED")
    reason = str((head.get("queue") or {}).get("reason") or "")
    if head["state"] == "CANCELLED" and reason.startswith(OMITTED_REASON):
        return "OMITTED"
    return state


def whole_state(states: list[str]) -> str:
    """An iterated job's state from its iterations' (QCG: failed if one failed)."""
    if all(state in FINAL for state in states):
        for final in ("FAILED", "CANCELED", "OMITTED"):
            if final in states:
                return final
        return "SUCCEED"
    return "EXECUTING" if any(s != "QUEUED" for s in states) else "QUEUED"



class QcgReading:
    """The requests that only read: a mixin of ``QcgService`` (it brings ``catalog``)."""

    catalog: Catalog

    def _lookup(self, session: Session, name: str, strict: bool = True) -> list[str]:
        """The job UUIDs a name stands for (``name`` all its iterations, ``name:i`` one)."""
        base, colon, index = name.partition(":")
        named = session.names.get(base)
        if named is not None and not colon:
            return list(named.uuids)
        if named is not None and index.lstrip("-").isdigit():
            uuid = named.iteration(int(index))
            if uuid is not None:
                return [uuid]
        if strict:
            raise QcgError(f"Job '{name}' doesn't exist")
        return []

    def _heads(self, uuids: list[str]) -> list[dict[str, Any] | None]:
        return [self.catalog.store.get_job(uuid, history=False) for uuid in uuids]

    def state_of(self, named: Named) -> str:
        states = [qcg_state(head) for head in self._heads(named.uuids)]
        return states[0] if named.start is None else whole_state(states)

    def state_of_name(self, session: Session, name: str) -> str:
        base, colon, _ = name.partition(":")
        if colon:
            return qcg_state(self._heads(self._lookup(session, name))[0])
        named = session.names.get(base)
        if named is None:
            raise QcgError(f"Job '{name}' doesn't exist")
        return self.state_of(named)

    def all_finished(self, session: Session) -> bool:
        return all(self.state_of(named) in FINAL for named in session.names.values())

    def job_names(self, request: dict[str, Any]) -> list[str]:
        names = request.get("jobNames")
        if not isinstance(names, list) or not names or \
                not all(isinstance(n, str) for n in names):
            raise QcgError(f"Invalid request: Wrong {request['request']} request - missing "
                           "job names")
        return names

    def job_status(self, session: Session, request: dict[str, Any]) -> dict[str, Any]:
        result = {name: {"status": OK, "data": {
            "jobName": name, "status": self.state_of_name(session, name)}}
            for name in self.job_names(request)}
        return answer({"jobs": result})

    def list_jobs(self, session: Session, request: dict[str, Any]) -> dict[str, Any]:
        jobs: dict[str, Any] = {}
        for name, named in session.names.items():
            jobs[name] = {"status": self.state_of(named)}
            if named.start is None:
                reason = ((self._heads(named.uuids)[0] or {}).get("queue") or {}).get("reason")
                if reason:
                    jobs[name]["messages"] = reason
        return answer({"length": len(jobs), "jobs": jobs})

    def job_info(self, session: Session, request: dict[str, Any]) -> dict[str, Any]:
        params = request.get("params") or {}
        children = bool(params.get("withChilds")) if isinstance(params, dict) else False
        result: dict[str, Any] = {}
        for name in self.job_names(request):
            base, colon, _ = name.partition(":")
            named = session.names.get(base)
            if named is None:
                raise QcgError(f"Job {name} doesn't exist")
            if colon or named.start is None:
                result[name] = {"status": OK, "data": {"jobName": name,
                                                       **self._one_info(
                                                           self._lookup(session, name)[0])}}
                continue
            states = [qcg_state(h) for h in self._heads(named.uuids)]
            data: dict[str, Any] = {"jobName": name, "status": whole_state(states),
                                    "iterations": {
                                        "start": named.start,
                                        "stop": named.start + len(named.uuids),
                                        "total": len(named.uuids),
                                        "finished": sum(s in FINAL for s in states),
                                        "failed": sum(s == "FAILED" for s in states)}}
            if children:
                data["childs"] = []
                for offset, uuid in enumerate(named.uuids):
                    info = self._one_info(uuid)
                    data["childs"].append({"iteration": named.start + offset,
                                           "state": info["status"],
                                           "runtime": info.get("runtime", {})})
            result[name] = {"status": OK, "data": data}
        return answer({"jobs": result})

    def _one_info(self, uuid: str) -> dict[str, Any]:
        """Status, messages, runtime (wd, rtime, exit_code, the catalog's job) and history."""
        head = self.catalog.store.get_job(uuid, history=True)
        if head is None:
            raise QcgError(f"Job {uuid} is gone from the catalog")
        queue = head.get("queue") or {}
        qcg = (head.get("data") or {}).get("qcg") or {}
        lines, last = [], None
        for entry in head.get("history") or []:
            state = STATES.get(str(entry.get("state")), "QUEUED")
            if entry.get("name") == "cancel" and str((entry.get("data") or {}).get(
                    "reason", "")).startswith(OMITTED_REASON):
                state = "OMITTED"
            if state != last:
                lines.append(f"{qcg_date(str(entry['date']))}: {state}")
                last = state
        runtime: dict[str, Any] = {"job": uuid, "wd": str(working_directory(qcg))}
        if queue.get("start"):
            runtime["rtime"] = run_time(queue.get("start"), queue.get("stop"))
        results = head.get("results") or {}
        reason = queue.get("reason") or ""
        match = EXIT_CODE.search(str(reason))
        if "exit_code" in results:
            runtime["exit_code"] = results["exit_code"]
        elif match:
            runtime["exit_code"] = int(match.group(1))
        runtime = {k: v for k, v in runtime.items() if v is not None}
        history = "\n" + "\n".join(lines)
        info: dict[str, Any] = {"status": qcg_state(head), "runtime": {**runtime,
                                                                       "history": history},
                                "history": history}
        if reason:
            info["messages"] = reason
        return info

