"""Run the service on uvicorn: an access log that never carries tokens, and connections
that cannot be held open (``catalog.web.timeouts``)."""

from __future__ import annotations

import logging

import uvicorn

from catalog.catalog import Catalog
from catalog.fixity_schedule import FixitySchedule
from catalog.queue.sweeper import Sweeper
from catalog.web.app import create_app
from catalog.web.timeouts import deadline_protocol


def serve(catalog: Catalog, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "info") -> None:
    """Serve until interrupted. uvicorn's own access log is off: it would log ``?token=``."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s "
                        "%(message)s")
    # Fields this format never shows, not gathered for every line (the logging HOWTO's
    # "Optimization" section: thread and process data, and where each call was made from).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
    settings = catalog.settings
    # Idle and slow connections are closed (catalog.web.timeouts): none can be held for ever.
    app = create_app(catalog)
    config = uvicorn.Config(app, host=host, port=port, access_log=False,
                            log_level=log_level, timeout_graceful_shutdown=5,
                            http=deadline_protocol(settings.http_request_timeout_s),
                            timeout_keep_alive=settings.http_timeout_keep_alive_s)
    sweeper = Sweeper(catalog, settings.sweep_interval).start()
    # Scheduled fixity (setting fixity_interval) in a thread of its own, stopped with the server.
    schedule = FixitySchedule.from_settings(catalog)
    if schedule is not None:
        schedule.start()
    try:
        uvicorn.Server(config).run()
    finally:
        app.state.swarm.close(timeout=10)  # Swarm containers in hand: stopped, their jobs failed
        if schedule is not None:
            schedule.stop()
        sweeper.stop()
