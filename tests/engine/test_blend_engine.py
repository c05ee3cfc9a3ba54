"""/blend's engine side (issue 22): the blend sheet, the weighted embedding, progress and cancel, on the tiny unCLIP."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bot.engine.blend import (
    SOURCE_SIDE,
    Blender,
    blend_embeddings,
    conditioning_texts,
    load_unclip_pipeline,
    pack_sheet,
    parse_weights,
    unpack_sheet,
)
from bot.engine.images import png_bytes
from bot.engine.tiny_blend import build_tiny_blend_model
from bot.engine.types import InvalidRequest, JobCancelled

RED, BLUE = (
    png_bytes(Image.new("RGB", (SOURCE_SIDE, SOURCE_SIDE), "red")),
    png_bytes(Image.new("RGB", (SOURCE_SIDE, SOURCE_SIDE), "blue")),
)


@pytest.fixture(scope="module")
def blender(tmp_path_factory: pytest.TempPathFactory, tiny_models: tuple[Path, Path]) -> Blender:
    folder = build_tiny_blend_model(tmp_path_factory.mktemp("unclip"), tiny_models[0])
    device = torch.device("cpu")
    pipe = load_unclip_pipeline(
        str(folder), device=device, dtype=torch.float32, setting="IMAGINE_BLEND_MODEL"
    )
    return Blender(pipe, source=str(folder), device=device)


def test_the_sheet_round_trips_and_refuses_what_it_is_not() -> None:
    sheet = unpack_sheet(pack_sheet([RED, BLUE], [1.0, 0.25], "a fox", 300))
    assert sheet.record() == {"images": 2, "weights": [1.0, 0.25], "prompt": "a fox", "noise_level": 300}
    assert [im.getpixel((0, 0)) for im in sheet.images] == [(255, 0, 0), (0, 0, 255)]
    with pytest.raises(InvalidRequest, match="not readable"):
        unpack_sheet(RED)  # a picture, but no blend sheet
    with pytest.raises(InvalidRequest, match="2 to 5 images"):
        pack_sheet([RED], [1.0], "", 0)
    assert parse_weights(None, 3) == (1.0, 1.0, 1.0) and parse_weights("2", 3) == (2.0, 1.0, 1.0)
    # What each tile is conditioned on: the sheet's prompt, or the given prompts (a rerun's, a Remix's edit),
    # where a blend without a prompt records `/blend N images` and renders with no text.
    assert conditioning_texts(sheet, None, 2) == ["a fox", "a fox"]
    assert conditioning_texts(sheet, ("a fox", "a cat"), 2) == ["a fox", "a cat"]
    assert conditioning_texts(sheet, ("/blend 2 images",) * 2, 2) == ["", ""]


def test_the_blended_embedding_is_the_weighted_mean_at_the_mean_length() -> None:
    embeds = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    mixed = blend_embeddings(embeds, [1.0, 1.0])[0]
    assert torch.allclose(mixed / mixed.norm(), torch.tensor([3.0, 1.0]) / torch.tensor(10.0).sqrt())
    assert torch.isclose(mixed.norm(), torch.tensor(2.0))  # (3 + 1) / 2
    assert torch.allclose(blend_embeddings(embeds, [1.0, 0.0])[0], embeds[0])


def test_weights_steer_the_render_with_progress_and_cancel(blender: Blender) -> None:
    def render(sheet_png: bytes, **kwargs: object) -> np.ndarray:
        images = blender.render(
            unpack_sheet(sheet_png), [5], negative="", steps=3, guidance=7.5, width=64, height=64, **kwargs
        )
        return np.stack([np.asarray(image, dtype=np.int16) for image in images])

    steps: list[tuple[int, int]] = []
    red_only = render(
        pack_sheet([RED, BLUE], [1.0, 0.0], "", 0), on_progress=lambda s, t, p: steps.append((s, t))
    )
    total = len(blender.pipe.scheduler.timesteps)  # PNDM, as the real model: one step more than asked
    assert steps == [(n, total) for n in range(1, total + 1)] and total >= 3
    # Weight 0 leaves the blue picture out: the same as blending the red one with itself (up to float
    # rounding: the encoder batch differs), and far from the even blend.
    assert np.abs(red_only - render(pack_sheet([RED, RED], [1.0, 1.0], "", 0))).max() <= 2
    even = np.abs(red_only - render(pack_sheet([RED, BLUE], [1.0, 1.0], "", 0))).mean()
    assert even > 3  # 8.7 when measured
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(JobCancelled):
        render(pack_sheet([RED, BLUE], [1.0, 1.0], "", 0), cancel=cancel)
