"""Inline Midjourney-style parameters in the seed text (`--ar 16:9 --no text --seed 7 ...`).

One parser for `/imagine` and the CLI's `imagine`: the flags are taken out of the text, checked, and
merged with the options given the usual way (a flag and an option that disagree are an error).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from bot.engine.mitigation import MITIGATIONS
from bot.engine.types import InvalidRequest

ACCEPTED_FLAGS = (
    "`--ar W:H`, `--no TEXT`, `--seed N`, `--steps N`, `--count N`, `--chaos 0..100`, `--raw`, "
    "`--mitigation off|diverse-prompts|fair-guidance`, `--model NAME`, `--lora NAME[:WEIGHT]`, `--draft`"
)
MAX_SEED = 2**32 - 1
MAX_RATIO = 4.0
_KNOWN: tuple[str, ...] = (
    "ar",
    "no",
    "seed",
    "steps",
    "count",
    "chaos",
    "raw",
    "mitigation",
    "model",
    "lora",
    "draft",
)
# Midjourney parity, second round (issue 22): seamless tiling and repeated jobs.
ACCEPTED_FLAGS += ", `--tile`, `--repeat N`"
MAX_REPEAT = 100  # the operator's IMAGINE_MAX_PERMUTATIONS caps the jobs; this only bounds the number
_KNOWN += ("tile", "repeat")  # issue 22
# A flag is a whole token: `--name` after a space (or at the start), the name ending at a space (or the end),
# so `well--known`, `rock --n-- roll` and `a--b` stay text. Phones turn "--" into an em or en dash: a dash
# counts as a flag only before a flag we know (`—ar 3:2`); any other dash (`—abandoned`) is prose.
_FLAG = re.compile(
    r"(?:(?<=\s)|^)(?:--([A-Za-z][A-Za-z0-9]*(?:[_-][A-Za-z0-9]+)*)|[—–](" + "|".join(_KNOWN) + r"))(?=\s|$)",
    re.IGNORECASE,
)
_RATIO = re.compile(r"(\d{1,4}):(\d{1,4})")
# `--ar` keeps the asked ratio within this fraction (2 %), or the job is refused with the size it would get.
RATIO_TOLERANCE = 0.02
# The option each flag overlaps with (canonical names; callers map them to their own labels).
_OPTION_OF = {
    "no": "negative",
    "seed": "seed",
    "steps": "steps",
    "count": "count",
    "raw": "expand",
    "mitigation": "mitigation",
}
ASPECT_RATIOS = {"square": (1, 1), "portrait": (3, 4), "landscape": (4, 3)}


@dataclass(frozen=True)
class InlineFlags:
    """The seed text without its flags, and each flag's value (None = not given)."""

    text: str
    ratio: tuple[int, int] | None = None
    negative: str | None = None
    seed: int | None = None
    steps: int | None = None
    count: int | None = None
    chaos: int | None = None
    raw: bool = False
    #: `--mitigation NAME` (bot/engine/mitigation.py)
    mitigation: str | None = None
    #: a registry model name, LoRAs (`NAME` or `NAME:WEIGHT`, repeatable), Draft mode
    model: str | None = None
    loras: tuple[str, ...] = ()
    draft: bool = False
    # issue 22: seamless tiling; how many times to queue the job (new seeds each time)
    tile: bool = False
    repeat: int | None = None

    @property
    def temperature(self) -> float | None:
        return chaos_temperature(self.chaos) if self.chaos is not None else None


def chaos_temperature(chaos: int) -> float:
    """`--chaos 0..100` as a GPT-2 sampling temperature: 0 → 0.5 (tame), 100 → 2.0 (wild)."""
    return round(0.5 + 1.5 * chaos / 100, 4)


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(f"{message}. Accepted flags: {ACCEPTED_FLAGS}")


def _int_value(flag: str, value: str, low: int, high: int) -> int:
    if not re.fullmatch(r"\d{1,10}", value):
        raise _bad(f"`--{flag}` needs a whole number {low}..{high}, got {value[:30]!r}")
    number = int(value)
    if not low <= number <= high:
        raise _bad(f"`--{flag}` must be {low}..{high}, got {number}")
    return number


