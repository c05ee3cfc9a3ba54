"""Stable Diffusion 2 rendering with diffusers: one batch per job, per-tile generators. GPU thread only."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from bot.engine.fair_guidance import FairGuidancePlan, guided
from bot.engine.types import JobCancelled, OutOfMemory, ProgressCallback

log = logging.getLogger(__name__)

# Linear latent→RGB approximation for SD 2.x latents (4 channels); cheap previews during progress.
_LATENT_RGB_FACTORS = torch.tensor(
    [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ]
)


def latents_to_preview(latents: torch.Tensor) -> Image.Image:
    """Approximate RGB of the first latent in the batch (no VAE call; ~a millisecond)."""
    first = latents[0].detach().float().cpu()
    if first.shape[0] != 4:
        first = (
            first[:4]
            if first.shape[0] > 4
            else torch.cat([first, first[:1].repeat(4 - first.shape[0], 1, 1)])
        )
    rgb = torch.einsum("chw,cr->hwr", first, _LATENT_RGB_FACTORS)
    pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels, mode="RGB")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/MPS out-of-memory errors in all the shapes torch raises them."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return "out of memory" in text and isinstance(exc, RuntimeError | MemoryError)


def free_device_memory(device: torch.device) -> None:
    """Release cached allocator memory after a failure so the next job can run."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and torch.backends.mps.is_available():
        torch.mps.empty_cache()


