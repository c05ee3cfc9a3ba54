"""Upscale and outpainting on the tiny SD model: sizes, the mask region, the kept pixels, VAE tiling."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bot.engine.executor import Engine
from bot.engine.images import png_bytes
from bot.engine.outpaint import OVERLAP, canvas_for, pan_geometry, upscale_size
from bot.engine.tiny_models import build_tiny_inpaint_model
from bot.engine.types import GenerationRequest, InvalidRequest
from tests.conftest import tiny_job

on_engine_loop = pytest.mark.asyncio(loop_scope="session")

PROMPT = "Northeastern University, a campus at sunset"


def _source(width: int = 64, height: int = 64) -> Image.Image:
    """A source with structure (gradients and a block) so misplacement shows up as a large difference."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    rgb = np.stack([x, y, 255 - x], axis=-1)
    rgb[height // 4 : height // 2, width // 4 : width // 2] = (250, 20, 20)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def _request(**overrides: Any) -> GenerationRequest:
    return tiny_job(
        GenerationRequest, **({"count": 2, "job_seed": 11, "prompts": (PROMPT, PROMPT)} | overrides)
    )


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@on_engine_loop
async def test_upscale_doubles_the_size_with_vae_tiling_switched_back_off(engine: Engine) -> None:
    width, height = upscale_size(64, 96, 2048 * 2048)
    request = _request(
        count=1,
        prompts=(PROMPT,),
        width=width,
        height=height,
        init_image=png_bytes(_source(64, 96)),
        strength=0.3,
        action="upscale-subtle",
    )
    assert request.tiled_vae
    result = await engine.generate(request)
    assert [image.size for image in result.images] == [(128, 192)]
    assert result.render["mode"] == "img2img" and result.render["tiled_vae"] is True
    assert result.render["strength"] == 0.3
    assert engine.renderer is not None and engine.renderer.pipe.vae.use_tiling is False
    # Deterministic: the same request gives the same bytes (Reproduce is exact).
    again = await engine.generate(request)
    assert png_bytes(again.images[0]) == png_bytes(result.images[0])


def test_upscale_over_the_output_limit_names_the_setting() -> None:
    with pytest.raises(InvalidRequest, match="IMAGINE_MAX_OUTPUT_PIXELS"):
        upscale_size(1536, 1536, 2048 * 2048)


@on_engine_loop
async def test_upscale_request_may_exceed_the_grid_limit_but_not_the_output_limit(engine: Engine) -> None:
    limits = engine.config.limits
    side = int((limits.max_pixels * 2) ** 0.5) // 8 * 8
    engine.validate(_request(count=1, prompts=(PROMPT,), width=side, height=side, action="upscale-subtle"))
    with pytest.raises(InvalidRequest, match="width"):
        engine.validate(_request(count=1, prompts=(PROMPT,), width=side, height=side, action="variation"))
    too_big = int((limits.max_output_pixels * 2) ** 0.5) // 8 * 8
    with pytest.raises(InvalidRequest, match="width"):
        engine.validate(
            _request(count=1, prompts=(PROMPT,), width=too_big, height=too_big, action="upscale-subtle")
        )


def test_zoom_out_mask_is_white_outside_the_shrunk_source() -> None:
    canvas = canvas_for("zoom-2", _source(), 2048 * 2048)
    assert canvas.size == (64, 64) and canvas.box == (16, 16, 48, 48)
    mask = np.asarray(canvas.mask)
    assert mask.shape == (64, 64)
    # Painted: the whole border plus the OVERLAP seam band; kept: the source's inner part.
    assert (mask[:, : 16 + OVERLAP] == 255).all() and (mask[:, 48 - OVERLAP :] == 255).all()
    assert (mask[: 16 + OVERLAP, :] == 255).all() and (mask[48 - OVERLAP :, :] == 255).all()
    assert (mask[16 + OVERLAP : 48 - OVERLAP, 16 + OVERLAP : 48 - OVERLAP] == 0).all()
    shrunk = _source().resize((32, 32), Image.Resampling.LANCZOS)
    assert np.abs(_pixels(canvas.image.crop(canvas.box)) - _pixels(shrunk)).max() == 0


@pytest.mark.parametrize(
    ("direction", "size", "box"),
    [
        ("left", (96, 64), (32, 0, 96, 64)),
        ("right", (96, 64), (0, 0, 64, 64)),
        ("up", (64, 96), (0, 32, 64, 96)),
        ("down", (64, 96), (0, 0, 64, 64)),
    ],
)
def test_pan_extends_the_canvas_by_half_on_that_side(
    direction: str, size: tuple[int, int], box: tuple[int, int, int, int]
) -> None:
    canvas = canvas_for(f"pan-{direction}", _source(), 2048 * 2048)
    assert canvas.size == size and canvas.box == box
    mask = np.asarray(canvas.mask)
    left, top, right, bottom = box
    # Only the seam side of the source is repainted; sides on the canvas border are kept.
    kept = mask[top:bottom, left:right]
    assert (kept == 0).sum() == (right - left - (OVERLAP if direction in ("left", "right") else 0)) * (
        bottom - top - (OVERLAP if direction in ("up", "down") else 0)
    )
    assert (mask == 255).sum() == mask.size - (kept == 0).sum()


def test_pan_stays_within_the_pixel_limit() -> None:
    size, box = pan_geometry(768, 768, "right", 768 * 768)
    assert size[0] * size[1] <= 768 * 768 and size[0] % 8 == 0 and size[1] % 8 == 0
    assert size[0] / size[1] == pytest.approx(1.5, rel=0.03)
    assert box[0] == 0 and box[3] == size[1]


@pytest.mark.parametrize("action", ["zoom-2", "zoom-1.5", "pan-left", "pan-down"])
@on_engine_loop
async def test_outpaint_keeps_the_source_outside_the_mask(engine: Engine, action: str) -> None:
    canvas = canvas_for(action, _source(128, 128), 2048 * 2048)
    request = _request(
        width=canvas.size[0],
        height=canvas.size[1],
        init_image=png_bytes(canvas.image),
        mask_image=png_bytes(canvas.mask),
        action=action,
    )
    result = await engine.generate(request)
    assert result.render["mode"] == "outpaint" and result.render["inpaint_model"] == "base"
    mask = np.asarray(canvas.mask)
    # Kept pixels further than the seam blend from the mask: at most 2 levels off the source.
    far = np.asarray(Image.fromarray(mask).resize(canvas.size).filter(_grow(OVERLAP))) == 0
    assert far.sum() > 0
    source = _pixels(canvas.image)
    for image in result.images:
        assert image.size == canvas.size
        out = _pixels(image)
        assert np.abs(out - source)[far].max() <= 2
        # The painted part is the model's, not the blurred backdrop left as it was.
        assert np.abs(out - source)[mask == 255].mean() > 5
    assert _pixels(result.images[0]).tolist() != _pixels(result.images[1]).tolist()


def _grow(pixels: int) -> Any:
    from PIL import ImageFilter

    return ImageFilter.MaxFilter(2 * pixels + 1)


@on_engine_loop
async def test_outpaint_without_an_init_image_is_refused(engine: Engine) -> None:
    with pytest.raises(InvalidRequest, match="mask_image"):
        await engine.generate(_request(mask_image=png_bytes(Image.new("L", (64, 64), 255))))


@on_engine_loop
async def test_unreadable_source_bytes_are_a_clear_error(engine: Engine) -> None:
    with pytest.raises(InvalidRequest, match="init_image"):
        await engine.generate(_request(init_image=b"not an image", action="variation"))


def test_decoded_source_roundtrip() -> None:
    data = png_bytes(_source())
    assert Image.open(io.BytesIO(data)).size == (64, 64)


async def test_dedicated_inpainting_checkpoint_is_loaded_only_when_set(
    tiny_models: tuple[Path, Path], tmp_path: Path, engine: Engine
) -> None:
    from bot.engine.executor import EngineConfig

    # Not set: outpainting uses the base UNet through from_pipe, no second model in memory.
    assert engine.renderer is not None and engine.renderer.inpaint_model == "base"
    checkpoint = build_tiny_inpaint_model(tiny_models[0], tmp_path / "inpaint")
    dedicated = Engine(
        EngineConfig(
            sd_model=str(tiny_models[0]),
            text_model=str(tiny_models[1]),
            device="cpu",
            dtype="float32",
            inpaint_model=str(checkpoint),
        )
    )
    try:
        await dedicated.load()
        renderer = dedicated.renderer
        assert renderer is not None
        inpaint = renderer.inpaint()
        assert inpaint.unet.config.in_channels == 9 and inpaint.unet is not renderer.pipe.unet
        assert inpaint.vae is renderer.pipe.vae and inpaint.text_encoder is renderer.pipe.text_encoder
        canvas = canvas_for("zoom-2", _source(128, 128), 2048 * 2048)
        result = await dedicated.generate(
            _request(
                width=128,
                height=128,
                init_image=png_bytes(canvas.image),
                mask_image=png_bytes(canvas.mask),
                action="zoom-2",
            )
        )
        assert result.render["inpaint_model"] == str(checkpoint)
        assert [image.size for image in result.images] == [(128, 128)] * 2
    finally:
        await dedicated.close()


@pytest.mark.parametrize("direction", ["left", "right", "up", "down"])
@pytest.mark.parametrize("side", [64, 256, 768])
def test_pan_changes_exactly_the_overlap_band_of_the_source_with_a_soft_seam(
    direction: str, side: int
) -> None:
    from bot.engine.outpaint import composite

    source = Image.fromarray(np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8))
    canvas = canvas_for(f"pan-{direction}", source, 2048 * 2048)
    left, top, right, bottom = canvas.box
    placed = np.asarray(canvas.image)[top:bottom, left:right].astype(int)
    painted = Image.new("RGB", canvas.size, (255, 0, 255))
    out = np.asarray(composite(painted, canvas.image, canvas.mask))[top:bottom, left:right].astype(int)
    changed = np.abs(out - placed).max(axis=2) > 0
    horizontal = direction in ("left", "right")
    lines = changed.any(axis=0 if horizontal else 1)  # source columns (or rows) that changed at all
    # The README's promise: outside the painted band the source's pixels are exact; the band is OVERLAP wide.
    assert int(lines.sum()) == OVERLAP, int(lines.sum())
    # Soft: across the band the painted colour's share rises step by step, no hard edge.
    share = 1 - out[..., 1] / np.maximum(placed[..., 1], 1)  # the painted colour has no green
    share = np.where(placed[..., 1] > 32, share, np.nan)
    profile = np.nanmean(share, axis=0 if horizontal else 1)
    profile = profile[-OVERLAP:] if direction in ("right", "down") else profile[:OVERLAP][::-1]
    assert (np.diff(profile) > 0).all(), profile
    assert 0 < profile[0] < 0.3 and profile[-1] > 0.85, profile
