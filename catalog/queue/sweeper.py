"""The server's own sweep of expired leases, every ``sweep_interval`` seconds, so that a job
whose worker died is failed and queued again even when no worker is left to sweep."""

from __future__ import annotations

import logging
import threading

from catalog.catalog import Catalog
from catalog.errors import CatalogError
from catalog.queue.core import sweep

log = logging.getLogger("catalog.queue")


class Sweeper:
    """A thread that sweeps until ``stop()``; each wait is bounded, a signal ends it at once."""

    def __init__(self, catalog: Catalog, interval: float) -> None:
        self.catalog = catalog
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="catalog-sweeper", daemon=True)

    def start(self) -> Sweeper:
        if self.interval > 0:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                swept = sweep(self.catalog)
            except CatalogError as exc:  # the store is busy or away: the next round retries
                log.warning("sweep of expired leases failed: %s", exc.message)
                continue
            if swept["expired"]:
                log.info("swept %(expired)d expired leases: %(failed)d failed, %(retried)d "
                         "queued again", swept)
