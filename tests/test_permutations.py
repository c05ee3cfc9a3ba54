"""The `{a, b}` permutation parser and the `--tile` / `--repeat` flags (issue 22)."""

from __future__ import annotations

import pytest

from bot.engine.types import InvalidRequest
from bot.flags import parse_inline_flags
from bot.permutations import count_permutations, expand_permutations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain text, with a comma", ["plain text, with a comma"]),
        ("a {red, green} bird", ["a red bird", "a green bird"]),
        (
            "a {red, green} bird in the {jungle, desert}",
            [
                "a red bird in the jungle",
                "a red bird in the desert",
                "a green bird in the jungle",
                "a green bird in the desert",
            ],
        ),
        ("{cat, {big, small} dog}", ["cat", "big dog", "small dog"]),
        (r"a {red\, white, blue} flag", ["a red, white flag", "a blue flag"]),
        (r"curly \{braces\} stay", ["curly {braces} stay"]),
        ("a {,big} cat", ["a cat", "a big cat"]),
        ("a {cat, cat} here", ["a cat here"]),
        ("cat --ar {1:1, 16:9}", ["cat --ar 1:1", "cat --ar 16:9"]),
    ],
)
def test_expands_like_midjourney(text: str, expected: list[str]) -> None:
    assert expand_permutations(text, limit=10) == expected


@pytest.mark.parametrize(("text", "message"), [("a {b, c", "never closed"), ("a } b", "closes no")])
def test_unbalanced_braces_are_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        expand_permutations(text, limit=10)


def test_the_cap_is_checked_before_anything_is_built() -> None:
    text = "{a, b}" * 40  # 2**40 texts
    assert count_permutations(text) == 2**40
    with pytest.raises(InvalidRequest, match="1099511627776 permutations; the limit is 4"):
        expand_permutations(text, limit=4)


def test_tile_and_repeat_flags() -> None:
    flags = parse_inline_flags("moss --tile on stone --repeat 3")
    assert flags.text == "moss on stone" and flags.tile and flags.repeat == 3
    assert parse_inline_flags("moss").tile is False
    with pytest.raises(InvalidRequest, match=r"`--repeat` must be 1\.\.100"):
        parse_inline_flags("moss --repeat 0")
