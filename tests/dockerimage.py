"""A docker daemon of the tests' own and a tiny image, for the docker engine and Swarm tests.

``dockerd`` (Debian's ``docker.io``) is started on a unix socket in a temp directory, with no
iptables, no bridge and the ``vfs`` storage driver (no overlay mounts needed), and stopped by
its PID. The image is ``docker import`` of a root filesystem holding Debian's static busybox
(``busybox-static``): nothing is pulled. Where any of that cannot be had, ``docker_daemon``
skips with the reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

IMAGE = "catalog-test/busybox:1"
APPLETS = ("sh", "echo", "sleep", "cat", "env", "dd", "head", "true", "false")
START_TIMEOUT_S = 60.0


@dataclass
class DockerDaemon:
    host: str  # DOCKER_HOST for the client
    image: str
    pid: int


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "dockerd needs root and these tests do not run as root"
    for tool in ("dockerd", "docker", "containerd", "runc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: apt-get install docker.io)"
    if not Path("/bin/busybox").exists():
        return "/bin/busybox is missing (Debian: apt-get install busybox-static)"
    done = subprocess.run(["file", "-L", "/bin/busybox"], capture_output=True, text=True) \
        if shutil.which("file") else None
    if done is not None and "statically linked" not in done.stdout:
        return "/bin/busybox is not statically linked (Debian: busybox-static)"
    return None


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def _image(env: dict[str, str], directory: Path) -> None:
    root = directory / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "tmp").mkdir()
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    done = subprocess.run(["docker", "import", "-", IMAGE], stdin=tar.stdout, env=env,
                          capture_output=True, text=True, timeout=120)
    assert tar.stdout is not None
    tar.stdout.close()
    tar.wait()
    assert done.returncode == 0, f"docker import failed: {done.stderr}"


@pytest.fixture(scope="session")
def docker_daemon() -> Iterator[DockerDaemon]:
    """A running dockerd with ``IMAGE`` loaded; ``DOCKER_HOST`` points at it meanwhile."""
    why = _why_not()
    if why is not None:
        pytest.skip(f"docker cannot run here: {why}")
    directory = Path(tempfile.mkdtemp(prefix="swarm-dockerd-", dir="/tmp"))  # short: a socket
    host = f"unix://{directory}/docker.sock"
    log = (directory / "dockerd.log").open("wb")
    process = subprocess.Popen(
        ["dockerd", "--host", host, "--data-root", str(directory / "data"),
         "--exec-root", str(directory / "exec"), "--pidfile", str(directory / "docker.pid"),
         "--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=vfs"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    env = {**os.environ, "DOCKER_HOST": host}
    previous = os.environ.get("DOCKER_HOST")
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                tail = (directory / "dockerd.log").read_text(errors="replace")[-2000:]
                pytest.skip(f"docker cannot run here: dockerd exited with code "
                            f"{process.returncode}: {tail}")
            ready = subprocess.run(["docker", "version"], env=env, capture_output=True)
            if ready.returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.skip(f"docker cannot run here: dockerd did not answer in "
                            f"{START_TIMEOUT_S:g} s")
            time.sleep(0.2)
        _image(env, directory)
        os.environ["DOCKER_HOST"] = host
        yield DockerDaemon(host, IMAGE, process.pid)
    finally:
        if previous is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = previous
        if process.poll() is None:  # containers a failed test left behind
            left = subprocess.run(["docker", "ps", "-aq"], env=env, capture_output=True,
                                  text=True).stdout.split()
            if left:
                subprocess.run(["docker", "rm", "--force", *left], env=env, capture_output=True)
        _stop(process)
        log.close()
        shutil.rmtree(directory, ignore_errors=True)
