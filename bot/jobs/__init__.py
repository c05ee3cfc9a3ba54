"""Jobs: the runner (runner.py: fair dispatcher, slots, leases, shutdown), a claimed job's life
(lifecycle.py: attempts, outages, files, its end) and the requests derived from a row (requests.py)."""

from __future__ import annotations

from bot.jobs.lifecycle import (
    INTERNAL_ERROR,
    LEASE_LOST,
    SHUTDOWN,
    FinishedHandler,
    JobOutcome,
    ProgressHandler,
    StartedHandler,
    StoppedWaiting,
)
from bot.jobs.requests import SPEC_FIELDS, load_request, request_from_job, rerun_spec
from bot.jobs.runner import (
    BACKOFF_FIRST_SECONDS,
    BACKOFF_MAX_SECONDS,
    CANCEL_WAIT_SECONDS,
    DELIVERY_WAIT_SECONDS,
    INTERRUPT_WAIT_SECONDS,
    STOP_BUDGET_SECONDS,
    STOP_GRACE_SECONDS,
    JobRunner,
    fair_order,
    next_fair_job,
)

__all__ = [
    "BACKOFF_FIRST_SECONDS",
    "BACKOFF_MAX_SECONDS",
    "CANCEL_WAIT_SECONDS",
    "DELIVERY_WAIT_SECONDS",
    "INTERNAL_ERROR",
    "INTERRUPT_WAIT_SECONDS",
    "LEASE_LOST",
    "SHUTDOWN",
    "SPEC_FIELDS",
    "STOP_BUDGET_SECONDS",
    "STOP_GRACE_SECONDS",
    "FinishedHandler",
    "JobOutcome",
    "JobRunner",
    "ProgressHandler",
    "StartedHandler",
    "StoppedWaiting",
    "fair_order",
    "load_request",
    "next_fair_job",
    "request_from_job",
    "rerun_spec",
]
