"""A one-node Slurm cluster for the tests: slurm.conf and a munge key written into a temporary
directory, ``munged``, ``slurmctld`` and ``slurmd`` started without systemd, bound to 127.0.0.1
on free ports, ready once the node is idle, stopped by their PIDs.

Clients find it through ``SLURM_CONF`` (set in the environment given back). Run by hand:
``python tests/slurmcluster.py DIR`` starts one and prints the ``export SLURM_CONF=...`` line;
Ctrl-C stops it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel")
NODE = "localhost"
PARTITION = "debug"
NODE_CPUS = 2
NODE_MEMORY_MB = 2048
PARTITION_MAX_TIME = "01:30:00"
_SBIN = ("/usr/sbin", "/sbin", "/usr/bin")


def missing_binaries() -> list[str]:
    """The daemons and clients this machine lacks (empty: a cluster can be started)."""
    found = {name: shutil.which(name) or next(
        (f"{d}/{name}" for d in _SBIN if os.access(f"{d}/{name}", os.X_OK)), None)
        for name in (*DAEMONS, *CLIENTS)}
    return [name for name, path in found.items() if path is None]


def why_not() -> str | None:
    """Why no cluster can be started here, or None."""
    missing = missing_binaries()
    if missing:
        return (f"Slurm/munge are not installed ({', '.join(missing)} missing): "
                "`make slurm` installs them as root on Debian")
    if os.geteuid() != 0:
        return "the one-node Slurm cluster runs its daemons as root; these tests run as " \
               f"uid {os.geteuid()}"
    return None


def _binary(name: str) -> str:
    path = shutil.which(name) or next(
        (f"{d}/{name}" for d in _SBIN if os.access(f"{d}/{name}", os.X_OK)), None)
    if path is None:
        raise FileNotFoundError(name)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    home: Path
    conf: Path
    jobcomp: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def stop(self) -> None:
        """Stop every daemon by its PID (slurmd, slurmctld, then munged)."""
        for name in reversed(DAEMONS):
            pid = self.pids.get(name)
            if pid is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def memory_cgroup() -> bool:
    """Whether slurmd can confine jobs' memory with cgroup v1 here (the memory controller
    mounted and writable): then memory limits end jobs as OUT_OF_MEMORY; otherwise
    jobacct_gather's OverMemoryKill ends them (FAILED, signal 9, with slurmstepd's message)."""
    memory = Path("/sys/fs/cgroup/memory")
    return (memory / "cgroup.procs").exists() and os.access(memory, os.W_OK) \
        and os.environ.get("CATALOG_TEST_SLURM_CGROUP", "1") != "0"


def _write_conf(home: Path) -> tuple[Path, Path]:
    for sub in ("state", "spool", "log", "munge", "run"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    jobcomp = home / "log" / "jobcomp.txt"
    conf = home / "slurm.conf"
    conf.write_text(f"""\
