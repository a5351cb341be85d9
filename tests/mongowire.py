"""A MongoDB-wire server (SecantusDB) in a subprocess, spoken to by pymongo over real TCP.

No real ``mongod`` can be installed here, and mongomock runs in-process, without the wire,
bulk writes of current drivers, transactions or change streams (DESIGN §15). SecantusDB speaks
the wire protocol and advertises itself as a one-member replica set, so the driver uses
sessions and transactions as it would on a replica set. Reusable by any test module::

    from mongowire import start_wire_server, stop_wire_server

    uri, process = start_wire_server(data_dir, log_path)
    ...
    stop_wire_server(process)

Every test should use a database of its own (``conftest.wire_database_url``) and drop it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pymongo
from pymongo.errors import PyMongoError
from s3server import free_port

START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 15
START_ATTEMPTS = 3  # a free port can be taken between probing it and the server binding it


def wire_server_command() -> str:
    """The ``secantusd-py`` console script of this interpreter's environment."""
    beside = Path(sys.executable).parent / "secantusd-py"
    if beside.exists():
        return str(beside)
    found = shutil.which("secantusd-py")
    if found is None:
        raise RuntimeError("secantusd-py is not installed (pip install secantusdb)")
    return found


def _answers(uri: str) -> bool:
    """Whether the server at ``uri`` answers a ping."""
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        uri, serverSelectionTimeoutMS=500, connectTimeoutMS=500)
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


def start_wire_server(data_dir: Path, log_path: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """Start the server on 127.0.0.1, a free port and ``data_dir``; its URI once it answers.

    Its output goes to ``log_path``. Stop it with ``stop_wire_server``.
    """
    command = wire_server_command()
    failures = []
    for attempt in range(START_ATTEMPTS):
        port = free_port()
        storage = data_dir / f"data-{attempt}"
        # --config with an empty file: no secantusd.toml of the working directory or the home
        # directory is read (auto-discovery is off when a file is given).
        config = data_dir / "secantusd.toml"
        config.touch()
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [command, "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                 "--storage-path", str(storage), "--log-level", "WARNING",
                 "--cache-size", "256M"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        uri = f"mongodb://127.0.0.1:{port}/"
        deadline = time.monotonic() + START_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            if _answers(uri):
                return uri, process
            time.sleep(0.1)
        code = stop_wire_server(process)
        failures.append(f"port {port}: exit status {code}")
    log = log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
    raise RuntimeError(f"the MongoDB-wire server did not come up ({'; '.join(failures)}):\n{log}")


def stop_wire_server(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then SIGKILL after a timeout; the exit status once the process has exited."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)
    code = process.poll()
    assert code is not None, f"the wire server (pid {process.pid}) is still running"
    return code
