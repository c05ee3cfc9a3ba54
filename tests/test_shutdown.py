"""Shutdown fits compose's stop grace, and a planned stop spends none of a job's attempts (issue 17 item 10).

The jobs render in real worker processes (tests/workerprocess.py); a "hung" worker ignores cancellation,
the worst case the shutdown budget must still fit.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bot import jobs
from bot.settings import Settings
from bot.store import HistoryStore
from bot.wiring import build_runner
from tests.helpers import job_spec
from tests.workerprocess import ProcessBackend

ROOT = Path(__file__).resolve().parents[1]


_spec = functools.partial(job_spec, seed_text="a long render", count=1, job_seed=3, user_id=1, channel_id=2)


def _compose_stop_grace_seconds() -> float:
    text = (ROOT / "compose.yaml").read_text(encoding="utf-8")
    match = re.search(r"stop_grace_period:\s*(\d+)(m|s)", text)
    assert match, "compose.yaml sets no stop_grace_period"
    return float(match[1]) * (60 if match[2] == "m" else 1)


def test_the_shutdown_budget_fits_compose_stop_grace_with_room_to_close() -> None:
    grace = _compose_stop_grace_seconds()
    assert grace == 120
    # Before: 90 + 30 + 5 + 5 + 90 s of waits, more than the 120 s after which Docker sends SIGKILL.
    assert grace - 20 >= jobs.STOP_BUDGET_SECONDS  # the gateway, delivery and database still close


async def test_planned_restarts_during_a_job_spend_none_of_its_attempts(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(max_attempts=2)
    backend = ProcessBackend(holds=[60.0, 60.0, 60.0, 0.1])
    async with HistoryStore(settings.db_path) as store:
        job = await store.create_job(_spec())
        for restart in range(3):  # three deploys while the job renders: more than its attempts
            backend.started.clear()
            runner = build_runner(settings, store, backend)
            runner.poll_seconds = 0.1
            await runner.start()
            await asyncio.wait_for(backend.started.wait(), 60)
            await runner.stop(grace=0)
            row = await store.get_job(job.id)
            # Before: each stop spent an attempt (1 after the first); the second failed the job `interrupted`.
            assert row is not None and (row.status, row.attempts) == ("queued", 0), (restart, row)
        runner = build_runner(settings, store, backend)
        runner.poll_seconds = 0.1
        await runner.start()
        try:
            outcome = await asyncio.wait_for(runner.wait_for(job.id), 60)
        finally:
            await runner.stop(grace=5)
    assert (outcome.job.status, outcome.job.attempts) == ("done", 1)
    assert len(backend.workers) == 4


@pytest.mark.heavy
async def test_a_hung_worker_still_lets_the_bot_stop_inside_the_grace(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    backend = ProcessBackend(holds=[600.0], ignore_cancel=True)
    async with HistoryStore(settings.db_path) as store:
        runner = build_runner(settings, store, backend)
        runner.poll_seconds = 0.1
        await runner.start()
        job = await runner.submit(_spec())
        await asyncio.wait_for(backend.started.wait(), 60)
        began = time.monotonic()
        await runner.stop()  # what the bot's close() calls on SIGTERM
        took = time.monotonic() - began
        row = await store.get_job(job.id)
    print(f"stop() with a hung worker took {took:.1f} s (budget {jobs.STOP_BUDGET_SECONDS:.0f} s)")
    # Before: 90 s of grace plus 30 s waiting for the interrupt, past compose's 120 s.
    assert took <= jobs.STOP_BUDGET_SECONDS + 2
    assert row is not None and (row.status, row.attempts) == ("queued", 0)
