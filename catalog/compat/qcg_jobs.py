"""QCG-PilotJob's job descriptions in, and its time formats out (``catalog.compat.qcg``).

A description in QCG's standard form (``name``, ``execution``: exec/args/env/wd/stdout/stderr
or script, ``resources``: numCores, ``dependencies``: after, ``iteration``: start/stop or
values, with ``${it}`` and ``${itval}``) becomes the data of one catalog job, or of one per
iteration. Everything is checked here, before anything is stored: what is not understood is
refused, never ignored.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

# Job description keys understood, by element; anything else is refused, never ignored.
JOB_KEYS = frozenset({"name", "execution", "resources", "dependencies", "iteration"})
EXECUTION_KEYS = frozenset({"exec", "script", "args", "env", "wd", "stdout", "stderr"})
RESOURCE_KEYS = frozenset({"numCores", "numNodes", "wt"})
BAD_NAME = re.compile(r"[$,{}()'\"\s:]")  # QCG's refused characters, and ':' (iterations)
MAX_ITERATIONS = 64 * 1024  # the client's own bound
# A wall time (resources.wt) becomes the job's timeout: "90s", "10m", "2h", "1d", "H:MM:SS".
WALL_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
WALL_TIME = re.compile(r"^(?:(?P<n>\d+)(?P<unit>[smhd])|(?:(?P<h>\d+):)?(?P<m>\d+):(?P<s>\d+))$")


def cores_tag(cores: int) -> str:
    """The tag a job asking for ``cores`` cores carries: a worker with n cores free withdraws
    only jobs tagged for 1 to n, so a job never runs before its cores are free."""
    return f"qcg-cores-{cores}"


class QcgError(Exception):
    """A request refused: answered ``{"code": 1, "message": ...}``, nothing changed."""


@dataclass
class Planned:
    name: str
    iteration: int | None
    data: dict[str, Any]
    after: list[str]
    cores: int
    timeout: int | None = None  # seconds, from resources.wt


def working_directory(qcg: dict[str, Any]) -> Path:
    """A job's ``wd``; as QCG's, relative to the manager's (``catalog serve``'s) own."""
    return Path.cwd() / str(qcg["wd"]) if qcg.get("wd") else Path.cwd()


def qcg_date(text: str) -> str:
    """The catalog's ``2026-11-21T12:00:00.123Z`` as QCG writes it: ``str(datetime)``."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def run_time(start: str | None, stop: str | None) -> str | None:
    """Run time as QCG writes it (``H:MM:SS.ffffff``, what its JobInfo parses)."""
    if not start or not stop:
        return None
    delta = datetime.fromisoformat(stop.replace("Z", "+00:00")) - \
        datetime.fromisoformat(start.replace("Z", "+00:00"))
    micros = max(0, int(delta.total_seconds() * 1_000_000))
    seconds, micro = divmod(micros, 1_000_000)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}.{micro:06d}"


def plan(job: Any, total_cores: int) -> list[Planned]:
    """A QCG job description as the catalog jobs it becomes (one per iteration); QcgError
    naming what is wrong, before anything is stored."""
    if not isinstance(job, dict):
        raise QcgError("Invalid request: Wrong submit request - wrong job data")
    name = job.get("name")
    if not isinstance(name, str) or not name:
        raise QcgError("Invalid request: Missing name in job description")
    if BAD_NAME.search(name) or len(name) > 200:
        raise QcgError(f"Job identifier '({name})' contains invalid characters")
    unknown = set(job) - JOB_KEYS
    if unknown:
        raise QcgError(f"Wrong submit request: job {name}: unknown {sorted(unknown)}")
    iteration = job.get("iteration")
    if iteration is None:
        return [_one(total_cores, name, job, None)]
    start, values = _iterations(iteration)
    template = string.Template(json.dumps({k: v for k, v in job.items() if k != "name"}))
    planned = []
    for offset, value in enumerate(values):
        index = start + offset
        # Substituted into JSON text: each value escaped as a JSON string's inside.
        names = {"it": index, "itval": json.dumps(str(value))[1:-1],
                 "jname": json.dumps(f"{name}:{index}")[1:-1]}
        planned.append(_one(total_cores, name, json.loads(template.safe_substitute(names)),
                            index))
    return planned


