"""The README's `make run` recipe works on a fresh directory, run exactly as the Makefile says."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def recipe(target: str, **variables: str) -> list[str]:
    """The shell lines of a Makefile target, with $(BIN) pointing at this interpreter's bin."""
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    match = re.search(rf"^{target}:[^\n]*\n((?:\t[^\n]*\n)+)", text, re.MULTILINE)
    assert match, f"Makefile has no {target} target"
    variables["BIN"] = str(Path(sys.executable).parent)
    lines = []
    for line in match.group(1).splitlines():
        for name, value in variables.items():
            line = line.replace(f"$({name})", value)
        assert "$(" not in line, f"unsubstituted variable in {line!r}"
        lines.append(line.strip())
    return lines


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(url: str, token: str | None = None, body: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.slow
def test_make_run_recipe_serves_the_catalog(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
    port = free_port()
    init, serve = recipe("run", HOST="127.0.0.1", PORT=str(port))
    done = subprocess.run(init, shell=True, cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / ".catalog" / "secret.json").stat().st_mode & 0o077 == 0
    server = subprocess.Popen(serve.split(), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                assert get(f"{base}/health") == (200, {"status": "ok", "store": "sqlite"})
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.1)
        admin = subprocess.run([str(Path(sys.executable).parent / "catalog"), "token", "admin"],
                               cwd=tmp_path, env=env, capture_output=True, text=True).stdout
        status, pipeline = get(f"{base}/pipelines", admin.strip(), b'{"name": "readme"}')
        assert status == 201 and pipeline["name"] == "readme"
        status, job = get(f"{base}/jobs", admin.strip(), b'{"pipeline": "readme"}')
        assert status == 201 and job["webhook"].startswith(f"{base}/jobs/{job['uuid']}/events")
        assert get(job["webhook"], body=b'{"name": "run"}')[1]["state"] == "RUNNING"
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}" in output and "catalog token admin" in output
    assert job["token"] not in output  # tokens never reach the log
    assert (tmp_path / "catalog.db").is_file()


def test_demo_runs_and_is_repeatable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
    command = str(Path(sys.executable).parent / "catalog")
    subprocess.run([command, "init"], cwd=tmp_path, env=env, check=True, capture_output=True)
    results = []
    for _ in range(2):
        done = subprocess.run([command, "--json", "demo"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        results.append({s["step"]: s["result"] for s in json.loads(done.stdout)["steps"]})
    assert "created" in results[0]["job"]
    assert "existing job returned unchanged" in results[1]["job"]
    assert results[1]["history"] == ["create->CREATED", "run->RUNNING", "update->RUNNING",
                                     "finish->FINISHED"]
