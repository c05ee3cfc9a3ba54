"""Validation before any GPU work: every message names the argument and its value."""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bot.engine.mitigation import check_mitigation
from bot.engine.types import BlockedText, GenerationRequest, InvalidRequest

MAX_SEED_NUMBER = 2**32 - 1


@dataclass(frozen=True)
class Limits:
    """Hard limits from the settings."""

    max_steps: int = 50
    max_pixels: int = 1024 * 1024
    max_count: int = 4
    max_guidance: float = 20.0
    max_prompt_chars: int = 500
    min_side: int = 64
    # Upscale and outpaint results may be larger than a plain grid tile.
    max_output_pixels: int = 2048 * 2048


# Bidirectional-text controls: they reorder what follows them on screen (U+202E shows "gnp.exe" for
# "exe.png") and would flip the layout of every list the text is shown in.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def normalize_user_text(text: str) -> str:
    """One line of plain text: bidi controls removed, every run of whitespace (newlines, tabs) one space."""
    return " ".join("".join(char for char in text if char not in _BIDI_CONTROLS).split())


def clean_user_text(text: str, *, name: str, max_chars: int, required: bool) -> str:
    """Normalize and check a user-supplied text: no control characters, not empty, not too long."""
    if not isinstance(text, str):
        raise InvalidRequest(f"`{name}` must be text, got {type(text).__name__}")
    for char in text:
        if unicodedata.category(char) == "Cc" and char not in "\t\n\r":
            raise InvalidRequest(f"`{name}` contains a control character (U+{ord(char):04X}); remove it")
    cleaned = normalize_user_text(text)
    if required and not cleaned:
        raise InvalidRequest(f"`{name}` must not be empty")
    if len(cleaned) > max_chars:
        raise InvalidRequest(f"`{name}` is {len(cleaned)} characters; the limit is {max_chars}")
    return cleaned


def check_seed_tokens(seed: str, count_tokens: Callable[[str], int], max_tokens: int) -> None:
    """The seed must fit CLIP's window by itself (the expander only appends to it)."""
    tokens = count_tokens(normalize_user_text(seed))
    if tokens > max_tokens:
        raise InvalidRequest(
            f"`seed` is {tokens} tokens long; Stable Diffusion reads at most {max_tokens}: shorten it"
        )


def check_blocklist(text: str, *, name: str, blocklist: Sequence[re.Pattern[str]]) -> None:
    """Raise BlockedText naming the argument and the words the blocklist matched."""
    for pattern in blocklist:
        match = pattern.search(text)
        if match is not None:
            words = " ".join(match[0].split())[:40] or match[0][:40]
            raise BlockedText(
                f"`{name}` contains “{words}”, which the content filter here does not allow; rephrase it"
            )


def validate_request(
    request: GenerationRequest, limits: Limits, blocklist: Sequence[re.Pattern[str]] = ()
) -> None:
    """Raise InvalidRequest naming the first bad argument; return None when the request can run.

    With `safe_mode`, the member's own text (seed, negative, given prompts) must pass `blocklist`: the
    expander's fallback to the plain seed is then always a seed that passed.
    """
    seed = clean_user_text(request.seed_text, name="seed", max_chars=limits.max_prompt_chars, required=True)
    negative = clean_user_text(
        request.negative, name="negative", max_chars=limits.max_prompt_chars, required=False
    )
    if request.safe_mode:
        # The normalised text, as it is stored and rendered: a bidi control inside a word must not hide it.
        check_blocklist(seed, name="seed", blocklist=blocklist)
        check_blocklist(negative, name="negative", blocklist=blocklist)
        for prompt in request.prompts or ():
            check_blocklist(prompt, name="prompt", blocklist=blocklist)
    if not isinstance(request.expand, bool):
        raise InvalidRequest(f"`expand` must be true or false, got {type(request.expand).__name__}")
    _check_int("count", request.count, 1, limits.max_count)
    _check_int("steps", request.steps, 1, limits.max_steps)
    if not isinstance(request.guidance, int | float) or not math.isfinite(request.guidance):
        raise InvalidRequest(f"`guidance` must be a finite number, got {request.guidance!r}")
    if not 0.0 <= request.guidance <= limits.max_guidance:
        raise InvalidRequest(f"`guidance` must be 0..{limits.max_guidance}, got {request.guidance}")
    for name, value in (("width", request.width), ("height", request.height)):
        _check_int(name, value, limits.min_side, 8192)
        if value % 8:
            raise InvalidRequest(f"`{name}` must be a multiple of 8, got {value}")
    max_pixels = limits.max_pixels
    if request.large_output:
        max_pixels = max(max_pixels, limits.max_output_pixels)
    if request.width * request.height > max_pixels:
        raise InvalidRequest(
            f"`width`×`height` must be at most {max_pixels} pixels, got "
            f"{request.width}×{request.height} = {request.width * request.height}"
        )
    _check_int("seed", request.job_seed, 0, MAX_SEED_NUMBER)
    if request.prompts is not None:
        if len(request.prompts) != request.count:
            raise InvalidRequest(f"`prompts` must have {request.count} entries, got {len(request.prompts)}")
        for prompt in request.prompts:
            clean_user_text(prompt, name="prompt", max_chars=2000, required=True)
    if request.image_seeds is not None:
        if len(request.image_seeds) != request.count:
            raise InvalidRequest(
                f"`image_seeds` must have {request.count} entries, got {len(request.image_seeds)}"
            )
        for image_seed in request.image_seeds:
            _check_int("image seed", image_seed, 0, MAX_SEED_NUMBER + 64)
    if not isinstance(request.strength, int | float) or not 0.0 < request.strength <= 1.0:
        raise InvalidRequest(f"`strength` must be in (0, 1], got {request.strength!r}")
    if request.mask_image is not None and request.init_image is None:
        raise InvalidRequest("`mask_image` needs an `init_image` to paint around")
    if request.temperature is not None and not (
        isinstance(request.temperature, int | float) and 0.0 < request.temperature <= 5.0
    ):
        raise InvalidRequest(f"`temperature` must be in (0, 5], got {request.temperature!r}")
    check_mitigation(request.mitigation)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"`{name}` must be a whole number {low}..{high}, got {value!r}")
    if not low <= value <= high:
        raise InvalidRequest(f"`{name}` must be {low}..{high}, got {value}")
