"""Inline `--flags` in the seed text: a table of good and bad cases, merging with options, sizes."""

from __future__ import annotations

from typing import Any

import pytest

from bot.engine.types import InvalidRequest
from bot.flags import (
    ACCEPTED_FLAGS,
    RATIO_TOLERANCE,
    InlineFlags,
    chaos_temperature,
    merge_flags,
    parse_inline_flags,
    size_for_ratio,
)

GOOD: list[tuple[str, dict[str, Any]]] = [
    ("a cat", {"text": "a cat"}),
    ("a cat --ar 16:9", {"text": "a cat", "ratio": (16, 9)}),
    ("a cat --no text, watermark", {"text": "a cat", "negative": "text, watermark"}),
    ("a cat --seed 42 --steps 3", {"text": "a cat", "seed": 42, "steps": 3}),
    ("a cat --count 2 --chaos 50 --raw", {"text": "a cat", "count": 2, "chaos": 50, "raw": True}),
    ("a cat --raw in space", {"text": "a cat in space", "raw": True}),
    ("a cat --AR 2:3", {"text": "a cat", "ratio": (2, 3)}),
    ("a cat —ar 3:2 —no dogs", {"text": "a cat", "ratio": (3, 2), "negative": "dogs"}),
    ("well--known cat", {"text": "well--known cat"}),
    ("  rock -- roll\n", {"text": "  rock -- roll\n"}),  # no flag: kept verbatim
    ("a cat --seed 4294967295", {"text": "a cat", "seed": 4294967295}),
    ("a cat --chaos 0", {"text": "a cat", "chaos": 0}),
]

BAD: list[tuple[str, str]] = [
    ("a cat --stylize 100", "unknown flag `--stylize`"),
    ("a cat --ar 16x9", "`--ar` needs a ratio like 16:9"),
    ("a cat --ar 0:1", "`--ar` needs a ratio like 16:9"),
    ("a cat --ar 10:1", "between 1:4 and 4:1"),
    ("a cat --seed -1", "`--seed` needs a whole number"),
    ("a cat --seed 4294967296", "`--seed` must be 0..4294967295"),
    ("a cat --steps", "`--steps` needs a value"),
    ("a cat --steps two", "`--steps` needs a whole number"),
    ("a cat --count 0", "`--count` must be 1..1000"),
    ("a cat --chaos 101", "`--chaos` must be 0..100"),
    ("a cat --no", "`--no` needs the text"),
    ("a cat --seed 1 --seed 2", "`--seed` is given twice"),
]


@pytest.mark.parametrize(("text", "expected"), GOOD)
def test_good_flags_are_taken_out_of_the_text(text: str, expected: dict[str, Any]) -> None:
    assert parse_inline_flags(text) == InlineFlags(**expected)


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_flags_name_the_problem_and_list_the_accepted_flags(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_inline_flags(text)
    assert message in caught.value.user_message
    assert ACCEPTED_FLAGS in caught.value.user_message


def test_chaos_maps_onto_the_temperature() -> None:
    assert chaos_temperature(0) == 0.5 and chaos_temperature(50) == 1.25 and chaos_temperature(100) == 2.0
    assert parse_inline_flags("x --chaos 100").temperature == 2.0


LABELS = {"seed": "seed_number"}


def test_flags_fill_options_that_were_not_given() -> None:
    flags = parse_inline_flags("a cat --seed 5 --no dogs --raw --ar 3:4")
    merged = merge_flags(flags, {"seed": None, "negative": None, "expand": None, "aspect": None}, LABELS)
    assert merged == {"seed": 5, "negative": "dogs", "expand": False, "aspect": None, "ratio": (3, 4)}


def test_flag_and_option_that_agree_are_fine() -> None:
    flags = parse_inline_flags("a cat --seed 5 --ar 3:4")
    merged = merge_flags(flags, {"seed": 5, "aspect": "portrait"}, LABELS)
    assert merged["seed"] == 5 and merged["ratio"] == (3, 4)


@pytest.mark.parametrize(
    ("text", "options", "message"),
    [
        ("a cat --seed 5", {"seed": 7}, "`--seed 5` in the text and the `seed_number` option (7) disagree"),
        ("a cat --steps 3", {"steps": 4}, "`--steps 3` in the text and the `steps` option (4)"),
        ("a cat --raw", {"expand": True}, "`--raw` in the text and the `expand` option (True)"),
        ("a cat --ar 16:9", {"aspect": "square"}, "`--ar 16:9` in the text and the `aspect` option (square)"),
        ("a cat --no dogs", {"negative": "cats"}, "`--no dogs` in the text and the `negative` option (cats)"),
    ],
)
def test_flag_and_option_that_disagree_name_both(text: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match="disagree") as caught:
        merge_flags(parse_inline_flags(text), options, LABELS)
    assert message in caught.value.user_message


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [((1, 1), (768, 768)), ((16, 9), (1024, 576)), ((9, 16), (576, 1024)), ((4, 1), (1536, 384))],
)
def test_ratio_sizes_are_multiples_of_64_near_the_default_pixel_count(
    ratio: tuple[int, int], expected: tuple[int, int]
) -> None:
    width, height = size_for_ratio(ratio, 768, 768, 1024 * 1024)
    assert (width, height) == expected
    assert width % 64 == 0 and height % 64 == 0 and width * height <= 1024 * 1024


@pytest.mark.parametrize(
    "text",
    [
        "the plan —abandoned at dawn",  # an em dash in prose, not `--abandoned`
        "the plan – abandoned",
        "rock --n-- roll",
        "rock --n--roll",
        "a cat--dog hybrid",
    ],
)
def test_dashes_in_ordinary_text_are_text(text: str) -> None:
    assert parse_inline_flags(text) == InlineFlags(text=text)


def test_a_dash_flag_must_be_a_whole_token() -> None:
    assert parse_inline_flags("rock --n-- roll --seed 3") == InlineFlags(text="rock --n-- roll", seed=3)
    # An unknown `--name` token is still refused: a typo in a flag must not become seed text silently.
    with pytest.raises(InvalidRequest, match="unknown flag `--stylize`"):
        parse_inline_flags("a cat --stylize 100")


@pytest.mark.parametrize(
    ("ratio", "default"),
    [((2, 1), 128), ((3, 2), 128), ((16, 9), 128), ((4, 3), 64), ((2, 1), 64), ((1, 4), 128), ((7, 5), 768)],
)
def test_ratio_sizes_keep_the_ratio_within_the_tolerance_at_small_defaults(
    ratio: tuple[int, int], default: int
) -> None:
    width, height = size_for_ratio(ratio, default, default, 1024 * 1024)
    wanted = ratio[0] / ratio[1]
    assert abs((width / height) / wanted - 1) <= RATIO_TOLERANCE, (width, height)
    assert width % 8 == 0 and height % 8 == 0 and min(width, height) >= 64


def test_a_ratio_that_cannot_be_kept_is_refused_with_the_size_it_would_give() -> None:
    with pytest.raises(InvalidRequest) as caught:
        size_for_ratio((2, 1), 64, 64, 64 * 64)
    assert "`--ar 2:1`" in caught.value.user_message and "64×64" in caught.value.user_message
