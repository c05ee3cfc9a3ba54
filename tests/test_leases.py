"""Ownership by lease in the job runner: a long render keeps its job, a taken-over one keeps its hands off.

Two stores on one file stand for two processes (each store is a process's instance); the renders run in
real worker processes (tests/workerprocess.py).
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable

from bot.settings import Settings
from bot.store import HistoryStore
from bot.wiring import build_runner
from tests.helpers import job_spec
from tests.workerprocess import ProcessBackend

_spec = functools.partial(job_spec, seed_text="a long render", count=2, job_seed=3)


async def _files_exist(paths: list[str | None]) -> bool:
    return all([await asyncio.to_thread(os.path.isfile, path or "") for path in paths])


async def test_a_render_longer_than_its_lease_keeps_its_job_while_another_process_sweeps(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    path = settings.db_path
    async with HistoryStore(path, lease_seconds=1.0) as owner, HistoryStore(path) as other:
        runner = build_runner(settings, owner, ProcessBackend(holds=[4.0]), requeue_on_shutdown=False)
        job = await runner.submit(_spec())
        rendering = asyncio.create_task(runner.run_now(job))
        for _ in range(20):  # 4 s of another process looking for dead owners, four leases long
            assert await other.recover_interrupted(requeue=True, max_attempts=2) == ([], [])
            await asyncio.sleep(0.2)
        outcome = await asyncio.wait_for(rendering, 30)
    assert (outcome.job.status, outcome.job.attempts) == ("done", 1)


async def test_a_process_that_lost_its_job_never_deletes_the_new_owners_files(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    path = settings.db_path
    async with HistoryStore(path) as first_store, HistoryStore(path) as second_store:
        slow = ProcessBackend(holds=[3.0])
        first = build_runner(settings, first_store, slow)
        job = await first.submit(_spec())
        await first.start()
        second = build_runner(settings, second_store, ProcessBackend(holds=[0.1]))
        try:
            await asyncio.wait_for(slow.started.wait(), 60)
            # The first process stalled past its lease and recovery gave the job to the queue (what
            # `recover_interrupted` does to an expired lease); the second process runs it.
            await second_store.db.execute("UPDATE jobs SET status = 'queued' WHERE id = ?", (job.id,))
            second.poll_seconds = 0.1
            await second.start()
            outcome = await asyncio.wait_for(second.wait_for(job.id), 30)
            assert outcome.job.status == "done"
            await asyncio.sleep(4)  # the first process's render ends now, and it cleans up after itself
        finally:
            await first.stop(grace=5)
            await second.stop(grace=5)
        row = await second_store.get_job(job.id)
    assert row is not None and (row.status, row.attempts) == ("done", 2)
    # Before: both wrote one folder, and the first's cleanup deleted the tiles behind the `done` row.
    assert await _files_exist([row.grid_path, *(tile.path for tile in row.tiles)])
