"""The ``catalog run`` loop (DESIGN §10): withdraw, execute through an engine under the job's
timeout while renewing the lease, report products, plots, logs and results, and go again.

The queue calls go through one small interface with two implementations: ``LocalQueue`` (the
library, on the catalog's own store) and ``HTTPQueue`` (``catalog serve`` from another machine,
with a worker key). A worker killed outright loses nothing: its lease expires, the sweep fails
the attempt and the job is retried.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid as uuid_module
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.error import HTTPError, URLError
from urllib.parse import quote
from urllib.request import Request, urlopen

from catalog.catalog import Catalog
from catalog.config import CONFIG_ENV, DEFAULT_CONFIG_FILE
from catalog.engines import Engine, Execution, LocalEngine
from catalog.errors import CatalogError, ConfigurationError, LeaseNotHeld
from catalog.queue.models import Completion, Withdrawn, WorkFilter
from catalog.store import sqlite_path

_ERRORS_BY_CODE: dict[str, type[CatalogError]] = {"lease_not_held": LeaseNotHeld}


class QueueClient(Protocol):
    """What a worker asks of the queue."""

    def withdraw(self, work_filter: WorkFilter, worker: str, lease: int) -> Withdrawn | None: ...

    def heartbeat(self, uuid: str, worker: str, lease: int) -> str: ...

    def complete(self, uuid: str, completion: Completion) -> str:
        """Report the attempt; returns the job's state after it."""
        ...

    def cancel(self, uuid: str, reason: str, token: str) -> str:
        """Cancel a job whose work was stopped outside the catalog (``token``: the job's)."""
        ...

    def sweep(self) -> None:
        """Fail expired leases (the local queue does; a server sweeps on its own)."""
        ...

    def updates(self, uuid: str) -> list[dict[str, Any]]:
        """The data of the job's ``update`` events (what its node reported), oldest first."""
        ...

    def location(self) -> dict[str, str]:
        """Where this queue's catalog is (``CATALOG_DB``, ``CATALOG_ARCHIVE_ROOT`` and
        ``CATALOG_CONFIG``, or ``CATALOG_URL``), told to every job's work in its environment
        so that the work can reach it from its own working directory."""
        ...


class LocalQueue:
    """The queue of a catalog opened in this process."""

    def __init__(self, catalog: Catalog, source: str = "cli") -> None:
        self.catalog = catalog
        self.source = source

    def withdraw(self, work_filter: WorkFilter, worker: str, lease: int) -> Withdrawn | None:
        from catalog.queue import withdraw

        return withdraw(self.catalog, work_filter, worker, lease, self.source)

    def heartbeat(self, uuid: str, worker: str, lease: int) -> str:
        from catalog.queue import heartbeat

        return heartbeat(self.catalog, uuid, worker, lease)

    def complete(self, uuid: str, completion: Completion) -> str:
        from catalog.queue.archive import complete

        return complete(self.catalog, uuid, completion, self.source)

    def cancel(self, uuid: str, reason: str, token: str) -> str:
        """Cancel a job whose work was stopped outside the catalog; its state after."""
        return self.catalog.cancel(uuid, reason, self.source).state

    def sweep(self) -> None:
        from catalog.queue import sweep

        sweep(self.catalog)

    def updates(self, uuid: str) -> list[dict[str, Any]]:
        return [dict(entry.data) for entry in self.catalog.get_job(uuid).history
                if entry.name == "update"]

    def location(self) -> dict[str, str]:
        """The catalog's database, local archive root and config file as absolute paths: the
        work runs in a directory of its own, where relative ones name nothing."""
        settings = self.catalog.settings
        path = sqlite_path(settings.db)
        found = {"CATALOG_DB": settings.db if path is None or path == ":memory:"
                 else f"sqlite:///{os.path.abspath(path)}"}
        if "://" not in settings.archive_root:
            found["CATALOG_ARCHIVE_ROOT"] = os.path.abspath(settings.archive_root)
        config = os.environ.get(CONFIG_ENV) or (
            DEFAULT_CONFIG_FILE if os.path.isfile(DEFAULT_CONFIG_FILE) else None)
        if config is not None:
            found[CONFIG_ENV] = os.path.abspath(config)
        return found