def clip_token_count(tokenizer: Any, text: str) -> int:
    """Tokens of `text` without start/end markers (CLIP's window is `model_max_length` - 2 of them)."""
    return len(tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"])


class Renderer:
    """Owns the text-to-image pipeline and img2img/inpaint pipelines sharing its weights."""

    def __init__(
        self,
        pipe: Any,
        *,
        device: torch.device,
        dtype: torch.dtype,
        preview_every: int = 5,
        inpaint_pipe: Any | None = None,
        inpaint_model: str = "base",
    ) -> None:
        self.pipe = pipe
        self.device = device
        self.dtype = dtype
        self.preview_every = preview_every
        self._img2img: Any | None = None
        # A dedicated inpainting checkpoint when configured; else built from `pipe` on first use.
        self._inpaint: Any | None = inpaint_pipe
        # Recorded with every outpaint: `base` (shared weights) or the dedicated checkpoint's id.
        self.inpaint_model = inpaint_model if inpaint_pipe is not None else "base"

    @property
    def tokenizer(self) -> Any:
        return self.pipe.tokenizer

    def count_clip_tokens(self, text: str) -> int:
        """Tokens of `text` without start/end markers, as the pipeline's own tokenizer counts them."""
        return clip_token_count(self.pipe.tokenizer, text)

    @property
    def clip_max_tokens(self) -> int:
        return int(self.pipe.tokenizer.model_max_length) - 2

    def img2img(self) -> Any:
        """The img2img pipeline, built once from the loaded components (no second copy of the weights)."""
        if self._img2img is None:
            from diffusers import StableDiffusionImg2ImgPipeline

            self._img2img = StableDiffusionImg2ImgPipeline.from_pipe(self.pipe)
            self._img2img.set_progress_bar_config(disable=True)  # from_pipe does not carry it over
        return self._img2img

    def inpaint(self) -> Any:
        """The inpainting pipeline: the dedicated one, or `from_pipe` on the loaded components.

        With the base 4-channel UNet diffusers blends the known region back into the latents at every
        step, so no inpainting checkpoint is needed for outpainting.
        """
        if self._inpaint is None:
            from diffusers import StableDiffusionInpaintPipeline

            self._inpaint = StableDiffusionInpaintPipeline.from_pipe(self.pipe)
            self._inpaint.set_progress_bar_config(disable=True)
        return self._inpaint

    def render(
        self,
        prompts: Sequence[str],
        image_seeds: Sequence[int],
        *,
        negative: str,
        steps: int,
        guidance: float,
        width: int,
        height: int,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        init_image: Image.Image | None = None,
        strength: float = 0.6,
        mask_image: Image.Image | None = None,
        tiled_vae: bool = False,
        fair_guidance: FairGuidancePlan | None = None,
        tiling: bool = False,
    ) -> list[Image.Image]:
        """Render one image per prompt in one batch; tile i uses a generator seeded image_seeds[i].

        No init image: text to image. An init image: img2img at `strength` (resized to width×height).
        An init image and a mask: outpainting (white in the mask is painted, from pure noise).
        `tiling`: seamless tiling (`--tile`), circular padding in the UNet and the VAE for this call only.
        """
        generator_device = "cpu" if self.device.type == "mps" else self.device.type
        generators = [torch.Generator(device=generator_device).manual_seed(int(s)) for s in image_seeds]
        if init_image is None:
            pipe, total = self.pipe, steps
        elif mask_image is None:
            # img2img denoises int(steps * strength) steps: never let a low strength make that zero.
            steps = max(steps, math.ceil(1 / strength - 1e-9))
            pipe, total = self.img2img(), max(1, int(steps * strength))
        else:
            pipe, total = self.inpaint(), steps

        def step_end(pipeline: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if cancel is not None and cancel.is_set():
                pipeline._interrupt = True
            if on_progress is not None:
                done = step + 1
                preview = None
                if self.preview_every and done % self.preview_every == 0 and done < total:
                    preview = latents_to_preview(kwargs["latents"])
                on_progress(done, total, preview)
            return kwargs

        common: dict[str, Any] = {
            "prompt": list(prompts),
            "negative_prompt": [negative] * len(prompts) if negative else None,
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "generator": generators,
            "callback_on_step_end": step_end,
            "callback_on_step_end_tensor_inputs": ["latents"],
            "output_type": "pil",
        }
        vae = pipe.vae
        hooks = _stop_inside_steps(pipe, cancel) if self.device.type != "cuda" else []
        # The UNet and VAE are shared by every pipeline: the padding is restored in `finally`.
        restore_padding = circular_padding(pipe.unet, pipe.vae) if tiling else None
        try:
            if tiled_vae:
                vae.enable_tiling()
            with torch.inference_mode(), guided(pipe, fair_guidance):
                if init_image is None:
                    output = pipe(width=width, height=height, **common)
                elif mask_image is None:
                    image = _fitted(init_image, width, height)
                    output = pipe(image=[image] * len(prompts), strength=strength, **common)
                else:
                    image, mask = _fitted(init_image, width, height), _fitted(mask_image, width, height, "L")
                    output = pipe(
                        image=[image] * len(prompts),
                        mask_image=[mask] * len(prompts),
                        width=width,
                        height=height,
                        strength=1.0,
                        **common,
                    )
        except Exception as exc:
            if is_out_of_memory(exc):
                free_device_memory(self.device)
                raise OutOfMemory() from exc
            raise
        finally:
            for hook in hooks:
                hook.remove()
            pipe._interrupt = False
            if restore_padding is not None:
                restore_padding()
            if tiled_vae:
                # The VAE is shared by every pipeline: plain jobs must not pay for tiling.
                vae.disable_tiling()
        if cancel is not None and cancel.is_set():
            raise JobCancelled()
        return list(output.images)


def _stop_inside_steps(pipe: Any, cancel: threading.Event | None) -> list[Any]:
    """Forward pre-hooks on every module of the UNet and the VAE that raise JobCancelled once `cancel` is set.

    The step-end callback alone lands a cancel only between steps, and on a CPU one step of SD 2 at 768²
    takes minutes: with these a cancel lands before the next module runs (the longest single op at SD's
    sizes is one attention call, seconds). Not on CUDA: a step there is well under a second, and hooks
    added per job would make a compiled UNet recompile.
    """
    if cancel is None:
        return []

    def raise_if_cancelled(module: Any, args: Any) -> None:
        if cancel.is_set():
            raise JobCancelled()

    modules = [*pipe.unet.modules(), *pipe.vae.modules()]
    return [module.register_forward_pre_hook(raise_if_cancelled) for module in modules]


def _fitted(image: Image.Image, width: int, height: int, mode: str = "RGB") -> Image.Image:
    image = image.convert(mode)
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.LANCZOS)


def circular_padding(*models: torch.nn.Module) -> Callable[[], None]:
    """Make every padded Conv2d of `models` wrap around (seamless tiles); returns the function that undoes it.

    torch's Conv2d pads with `F.pad(mode=padding_mode)` for any mode but zeros, so switching the mode is
    all it takes; attention and nearest upsampling already commute with a circular shift, so the whole
    UNet and decoder then treat the latent as a torus and the picture's edges continue each other.
    """
    changed: list[tuple[torch.nn.Conv2d, Any]] = []
    for model in models:
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d) and any(int(p) > 0 for p in _padding_of(module)):
                changed.append((module, module.padding_mode))
                module.padding_mode = "circular"

    def restore() -> None:
        for module, mode in changed:
            module.padding_mode = mode

    return restore


def _padding_of(module: torch.nn.Conv2d) -> tuple[int, ...]:
    padding = module.padding
    if isinstance(padding, str):  # "same" / "valid": resolved per call, circular works for "same" too
        return (1,) if padding == "same" else (0,)
    return tuple(int(p) for p in padding)