def _iterations(iteration: Any) -> tuple[int, list[Any]]:
    """The first index and each iteration's value (``${itval}``) of an ``iteration``
    directive: ``{"start": i, "stop": j}`` (the values are the indexes) or ``{"values":
    [...]}`` (indexes from 0, as QCG numbers them)."""
    if isinstance(iteration, dict) and "values" in iteration:
        values = iteration["values"]
        if set(iteration) != {"values"} or not isinstance(values, list) or \
                not all(isinstance(v, str | int | float) and not isinstance(v, bool)
                        for v in values):
            raise QcgError("Invalid request: Wrong format of iteration directive: "
                           "{'values': [strings]}, without start or stop")
        if not 0 < len(values) <= MAX_ITERATIONS:
            raise QcgError("Invalid request: Wrong format of iteration directive: 1 to "
                           f"{MAX_ITERATIONS} values")
        return 0, values
    if not isinstance(iteration, dict) or set(iteration) - {"start", "stop"} or \
            not isinstance(iteration.get("stop"), int) or \
            not isinstance(iteration.get("start", 0), int):
        raise QcgError("Invalid request: Wrong format of iteration directive: "
                       "{'start': int, 'stop': int} or {'values': [strings]}")
    start, stop = int(iteration.get("start", 0)), int(iteration["stop"])
    if not 0 < stop - start <= MAX_ITERATIONS:
        raise QcgError("Invalid request: Wrong format of iteration directive: start index "
                       f"larger then stop one, or more than {MAX_ITERATIONS} iterations")
    return start, [str(index) for index in range(start, stop)]


def _one(total_cores: int, name: str, job: dict[str, Any], iteration: int | None) -> Planned:
    where = name if iteration is None else f"{name}:{iteration}"
    execution = job.get("execution")
    if not isinstance(execution, dict):
        raise QcgError("Invalid request: Missing execution element in job description")
    unknown = set(execution) - EXECUTION_KEYS
    if unknown:
        raise QcgError(f"Wrong submit request: job {where}: execution keys {sorted(unknown)}"
                       " are not supported")
    if ("exec" in execution) == ("script" in execution):
        raise QcgError(f"Wrong submit request: job {where}: one of exec or script")
    args = execution.get("args", [])
    args = [args] if isinstance(args, str) else args
    if "exec" in execution:
        if not isinstance(execution["exec"], str) or not execution["exec"] or \
                not isinstance(args, list) or not all(isinstance(a, str | int | float)
                                                     for a in args):
            raise QcgError(f"Wrong submit request: job {where}: exec is a string, args "
                           "a list of strings")
        command = [execution["exec"], *[str(a) for a in args]]
    else:
        if not isinstance(execution["script"], str):
            raise QcgError(f"Wrong submit request: job {where}: script is a string")
        command = ["/bin/bash", "-c", execution["script"]]
    env = execution.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                            for k, v in env.items()):
        raise QcgError(f"Wrong submit request: job {where}: env maps names to strings")
    for key in ("wd", "stdout", "stderr"):
        if key in execution and (not isinstance(execution[key], str) or
                                 not execution[key]):
            raise QcgError(f"Wrong submit request: job {where}: {key} is a path")
    cores = _cores(where, job.get("resources"), total_cores)
    dependencies = job.get("dependencies") or {}
    after = dependencies.get("after", []) if isinstance(dependencies, dict) else None
    after = [after] if isinstance(after, str) else after
    if not isinstance(after, list) or not all(isinstance(a, str) for a in after) or \
            set(dependencies) - {"after"}:
        raise QcgError(f"Wrong submit request: job {where}: dependencies are "
                       "{'after': [names]}")
    data = {"command": command, "qcg": {
        "name": name, "iteration": iteration, "env": env, "cores": cores,
        **{key: execution[key] for key in ("wd", "stdout", "stderr") if key in execution}}}
    return Planned(name, iteration, data, list(after), cores,
                   wall_time(where, (job.get("resources") or {}).get("wt")))


def wall_time(where: str, text: Any) -> int | None:
    """``resources.wt`` in seconds (None when not given)."""
    if text is None:
        return None
    match = WALL_TIME.match(text) if isinstance(text, str) else None
    if match is None:
        raise QcgError(f"Wrong submit request: job {where}: wt {text!r} is not a wall time "
                       "(90s, 10m, 2h, 1d or H:MM:SS)")
    if match["n"] is not None:
        seconds = int(match["n"]) * WALL_TIME_UNITS[match["unit"]]
    else:
        seconds = int(match["h"] or 0) * 3600 + int(match["m"]) * 60 + int(match["s"])
    if seconds < 1:
        raise QcgError(f"Wrong submit request: job {where}: wt {text!r} is no time at all")
    return seconds

def _cores(where: str, resources: Any, total_cores: int) -> int:
    if resources is None:
        return 1
    if not isinstance(resources, dict) or set(resources) - RESOURCE_KEYS:
        raise QcgError(f"Wrong submit request: job {where}: resources are "
                       f"{sorted(RESOURCE_KEYS)}")
    nodes = resources.get("numNodes")
    if nodes not in (None, 1, {"exact": 1}):
        raise QcgError(f"Not enough resources for job {where}: one node here")
    spec = resources.get("numCores", 1)
    if isinstance(spec, dict):
        spec = spec.get("exact", spec.get("min", 1))
    if isinstance(spec, bool) or not isinstance(spec, int) or spec < 1:
        raise QcgError(f"Wrong submit request: job {where}: numCores is a positive number")
    if spec > total_cores:
        raise QcgError(f"Not enough resources for job {where}: {spec} cores wanted, "
                       f"{total_cores} here")
    return spec
