"""Fair guidance on the tiny SD model: nothing changes before the warm-up, a zero scale is the plain render
bit for bit, the same job renders the same bytes, and the record says what was done."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from bot.engine.executor import Engine
from bot.engine.fair_guidance import FairGuidancePlan, guided
from bot.engine.mitigation import FairGuidance, check_mitigation, directions, mitigation_record
from bot.engine.types import GenerationRequest, InvalidRequest
from tests.conftest import TINY_SIZE, tiny_job

ON_SESSION_LOOP = pytest.mark.asyncio(loop_scope="session")

DOCTOR = "a photo of the face of a doctor"
STEPS = 4


def _request(**overrides: Any) -> GenerationRequest:
    return tiny_job(GenerationRequest, **({"seed_text": DOCTOR, "expand": False, "steps": STEPS} | overrides))


def _fair(**params: Any) -> dict[str, Any]:
    record = mitigation_record("fair-guidance", FairGuidance(**params))
    assert record is not None
    return record


def _pixels(result: Any) -> list[np.ndarray]:
    return [np.asarray(image, dtype=np.int16) for image in result.images]


def _latents_per_step(engine: Engine, plan: FairGuidancePlan | None) -> list[torch.Tensor]:
    """The pipeline's latents after each step, on the engine's GPU thread."""
    assert engine.renderer is not None
    pipe = engine.renderer.pipe
    seen: list[torch.Tensor] = []

    def step_end(pipeline: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        seen.append(kwargs["latents"].clone())
        return kwargs

    def run() -> None:
        generators = [torch.Generator("cpu").manual_seed(7 + i) for i in range(2)]
        with torch.inference_mode(), guided(pipe, plan):
            pipe(
                prompt=[DOCTOR] * 2,
                num_inference_steps=STEPS,
                guidance_scale=7.5,
                generator=generators,
                width=TINY_SIZE,
                height=TINY_SIZE,
                callback_on_step_end=step_end,
                callback_on_step_end_tensor_inputs=["latents"],
                output_type="latent",
            )

    engine.run_sync(run)
    return seen


@ON_SESSION_LOOP
async def test_the_edit_changes_the_latents_only_after_the_warm_up(engine: Engine) -> None:
    await engine.load()
    plain = _latents_per_step(engine, None)
    params = FairGuidance(warmup_steps=2)
    plan = FairGuidancePlan(params, [0, 1], 7.5)
    guided_latents = _latents_per_step(engine, plan)
    assert len(plain) == len(guided_latents) == STEPS
    for step in range(2):
        assert torch.equal(plain[step], guided_latents[step]), f"step {step} changed during the warm-up"
    for step in range(2, STEPS):
        assert not torch.equal(plain[step], guided_latents[step]), f"step {step} is not guided"
    assert plan.state is not None and plan.state.applied_steps == [2, 3]


@ON_SESSION_LOOP
async def test_zero_scale_is_the_plain_render_bit_for_bit(engine: Engine) -> None:
    plain = await engine.generate(_request())
    zero = await engine.generate(_request(mitigation=_fair(edit_scale=0.0, warmup_steps=0)))
    assert all(np.array_equal(a, b) for a, b in zip(_pixels(plain), _pixels(zero), strict=True))
    # The hooks ran (the edit concepts went through the UNet every step) and added nothing.
    assert zero.render["mitigation"]["edited_steps"] == list(range(STEPS))


@ON_SESSION_LOOP
async def test_a_guided_job_renders_the_same_bytes_again_and_records_its_directions(engine: Engine) -> None:
    request = _request(mitigation=_fair(warmup_steps=1))
    first, again = await engine.generate(request), await engine.generate(request)
    plain = await engine.generate(_request())
    assert all(np.array_equal(a, b) for a, b in zip(_pixels(first), _pixels(again), strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(_pixels(first), _pixels(plain), strict=True))
    record = first.render["mitigation"]
    assert record["mode"] == "fair-guidance"
    assert record["edit_scale"] == 4.0 and record["threshold"] == 0.95 and record["warmup_steps"] == 1
    concepts = record["concepts"]
    assert record["toward"] == [concepts[d] for d in directions(request.job_seed, request.count)]
    assert sorted(record["toward"]) == sorted(concepts * 2)  # two images each way
    assert record["edited_steps"] == [1, 2, 3]


@ON_SESSION_LOOP
async def test_not_applied_without_guidance_or_to_a_source_image(engine: Engine) -> None:
    result = await engine.generate(_request(guidance=1.0, mitigation=_fair()))
    assert "classifier-free guidance" in result.render["mitigation"]["not_applied"]


def test_directions_are_balanced_and_seeded() -> None:
    for seed in range(10):
        chosen = directions(seed, 4)
        assert sorted(chosen) == [0, 0, 1, 1]
        assert directions(seed, 4) == chosen
    assert sorted(directions(3, 5)) in ([0, 0, 0, 1, 1], [0, 0, 1, 1, 1])


def test_a_malformed_record_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="threshold"):
        check_mitigation({"mode": "fair-guidance", "threshold": 1.5})
    with pytest.raises(InvalidRequest, match="mitigation"):
        check_mitigation({"mode": "louder"})
    check_mitigation(None)
    check_mitigation({"mode": "diverse-prompts"})
