"""The CLI never requeues: a job whose worker dies runs again in place, within IMAGINE_MAX_ATTEMPTS.

The worker is a real process behind the render-backend seam (tests/workerprocess.py), killed with
SIGKILL mid-job the way a replica or a GPU box dies. Also: Ctrl-C on a job a
bot picked up ends the CLI's wait instead of polling forever.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import time
from collections.abc import Callable

import pytest

from bot.cli import _generate
from bot.settings import Settings
from bot.store import HistoryStore
from bot.wiring import build_runner
from tests.helpers import job_spec
from tests.workerprocess import ProcessBackend

_spec = functools.partial(job_spec, seed_text="a lighthouse", count=2)


async def _kill_the_first_worker(backend: ProcessBackend) -> int:
    await asyncio.wait_for(backend.started.wait(), 60)
    victim = backend.workers[0]
    os.kill(victim, signal.SIGKILL)
    return victim


@pytest.mark.parametrize("max_attempts", [2, 1])
async def test_a_cli_job_whose_worker_is_killed_runs_again_or_ends_with_one_clear_reason(
    make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str], max_attempts: int
) -> None:
    settings = make_settings(max_attempts=max_attempts)
    backend = ProcessBackend(holds=[60.0, 0.1])
    async with HistoryStore(settings.db_path) as store:
        generate = asyncio.create_task(_generate(settings, store, _spec(), as_json=True, backend=backend))
        victim = await _kill_the_first_worker(backend)
        # Before: the row went back to `queued` for a dispatcher the CLI does not have, and it waited forever.
        code = await asyncio.wait_for(generate, 30)
        [row] = await store.list_jobs(any_user=True)
    printed = json.loads(capsys.readouterr().out)
    assert printed["job_id"] == row.id
    if max_attempts == 2:
        assert code == 0
        assert (row.status, row.attempts) == ("done", 2)
        assert row.render["worker"]["pid"] != victim
        assert all([await asyncio.to_thread(os.path.isfile, tile.path or "") for tile in row.tiles])
        assert len(backend.workers) == 2
    else:
        assert code == 1
        assert (row.status, row.attempts) == ("failed", 1)
        assert row.reason == "the GPU worker running this job stopped; 1 attempt spent, none left"
        assert len(backend.workers) == 1


async def test_stopping_the_cli_while_a_bot_renders_its_job_ends_the_wait(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    async with HistoryStore(settings.db_path) as bot_store, HistoryStore(settings.db_path) as cli_store:
        bot_backend = ProcessBackend(holds=[60.0])
        bot_runner = build_runner(settings, bot_store, bot_backend)
        bot_runner.poll_seconds = 0.1
        cli_runner = build_runner(
            settings, cli_store, ProcessBackend(holds=[]), requeue_on_shutdown=False, retry_inline=True
        )
        job = await cli_runner.submit(_spec())
        await bot_runner.start()  # its dispatcher claims the queued CLI row first
        try:
            await asyncio.wait_for(bot_backend.started.wait(), 60)
            waiting = asyncio.create_task(cli_runner.run_now(job))
            await asyncio.sleep(1.0)
            assert not waiting.done()  # it waits for the bot's render
            began = time.monotonic()
            await cli_runner.stop(grace=0)  # what Ctrl-C does
            # Before: the CLI went on polling the row until the bot finished (a minute here; hours on a CPU).
            done, _ = await asyncio.wait([waiting], timeout=5)
            assert done, "the CLI kept waiting after Ctrl-C"
            assert time.monotonic() - began < 5
            from bot.jobs import StoppedWaiting

            with pytest.raises(StoppedWaiting, match=f"stopped waiting for job {job.id}"):
                waiting.result()
            row = await cli_store.get_job(job.id)
            assert row is not None and row.status == "running"  # the bot's render goes on, untouched
        finally:
            await bot_runner.stop(grace=0)


async def test_a_cli_waiting_on_a_job_whose_bot_died_takes_it_over_and_finishes_it(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    async with HistoryStore(settings.db_path, lease_seconds=1.5) as store:
        runner = build_runner(
            settings, store, ProcessBackend(holds=[0.1]), requeue_on_shutdown=False, retry_inline=True
        )
        job = await runner.submit(_spec())
        # A bot claimed the job and was then killed outright: nobody renews its lease, which runs out soon.
        query = """
            UPDATE jobs SET status = 'running', attempts = 1, owner_instance = 'a-killed-bot',
                lease_expires_at = ? WHERE id = ?
        """
        await store.db.execute(query, (time.time() + 1.5, job.id))
        # Before: the CLI polled the row, `running` for ever, until that bot was restarted.
        outcome = await asyncio.wait_for(runner.run_now(job), 30)
    assert (outcome.job.status, outcome.job.attempts) == ("done", 2)
