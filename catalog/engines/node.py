"""The node side of a Slurm job (DESIGN §12): run the job's work and report to the catalog
through the job's webhook, as every external system does.

Run by the batch script, by its path and importing nothing but the standard library (it starts
in the time Python takes)::

    python .../catalog/engines/node.py --stdout FILE [--result FILE] -- ARGV...

It sends an ``update`` event when the work starts (the node and the Slurm job id) and one when
it ends (its exit code or signal, and its results: the function's report, or a command's last
line of output read as a literal), then exits as the work did (killed by the same signal).

Where to report is ``CATALOG_REPORT_URL`` (the job's ``/jobs/{uuid}/events`` URL) and the
token is ``CATALOG_JOB_TOKEN``, both only in the environment sbatch exports: never on a
command line (``ps``, ``scontrol show job``) nor in a file. Without them nothing is reported.

Reports are ``update`` events, never ``finish`` or ``fail``: the job ends once, through the
dispatcher's report to the queue (which archives, indexes and counts the attempt), and the
dispatcher follows Slurm whether or not the node could report. Each report is sent once, with
an ``event_id`` (a resend is a duplicate): a catalog that cannot be reached, or that refuses a
report arriving after the job ended (409, kept in its audit log), costs one line on stderr.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import socket
import subprocess
import sys
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

REPORT_TIMEOUT_S = 5.0
_LAST_LINE_BYTES = 64 * 1024


def report(url: str, token: str, event_id: str, data: dict[str, Any]) -> str | None:
    """Send one ``update`` event; None when accepted, else why not (never raises)."""
    body = json.dumps({"name": "update", "event_id": event_id, "data": data}).encode()
    request = Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urlopen(request, timeout=REPORT_TIMEOUT_S) as response:  # noqa: S310 (http(s))
            response.read()
        return None
    except HTTPError as exc:
        try:
            error = json.loads(exc.read())["error"]
            return f"HTTP {exc.code} {error['code']}: {error['message']}"
        except (ValueError, KeyError, TypeError):
            return f"HTTP {exc.code}"
    except (URLError, OSError, ValueError) as exc:
        return f"cannot reach the catalog: {getattr(exc, 'reason', None) or exc}"


def outcome(code: int, stdout: str, result_file: str | None) -> dict[str, Any]:
    """What the work left: its exit code (or signal) and results."""
    found: dict[str, Any] = {"signal": -code} if code < 0 else {"exit_code": code}
    if result_file is not None:
        try:
            with open(result_file, encoding="utf-8") as handle:
                document = json.load(handle)
        except (OSError, ValueError):
            found["error"] = "the function left no result"
            return found
        if isinstance(document, dict) and "error" in document:
            found["error"] = str(document["error"])[:2000]
        elif isinstance(document, dict):
            found["results"] = document.get("results", {})
        return found
    if code == 0:
        results = _last_line_results(stdout)
        if results is not None:
            found["results"] = results
    return found


def _last_line_results(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - _LAST_LINE_BYTES))
            lines = handle.read().decode("utf-8", "replace").strip().splitlines()
        value = ast.literal_eval(lines[-1].strip()) if lines else None
    except (OSError, ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if isinstance(value, tuple | list) and len(value) == 3:
        value = value[0]
    if not isinstance(value, dict):
        return None
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return value


def main(argv: list[str]) -> int:
    if "--" not in argv:
        sys.stderr.write("usage: node.py --stdout FILE [--result FILE] -- ARGV...\n")
        return 2
    split = argv.index("--")
    options, work = argv[:split], argv[split + 1:]
    named = dict(zip(options[::2], options[1::2], strict=False))
    url = os.environ.get("CATALOG_REPORT_URL", "")
    token = os.environ.pop("CATALOG_JOB_TOKEN", "")
    native_id = os.environ.get("SLURM_JOB_ID", "")
    where = {"node": os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
             "native_id": native_id}

    def send(stage: str, data: dict[str, Any]) -> None:
        if url and token:
            refused = report(url, token, f"slurm-{native_id}-{stage}",
                             {**where, "stage": stage, **data})
            if refused is not None:
                sys.stderr.write(f"catalog node: the {stage} report was not recorded: "
                                 f"{refused}\n")
                sys.stderr.flush()

    send("started", {})
    # The work gets the token too (it may send its own events), in its environment only.
    env = {**os.environ, **({"CATALOG_JOB_TOKEN": token} if token else {})}
    try:
        code = subprocess.call(work, env=env)
    except OSError as exc:
        sys.stderr.write(f"{work[0] if work else '(nothing)'}: {exc.strerror or exc}\n")
        code = 127
    send("ended", outcome(code, named.get("--stdout", ""), named.get("--result")))
    if code < 0:  # die as the work did, so that Slurm sees the same signal
        sys.stdout.flush()
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]
    sys.exit(main(sys.argv[1:]))
