"""/blend's request (issue 22): the pictures' count, the optional text prompt and its inline flags.

The flags /blend takes: `--iw W1,W2,…` (one weight per picture, in the order attached; missing ones are 1),
`--ar W:H`, `--no TEXT`, `--seed N`, `--steps N`, `--count N`. The pictures themselves are checked and
fitted by bot.uploads and packed into the job's blend sheet (bot.engine.blend).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.engine.blend import MAX_IMAGES, MIN_IMAGES, parse_weights, placeholder
from bot.engine.types import InvalidRequest
from bot.flags import parse_inline_flags
from bot.models.registry import ModelRegistry, blend_model

if TYPE_CHECKING:
    from bot.settings import Settings
    from bot.store import JobRecord, JobSpec

BLEND_FLAGS = "`--iw W1,W2,…`, `--ar W:H`, `--no TEXT`, `--seed N`, `--steps N`, `--count N`"
# `--iw` followed by its value: words joined by commas (spaces around a comma allowed: `--iw 1, 0.5`).
_IW_WORD = r"[0-9A-Za-z.+-]+"
_IW = re.compile(rf"(?:(?<=\s)|^)--iw(?:\s+({_IW_WORD}(?:\s*,\s*{_IW_WORD})*))?(?=\s|$)", re.IGNORECASE)


@dataclass(frozen=True)
class BlendRequest:
    """One /blend: how many pictures, their weights, the text and the flags (None = the usual default)."""

    images: int
    weights: tuple[float, ...]
    prompt: str = ""
    ratio: tuple[int, int] | None = None
    negative: str | None = None
    job_seed: int | None = None
    steps: int | None = None
    count: int | None = None


def parse_blend(text: str | None, images: int) -> BlendRequest:
    """The /blend `prompt` option: its text and flags; InvalidRequest names what is wrong."""
    if not MIN_IMAGES <= images <= MAX_IMAGES:
        raise InvalidRequest(f"/blend takes {MIN_IMAGES} to {MAX_IMAGES} images, got {images}")
    text = text or ""
    found = list(_IW.finditer(text))
    if len(found) > 1:
        raise InvalidRequest("`--iw` is given twice")
    weights_text = None
    if found:
        match = found[0]
        if match.group(1) is None:
            raise InvalidRequest("`--iw` needs a weight per image, like `--iw 1,0.5`")
        weights_text = re.sub(r"\s+", "", match.group(1))
        text = text[: match.start()] + " " + text[match.end() :]
    weights = parse_weights(weights_text, images)
    flags = parse_inline_flags(text)
    other = [
        name
        for name, used in (
            ("--chaos", flags.chaos is not None),
            ("--raw", flags.raw),
            ("--mitigation", flags.mitigation is not None),
            ("--model", flags.model is not None),
            ("--lora", bool(flags.loras)),
            ("--draft", flags.draft),
            ("--tile", flags.tile),
            ("--repeat", flags.repeat is not None),
        )
        if used
    ]
    if other:
        raise InvalidRequest(f"/blend does not take {', '.join(other)}; it takes {BLEND_FLAGS}")
    return BlendRequest(
        images=images,
        weights=weights,
        prompt=" ".join(flags.text.split()),
        ratio=flags.ratio,
        negative=flags.negative,
        job_seed=flags.seed,
        steps=flags.steps,
        count=flags.count,
    )


def blend_seed_text(request: BlendRequest) -> str:
    """What the job's row and its result show as its text: the prompt, else `/blend N images`."""
    return request.prompt or placeholder(request.images)


def blend_child_refusal(
    settings: Settings, registry: ModelRegistry, job: JobRecord, spec: JobSpec, *, exact: bool
) -> str | None:
    """Why a new job from `job` that renders as a blend (Reproduce, rerun, 🔄, ✨, a grid's Remix of a /blend
    job) cannot run now: /blend is off, or — for an exact repeat (`exact`) — its unCLIP model changed since.

    Vary, Upscale, Zoom, Pan and one image's Remix start from a tile on the SD model: not blends, no answer.
    """
    if (spec.render_action or spec.action) != "blend":
        return None
    model = blend_model(settings, registry)
    if model is None:
        return (
            "Can't start that: /blend is off on this bot now (its operator has not set IMAGINE_BLEND_MODEL "
            "or an `sd2-unclip` model in the models file)."
        )
    recorded = job.render.get("unclip_model")
    now = model[0].source
    if exact and recorded is not None and recorded != now:
        return f"Can't repeat job `{job.id}` exactly: /blend's model changed since it was made ({recorded} → {now})."
    return None
