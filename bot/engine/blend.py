"""/blend (issue 22): 2–5 pictures blended with SD 2.1 unCLIP (`StableUnCLIPImg2ImgPipeline`).

Each picture goes through the pipeline's own CLIP image encoder; the embeddings are averaged with the
member's weights (`--iw`), the average scaled back to the weighted mean of their lengths (a plain mean of
directions that disagree is shorter than any of them, and unCLIP reads the length too), noised at the
unCLIP `noise_level`, and the UNet is conditioned on that (with the optional text prompt).

A job's blend inputs travel as one PNG, its *blend sheet*: the fitted pictures side by side, with the
weights, the prompt and the noise level in a text chunk. It is stored as the job's source image, so a
rerun reads exactly what the first run read and renders the same bytes.
"""

from __future__ import annotations

import io
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, PngImagePlugin

from bot.engine.types import InvalidRequest, JobCancelled, ModelLoadError, ProgressCallback

MIN_IMAGES = 2
MAX_IMAGES = 5
#: each picture is fitted (cover, centre crop) to this square before it is stored; CLIP reads 224²
SOURCE_SIDE = 256
MAX_WEIGHT = 10.0
#: the PNG text chunk holding the sheet's parameters
SHEET_KEY = "imagine-blend"
SHEET_VERSION = 1
#: the diffusers noise schedule of SD 2.1 unCLIP's image embeddings has 1000 steps
MAX_NOISE_LEVEL = 999


def placeholder(images: int) -> str:
    """The text a blend without a prompt shows (and records as its prompts): `/blend N images`."""
    return f"/blend {images} images"


def conditioning_texts(sheet: BlendSheet, prompts: Sequence[str] | None, count: int) -> list[str]:
    """The text each tile is rendered with: its given prompt (a rerun's, a Remix's edit) or the sheet's;
    the placeholder of a blend without a prompt stands for no text."""
    if prompts is None:
        return [sheet.prompt] * count
    return ["" if text == placeholder(len(sheet.images)) else text for text in prompts]


@dataclass(frozen=True)
class BlendSheet:
    """What one blend renders from: the pictures, their weights, the text prompt and the noise level."""

    images: tuple[Image.Image, ...]
    weights: tuple[float, ...]
    prompt: str = ""
    noise_level: int = 0

    def record(self) -> dict[str, Any]:
        """The job record's view (plain JSON)."""
        return {
            "images": len(self.images),
            "weights": list(self.weights),
            "prompt": self.prompt,
            "noise_level": self.noise_level,
        }


def parse_weights(text: str | None, count: int) -> tuple[float, ...]:
    """`--iw 1,0.5[,…]`: one weight per picture, in the order attached (missing ones are 1)."""
    if text is None or not text.strip():
        return (1.0,) * count
    parts = [part.strip() for part in text.split(",")]
    if len(parts) > count:
        raise InvalidRequest(
            f"`--iw` has {len(parts)} weights for {count} images; give at most one per image"
        )
    weights: list[float] = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise InvalidRequest(f"`--iw` weights are numbers like `1,0.5`, got {part[:20]!r}") from None
        if not math.isfinite(value) or not 0.0 <= value <= MAX_WEIGHT:
            raise InvalidRequest(f"each `--iw` weight must be 0..{MAX_WEIGHT:g}, got {part[:20]}")
        weights.append(value)
    weights.extend([1.0] * (count - len(weights)))
    if sum(weights) <= 0:
        raise InvalidRequest("`--iw` weights must not all be 0")
    return tuple(weights)


def pack_sheet(fitted: Sequence[bytes], weights: Sequence[float], prompt: str, noise_level: int) -> bytes:
    """The blend sheet PNG: the pictures (already checked and fitted, bot/uploads.py) in a row, and a text chunk."""
    if not MIN_IMAGES <= len(fitted) <= MAX_IMAGES:
        raise InvalidRequest(f"/blend takes {MIN_IMAGES} to {MAX_IMAGES} images, got {len(fitted)}")
    if len(weights) != len(fitted):
        raise InvalidRequest(f"`--iw` needs one weight per image ({len(fitted)}), got {len(weights)}")
    sheet = Image.new("RGB", (SOURCE_SIDE * len(fitted), SOURCE_SIDE))
    for index, data in enumerate(fitted):
        with Image.open(io.BytesIO(data)) as picture:
            tile = picture.convert("RGB")
        if tile.size != (SOURCE_SIDE, SOURCE_SIDE):
            tile = tile.resize((SOURCE_SIDE, SOURCE_SIDE), Image.Resampling.LANCZOS)
        sheet.paste(tile, (index * SOURCE_SIDE, 0))
    info = PngImagePlugin.PngInfo()
    params = {
        "version": SHEET_VERSION,
        "images": len(fitted),
        "weights": [float(w) for w in weights],
        "prompt": prompt,
        "noise_level": int(noise_level),
    }
    info.add_text(SHEET_KEY, json.dumps(params, sort_keys=True))
    out = io.BytesIO()
    sheet.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def unpack_sheet(data: bytes | None) -> BlendSheet:
    """The pictures and parameters of a blend sheet; InvalidRequest if it is not one."""
    if data is None:
        raise InvalidRequest("a /blend job needs its source images")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            params = json.loads(opened.info[SHEET_KEY])
            sheet = opened.convert("RGB")
        count = int(params["images"])
        weights = tuple(float(w) for w in params["weights"])
        prompt = str(params.get("prompt", ""))
        noise_level = int(params.get("noise_level", 0))
    except (OSError, ValueError, KeyError, TypeError, Image.DecompressionBombError) as exc:
        raise InvalidRequest(f"the /blend source of this job is not readable ({type(exc).__name__})") from exc
    if (
        not MIN_IMAGES <= count <= MAX_IMAGES
        or len(weights) != count
        or sheet.size
        != (
            SOURCE_SIDE * count,
            SOURCE_SIDE,
        )
    ):
        raise InvalidRequest("the /blend source of this job is damaged")
    if not 0 <= noise_level <= MAX_NOISE_LEVEL:
        raise InvalidRequest(f"`noise_level` must be 0..{MAX_NOISE_LEVEL}, got {noise_level}")
    images = tuple(sheet.crop((i * SOURCE_SIDE, 0, (i + 1) * SOURCE_SIDE, SOURCE_SIDE)) for i in range(count))
    return BlendSheet(images, weights, prompt, noise_level)