def parse_inline_flags(text: str) -> InlineFlags:
    """Take `--flag value` pairs out of `text`; InvalidRequest (listing the accepted flags) on a bad one."""
    if not isinstance(text, str):
        raise InvalidRequest(f"`seed` must be text, got {type(text).__name__}")
    matches = list(_FLAG.finditer(text))
    if not matches:
        return InlineFlags(text=text)  # no flags: the text is stored exactly as typed
    kept = [text[: matches[0].start()]]
    values: dict[str, Any] = {}
    for index, match in enumerate(matches):
        typed = match[1] or match[2]
        name = typed.lower()
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        words = text[match.end() : end].split()
        if name not in _KNOWN:
            raise _bad(f"unknown flag `--{typed[:30]}`")
        if name in values and name != "lora":
            raise _bad(f"`--{name}` is given twice")
        if name in ("raw", "draft", "tile"):
            values[name] = True
            kept.extend(words)  # `--raw`, `--draft` and `--tile` take no value: what follows is seed text
            continue
        if name == "no":
            if not words:
                raise _bad("`--no` needs the text to keep out, e.g. `--no text, watermark`")
            values["negative"] = " ".join(words)
            continue
        if not words:
            raise _bad(f"`--{name}` needs a value")
        value, rest = words[0], words[1:]
        kept.extend(rest)
        if name == "ar":
            values["ratio"] = _parse_ratio(value)
        elif name == "seed":
            values["seed"] = _int_value(name, value, 0, MAX_SEED)
        elif name == "chaos":
            values["chaos"] = _int_value(name, value, 0, 100)
        elif name == "mitigation":
            if value.lower() not in MITIGATIONS:
                raise _bad(f"`--mitigation` must be one of {', '.join(MITIGATIONS)}, got {value[:30]!r}")
            values["mitigation"] = value.lower()
        elif name == "model":
            values["model"] = value[:60]
        elif name == "lora":
            values.setdefault("loras", ())
            values["loras"] += (value[:80],)
        elif name == "repeat":  # issue 22
            values["repeat"] = _int_value(name, value, 1, MAX_REPEAT)
        else:  # steps, count: the engine applies the server's limits
            values[name] = _int_value(name, value, 1, 1000)
    seed_text = " ".join(" ".join(kept).split())
    return InlineFlags(text=seed_text, **values)


def _parse_ratio(value: str) -> tuple[int, int]:
    match = _RATIO.fullmatch(value)
    if match is None or int(match[1]) == 0 or int(match[2]) == 0:
        raise _bad(f"`--ar` needs a ratio like 16:9, got {value[:30]!r}")
    width, height = int(match[1]), int(match[2])
    if not 1 / MAX_RATIO <= width / height <= MAX_RATIO:
        raise _bad(f"`--ar` must be between 1:4 and 4:1, got {width}:{height}")
    return width, height


def size_for_ratio(ratio: tuple[int, int], width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """A size of about the default's pixel count with this aspect ratio, within the limit.

    Multiples of 64 when they keep the ratio within RATIO_TOLERANCE (every size at SD's usual defaults),
    else multiples of 8 (small defaults: 2:1 at 128×128 is 176×88, not 192×64). InvalidRequest names the
    size it would give when no size of at least 64 a side keeps the ratio under `max_pixels`.
    """
    area = min(width * height, max_pixels)
    wanted = ratio[0] / ratio[1]
    w = max(64, round(math.sqrt(area * wanted) / 64) * 64)
    h = max(64, round(math.sqrt(area / wanted) / 64) * 64)
    while w * h > max_pixels and (w > 64 or h > 64):
        if w >= h:
            w -= 64
        else:
            h -= 64
    if _ratio_error(w, h, wanted) <= RATIO_TOLERANCE and w * h <= max_pixels:
        return w, h
    best: tuple[float, int, int] | None = None
    for h8 in range(64, max_pixels // 64 + 1, 8):
        w8 = max(64, round(h8 * wanted / 8) * 8)
        if w8 * h8 > max_pixels:
            break  # both sides only grow from here
        if _ratio_error(w8, h8, wanted) > RATIO_TOLERANCE:
            continue
        distance = abs(math.log(w8 * h8 / area))
        if best is None or distance < best[0]:
            best = (distance, w8, h8)
    if best is None:
        raise _bad(
            f"`--ar {ratio[0]}:{ratio[1]}` cannot be kept within the size limit "
            f"({max_pixels} pixels): it would give {w}×{h}. Use a ratio closer to 1:1"
        )
    return best[1], best[2]


def _ratio_error(width: int, height: int, wanted: float) -> float:
    return abs((width / height) / wanted - 1)


def merge_flags(flags: InlineFlags, options: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """Options (canonical name → value or None) with the flags applied; a disagreement names both.

    Canonical names: negative, seed, steps, count, expand, mitigation, aspect (a name in ASPECT_RATIOS).
    `labels` maps them to what the caller shows (e.g. `seed` → `seed_number`).
    """
    merged = dict(options)
    flag_values = {
        "no": flags.negative,
        "seed": flags.seed,
        "steps": flags.steps,
        "count": flags.count,
        "raw": False if flags.raw else None,
        "mitigation": flags.mitigation,
    }
    for flag, value in flag_values.items():
        if value is None:
            continue
        option = _OPTION_OF[flag]
        given = options.get(option)
        if given is not None and given != value:
            shown = f"`--{flag}`" if flag == "raw" else f"`--{flag} {value}`"
            raise _bad(
                f"{shown} in the text and the `{labels.get(option, option)}` option ({given}) disagree: use one"
            )
        merged[option] = value
    merged["ratio"] = flags.ratio
    aspect = options.get("aspect")
    if flags.ratio is not None and aspect is not None:
        wanted = ASPECT_RATIOS.get(str(aspect))
        if wanted is None or wanted[0] * flags.ratio[1] != wanted[1] * flags.ratio[0]:
            raise _bad(
                f"`--ar {flags.ratio[0]}:{flags.ratio[1]}` in the text and the "
                f"`{labels.get('aspect', 'aspect')}` option ({aspect}) disagree: use one"
            )
    return merged
