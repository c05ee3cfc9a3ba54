"""Midjourney-style permutation prompts: `a {red, green} bird` is two jobs, `a red bird` and `a green bird`.

The grammar, as Midjourney documents it: options between braces are separated by commas; braces nest
(`{a, {b, c} d}`); a backslash keeps the next `,`, `{`, `}` or `\\` literal (`{red\\, white, blue}` is two
options). Inline flags may sit inside braces too (`--ar {1:1, 16:9}`): expansion runs before flags are
parsed, so every permutation is parsed as its own text. Text without braces or backslashes is returned
exactly as typed.

Written here rather than taken from a library: the one published parser of this syntax (`midjargon`)
is a young, single-maintainer package that also parses Midjourney's other flags, which this bot reads
itself (bot.flags); the grammar is thirty lines.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from bot.engine.types import InvalidRequest

_ESCAPABLE = ",{}\\"


@dataclass(frozen=True)
class _Choice:
    """`{...}`: one of its options, each a sequence of text and choices."""

    options: tuple[tuple[str | _Choice, ...], ...]


_Sequence = tuple["str | _Choice", ...]


def has_permutations(text: str) -> bool:
    """Whether `text` uses the permutation syntax (braces or an escape) at all."""
    return any(c in text for c in "{}\\")


def count_permutations(text: str) -> int:
    """How many texts `text` expands to (InvalidRequest on unbalanced braces), without expanding them."""
    if not has_permutations(text):
        return 1
    return _count(_parse(text))


def expand_permutations(text: str, *, limit: int) -> list[str]:
    """Every text `text` stands for, in Midjourney's order (the first brace varies slowest).

    InvalidRequest on unbalanced braces, or when there would be more than `limit`: counted first, so
    `{a,b}{a,b}...` never builds millions of strings.
    """
    if not has_permutations(text):
        return [text]
    tree = _parse(text)
    total = _count(tree)
    if total > limit:
        raise InvalidRequest(
            f"that text has {total} permutations; the limit is {limit} (IMAGINE_MAX_PERMUTATIONS)"
        )
    seen: list[str] = []
    for expanded in _expand(tree):
        tidy = " ".join(expanded.split())
        if tidy and tidy not in seen:  # `{a, a}` or an empty option is not a second job
            seen.append(tidy)
    if not seen:
        raise InvalidRequest("the braces leave no text to draw")
    return seen


def _parse(text: str) -> _Sequence:
    pos = 0

    def sequence(inside: bool) -> _Sequence:
        nonlocal pos
        parts: list[str | _Choice] = []
        buffer: list[str] = []
        while pos < len(text):
            char = text[pos]
            if char == "\\" and pos + 1 < len(text) and text[pos + 1] in _ESCAPABLE:
                buffer.append(text[pos + 1])
                pos += 2
                continue
            if char == "{":
                if buffer:
                    parts.append("".join(buffer))
                    buffer = []
                pos += 1
                parts.append(choice())
                continue
            if inside and char in ",}":
                break
            if char == "}":
                raise InvalidRequest(f"`}}` at character {pos + 1} closes no `{{` (write `\\}}` for a brace)")
            buffer.append(char)
            pos += 1
        if buffer:
            parts.append("".join(buffer))
        return tuple(parts)

    def choice() -> _Choice:
        nonlocal pos
        start = pos
        options: list[_Sequence] = []
        while True:
            options.append(sequence(inside=True))
            if pos >= len(text):
                raise InvalidRequest(f"`{{` at character {start} is never closed (write `\\{{` for a brace)")
            closing = text[pos]
            pos += 1
            if closing == "}":
                return _Choice(tuple(options))

    return sequence(inside=False)


def _count(sequence: _Sequence) -> int:
    total = 1
    for part in sequence:
        if isinstance(part, _Choice):
            total *= sum(_count(option) for option in part.options)
    return total


def _expand(sequence: _Sequence) -> list[str]:
    pieces: list[list[str]] = []
    for part in sequence:
        if isinstance(part, _Choice):
            pieces.append([text for option in part.options for text in _expand(option)])
        else:
            pieces.append([part])
    return ["".join(combo) for combo in itertools.product(*pieces)]
