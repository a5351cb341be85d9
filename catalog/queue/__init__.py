"""The work queue: submit, withdraw, heartbeat, complete, retry, cancel, sweep (DESIGN §10)."""

from catalog.queue.core import (
    cancel,
    end_attempt,
    heartbeat,
    retry,
    status,
    submit,
    sweep,
    withdraw,
)
from catalog.queue.models import Completion, SubmitOutcome, SubmitRequest, Withdrawn, WorkFilter

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
