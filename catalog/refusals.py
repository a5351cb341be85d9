"""Refusals of requests without a valid token: counted, written in batches, rate-limited.

Anyone can send a request with no token, or a wrong one, for any job (even one that does not
exist). Written one by one, each such refusal cost an fsynced audit row, so a few anonymous
clients could slow every real sender and grow the audit log without bound. Here they are
counted in memory per (client address, source, code) and written as one audit entry per count
(job ``ANONYMOUS``) when ``refusal_flush_s`` has passed or ``refusal_max_keys`` counts are held
(past that, new addresses are counted together under ``OTHER_ADDRESS``): at most that many rows
per flush, whatever the flood. Counts not yet written are lost if the process dies.

An address earns refusals from a token bucket (``refusal_burst``, refilled at
``refusal_rate`` a second); once it is empty its further refusals are answered 429 with the
seconds until the bucket holds one again. Requests with a valid token are never limited, so a
sender behind the same address as an attacker keeps working. Refusals of authenticated senders
are not counted here: they stay in the audit log one by one, with their data; so do refusals
from the command line and the Python API, which have no remote address to slow down.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from catalog.config import Settings
from catalog.errors import CatalogError, RateLimited
from catalog.models import AuditEntry, utc_now

ANONYMOUS = "anonymous"  # the job_uuid of aggregated refusal counts in the audit log
OTHER_ADDRESS = "other"  # where addresses are counted once refusal_max_keys are held


@dataclass
class _Count:
    count: int
    first: str
    last: str


@dataclass
class _Bucket:
    tokens: float
    updated: float


class AnonymousRefusals:
    """Refusal counts awaiting their write, and each address's refusal budget (thread-safe)."""

    def __init__(self, flush_s: float, max_keys: int, rate: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.flush_s = flush_s
        self.max_keys = max_keys
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], _Count] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._flushed = clock()

    @classmethod
    def from_settings(cls, settings: Settings) -> AnonymousRefusals:
        return cls(settings.refusal_flush_s, settings.refusal_max_keys, settings.refusal_rate,
                   settings.refusal_burst)

    def refuse(self, address: str, source: str, error: CatalogError) -> CatalogError:
        """Count a refusal; the error to answer with (``RateLimited`` once over budget)."""
        now = self._clock()
        with self._lock:
            retry_after = self._spend(address, now)
            if retry_after is not None:
                error = RateLimited(retry_after)
            key = (address, source, error.code)
            if key not in self._counts and len(self._counts) >= self.max_keys:
                key = (OTHER_ADDRESS, source, error.code)
            stamp = utc_now().isoformat(timespec="milliseconds")
            found = self._counts.get(key)
            if found is None:
                self._counts[key] = _Count(1, stamp, stamp)
            else:
                found.count += 1
                found.last = stamp
        return error

    def _spend(self, address: str, now: float) -> int | None:
        """Take one refusal from the address's bucket; seconds to wait if it is empty."""
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._forget_buckets(now)
            bucket = self._buckets[address] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return None
        return max(1, math.ceil((1 - bucket.tokens) / self.rate))

    def _forget_buckets(self, now: float) -> None:
        """Drop buckets that have refilled (they hold nothing); then the oldest half."""
        full = [address for address, bucket in self._buckets.items()
                if bucket.tokens + (now - bucket.updated) * self.rate >= self.burst]
        for address in full:
            del self._buckets[address]
        if len(self._buckets) >= self.max_keys:
            for address in list(self._buckets)[: len(self._buckets) // 2 + 1]:
                del self._buckets[address]

    def due(self) -> bool:
        """Whether the counts should be written now (time passed, or the table is full)."""
        return bool(self._counts) and (self._clock() - self._flushed >= self.flush_s
                                       or len(self._counts) >= self.max_keys)

    def take(self) -> list[AuditEntry]:
        """The audit entries for every count held (one per key), the counts emptied."""
        with self._lock:
            counts, self._counts = self._counts, {}
            self._flushed = self._clock()
        return [
            AuditEntry(job_uuid=ANONYMOUS, name="refusals", date=utc_now(), source=source,
                       code=code, reason=f"{found.count} refused from {address} between "
                       f"{found.first} and {found.last}",
                       data={"address": address, "count": found.count, "first": found.first,
                             "last": found.last})
            for (address, source, code), found in counts.items()
        ]
