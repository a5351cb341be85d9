"""The webhook benchmark's baseline: one no-op FastAPI POST route, served like ``catalog serve``.

Usage: ``python bench/noop_app.py --host 127.0.0.1 --port 8001``. The uvicorn settings are the
ones ``catalog.web.server.serve`` uses (one worker, no access log, same log level), so the
difference between the two servers is the catalog's own work.
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from fastapi import FastAPI, Request

app = FastAPI(title="noop")


@app.post("/events")
async def event(request: Request) -> dict[str, Any]:
    body = await request.json()
    return {"ok": True, "name": body.get("name"), "event_id": body.get("event_id")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    config = uvicorn.Config(app, host=args.host, port=args.port, access_log=False,
                            log_level=args.log_level, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
