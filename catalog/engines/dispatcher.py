"""The dispatcher (``catalog run --engine slurm|docker``): withdraws queued jobs, starts them
on an engine with a cap on jobs in flight, follows them all with one engine call a tick (Slurm:
``squeue``, and the jobcomp log for the ones it no longer shows; docker: ``docker inspect``),
renews their leases, and reports each attempt through the queue's complete path, as the local
worker does. The engine is behind a small interface (``Fleet``): ``SlurmFleet`` in slurm.py,
``DockerFleet`` in docker_fleet.py.

Restarts lose nothing and start nothing twice: each job's work directory is
``WORKDIR/<job uuid>``; the intent (``.intent``) is written there before the engine is asked
(``sbatch``, ``docker run``) and the native id (``.native_id``) after. On start, every work
directory whose job this dispatcher (same ``--name``) still holds the lease of is adopted: by
its native id, else by the engine's job named by its UUID (the Slurm job name, the container
name), else started (the intent never reached the engine). A job cancelled in the catalog (its
lease refused) is killed on the engine; one killed outside it (scancel, ``docker rm``) is
cancelled in it (config/mappings/slurm.toml and docker.toml say which states mean that).

With ``report_url`` Slurm's nodes report each job's start and outcome to its webhook (node.py)
as ``update`` events in its history; the job still ends once, here, from Slurm's state and the
work's files: the node's reports never end a job, so a node that cannot reach the catalog
changes nothing but its history. Where a function's report file is missing here (a node whose
disk is not the dispatcher's), the results its node reported are taken instead.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from catalog.engines.base import EngineAway, Execution
from catalog.engines.call import Outputs
from catalog.errors import CatalogError, LeaseNotHeld
from catalog.queue.models import Withdrawn, WorkFilter
from catalog.worker import QueueClient, completion_of, work_of

_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class FleetRun(Protocol):
    """One job on the engine, as the dispatcher follows it."""

    native_id: str
    workdir: Path

    def kill(self, reason: str) -> None:
        """End it now (the catalog cancelled it, or its lease is lost)."""
        ...

    def result(self) -> Execution:
        """How it ended (once ``Fleet.follow`` said so), its logs in the work directory."""
        ...

    def cancelled_elsewhere(self) -> bool:
        """Whether it was stopped outside the catalog (its engine mapping says ``cancel``)."""
        ...


class Fleet(Protocol):
    """An engine as the dispatcher drives it: many jobs started, followed a tick at a time
    with one call for all, found again by name after a restart."""

    name: str

    def start(self, uuid: str, work: dict[str, Any], workdir: Path, timeout: int,
              token: str) -> FleetRun:
        """Start the job's work named by its UUID; ValueError or OSError when it cannot."""
        ...

    def find(self, uuids: list[str]) -> dict[str, str]:
        """The native ids of the engine's jobs named by these UUIDs (those it has)."""
        ...

    def adopt(self, uuid: str, native_id: str, workdir: Path, timeout: int) -> FleetRun:
        """Follow again a job started before a restart."""
        ...

    def follow(self, runs: list[FleetRun]) -> list[FleetRun]:
        """Those of ``runs`` that have ended (EngineAway when the engine did not answer)."""
        ...

    def discard(self, uuid: str, native_id: str) -> None:
        """Kill (and remove) a job that is no longer this dispatcher's."""
        ...

    def release(self, run: FleetRun) -> None:
        """Forget a job once its attempt is reported (docker: remove its container)."""
        ...


def dispatcher_name(engine: str = "slurm") -> str:
    """Stable across restarts on one host, so that a restarted dispatcher holds its leases."""
    return f"{engine}:{socket.gethostname()}"


@dataclass
class DispatchOptions:
    work_filter: WorkFilter
    workdir: Path
    name: str = field(default_factory=dispatcher_name)
    max_in_flight: int = 100
    lease: int = 60
    poll: float = 0.25  # seconds between the engine's state calls
    sleep: float = 5.0  # seconds between withdraws while the queue is empty
    lives: int = -1  # jobs to take before stopping (-1: until stopped); >= 0 also stops when
    # the queue is empty and nothing is in flight
    sweep_every: float = 10.0


