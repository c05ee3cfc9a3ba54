"""The image classifier in the job runner's save stage: off the loop and the GPU thread, not delaying the
next job, only for filtered jobs, its flags in the job record (real tiny engine, real store)."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Sequence

import pytest
from PIL import Image, ImageStat

from bot.engine.executor import Engine
from bot.engine.local_backend import LocalBackend
from bot.engine.safety import Detection, TileVerdict
from bot.jobs import JobRunner
from bot.settings import Settings
from bot.store import HistoryStore
from tests.helpers import job_spec

session_loop = pytest.mark.asyncio(loop_scope="session")


class SlowFirstTileFlagger:
    """Injected at the classifier boundary: flags tile 1, and takes `seconds` per call."""

    name = "slow"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.threads: list[str] = []

    def classify(self, images: Sequence[Image.Image]) -> list[TileVerdict]:
        self.threads.append(threading.current_thread().name)
        time.sleep(self.seconds)
        hit = (Detection("FEMALE_BREAST_EXPOSED", 0.9),)
        return [TileVerdict(True, hit) if i == 0 else TileVerdict(False) for i in range(len(images))]


_spec = functools.partial(job_spec, count=2, expand=False)


@session_loop
async def test_classifier_runs_in_the_save_stage_while_the_next_job_renders(
    settings: Settings, engine: Engine
) -> None:
    classifier = SlowFirstTileFlagger(1.5)
    async with HistoryStore(settings.db_path) as store:
        runner = JobRunner(
            store=store, backend=LocalBackend(engine), images_dir=settings.images_dir, classifier=classifier
        )
        jobs = [
            await runner.submit(_spec()),
            await runner.submit(_spec(job_seed=8)),
            await runner.submit(_spec(job_seed=9, safe_mode=False)),  # unfiltered: never classified
        ]
        waiters = [runner.wait_for(job.id) for job in jobs]
        await runner.start()
        try:
            outcomes = await asyncio.wait_for(asyncio.gather(*waiters), 120)
        finally:
            await runner.stop(grace=30)
    first, second, unfiltered = (outcome.job for outcome in outcomes)
    assert all(job.status == "done" for job in (first, second, unfiltered))
    # The second job was on the GPU thread while the first was still being classified.
    assert second.started_at is not None and first.finished_at is not None
    assert second.started_at < first.finished_at - 0.5
    # Neither the event loop nor the GPU thread ran it; only filtered jobs were classified.
    assert len(classifier.threads) == 2
    assert all(name != "MainThread" and not name.startswith("gpu") for name in classifier.threads)
    assert [t.nsfw for t in first.tiles] == [True, False]
    assert [t.nsfw for t in unfiltered.tiles] == [False, False]
    # The flagged tile was saved blurred: far less detail than its clean neighbour.
    blurred, clean = (Image.open(t.path).convert("L") for t in first.tiles)
    assert ImageStat.Stat(blurred).stddev[0] < ImageStat.Stat(clean).stddev[0] / 2
