"""Validation before any GPU work: every message names the argument and its value."""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

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


def clean_user_text(text: str, *, name: str, max_chars: int, required: bool) -> str:
    """Strip and check a user-supplied text: no control characters, not empty, not too long."""
    if not isinstance(text, str):
        raise InvalidRequest(f"`{name}` must be text, got {type(text).__name__}")
    for char in text:
        if unicodedata.category(char) == "Cc" and char not in "\t\n\r":
            raise InvalidRequest(f"`{name}` contains a control character (U+{ord(char):04X}); remove it")
    stripped = text.strip()
    if required and not stripped:
        raise InvalidRequest(f"`{name}` must not be empty")
    if len(stripped) > max_chars:
        raise InvalidRequest(f"`{name}` is {len(stripped)} characters; the limit is {max_chars}")
    return stripped


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
    clean_user_text(request.seed_text, name="seed", max_chars=limits.max_prompt_chars, required=True)
    clean_user_text(request.negative, name="negative", max_chars=limits.max_prompt_chars, required=False)
    if request.safe_mode:
        check_blocklist(request.seed_text, name="seed", blocklist=blocklist)
        check_blocklist(request.negative, name="negative", blocklist=blocklist)
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
    if request.width * request.height > limits.max_pixels:
        raise InvalidRequest(
            f"`width`×`height` must be at most {limits.max_pixels} pixels, got "
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
        for seed in request.image_seeds:
            _check_int("image seed", seed, 0, MAX_SEED_NUMBER + 64)
    if request.init_image_path is not None and not 0.0 < request.strength <= 1.0:
        raise InvalidRequest(f"`strength` must be in (0, 1], got {request.strength}")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"`{name}` must be a whole number {low}..{high}, got {value!r}")
    if not low <= value <= high:
        raise InvalidRequest(f"`{name}` must be {low}..{high}, got {value}")