@dataclass
class Flight:
    uuid: str
    run: FleetRun
    beaten: float = field(default_factory=time.monotonic)


@dataclass
class Ended:
    uuid: str
    state: str
    error: str | None = None


class Dispatcher:
    def __init__(self, queue: QueueClient, fleet: Fleet, options: DispatchOptions,
                 stop: threading.Event | None = None) -> None:
        self.queue = queue
        self.fleet = fleet
        self.options = options
        self.stop = stop or threading.Event()
        self.flights: dict[str, Flight] = {}
        self.ended: list[Ended] = []
        self.submitted = 0

    # -- start: find our jobs again ---------------------------------------------------------
    def reconcile(self) -> None:
        root = self.options.workdir
        root.mkdir(parents=True, exist_ok=True)
        candidates = [d for d in sorted(root.iterdir())
                      if _UUID_RE.fullmatch(d.name) and (d / ".intent").exists()]
        if not candidates:
            return
        found = self.fleet.find([d.name for d in candidates])
        for workdir in candidates:
            uuid = workdir.name
            native = _read(workdir / ".native_id") or found.get(uuid, "")
            try:
                self.queue.heartbeat(uuid, self.options.name, self.options.lease)
            except LeaseNotHeld:  # ended, cancelled or retried meanwhile: not ours any more
                if native:
                    with contextlib.suppress(EngineAway, OSError):
                        self.fleet.discard(uuid, native)
                shutil.rmtree(workdir, ignore_errors=True)
                continue
            except CatalogError:
                continue  # the queue is away a moment: its sweep decides, or the next start
            intent = json.loads((workdir / ".intent").read_text(encoding="utf-8"))
            if native:
                self.flights[uuid] = Flight(uuid, self.fleet.adopt(
                    uuid, native, workdir, int(intent["timeout"])))
                continue
            self._start(uuid, intent["work"], workdir, int(intent["timeout"]),
                        intent.get("token", ""))

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> list[Ended]:
        self.reconcile()
        swept, withdrawn_at = -math.inf, -math.inf
        empty = False
        while not self.stop.is_set():
            now = time.monotonic()
            if now - swept >= self.options.sweep_every:
                with contextlib.suppress(CatalogError):
                    self.queue.sweep()
                swept = now
            taking = self.options.lives < 0 or self.submitted < self.options.lives
            if taking and (not empty or now - withdrawn_at >= self.options.sleep):
                empty = not self._fill()
                withdrawn_at = now
            if self.flights:
                self._follow()
            elif self.options.lives >= 0 and (empty or not taking):
                break
            if self.flights or empty:
                self.stop.wait(self.options.poll if self.flights else self.options.sleep)
        return self.ended

    def _fill(self) -> bool:
        """Withdraw and start up to the cap; False when the queue had nothing."""
        while len(self.flights) < self.options.max_in_flight and (
                self.options.lives < 0 or self.submitted < self.options.lives):
            job = self.queue.withdraw(self.options.work_filter, self.options.name,
                                      self.options.lease)
            if job is None:
                return False
            self.submitted += 1
            self._take(job)
        return True

    def _take(self, job: Withdrawn) -> None:
        workdir = self.options.workdir / job.uuid
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        workdir.chmod(0o700)
        intent = workdir / ".intent"
        work = work_of(job, job.work(), self.queue.location())
        intent.write_text(json.dumps({"work": work, "timeout": job.timeout,
                                      "token": job.token, "attempt": job.attempt}),
                          encoding="utf-8")
        intent.chmod(0o600)
        self._start(job.uuid, work, workdir, job.timeout, job.token)

    def _start(self, uuid: str, work: dict[str, Any], workdir: Path, timeout: int,
               token: str) -> None:
        try:
            run = self.fleet.start(uuid, work, workdir, timeout, token)
        except (ValueError, OSError, EngineAway) as exc:
            self._report(uuid, workdir, Execution(None, error=f"could not start: {exc}"))
            return
        (workdir / ".native_id").write_text(run.native_id, encoding="utf-8")
        self.flights[uuid] = Flight(uuid, run)

    def _follow(self) -> None:
        try:
            ended = self.fleet.follow([flight.run for flight in self.flights.values()])
        except EngineAway:
            return  # the engine is away a moment; the leases have more beats
        done = {id(run) for run in ended}
        now = time.monotonic()
        for uuid, flight in list(self.flights.items()):
            if id(flight.run) in done:
                del self.flights[uuid]
                if flight.run.cancelled_elsewhere():
                    self._cancel(uuid, flight.run)
                else:
                    self._report(uuid, flight.run.workdir, flight.run.result(), flight.run)
                continue
            if now - flight.beaten >= max(1.0, self.options.lease / 3):
                flight.beaten = now
                try:
                    self.queue.heartbeat(uuid, self.options.name, self.options.lease)
                except LeaseNotHeld:  # cancelled in the catalog (or its lease expired)
                    with contextlib.suppress(EngineAway, OSError):
                        flight.run.kill("the lease was lost (cancelled, or expired)")
                    del self.flights[uuid]
                    self.ended.append(Ended(uuid, "abandoned", "the lease was lost"))
                    self._forget(flight.run)
                except CatalogError:
                    continue

    def _cancel(self, uuid: str, run: FleetRun) -> None:
        """A job stopped outside the catalog is cancelled in it, as the engine's mapping says
        (not failed and retried: whoever stopped it meant it to stop)."""
        reason = run.result().error or f"{self.fleet.name} cancelled the job"
        intent = json.loads(_read(run.workdir / ".intent") or "{}")
        try:
            state = self.queue.cancel(uuid, reason, str(intent.get("token", "")))
        except CatalogError as exc:  # ended or cancelled in the catalog meanwhile
            self.ended.append(Ended(uuid, "abandoned", exc.message))
        else:
            self.ended.append(Ended(uuid, state, reason))
        self._forget(run)

    def _report(self, uuid: str, workdir: Path, execution: Execution,
                run: FleetRun | None = None) -> None:
        if execution.result_missing:
            execution = self._as_the_node_reported(uuid, execution)
        completion = completion_of(self.options.name, execution, workdir)
        try:
            state = self.queue.complete(uuid, completion)
        except LeaseNotHeld as exc:
            self.ended.append(Ended(uuid, "abandoned", exc.message))
        except CatalogError as exc:
            completion = completion.model_copy(update={
                "results": {}, "products": [], "plots": [],
                "error": f"the attempt's report was refused: {exc.message}"})
            state = self.queue.complete(uuid, completion)
            self.ended.append(Ended(uuid, state, completion.error))
        else:
            self.ended.append(Ended(uuid, state, completion.error))
        if run is not None:
            self._forget(run)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    def _as_the_node_reported(self, uuid: str, execution: Execution) -> Execution:
        """A function whose report file is missing here (the node's disk is not this one's,
        or it was lost) ends with the results its node reported through the webhook, when it
        reported a success (node.py's ``ended`` update of this native id); else as it was."""
        try:
            updates = self.queue.updates(uuid)
        except CatalogError:
            return execution
        for data in reversed(updates):
            if data.get("stage") == "ended" and data.get("native_id") == execution.native_id:
                results = data.get("results")
                if data.get("exit_code") != 0 or "error" in data or not isinstance(results,
                                                                                   dict):
                    return execution
                return Execution(0, outputs=Outputs(results), stdout=execution.stdout,
                                 stderr=execution.stderr, native_id=execution.native_id)
        return execution

    def _forget(self, run: FleetRun) -> None:
        """The engine's job released (after the report: a restart in between finds it, sees
        its lease gone and discards it), then its work directory."""
        with contextlib.suppress(EngineAway, OSError):
            self.fleet.release(run)
        shutil.rmtree(run.workdir, ignore_errors=True)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def dispatch_once(queue: QueueClient, fleet: Fleet, options: DispatchOptions,
                  stop: threading.Event | None = None) -> list[Ended]:
    """Run a dispatcher until it stops (``options.lives``, or ``stop``)."""
    return Dispatcher(queue, fleet, options, stop).run()


__all__ = ["DispatchOptions", "Dispatcher", "Ended", "EngineAway", "Fleet", "FleetRun",
           "dispatch_once", "dispatcher_name"]
