"""The dispatcher (``catalog run --engine slurm``): withdraws queued jobs, submits them to
Slurm with a cap on jobs in flight, follows them all with one ``squeue`` call a tick (and the
jobcomp log for the ones ``squeue`` no longer shows), renews their leases, and reports each
attempt through the queue's complete path, as the local worker does.

Restarts lose nothing and submit nothing twice: each job's work directory is
``WORKDIR/<job uuid>``; the intent (``.intent``) is written there before ``sbatch`` and the
native id (``.native_id``) after. On start, every work directory whose job this dispatcher
(same ``--name``) still holds the lease of is adopted: by its native id, else by the Slurm job
named by its UUID (squeue, then the jobcomp log), else submitted (the intent never reached
Slurm). A job cancelled in the catalog (its lease refused) is scancelled; one scancelled
outside it is cancelled in it (config/mappings/slurm.toml says why).

With ``report_url`` the nodes report each job's start and outcome to its webhook (node.py) as
``update`` events in its history; the job still ends once, here, from Slurm's state and the
work's files: the node's reports never end a job, so a node that cannot reach the catalog
changes nothing but its history.
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
from typing import Any

from catalog.engines.base import Execution
from catalog.engines.slurm import SlurmEngine, SlurmRun
from catalog.engines.slurm_client import NativeState, SlurmError
from catalog.errors import CatalogError, LeaseNotHeld
from catalog.queue.models import Withdrawn, WorkFilter
from catalog.worker import QueueClient, completion_of

_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def dispatcher_name() -> str:
    """Stable across restarts on one host, so that a restarted dispatcher holds its leases."""
    return f"slurm:{socket.gethostname()}"


@dataclass
class DispatchOptions:
    work_filter: WorkFilter
    workdir: Path
    name: str = field(default_factory=dispatcher_name)
    max_in_flight: int = 100
    lease: int = 60
    poll: float = 0.25  # seconds between squeue calls
    sleep: float = 5.0  # seconds between withdraws while the queue is empty
    lives: int = -1  # jobs to take before stopping (-1: until stopped); >= 0 also stops when
    # the queue is empty and nothing is in flight
    sweep_every: float = 10.0
    report_url: str | None = None  # the catalog's base URL the nodes report to (webhook)


@dataclass
class Flight:
    uuid: str
    run: SlurmRun
    beaten: float = field(default_factory=time.monotonic)


@dataclass
class Ended:
    uuid: str
    state: str
    error: str | None = None


class Dispatcher:
    def __init__(self, queue: QueueClient, engine: SlurmEngine, options: DispatchOptions,
                 stop: threading.Event | None = None) -> None:
        self.queue = queue
        self.engine = engine
        self.client = engine.client
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
        states = self.client.states()
        by_name = {s.name: s for s in states.values()}
        logged = {s.name: s for s in self.client.ended_from_log().values()}
        for workdir in candidates:
            uuid = workdir.name
            try:
                self.queue.heartbeat(uuid, self.options.name, self.options.lease)
            except LeaseNotHeld:  # ended, cancelled or retried meanwhile: not ours any more
                native = _read(workdir / ".native_id") or getattr(by_name.get(uuid),
                                                                  "native_id", "")
                if native and native in states and not states[native].ended:
                    with contextlib.suppress(SlurmError):
                        self.client.scancel([native])
                shutil.rmtree(workdir, ignore_errors=True)
                continue
            except CatalogError:
                continue  # the queue is away a moment: its sweep decides, or the next start
            native = _read(workdir / ".native_id")
            found = by_name.get(uuid) or logged.get(uuid)
            if not native and found is not None:
                native = found.native_id
            result_file = workdir / ".result.json" if (workdir / ".parameters.json").exists() \
                else None
            if native:
                run = SlurmRun(self.client, native, uuid, workdir, result_file)
                self.flights[uuid] = Flight(uuid, run)
                continue
            intent = json.loads((workdir / ".intent").read_text(encoding="utf-8"))
            self._submit(uuid, intent["work"], workdir, int(intent["timeout"]),
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
        """Withdraw and submit up to the cap; False when the queue had nothing."""
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
        intent.write_text(json.dumps({"work": job.work(), "timeout": job.timeout,
                                      "token": job.token, "attempt": job.attempt}),
                          encoding="utf-8")
        intent.chmod(0o600)
        self._submit(job.uuid, job.work(), workdir, job.timeout, job.token)

    def _submit(self, uuid: str, work: dict[str, Any], workdir: Path, timeout: int,
                token: str) -> None:
        try:
            report = self.options.report_url
            run = self.engine.start(
                work, workdir, timeout, name=uuid,
                secrets={"CATALOG_JOB_TOKEN": token} if token else None,
                report_url=f"{report.rstrip('/')}/jobs/{uuid}/events" if report and token
                else None)
        except (ValueError, OSError, SlurmError) as exc:
            self._report(uuid, workdir, Execution(None, error=f"could not start: {exc}"))
            return
        (workdir / ".native_id").write_text(run.native_id, encoding="utf-8")
        self.flights[uuid] = Flight(uuid, run)

    def _follow(self) -> None:
        try:
            states = self.client.states()
        except SlurmError:
            return  # the controller is away a moment; the leases have more beats
        logged: dict[str, NativeState] | None = None
        now = time.monotonic()
        for uuid, flight in list(self.flights.items()):
            if flight.run.native_id not in states and logged is None:
                logged = self.client.ended_from_log()
            if flight.run.observe(states, logged):
                del self.flights[uuid]
                if flight.run.cancelled_elsewhere():
                    self._cancel(uuid, flight.run)
                else:
                    self._report(uuid, flight.run.workdir, flight.run.result())
                continue
            if now - flight.beaten >= max(1.0, self.options.lease / 3):
                flight.beaten = now
                try:
                    self.queue.heartbeat(uuid, self.options.name, self.options.lease)
                except LeaseNotHeld:  # cancelled in the catalog (or its lease expired)
                    with contextlib.suppress(SlurmError):
                        flight.run.kill("the lease was lost (cancelled, or expired)")
                    del self.flights[uuid]
                    self.ended.append(Ended(uuid, "abandoned", "the lease was lost"))
                    shutil.rmtree(flight.run.workdir, ignore_errors=True)
                except CatalogError:
                    continue

    def _cancel(self, uuid: str, run: SlurmRun) -> None:
        """A job scancelled outside the catalog is cancelled in it, as the slurm mapping says
        (not failed and retried: whoever stopped it meant it to stop)."""
        reason = run.result().error or "Slurm CANCELLED the job"
        intent = json.loads(_read(run.workdir / ".intent") or "{}")
        try:
            state = self.queue.cancel(uuid, reason, str(intent.get("token", "")))
        except CatalogError as exc:  # ended or cancelled in the catalog meanwhile
            self.ended.append(Ended(uuid, "abandoned", exc.message))
        else:
            self.ended.append(Ended(uuid, state, reason))
        shutil.rmtree(run.workdir, ignore_errors=True)

    def _report(self, uuid: str, workdir: Path, execution: Execution) -> None:
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
        shutil.rmtree(workdir, ignore_errors=True)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def dispatch_once(queue: QueueClient, engine: SlurmEngine, options: DispatchOptions,
                  stop: threading.Event | None = None) -> list[Ended]:
    """Run a dispatcher until it stops (``options.lives``, or ``stop``)."""
    return Dispatcher(queue, engine, options, stop).run()


__all__ = ["DispatchOptions", "Dispatcher", "Ended", "dispatch_once", "dispatcher_name"]
