"""Scheduled fixity: re-read the files whose last check is oldest, a bounded number per run.

``verify_oldest`` takes the records of this catalog's storage system whose last check
(``checked``) is older than a duration, oldest (and never checked) first, from the store's index
on that date, verifies them a page at a time (each check written to its record, so the next
run goes on from where this one stopped), and keeps a summary of the run (``FixityRun``) that
``Catalog.store.find_fixity_runs`` (``GET /fixity/runs``) shows. ``catalog verify --older-than``
runs it once; ``catalog serve`` runs it every ``fixity_interval`` on ``fixity_batch`` files
(``FixitySchedule``), the way iRODS and APTrust re-check their holdings.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from catalog.catalog import Catalog
from catalog.errors import InvalidInput
from catalog.gcpause import gc_paused
from catalog.indexer import Progress
from catalog.models import format_date, utc_now
from catalog.verify import PAGE, VerdictSink, VerifyReport, verify_records

__all__ = ["FixitySchedule", "parse_duration", "verify_oldest"]

log = logging.getLogger("catalog.fixity")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
NAMED = 100  # problem files a run's summary names (it counts them all)


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``12h``, ``7d``, ``2w`` or a sum of them (``1d12h``); ``0`` is none."""
    value = str(text).strip().lower()
    if value == "0":
        return timedelta(0)
    parts = re.findall(r"(\d+)([smhdw])", value)
    if not value or "".join(f"{n}{u}" for n, u in parts) != value:
        raise InvalidInput(f"{text!r} is not a duration: a number and a unit (s, m, h, d, w), "
                           "such as 90s, 15m, 12h, 7d or 1d12h, or 0")
    return timedelta(seconds=sum(int(number) * _UNITS[unit] for number, unit in parts))


@dataclass
class FixityRun:
    """What one run of ``verify_oldest`` did (its ``to_dict`` is what the store keeps)."""

    started: str
    finished: str
    trigger: str
    older_than_s: int
    limit: int
    report: VerifyReport
    problems: list[str]

    def to_dict(self) -> dict[str, Any]:
        counts = self.report.counts()
        return {"started": self.started, "finished": self.finished, "trigger": self.trigger,
                "older_than_s": self.older_than_s, "limit": self.limit,
                "checked": sum(self.report.outcomes.values()), "ok": self.report.ok,
                "counts": {key: counts[key] for key in ("ok", "changed", "missing",
                                                        "unreadable")},
                "problems": self.problems}


def verify_oldest(catalog: Catalog, older_than: timedelta, limit: int,
                  progress: Progress | None = None, sink: VerdictSink | None = None,
                  trigger: str = "python", stop: threading.Event | None = None) -> FixityRun:
    """Verify up to ``limit`` files whose last check is older than ``older_than`` (oldest
    first), a page at a time (``stop``, when set, ends the run after the page in hand), and
    keep the run's summary. Verdicts go to ``sink`` as ``verify`` hands them."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise InvalidInput(f"limit must be a positive number of files, got {limit!r}")
    if older_than < timedelta(0):
        raise InvalidInput("older_than must not be negative")
    started = utc_now()
    before = format_date(started - older_than)
    report = VerifyReport()
    problems: list[str] = []

    def keep(verdicts: list[Any]) -> None:
        problems.extend(f"{v.outcome} {v.path}" for v in verdicts
                        if v.outcome != "ok" and len(problems) < NAMED)
        if sink is not None:
            sink(verdicts)
        else:
            report.files.extend(verdicts)

    remaining = limit
    with gc_paused():
        while remaining > 0 and not (stop is not None and stop.is_set()):
            # Each page's checks are written before the next is asked for: it starts past them.
            records = catalog.store.oldest_checks(catalog.settings.archive_system, before,
                                                  min(PAGE, remaining))
            if not records:
                break
            verify_records(catalog, records, progress, report, keep)
            remaining -= len(records)
    run = FixityRun(format_date(started), format_date(utc_now()), trigger,
                    int(older_than.total_seconds()), limit, report, problems)
    catalog.store.append_fixity_run(run.to_dict())
    return run


class FixitySchedule:
    """``verify_oldest`` on ``batch`` files every ``interval`` in a thread of its own, until
    ``stop``: it waits on an event (no sleeping loop), and a stop ends it after the page in
    hand."""

    def __init__(self, catalog: Catalog, interval: timedelta, batch: int) -> None:
        if interval <= timedelta(0):
            raise InvalidInput("a fixity schedule needs an interval above 0")
        self.catalog, self.interval, self.batch = catalog, interval, batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0  # finished, failed ones included

    @classmethod
    def from_settings(cls, catalog: Catalog) -> FixitySchedule | None:
        """The schedule the settings ask for (``fixity_interval``), or None (``0``)."""
        interval = parse_duration(catalog.settings.fixity_interval)
        if interval == timedelta(0):
            return None
        return cls(catalog, interval, catalog.settings.fixity_batch)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="fixity-schedule", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval.total_seconds()):
            self.run_once()

    def run_once(self) -> FixityRun | None:
        """One scheduled run; a failure is logged (the schedule goes on), not raised."""
        try:
            run = verify_oldest(self.catalog, timedelta(0), self.batch, trigger="schedule",
                                stop=self._stop)
        except Exception:
            log.exception("scheduled fixity run failed")
            return None
        finally:
            self.runs += 1
        counts = run.to_dict()["counts"]
        log.info("scheduled fixity: %s", ", ".join(f"{n} {k}" for k, n in counts.items()))
        return run

    def stop(self, timeout: float = 60.0) -> None:
        """Ask the loop to end and wait for it (at most ``timeout`` seconds)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
