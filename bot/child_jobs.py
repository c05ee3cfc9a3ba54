"""The new job each action on a past job asks for (🔄, ✨, V, Reproduce, Remix, Upscale, Vary, Zoom, Pan),
linked to its parent, and where its input images come from. Plain functions of the settings and the
parent's record; whether the action may run at all is the intake's question (bot/intake.py)."""

from __future__ import annotations

import io
import secrets
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from bot.engine.images import png_bytes
from bot.engine.model_specs import ModelEntry
from bot.engine.outpaint import build_canvas, fit_within, outpaint_geometry, upscale_size
from bot.engine.types import InvalidRequest
from bot.flags import size_for_ratio
from bot.jobs import rerun_spec
from bot.settings import Settings
from bot.store import JobRecord, JobSpec

MAX_SEED = 2**32 - 1
Geometry = tuple[tuple[int, int], tuple[int, int, int, int]]


@dataclass(frozen=True)
class TileSource:
    """Where a child job's input images come from: the parent's tile, as is or on an outpaint canvas."""

    path: str | None
    geometry: Geometry | None = None


def tile_inputs(source: TileSource) -> tuple[bytes | None, bytes | None]:
    """The tile's PNG as the source image, or its outpaint canvas and mask (runs in a thread)."""
    if not source.path:
        raise InvalidRequest("the image file of that job is gone from disk")
    try:
        data = Path(source.path).read_bytes()
    except OSError as exc:
        raise InvalidRequest("the image file of that job is gone from disk") from exc
    if source.geometry is None:
        return data, None
    with Image.open(io.BytesIO(data)) as opened:
        picture = opened.convert("RGB")
    canvas = build_canvas(picture, *source.geometry)
    return png_bytes(canvas.image), png_bytes(canvas.mask)


def child_spec(
    settings: Settings,
    job: JobRecord,
    action: str,
    tile: int | None,
    *,
    owner: int | None,
    prompt: str | None = None,
    prompts: dict[int, str] | None = None,
    negative: str | None = None,
    main_model: ModelEntry | None = None,
) -> tuple[JobSpec, TileSource | None]:
    """The new job `action` asks for on `job` (image `tile` where it needs one), owned by `owner`.

    Raises InvalidRequest when the action cannot be made (an upscale over IMAGINE_MAX_OUTPUT_PIXELS).
    """
    if action in ("reproduce", "rerun"):  # exact: the same prompts, image seeds and inputs
        return rerun_spec(job, user_id=owner, action=action), None
    if action == "remix" and tile is None:
        # Same image seeds, the edited prompts (empty = keep the old one).
        edited = tuple((prompts or {}).get(t.index) or t.prompt for t in job.tiles)
        spec = replace(
            rerun_spec(job, user_id=owner, action="remix"),
            given_prompts=edited,
            negative=negative if negative is not None else job.negative,
        )
        return spec, None
    # Same seed text and parameters, new image seeds, owned by the presser, linked to the parent.
    base = replace(
        rerun_spec(job, user_id=owner, action="rerender"),
        job_seed=secrets.randbelow(MAX_SEED + 1),
        given_seeds=None,
    )
    if action == "rerender":
        return base, None
    if action == "reexpand":
        return replace(base, action="reexpand", given_prompts=None), None
    assert tile is not None
    source = job.tiles[tile - 1]
    if action == "enhance":
        assert main_model is not None, "the intake names the main model"
        return _enhance(settings, base, job, tile, main_model)
    if action == "variation":
        spec = replace(
            base,
            action="variation",
            source_tile=tile,
            strength=settings.variation_strength,
            given_prompts=(source.prompt,) * job.count,
            # img2img from the tile: not the parent's outpaint mask or upscale rendering.
            init_image=None,
            mask_image=None,
            render_action=None,
        )
        return spec, TileSource(source.path)
    return _tile_action(settings, job, tile, action, owner=owner, prompt=prompt)


def _enhance(
    settings: Settings, base: JobSpec, job: JobRecord, tile: int, main: ModelEntry
) -> tuple[JobSpec, TileSource]:
    """A Draft tile at full quality: its prompt, img2img from it at IMAGINE_ENHANCE_STRENGTH, one image on
    the main model at the main model's size (the draft's aspect ratio kept) and its steps and guidance."""
    source = job.tiles[tile - 1]
    max_pixels = min(settings.max_pixels, main.max_pixels or settings.max_pixels)
    width, height = size_for_ratio((job.width, job.height), main.width, main.height, max_pixels)
    spec = replace(
        base,
        action="enhance",
        model=main.name,
        count=1,
        steps=main.steps,
        guidance=main.guidance,
        width=width,
        height=height,
        negative="",
        source_tile=tile,
        strength=settings.enhance_strength,
        given_prompts=(source.prompt,),
        given_seeds=None,
        init_image=None,
        mask_image=None,
        render_action=None,
    )
    return spec, TileSource(source.path)


def _tile_action(
    settings: Settings, job: JobRecord, tile: int, action: str, *, owner: int | None, prompt: str | None
) -> tuple[JobSpec, TileSource]:
    """Upscale, Vary, Zoom Out, Pan, and Remix of one image (Vary (Strong) with a new prompt)."""
    s = settings
    renders_as = "vary-strong" if action == "remix" else action
    source = job.tiles[tile - 1]
    count = s.count
    width, height = fit_within(job.width, job.height, s.max_pixels)
    strength: float | None = None
    geometry: Geometry | None = None
    if renders_as.startswith("upscale-"):
        count = 1
        width, height = upscale_size(job.width, job.height, s.max_output_pixels)
        strength = (
            s.upscale_subtle_strength if renders_as == "upscale-subtle" else s.upscale_creative_strength
        )
    elif renders_as.startswith("vary-"):
        strength = s.vary_subtle_strength if renders_as == "vary-subtle" else s.vary_strong_strength
    else:  # zoom-*, pan-*
        (width, height), box = outpaint_geometry(renders_as, job.width, job.height, s.max_output_pixels)
        geometry = ((width, height), box)
    text = prompt or source.prompt
    spec = replace(
        rerun_spec(job, user_id=owner, action=action),
        count=count,
        width=width,
        height=height,
        job_seed=secrets.randbelow(MAX_SEED + 1),
        given_prompts=(text,) * count,
        given_seeds=None,
        source_tile=tile,
        strength=strength,
        init_image=None,
        mask_image=None,
        render_action=None,
    )
    return spec, TileSource(source.path, geometry)
