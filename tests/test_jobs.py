"""The job runner on the real tiny engine and a real store: fairness, files on disk, cancel, validation."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from PIL import Image

from bot.engine.executor import Engine
from bot.engine.images import GUTTER
from bot.engine.local_backend import LocalBackend
from bot.engine.types import InvalidRequest
from bot.jobs import JobRunner, fair_order, request_from_job, rerun_spec
from bot.settings import Settings
from bot.store import HistoryStore, JobRecord
from bot.wiring import build_runner
from tests.helpers import job_spec, queued_record

session_loop = pytest.mark.asyncio(loop_scope="session")


def _read(path: str | None) -> bytes:
    assert path is not None
    return Path(path).read_bytes()


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# -- fairness (pure) -------------------------------------------------------------------------------
def test_fair_order_round_robins_users_and_keeps_fifo_within_a_user() -> None:
    a1, a2, a3 = queued_record("a1", 1, 1.0), queued_record("a2", 1, 2.0), queued_record("a3", 1, 3.0)
    b1, c1 = queued_record("b1", 2, 4.0), queued_record("c1", 3, 5.0)
    shuffled = [c1, a3, b1, a1, a2]
    assert [j.id for j in fair_order(shuffled, {})] == ["a1", "b1", "c1", "a2", "a3"]


def test_fair_order_serves_the_least_recently_served_user_first() -> None:
    a1, b1, b2 = queued_record("a1", 1, 1.0), queued_record("b1", 2, 2.0), queued_record("b2", 2, 3.0)
    # User 1 was just served: user 2 goes first even though user 1's job is older.
    assert [j.id for j in fair_order([a1, b1, b2], {1: 100.0})] == ["b1", "a1", "b2"]
    assert fair_order([], {}) == []


# -- the runner on the real engine -----------------------------------------------------------------
@pytest_asyncio.fixture
async def runner(settings: Settings, engine: Engine) -> AsyncIterator[JobRunner]:
    async with HistoryStore(settings.db_path) as store:
        built = build_runner(settings, store, LocalBackend(engine))
        yield built
        await built.stop(grace=30)


@session_loop
async def test_submit_runs_to_done_with_files_on_disk(runner: JobRunner, settings: Settings) -> None:
    started: list[str] = []
    progress: list[tuple[str, int, int]] = []
    finished: list[str] = []

    async def on_started(job: JobRecord) -> None:
        started.append(job.status)

    async def on_finished(outcome: Any) -> None:
        finished.append(outcome.job.status)

    runner.set_handlers(
        on_progress=lambda job_id, step, total, preview: progress.append((job_id, step, total)),
        on_started=on_started,
        on_finished=on_finished,
    )
    await runner.start()
    job = await runner.submit(job_spec())
    assert job.status == "queued"
    outcome = await asyncio.wait_for(runner.wait_for(job.id), 60)

    done = outcome.job
    assert done.status == "done", done.reason
    assert done.attempts == 1
    # The attempt's own folder, published whole by one rename (nothing half-written beside it).
    [folder] = (settings.images_dir / job.id).iterdir()
    assert folder.name.startswith("attempt-1-")
    assert sorted(p.name for p in folder.iterdir()) == [
        "grid.png",
        "tile-1.png",
        "tile-2.png",
        "tile-3.png",
        "tile-4.png",
    ]
    assert [t.path for t in done.tiles] == [str(folder / f"tile-{i}.png") for i in range(1, 5)]
    assert [t.image_seed for t in done.tiles] == [7, 8, 9, 10]
    assert all(p.startswith("Northeastern University") for p in done.prompts)
    for tile in done.tiles:
        image = _decode(_read(tile.path))
        assert (image.format, image.size) == ("PNG", (64, 64))
    assert done.grid_path == str(folder / "grid.png")
    assert outcome.grid_png == (folder / "grid.png").read_bytes()
    assert _decode(outcome.grid_png).size == (2 * 64 + GUTTER, 2 * 64 + GUTTER)
    assert done.expander["seed"] == 7
    assert done.render["sd_model"] == settings.sd_model
    assert started == ["running"]
    assert finished == ["done"]
    assert progress[-1] == (job.id, 2, 2)
    assert runner.recent_durations and runner.eta_seconds(2) is not None


@session_loop
async def test_rerun_spec_reproduces_the_tiles(runner: JobRunner) -> None:
    original = await runner.run_now(await runner.submit(job_spec(count=2)))
    assert original.job.status == "done"
    again = await runner.run_now(await runner.submit(rerun_spec(original.job)))
    assert again.job.status == "done"
    assert again.job.parent_id == original.job.id
    assert again.job.prompts == original.job.prompts
    for old, new in zip(original.job.tiles, again.job.tiles, strict=True):
        assert _read(new.path) == _read(old.path)
    assert request_from_job(again.job).prompts == original.job.prompts


@session_loop
async def test_cancel_a_queued_job(runner: JobRunner) -> None:
    # The worker is not started: the job stays queued until cancelled.
    job = await runner.submit(job_spec())
    waiter = runner.wait_for(job.id)
    assert await runner.cancel(job.id)
    outcome = await asyncio.wait_for(waiter, 5)
    assert outcome.job.status == "cancelled"
    assert outcome.grid_png is None
    row = await runner.store.get_job(job.id)
    assert row is not None and (row.status, row.reason) == ("cancelled", "cancelled by its owner")
    assert not await runner.cancel(job.id)  # already final


@session_loop
async def test_cancel_a_running_job(runner: JobRunner) -> None:
    cancels: list[asyncio.Task[bool]] = []

    def on_progress(job_id: str, step: int, total: int, preview: Any) -> None:
        if not cancels:  # like a Cancel button pressed while the first step is reported
            cancels.append(asyncio.ensure_future(runner.cancel(job_id)))

    runner.set_handlers(on_progress=on_progress)
    await runner.start()
    job = await runner.submit(job_spec(count=1, steps=40))
    outcome = await asyncio.wait_for(runner.wait_for(job.id), 60)
    assert outcome.job.status == "cancelled"
    assert outcome.job.reason == "cancelled by its owner"
    assert await cancels[0] is True
    # The worker goes on with the next job.
    nxt = await runner.submit(job_spec(count=1))
    assert (await asyncio.wait_for(runner.wait_for(nxt.id), 60)).job.status == "done"


@session_loop
@pytest.mark.parametrize(
    ("overrides", "name"),
    [({"steps": 0}, "`steps`"), ({"seed_text": ""}, "`seed`"), ({"width": 65}, "`width`")],
)
async def test_invalid_spec_is_refused_before_any_row(
    runner: JobRunner, overrides: dict[str, Any], name: str
) -> None:
    with pytest.raises(InvalidRequest, match=name):
        await runner.submit(job_spec(**overrides))
    assert await runner.store.count_jobs(any_user=True) == 0
