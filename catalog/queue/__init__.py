"""The work queue: submit, withdraw, heartbeat, complete, retry, cancel, sweep (DESIGN §10)."""

from catalog.queue.core import (
    cancel,
    end_attempt,
    heartbeat,
    retry,
    status,
    submit,
    withdraw,
)
from catalog.queue.models import Completion, SubmitOutcome, SubmitRequest, Withdrawn, WorkFilter
from catalog.queue.sweeper import sweep

__all__ = [
    "Completion",
    "SubmitOutcome",
    "SubmitRequest",
    "WorkFilter",
    "Withdrawn",
    "cancel",
    "end_attempt",
    "heartbeat",
    "retry",
    "status",
    "submit",
    "sweep",
    "withdraw",
]
