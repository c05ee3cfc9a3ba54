"""A cancel lands inside a denoising step, not at its end: on a CPU one step can take minutes."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from PIL import Image

from bot.engine.executor import Engine
from bot.engine.types import GenerationRequest, JobCancelled

pytestmark = pytest.mark.asyncio(loop_scope="session")

# At this size one step of the tiny model (SD 2 geometry: latents 96×96) takes seconds on a CPU core
# (measured in the test itself).
LONG_STEP_SIDE = 768


def _request() -> GenerationRequest:
    return GenerationRequest(
        seed_text="a lighthouse at night",
        count=1,
        steps=2,
        guidance=7.5,
        width=LONG_STEP_SIDE,
        height=LONG_STEP_SIDE,
        job_seed=3,
        expand=False,
    )


async def test_a_cancel_lands_inside_a_long_step(engine: Engine) -> None:
    loop = asyncio.get_running_loop()
    # 1. How long is one step here? Time the first step, then cancel at its end (no decode to wait for).
    cancel = threading.Event()
    step_done: list[float] = []

    def at_step_end(step: int, total: int, preview: Image.Image | None) -> None:
        step_done.append(time.perf_counter())
        cancel.set()

    started = time.perf_counter()
    with pytest.raises(JobCancelled):
        await engine.generate(_request(), on_progress=at_step_end, cancel=cancel)
    step_seconds = step_done[0] - started
    assert step_seconds >= 0.5, f"one step took only {step_seconds:.2f} s: not a long step"

    # 2. The same job, cancelled 40 % into its first step: it must stop well before that step ends.
    cancel = threading.Event()
    steps_seen: list[int] = []
    cancelled_at: list[float] = []

    def cancel_now() -> None:
        cancelled_at.append(time.perf_counter())
        cancel.set()

    started = time.perf_counter()
    loop.call_later(0.4 * step_seconds, cancel_now)
    with pytest.raises(JobCancelled):
        await engine.generate(
            _request(), on_progress=lambda step, total, preview: steps_seen.append(step), cancel=cancel
        )
    stopped = time.perf_counter()
    await asyncio.sleep(0)
    landed_after = stopped - cancelled_at[0]
    print(f"one step: {step_seconds:.2f} s; the cancel landed {landed_after:.3f} s after it was set")
    assert steps_seen == [], "the first step finished: the cancel waited for the step's end"
    assert landed_after < 0.25 * step_seconds, (
        f"{landed_after:.2f} s after the cancel (step {step_seconds:.2f} s)"
    )

    # 3. The hooks are gone afterwards: the next job renders.
    result = await engine.generate(
        GenerationRequest(
            seed_text="a cat", count=1, steps=2, guidance=7.5, width=64, height=64, job_seed=1, expand=False
        )
    )
    assert len(result.images) == 1
