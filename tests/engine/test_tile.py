"""`--tile` (issue 22): circular padding makes a picture's opposite edges continue each other."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from bot.engine.executor import Engine
from bot.engine.renderer import circular_padding
from bot.engine.types import GenerationRequest
from tests.conftest import tiny_job

pytestmark = pytest.mark.asyncio(loop_scope="session")


def edge_difference(image: Image.Image) -> float:
    """How unlike its inside a picture is at its wrap-around seams (0 = the seams are like any other place).

    For each axis: the mean step across the seam (last column → first column) and the mean step from each
    border column to its neighbour, each against the mean step between neighbouring columns inside, as
    |log ratio|; averaged over both axes. Where the edges continue each other both ratios are about 1. An
    ordinary render's borders are shaped by zero padding (they step differently from the inside), and its
    seam joins two unrelated edges.
    """
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    scores = []
    for plane in (pixels, pixels.transpose(1, 0, 2)):
        inside = np.abs(np.diff(plane, axis=1)).mean()
        seam = np.abs(plane[:, 0] - plane[:, -1]).mean()
        border = (np.abs(plane[:, 0] - plane[:, 1]).mean() + np.abs(plane[:, -1] - plane[:, -2]).mean()) / 2
        scores.append(abs(math.log(seam / inside)) + abs(math.log(border / inside)))
    return float(np.mean(scores))


def _request(**overrides: Any) -> GenerationRequest:
    values = {"count": 4, "steps": 2, "width": 64, "height": 64, "expand": False, "job_seed": 4}
    return tiny_job(GenerationRequest, **(values | overrides))


async def test_tile_edges_continue_each_other(engine: Engine) -> None:
    plain = await engine.generate(_request())
    tiled = await engine.generate(_request(tiling=True))
    assert tiled.render["tile"] is True and "tile" not in plain.render
    plain_score = np.mean([edge_difference(image) for image in plain.images])
    tiled_score = np.mean([edge_difference(image) for image in tiled.images])
    # Measured on the tiny models (seeds 4..7): ordinary ~0.6, tiled ~0.2.
    assert tiled_score < 0.6 * plain_score, (tiled_score, plain_score)


async def test_a_tiled_render_has_no_seam_at_all(engine: Engine) -> None:
    """The exact form of the claim: shifting the starting noise by half the picture (around the torus)
    shifts the tiled picture by exactly that, so its edges are rendered like its middle; not so without."""
    assert engine.renderer is not None
    pipe = engine.renderer.pipe
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    shifted = torch.roll(noise, (8, 8), dims=(2, 3))

    def render(latents: torch.Tensor, tile: bool) -> np.ndarray:
        restore = circular_padding(pipe.unet, pipe.vae) if tile else None
        try:
            with torch.inference_mode():
                out = pipe(
                    "a cat", latents=latents, num_inference_steps=2, width=128, height=128, output_type="np"
                )
            return np.asarray(out.images[0])
        finally:
            if restore is not None:
                restore()

    def shift_error(tile: bool) -> float:
        whole, moved = render(noise, tile), render(shifted, tile)
        return float(np.abs(np.roll(whole, (64, 64), axis=(0, 1)) - moved).max())

    assert await engine.on_gpu_thread(lambda: shift_error(True)) < 1e-4
    assert await engine.on_gpu_thread(lambda: shift_error(False)) > 0.05


async def test_padding_is_restored_after_a_tiled_job(engine: Engine) -> None:
    before = await engine.generate(_request(count=1))
    await engine.generate(_request(count=1, tiling=True))
    after = await engine.generate(_request(count=1))
    assert np.array_equal(np.asarray(before.images[0]), np.asarray(after.images[0]))
    assert engine.renderer is not None
    convs = [*engine.renderer.pipe.unet.modules(), *engine.renderer.pipe.vae.modules()]
    assert {m.padding_mode for m in convs if isinstance(m, torch.nn.Conv2d)} == {"zeros"}