def blend_embeddings(embeds: Any, weights: Sequence[float]) -> Any:
    """The weighted mean of `embeds` (n×d), scaled to the weighted mean of their lengths: 1×d."""
    import torch

    w = torch.tensor(list(weights), dtype=torch.float32, device=embeds.device)
    w = w / w.sum()
    flat = embeds.float()
    mean = (w[:, None] * flat).sum(0, keepdim=True)
    length = (w * flat.norm(dim=-1)).sum()
    mean = mean * (length / mean.norm().clamp_min(1e-12))
    return mean.to(embeds.dtype)


def load_unclip_pipeline(source: str, *, device: Any, dtype: Any, setting: str) -> Any:
    """`StableUnCLIPImg2ImgPipeline` from a Hub id or folder, on `device`; ModelLoadError naming `setting`."""
    from diffusers import StableUnCLIPImg2ImgPipeline

    from bot.engine.loading import _load_error

    try:
        pipe: Any = StableUnCLIPImg2ImgPipeline.from_pretrained(source, dtype=dtype)
    except Exception as exc:
        raise _load_error(source, setting, exc) from exc
    if getattr(pipe, "image_encoder", None) is None or getattr(pipe, "image_normalizer", None) is None:
        raise ModelLoadError(f"{setting}={source} is not an SD 2.1 unCLIP (image variation) model")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


class Blender:
    """One loaded unCLIP pipeline; `render` runs a blend on the calling (GPU) thread."""

    def __init__(self, pipe: Any, *, source: str, device: Any) -> None:
        self.pipe = pipe
        self.source = source
        self.device = device

    def embed(self, images: Sequence[Image.Image]) -> Any:
        """The CLIP image embeddings (n×d) of `images`, by the pipeline's own feature extractor and encoder."""
        import torch

        pipe = self.pipe
        encoder_dtype = next(pipe.image_encoder.parameters()).dtype
        pixels = pipe.feature_extractor(images=list(images), return_tensors="pt").pixel_values
        with torch.inference_mode():
            return pipe.image_encoder(pixels.to(device=self.device, dtype=encoder_dtype)).image_embeds

    def render(
        self,
        sheet: BlendSheet,
        image_seeds: Sequence[int],
        *,
        prompts: Sequence[str] | None = None,
        negative: str,
        steps: int,
        guidance: float,
        width: int,
        height: int,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> list[Image.Image]:
        """One picture per seed: tile i draws its embedding noise and its latents from generator i, and is
        conditioned on `prompts[i]` (None: the sheet's prompt for every tile)."""
        import torch

        from bot.engine.renderer import _stop_inside_steps

        count = len(image_seeds)
        blended = blend_embeddings(self.embed(sheet.images), sheet.weights).repeat(count, 1)
        generator_device = "cpu" if self.device.type == "mps" else self.device.type
        generators = [torch.Generator(device=generator_device).manual_seed(int(s)) for s in image_seeds]

        def step(index: int, timestep: Any, latents: Any) -> None:
            if cancel is not None and cancel.is_set():
                raise JobCancelled()
            if on_progress is not None:
                # The scheduler's own count: PNDM (the real model's) runs one step more than asked.
                total = len(self.pipe.scheduler.timesteps) or steps
                on_progress(min(index + 1, total), total, None)

        hooks = _stop_inside_steps(self.pipe, cancel) if self.device.type != "cuda" else []
        try:
            with torch.inference_mode():
                output = self.pipe(
                    prompt=list(prompts) if prompts is not None else [sheet.prompt] * count,
                    negative_prompt=[negative] * count if negative else None,
                    image_embeds=blended,
                    noise_level=sheet.noise_level,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    width=width,
                    height=height,
                    generator=generators,
                    callback=step,
                    callback_steps=1,
                    output_type="pil",
                )
        finally:
            for hook in hooks:
                hook.remove()
        if cancel is not None and cancel.is_set():
            raise JobCancelled()
        return list(output.images)