class HTTPQueue:
    """The queue of a ``catalog serve`` elsewhere, with a worker key (never in a URL)."""

    def __init__(self, url: str, token: str, timeout: float = 60.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigurationError(f"--url {url!r} is not an http:// or https:// URL")
        if not token:
            raise ConfigurationError("a worker key is required to work for a server "
                                     "(--token, or CATALOG_WORKER_KEY)")
        self.url = url.rstrip("/")
        self._token = token
        self.timeout = timeout

    def _call(self, path: str, document: dict[str, Any], token: str | None = None) -> Any:
        request = Request(f"{self.url}{path}", data=json.dumps(document).encode(),
                          method="POST", headers={
                              "Content-Type": "application/json",
                              "Authorization": f"Bearer {token or self._token}"})
        try:
            with urlopen(request, timeout=self.timeout) as response:  # noqa: S310 (checked)
                return json.loads(response.read() or b"null")
        except HTTPError as exc:
            try:
                error = json.loads(exc.read())["error"]
                code, message = str(error["code"]), str(error["message"])
            except (ValueError, KeyError, TypeError):
                code, message = "http_error", f"{path}: HTTP {exc.code}"
            kind = _ERRORS_BY_CODE.get(code)
            if kind is LeaseNotHeld:
                raise LeaseNotHeld("-", "-", message) from None
            raise CatalogError(f"the server refused {path}: {message} ({code})") from None
        except (URLError, OSError) as exc:
            raise CatalogError(f"cannot reach {self.url}: {exc}") from None

    def withdraw(self, work_filter: WorkFilter, worker: str, lease: int) -> Withdrawn | None:
        answer = self._call("/queue/withdraw", {"filter": work_filter.model_dump(
            exclude_none=True), "worker": worker, "lease": lease})
        return None if answer is None else Withdrawn.model_validate(answer)

    def heartbeat(self, uuid: str, worker: str, lease: int) -> str:
        answer = self._call(f"/jobs/{quote(uuid)}/heartbeat", {"worker": worker,
                                                              "lease": lease})
        return str(answer["lease_expiry"])

    def complete(self, uuid: str, completion: Completion) -> str:
        answer = self._call(f"/jobs/{quote(uuid)}/complete", completion.model_dump())
        return str(answer["state"])

    def cancel(self, uuid: str, reason: str, token: str) -> str:
        """Cancel a job whose work was stopped outside the catalog (with the job's token: a
        worker key cannot cancel); its state after."""
        answer = self._call(f"/jobs/{quote(uuid)}/cancel", {"reason": reason}, token)
        return str(answer["state"])

    def sweep(self) -> None:
        self._call("/queue/sweep", {})

    def updates(self, uuid: str) -> list[dict[str, Any]]:
        """From the job's history (``GET /jobs/{uuid}/history``)."""
        try:
            with urlopen(f"{self.url}/jobs/{quote(uuid)}/history",  # noqa: S310 (checked)
                         timeout=self.timeout) as response:
                history = json.loads(response.read())["history"]
        except (URLError, OSError, ValueError, KeyError, TypeError) as exc:
            raise CatalogError(f"cannot read the history of {uuid} at {self.url}: {exc}") \
                from None
        return [dict(entry.get("data") or {}) for entry in history
                if isinstance(entry, dict) and entry.get("name") == "update"]

    def location(self) -> dict[str, str]:
        """The server's URL (its token stays with the worker: the work has the job's own
        token only where an engine hands it one, as Slurm's node does)."""
        return {"CATALOG_URL": self.url}


def work_of(job: Withdrawn, work: dict[str, Any], location: dict[str, str]) -> dict[str, Any]:
    """``work`` with the job's identity and its catalog's location added to its own
    ``environment`` (ours win: a job cannot claim to be another). A malformed environment of
    the job's own is left for the engine to refuse, naming it."""
    own = work.get("environment")
    if own is not None and not isinstance(own, dict):
        return work
    told = {"CATALOG_JOB_UUID": job.uuid, "CATALOG_PIPELINE": job.pipeline,
            "CATALOG_JOB_ATTEMPT": str(job.attempt), "CATALOG_ARCHIVE_PATH": job.archive_path}
    return {**work, "environment": {**(own or {}), **location, **told}}


def worker_name() -> str:
    """``host:pid:random``: unique per process, and telling where a job ran."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid_module.uuid4().hex[:8]}"


@dataclass
class WorkerOptions:
    """How a worker works: which jobs, what it runs, how long it lives."""

    work_filter: WorkFilter
    function: str | None = None  # a static function for every job (else the job's own)
    command: list[str] | None = None  # a static command for every job
    lives: int = -1  # jobs (or empty withdraws) before it stops; -1: until stopped
    sleep: float = 30.0  # seconds between withdraws while the queue is empty
    lease: int = 60  # seconds a lease lasts between heartbeats
    name: str = field(default_factory=worker_name)
    workdir: Path | None = None  # where work directories go (default: the temp dir)
    sweep_every: float = 10.0  # seconds between sweeps of expired leases


@dataclass
class Attempt:
    """What one attempt came to, for the log and the tests."""

    uuid: str
    state: str
    error: str | None = None


class Worker:
    """The loop; ``stop`` (set by a signal) lets the job in hand end, then the loop ends."""

    def __init__(self, queue: QueueClient, options: WorkerOptions,
                 engine: Engine | None = None, stop: threading.Event | None = None) -> None:
        self.queue = queue
        self.options = options
        self.engine = engine or LocalEngine()
        self.stop = stop or threading.Event()
        self.attempts: list[Attempt] = []

    def run(self) -> list[Attempt]:
        lives = self.options.lives
        swept = -math.inf
        while not self.stop.is_set() and lives != 0:
            lives -= 1 if lives > 0 else 0
            if time.monotonic() - swept >= self.options.sweep_every:
                # Any worker may fail the attempts of one that died: its leases expired.
                with contextlib.suppress(CatalogError):
                    self.queue.sweep()
                swept = time.monotonic()
            job = self.queue.withdraw(self.options.work_filter, self.options.name,
                                      self.options.lease)
            if job is None:
                self.stop.wait(self.options.sleep)
                continue
            self.attempts.append(self.run_one(job))
        return self.attempts

    def _work(self, job: Withdrawn) -> dict[str, Any]:
        """What the engine runs: the job's own work, or the worker's static function or
        command; with the job's resources either way."""
        work = work_of(job, job.work(), self.queue.location())
        static: dict[str, Any] | None = None
        if self.options.command is not None:
            static = {"command": self.options.command}
        elif self.options.function is not None:
            static = {"function": self.options.function,
                      "parameters": job.data.get("parameters") or {}}
        if static is None:
            return work
        return {**static, **{key: work[key] for key in ("resources", "environment")
                             if key in work}}

    def run_one(self, job: Withdrawn) -> Attempt:
        root = self.options.workdir or Path(tempfile.gettempdir())
        root.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"catalog-{job.uuid[:8]}-", dir=root))
        try:
            execution = self._execute(job, workdir)
            if execution is None:  # the lease went (cancelled, or expired): not ours to report
                return Attempt(job.uuid, "abandoned", "the lease was lost")
            completion = completion_of(self.options.name, execution, workdir)
            try:
                state = self._report(job, completion)
            except LeaseNotHeld as exc:
                return Attempt(job.uuid, "abandoned", exc.message)
            return Attempt(job.uuid, state, completion.error)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _report(self, job: Withdrawn, completion: Completion) -> str:
        """Report the attempt; a report refused for what it holds (results too large, say)
        is reported again as the attempt's failure, so that the job never hangs."""
        try:
            return self.queue.complete(job.uuid, completion)
        except LeaseNotHeld:
            raise
        except CatalogError as exc:
            completion = Completion(worker=completion.worker, logs=completion.logs,
                                    error=f"the attempt's report was refused: {exc.message}")
            return self.queue.complete(job.uuid, completion)

    def _execute(self, job: Withdrawn, workdir: Path) -> Execution | None:
        try:
            run = self.engine.start(self._work(job), workdir, job.timeout)
        except (ValueError, OSError) as exc:
            return Execution(None, error=f"could not start: {exc}")
        beat = max(1.0, self.options.lease / 3)
        while not run.wait(beat):
            try:
                self.queue.heartbeat(job.uuid, self.options.name, self.options.lease)
            except LeaseNotHeld:
                run.kill("the lease was lost (cancelled, or expired)")
                return None
            except CatalogError:
                continue  # the server is away a moment: the lease has two more beats
        return run.result()


def completion_of(worker: str, execution: Execution, workdir: Path) -> Completion:
    """The report of an attempt that ended as ``execution`` in ``workdir`` (products and plots
    named relative to it made absolute)."""
    logs = [str(path) for path in (execution.stdout, execution.stderr)
            if path is not None and path.exists()]
    if execution.error is not None or execution.outputs is None:
        return Completion(worker=worker, logs=logs, error=execution.error or "no outputs")

    def absolute(paths: list[str]) -> list[str]:
        return [str(workdir / p) if not os.path.isabs(p) else p for p in paths]

    outputs = execution.outputs
    return Completion(worker=worker, results=outputs.results,
                      products=absolute(outputs.products), plots=absolute(outputs.plots),
                      logs=logs)