ClusterName=catalogtest
SlurmctldHost={NODE}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
AuthType=auth/munge
AuthInfo=socket={home}/munge/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={home}/state
SlurmdSpoolDir={home}/spool
SlurmctldPidFile={home}/run/slurmctld.pid
SlurmdPidFile={home}/run/slurmd.pid
SlurmctldLogFile={home}/log/slurmctld.log
SlurmdLogFile={home}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
{_confinement()}SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
DependencyParameters=kill_invalid_depend
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobCompType=jobcomp/filetxt
JobCompLoc={jobcomp}
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=1
AccountingStorageType=accounting_storage/none
EnforcePartLimits=ALL
DefMemPerCPU=64
MinJobAge=30
OverTimeLimit=0
KillWait=2
InactiveLimit=0
MessageTimeout=10
MaxJobCount=20000
FirstJobId={_first_job_id()}
NodeName={NODE} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory={NODE_MEMORY_MB} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime={PARTITION_MAX_TIME} State=UP \
OverSubscribe=FORCE:8
""", encoding="utf-8")
    (home / "cgroup.conf").write_text(
        "CgroupPlugin=cgroup/v1\nCgroupMountpoint=/sys/fs/cgroup\nConstrainCores=no\n"
        "ConstrainRAMSpace=yes\nConstrainSwapSpace=yes\nAllowedSwapSpace=0\n"
        if memory_cgroup() else "CgroupPlugin=autodetect\nConstrainRAMSpace=no\n",
        encoding="utf-8")
    return conf, jobcomp


def _first_job_id() -> int:
    """Where this cluster's job ids start: far from another cluster's on the machine (another
    test worker's, another checkout's). Job ids name the jobs' cgroups
    (``/sys/fs/cgroup/*/slurm/uid_0/job_N``), machine-wide: two clusters both counting from 1
    would put their jobs in each other's cgroups and kill them (signal 9 in place of TIMEOUT,
    jobs that never run)."""
    return 1 + 1000 * secrets.randbelow(60_000)  # below Slurm's MaxJobId (67,043,328)


def _confinement() -> str:
    if memory_cgroup():
        return "ProctrackType=proctrack/cgroup\nTaskPlugin=task/cgroup\n"
    return "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n" \
        "JobAcctGatherParams=OverMemoryKill\n"


def start(home: Path, timeout: float = 60.0) -> Cluster:
    """Start a cluster in ``home``; raise RuntimeError (with the daemons' logs) if its node is
    not idle within ``timeout`` s."""
    reason = why_not()
    if reason is not None:
        raise RuntimeError(reason)
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o755)
    conf, jobcomp = _write_conf(home)
    cluster = Cluster(home, conf, jobcomp)
    munge = home / "munge"
    munge.chmod(0o700)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    env = cluster.env
    try:
        munged = subprocess.Popen(
            [_binary("munged"), "--force", f"--socket={munge}/munge.socket",
             f"--key-file={key}", f"--pid-file={munge}/munged.pid",
             f"--log-file={home}/log/munged.log", f"--seed-file={munge}/munged.seed",
             "--foreground"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, env=env)
        cluster.processes.append(munged)
        cluster.pids["munged"] = munged.pid
        _wait_for(lambda: (munge / "munge.socket").exists(), 10, "munged's socket", cluster)
        for name, argv in (("slurmctld", [_binary("slurmctld"), "-D", "-i", "-f", str(conf)]),
                           ("slurmd", [_binary("slurmd"), "-D", "-N", NODE, "-f", str(conf)])):
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       env=env, start_new_session=True)
            cluster.processes.append(process)
            cluster.pids[name] = process.pid
        _wait_for(lambda: _node_idle(env), timeout, "the node to be idle", cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _node_idle(env: dict[str, str]) -> bool:
    answer = subprocess.run([_binary("sinfo"), "-h", "-n", NODE, "-o", "%T"], env=env,
                            capture_output=True, text=True, timeout=20, check=False)
    return answer.returncode == 0 and answer.stdout.strip().rstrip("*") in ("idle", "mixed")


def _wait_for(ready: object, timeout: float, what: str, cluster: Cluster) -> None:
    assert callable(ready)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in cluster.processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args[0]} exited with {process.returncode} "
                                   f"while waiting for {what}:\n{_logs(cluster.home)}")
        if ready():
            return
        time.sleep(0.2)
    raise RuntimeError(f"no {what} within {timeout} s:\n{_logs(cluster.home)}")


def _logs(home: Path) -> str:
    parts = []
    for log in sorted((home / "log").glob("*.log")):
        text = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        parts.append(f"--- {log.name}\n" + "\n".join(text))
    return "\n".join(parts)


if __name__ == "__main__":
    import sys

    started = start(Path(sys.argv[1]).resolve())
    print(f"export SLURM_CONF={started.conf}  # pids {started.pids}", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        started.stop()
