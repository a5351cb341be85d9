"""QCG-PilotJob's wire: JSON requests on a ZeroMQ socket, status events on PUB sockets.

The client's REQ socket talks to a ROUTER here, so that each connection (each ``Manager``) is
a session of its own: its names, and its own PUB socket (the address its ``status`` request
is answered with), so that one client's ``wait4_any_job_finish`` never sees another's jobs.
One thread owns every ZeroMQ socket; a second follows the jobs' ends through the queue's
waits (woken by the event that ends a job) and hands the events over an inproc socket.

The protocol carries no credentials: the address must be on the loopback interface unless
the operator allows another explicitly (``--qcg-allow-remote``).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import threading
import time
from typing import Any

import zmq

from catalog.catalog import Catalog
from catalog.compat.qcg import PIPELINE, QcgService, Session
from catalog.compat.qcg_pool import QcgPool
from catalog.errors import CatalogError, ConfigurationError
from catalog.queue.waits import MAX_JOBS, wait

POLL_MS = 1000  # bound on the wire thread's wait for a request or an event
MAX_SESSIONS = 256
IDLE_SESSION_S = 3600.0  # a session silent this long may be forgotten to make room
MAX_CORES = 1024  # one worker thread each
READS_PER_S = 20_000  # bound on the job reads the event follower makes
MAX_ROUND_GAP_S = 5.0
MAX_REQUEST_BYTES = 64 * 1024 * 1024
ADDRESS = re.compile(r"^tcp://(?P<host>\[[^\]]+\]|[^:/\[\]]+):(?P<port>\d{1,5}|\*)$")
_log = logging.getLogger(__name__)


def check_address(address: str, allow_remote: bool = False) -> tuple[str, str]:
    """``tcp://HOST:PORT`` (port 0 or ``*``: any free one) as (host, port to bind); a host
    off the loopback interface is refused unless ``allow_remote``."""
    match = ADDRESS.match(address)
    if match is None:
        raise ConfigurationError(f"--qcg-address {address!r} is not tcp://HOST:PORT")
    host, port = match["host"], match["port"]
    port = "*" if port in ("*", "0") else port
    if port != "*" and not 0 < int(port) < 65536:
        raise ConfigurationError(f"--qcg-address {address!r}: no such port")
    bare = host.strip("[]")
    try:
        loopback = bare == "localhost" or ipaddress.ip_address(bare).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not allow_remote:
        raise ConfigurationError(
            f"--qcg-address {address!r} is not on the loopback interface: QCG-PilotJob's "
            "protocol carries no credentials, so anyone who reaches it can run commands as "
            "this user; say --qcg-allow-remote to bind it anyway")
    return host, port


class QcgServer:
    """The QCG surface of ``catalog serve``: the wire thread, the publisher, the workers."""

    def __init__(self, catalog: Catalog, address: str, cores: int,
                 allow_remote: bool = False) -> None:
        if not 1 <= cores <= MAX_CORES:
            raise ConfigurationError(f"--qcg-cores is 1 to {MAX_CORES}, not {cores}")
        self.host, self.port = check_address(address, allow_remote)
        self.catalog = catalog
        self.pool = QcgPool(catalog, cores, PIPELINE)
        self.service = QcgService(catalog, cores, self.pool.busy)
        self.context = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        try:
            self.router.bind(f"tcp://{self.host}:{self.port}")
        except zmq.ZMQError as exc:
            self.router.close()
            self.context.term()
            raise ConfigurationError(f"cannot bind the QCG surface to {address}: {exc}") from None
        self.address = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.stop_event = threading.Event()
        self.publishers: dict[str, zmq.Socket[bytes]] = {}
        inbox = f"inproc://catalog-qcg-{id(self)}"
        self.inbox = self.context.socket(zmq.PULL)
        self.inbox.bind(inbox)
        self.outbox = self.context.socket(zmq.PUSH)  # the follower thread's only socket
        self.outbox.connect(inbox)
        self.threads = [threading.Thread(target=self._serve, name="catalog-qcg-wire",
                                         daemon=True),
                        threading.Thread(target=self._follow, name="catalog-qcg-events",
                                         daemon=True)]

    def start(self) -> QcgServer:
        self.pool.start()
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.service.submitted.set()
        for thread in self.threads:
            thread.join(timeout=10)
        self.pool.stop()
        for socket in [self.router, self.inbox, self.outbox, *self.publishers.values()]:
            socket.close(linger=0)
        self.context.term()

    # the wire thread ---------------------------------------------------------------------------
    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.inbox, zmq.POLLIN)
        while not self.stop_event.is_set():
            ready = dict(poller.poll(POLL_MS))
            if self.inbox in ready:
                self._publish(self.inbox.recv_json())
            if self.router in ready:
                frames = self.router.recv_multipart()
                if len(frames) < 3:
                    continue  # not a REQ socket's envelope: nothing to answer to
                identity, body = frames[0], frames[-1]
                try:
                    reply = self._request(identity.hex(), body)
                except Exception:  # one request must not take the surface down
                    _log.exception("QCG request failed")
                    reply = {"code": 1, "message": "Failed to process request"}
                self.router.send_multipart([identity, b"", json.dumps(reply).encode()])

    def _request(self, ident: str, body: bytes) -> dict[str, Any]:
        with self.service.lock:
            if ident not in self.service.sessions and \
                    len(self.service.sessions) >= MAX_SESSIONS:
                self._forget_sessions()
                if len(self.service.sessions) >= MAX_SESSIONS:
                    return {"code": 1, "message": f"more than {MAX_SESSIONS} sessions: "
                            "finish one first"}
            session = self.service.session(ident)
            session.seen = time.monotonic()
            if session.publisher is None and not session.ended and _asks_status(body):
                session.publisher = self._publisher(session)
            reply = self.service.handle(session, body)
            self.pool.wake.set()  # a submit, or a cancel that freed a core: look again
            if session.ended and ident in self.publishers:
                self.publishers.pop(ident).close(linger=0)
            return reply

    def _forget_sessions(self) -> None:
        """Make room: forget the finished sessions, and those idle for ``IDLE_SESSION_S``
        (a client that went away without ``finish``); their jobs stay in the catalog."""
        idle = time.monotonic() - IDLE_SESSION_S
        for ident in [i for i, s in self.service.sessions.items() if s.ended or s.seen < idle]:
            del self.service.sessions[ident]
            socket = self.publishers.pop(ident, None)
            if socket is not None:
                socket.close(linger=0)

    def _publisher(self, session: Session) -> str:
        socket = self.context.socket(zmq.PUB)
        socket.setsockopt(zmq.LINGER, 0)
        socket.bind(f"tcp://{self.host}:*")
        self.publishers[session.ident] = socket
        return str(socket.getsockopt_string(zmq.LAST_ENDPOINT))

    def _publish(self, event: Any) -> None:
        socket = self.publishers.get(str(event.get("session")))
        if socket is not None:
            socket.send_string(f"{event['topic']} {json.dumps(event['data'])}")

    # the follower thread -----------------------------------------------------------------------
    def _follow(self) -> None:
        """Publish the ends of the sessions' jobs, woken by the event that ends one."""
        while not self.stop_event.is_set():
            try:
                self._follow_once()
            except Exception:  # a lost round delays events by POLL_MS, never stops them
                _log.exception("QCG events")
                self.stop_event.wait(POLL_MS / 1000)

    def _follow_once(self) -> None:
        """One round: wait for an end (or a submit), publish what ended."""
        pending = self.service.pending()
        if not pending:
            self.service.submitted.wait(POLL_MS / 1000)
            self.service.submitted.clear()
        else:
            try:
                wait(self.catalog, pending[:MAX_JOBS], any_=True, timeout=POLL_MS / 1000)
            except CatalogError as exc:
                _log.warning("QCG events: %s", exc.message)
                self.stop_event.wait(POLL_MS / 1000)
        events = self.service.ended_events()
        for session, topic, data in events:
            self.outbox.send_json({"session": session, "topic": topic, "data": data})
        if events:
            self.pool.wake.set()
        # A round reads every job not yet ended: with many, rounds are spaced so that the
        # reads stay near READS_PER_S however often jobs end (QCG's own clients poll every 5 s).
        self.stop_event.wait(min(MAX_ROUND_GAP_S, len(pending) / READS_PER_S))


def _asks_status(body: bytes) -> bool:
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(request, dict) and request.get("request") == "status"
