"""A real moto S3 server in a subprocess, spoken to by boto3 over real HTTP.

Reusable by any test module::

    from s3server import start_moto_server, stop_moto_server

    endpoint_url, process = start_moto_server(log_path)
    ...
    stop_moto_server(process)

moto keeps everything in memory, so each test should use its own bucket (``create_bucket``)
and empty it afterwards (``delete_bucket``).
"""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 10
START_ATTEMPTS = 3  # a free port can be taken between probing it and moto binding it

CREDENTIALS = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
    "region_name": "us-east-1",
}
CREDENTIAL_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def moto_server_command() -> str:
    """The ``moto_server`` console script of this interpreter's environment."""
    beside = Path(sys.executable).parent / "moto_server"
    if beside.exists():
        return str(beside)
    found = shutil.which("moto_server")
    if found is None:
        raise RuntimeError("moto_server is not installed (pip install 'moto[server]')")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(port: int) -> bool:
    """Whether an HTTP server answers on ``port`` (any status will do)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", "/")
        connection.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        connection.close()


def _output(log_path: Path | None) -> str:
    if log_path is None or not log_path.exists():
        return "(no log)"
    return log_path.read_text(encoding="utf-8", errors="replace")[-4000:]


def start_moto_server(log_path: Path | None = None) -> tuple[str, subprocess.Popen[bytes]]:
    """Start ``moto_server`` on 127.0.0.1 and a free port; return its URL once it answers.

    Its output goes to ``log_path`` (discarded without one). Stop it with ``stop_moto_server``.
    """
    command = moto_server_command()
    failures = []
    for _ in range(START_ATTEMPTS):
        port = free_port()
        if log_path is None:
            process = subprocess.Popen([command, "-H", "127.0.0.1", "-p", str(port)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            with log_path.open("ab") as log:
                process = subprocess.Popen([command, "-H", "127.0.0.1", "-p", str(port)],
                                           stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            if _answers(port):
                return f"http://127.0.0.1:{port}", process
            time.sleep(0.05)
        code = stop_moto_server(process)
        failures.append(f"port {port}: exit status {code}")
    raise RuntimeError(f"moto_server did not come up ({'; '.join(failures)}):\n"
                       f"{_output(log_path)}")


def stop_moto_server(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then SIGKILL after a timeout; the exit status once the process has exited."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)
    code = process.poll()
    assert code is not None, f"moto_server (pid {process.pid}) is still running"
    return code


def s3_client(endpoint_url: str) -> Any:
    """A boto3 S3 client for the server at ``endpoint_url`` (close it)."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url, **CREDENTIALS)


def create_bucket(client: Any) -> str:
    """A new, empty bucket with a unique name."""
    name = f"test-{uuid.uuid4().hex[:20]}"
    client.create_bucket(Bucket=name)
    return name


def delete_bucket(client: Any, bucket: str) -> None:
    """Delete every object in ``bucket``, then the bucket."""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if objects:
            client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
    client.delete_bucket(Bucket=bucket)
