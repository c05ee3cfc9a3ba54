"""Inputs, outputs and errors of the engine: frozen dataclasses, no Discord."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from PIL import Image

from bot.engine.model_specs import LoraRef


class EngineError(Exception):
    """Base of errors whose message is safe to show a user."""

    user_message = "the job failed"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.user_message)
        self.user_message = message or self.user_message


class InvalidRequest(EngineError):
    """Bad input: the message names the argument and its value."""

    user_message = "invalid request"


class BlockedText(InvalidRequest):
    """The member's own text matches the content filter's blocklist (filtered channels, the CLI)."""

    user_message = "that text is not allowed by the content filter"


class OutOfMemory(EngineError):
    """The device ran out of memory; the executor stays usable."""

    user_message = "the GPU ran out of memory: try fewer images, a smaller size or fewer steps"


class JobCancelled(EngineError):
    """The job was cancelled by its owner."""

    user_message = "cancelled"


class ModelLoadError(EngineError):
    """A model could not be loaded (no network, unknown id, broken folder).

    Members see only `user_message`, a plain sentence; `detail` (the setting, the id or local path, the
    exception and what the operator can do) is for the log and the operator's own command line.
    """

    user_message = "the image models could not be loaded; the bot's operator has been told"

    def __init__(self, detail: str) -> None:
        super().__init__()
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


LARGE_OUTPUT_PREFIXES = ("upscale-", "zoom-", "pan-")


@dataclass(frozen=True)
class JobParams:
    """What decides a job's pictures beside its inputs: the one definition of a job's parameters.

    Every other shape of a job is derived from this one, never copied field by field: the render request
    (`GenerationRequest`, also the JSON on the workers' wire), the new row (`bot.store.JobSpec`) and the
    stored row (`bot.store.JobRecord`) subclass it, and conversions between them go through
    `params_of` and `dataclasses.fields`.
    """

    seed_text: str
    count: int
    steps: int
    guidance: float
    width: int
    height: int
    job_seed: int
    negative: str = ""
    expand: bool = True
    safe_mode: bool = True
    # A bias mitigation and its parameters (bot/engine/mitigation.py), plain data; None = off.
    mitigation: dict[str, Any] | None = None
    # The LoRAs on the model (README → Models).
    loras: tuple[LoraRef, ...] = ()
    # `--tile` (issue 22): circular padding in the UNet's and the VAE's convolutions, for this job only.
    tiling: bool = False


JOB_PARAM_NAMES: tuple[str, ...] = tuple(f.name for f in fields(JobParams))


def params_of(job: JobParams) -> dict[str, Any]:
    """The `JobParams` fields of any shape of a job, as keyword arguments for another shape."""
    return {name: getattr(job, name) for name in JOB_PARAM_NAMES}


@dataclass(frozen=True)
class GenerationRequest(JobParams):
    """One job as the engine renders it: its parameters and its inputs (bytes, since workers may be remote)."""

    # Given prompts skip the expander (re-render, reproduce, variations).
    prompts: tuple[str, ...] | None = None
    # Image seeds per tile; default job_seed + i.
    image_seeds: tuple[int, ...] | None = None
    # img2img from these PNG/JPEG bytes at this strength (variations, image prompts, upscale).
    init_image: bytes | None = None
    strength: float = 0.6
    # Outpainting: white where the init image is to be painted (PNG bytes, the init image's size).
    mask_image: bytes | None = None
    # What asked for the job (imagine, variation, upscale-subtle, zoom-2, pan-left, ...): decides the
    # size limit and VAE tiling, so a stored job rebuilds the same request.
    action: str = "imagine"
    # GPT-2 sampling temperature for this job (`--chaos`); None = the configured one.
    temperature: float | None = None
    # The registry's model name ("" = the default model).
    model: str = ""

    @property
    def tile_seeds(self) -> tuple[int, ...]:
        """Each tile's image seed: the given ones, else job_seed + i."""
        return self.image_seeds or tuple(self.job_seed + i for i in range(self.count))

    @property
    def mode(self) -> str:
        """txt2img, img2img or outpaint: which pipeline renders the request."""
        if self.init_image is None:
            return "txt2img"
        return "img2img" if self.mask_image is None else "outpaint"

    @property
    def tiled_vae(self) -> bool:
        """Upscales decode (and encode) through the VAE in tiles so memory stays bounded."""
        return self.action.startswith("upscale")

    @property
    def large_output(self) -> bool:
        """Upscale and outpaint results may exceed the plain-grid pixel limit (up to the output limit)."""
        return self.action.startswith(LARGE_OUTPUT_PREFIXES)


@dataclass(frozen=True)
class ExpansionResult:
    """Prompts and the exact settings that produced them."""

    prompts: tuple[str, ...]
    settings: dict[str, Any]


@dataclass(frozen=True)
class GenerationResult:
    """What the GPU thread returns: images plus everything needed to reproduce them."""

    prompts: tuple[str, ...]
    image_seeds: tuple[int, ...]
    images: tuple[Image.Image, ...]
    expander: dict[str, Any]
    render: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    nsfw_flags: tuple[bool, ...] = ()


# (step, total, preview image or None)
ProgressCallback = Callable[[int, int, "Image.Image | None"], None]
