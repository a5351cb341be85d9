"""What a job asks of the machine that runs it: cores, memory and wall time.

A queue attribute (``Job.queue.resources``), like priority and timeout, never part of the job's
identity: two submissions that differ only in their resources are the same job. Given as
``--cores 2 --memory 2G --time 30m`` or ``{"cores": 2, "memory": "2G", "time": "30m"}``, kept
in one form: memory in MB, time in seconds.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from catalog.errors import InvalidInput

MAX_CORES = 4096
MAX_TIME_S = 30 * 24 * 3600  # a month: more than any partition here allows
_MEMORY_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"^([0-9]{1,12})([KMGT]?)B?$", re.IGNORECASE)
_DURATION = re.compile(r"^([0-9]{1,9})([smhd]?)$")
_CLOCK = re.compile(r"^(?:([0-9]{1,6}):)?([0-9]{1,2}):([0-9]{2})$")


def memory_mb(value: Any) -> Any:
    """MB from a whole number of MB or a size such as ``'512M'``, ``'2G'`` (K rounds up to
    1 MB); anything else is left for the type check to refuse."""
    if isinstance(value, str):
        match = _SIZE.match(value.strip())
        if match is None:
            raise ValueError(f"{value!r} is not MB or a size such as '512M' or '2G'")
        amount = int(match.group(1)) * _MEMORY_UNITS[(match.group(2) or "M").upper()]
        return max(1, int(amount)) if amount > 0 else 0
    return value


def seconds(value: Any) -> Any:
    """Seconds from a whole number of them, ``'90s'``, ``'30m'``, ``'2h'``, ``'1d'`` or
    ``'H:MM:SS'``; anything else is left for the type check to refuse."""
    if isinstance(value, str):
        text = value.strip()
        match = _DURATION.match(text)
        if match is not None:
            return int(match.group(1)) * _TIME_UNITS[match.group(2) or "s"]
        clock = _CLOCK.match(text)
        if clock is None:
            raise ValueError(f"{value!r} is not seconds or a duration such as '90s', '30m', "
                             "'2h', '1d' or 'H:MM:SS'")
        hours, minutes, secs = (int(part or 0) for part in clock.groups())
        return hours * 3600 + minutes * 60 + secs
    return value


class JobResources(BaseModel):
    """Cores, memory (MB) and wall time (s) a job asks for; the time defaults to its
    timeout. Engines that can enforce them do (Slurm: ``--cpus-per-task``, ``--mem``,
    ``--time``)."""

    model_config = ConfigDict(extra="forbid")

    cores: int = Field(1, ge=1, le=MAX_CORES, strict=True, description="CPU cores.")
    memory: int | None = Field(None, ge=1, strict=True, description=(
        "Memory in MB (given as MB or a size such as '512M', '2G')."))
    time: int | None = Field(None, ge=1, le=MAX_TIME_S, strict=True, description=(
        "Wall time in seconds (given as seconds or '90s', '30m', '2h', '1d', 'H:MM:SS'); "
        "the job's timeout when not given."))

    _memory = field_validator("memory", mode="before")(memory_mb)
    _time = field_validator("time", mode="before")(seconds)


def resources_problem(exc: ValidationError, place: str = "resources") -> str:
    """One line saying what is wrong with resources, naming the field (``place.cores``)."""
    problems = []
    for error in exc.errors():
        where = ".".join([place, *(str(p) for p in error["loc"])])
        if error["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown resources: cores, memory and time are known")
        elif error["type"] == "model_type":
            problems.append(f"{place}: not a JSON object of cores, memory and time")
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{where}: {message} (given {error.get('input')!r})"
                            if "given" not in message and "'" not in message else
                            f"{where}: {message}")
    return "; ".join(problems)


def parse_resources(value: Any, place: str = "resources") -> JobResources:
    """``value`` as resources; InvalidInput (400) naming the field when it is malformed."""
    if isinstance(value, JobResources):
        return value
    try:
        return JobResources.model_validate(value)
    except ValidationError as exc:
        raise InvalidInput(resources_problem(exc, place), place=place) from None
