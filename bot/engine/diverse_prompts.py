"""The "diverse prompts" mitigation: a grid of a person nobody described gets descriptors spread over its tiles.

The approach DALL·E 2 shipped in 2022: when a prompt depicts a person (a word of `person_nouns`) and names
no gender, ethnicity or age (the word lists), each of the grid's N prompts gets one gender and one ethnicity
adjective right before the first person noun. The adjectives come from `[descriptors]` in
`data/diverse_prompts.toml`, spread evenly: every gender ⌊N/2⌋ or ⌈N/2⌉ times, the ethnicities in an
order seeded by the job seed, none repeated before all were used. Deterministic for a job seed; the
described prompts are what the job records, so Reproduce and `rerun` (which render the recorded prompts)
repeat them exactly. Pure text: no model, no Discord.
"""

from __future__ import annotations

import functools
import random
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.engine.prompts import fit_to_token_window, is_blocked

WORD_LISTS = Path(__file__).with_name("data") / "diverse_prompts.toml"


@dataclass(frozen=True)
class WordLists:
    """The lists of `data/diverse_prompts.toml`."""

    genders: tuple[str, ...]
    ethnicities: tuple[str, ...]
    gender_words: tuple[str, ...]
    ethnicity_words: tuple[str, ...]
    age_words: tuple[str, ...]
    person_nouns: tuple[str, ...]

    @functools.cached_property
    def _attribute_patterns(self) -> dict[str, re.Pattern[str]]:
        return {
            "gender": _words_pattern(self.gender_words),
            "ethnicity": _words_pattern(self.ethnicity_words),
            "age": _words_pattern(self.age_words),
        }

    @functools.cached_property
    def _person_pattern(self) -> re.Pattern[str]:
        return _words_pattern(self.person_nouns)

    def named_attribute(self, prompt: str) -> str | None:
        """`gender`, `ethnicity` or `age` when the prompt already names one (first found), else None."""
        for name, pattern in self._attribute_patterns.items():
            if pattern.search(prompt):
                return name
        return None

    def first_person_noun(self, prompt: str) -> re.Match[str] | None:
        """Where the prompt first names a person, or None when it names nobody."""
        return self._person_pattern.search(prompt)


def _words_pattern(words: Sequence[str]) -> re.Pattern[str]:
    # Longest first, so "police officer" wins over "officer"; whole words only, a plural s/es allowed.
    alternatives = "|".join(re.escape(word) for word in sorted(set(words), key=len, reverse=True))
    return re.compile(rf"(?<![\w-])(?:{alternatives})(?:s|es)?(?![\w-])", re.IGNORECASE)


@functools.cache
def load_word_lists(path: Path = WORD_LISTS) -> WordLists:
    """The shipped word lists (read once)."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    words, descriptors = data["words"], data["descriptors"]
    return WordLists(
        genders=tuple(descriptors["gender"]),
        ethnicities=tuple(descriptors["ethnicity"]),
        gender_words=tuple(words["gender_words"]),
        ethnicity_words=tuple(words["ethnicity_words"]),
        age_words=tuple(words["age_words"]),
        person_nouns=tuple(words["person_nouns"]),
    )


def spread_descriptors(count: int, seed: int, lists: WordLists | None = None) -> list[str]:
    """`count` descriptors ("South Asian female"), genders balanced and ethnicities spread, seeded."""
    lists = lists or load_word_lists()
    rng = random.Random(seed)
    genders = [lists.genders[i % len(lists.genders)] for i in range(count)]
    rng.shuffle(genders)
    ethnicities: list[str] = []
    while len(ethnicities) < count:
        block = list(lists.ethnicities)
        rng.shuffle(block)
        ethnicities.extend(block)
    return [f"{ethnicity} {gender}" for ethnicity, gender in zip(ethnicities, genders, strict=False)]


def describe(prompt: str, descriptor: str, match: re.Match[str]) -> tuple[str, int]:
    """`descriptor` placed before the matched person noun, with `a`/`an` fixed; and where the noun ends."""
    before, after = prompt[: match.start()], prompt[match.start() :]
    article = re.search(r"(?<![\w-])(a|an)\s+$", before, re.IGNORECASE)
    if article is not None:
        wanted = "an" if descriptor[:1].lower() in "aeiou" else "a"
        if article[1][0].isupper():
            wanted = wanted.capitalize()
        before = before[: article.start(1)] + wanted + before[article.end(1) :]
    described = f"{before}{descriptor} {after}"
    return described, len(before) + len(descriptor) + 1 + (match.end() - match.start())


def diversify(
    prompts: Sequence[str],
    job_seed: int,
    *,
    count_tokens: Callable[[str], int] | None = None,
    max_tokens: int = 75,
    lists: WordLists | None = None,
) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The grid's prompts with descriptors where they apply, and the record of what was done.

    Each prompt is judged on its own (an expansion may name a person where the seed did not); the
    descriptors are spread over the prompts that get one. With `count_tokens`, a described prompt that
    outgrows CLIP's window loses trailing phrases, never the described person.
    """
    lists = lists or load_word_lists()
    targets: list[tuple[int, re.Match[str]]] = []
    reasons: list[str | None] = []
    for index, prompt in enumerate(prompts):
        named = lists.named_attribute(prompt)
        match = lists.first_person_noun(prompt)
        if named is not None:
            reasons.append(f"names {named}")
        elif match is None:
            reasons.append("no person")
        else:
            reasons.append(None)
            targets.append((index, match))
    result = list(prompts)
    descriptors: list[str | None] = [None] * len(prompts)
    for (index, match), descriptor in zip(
        targets, spread_descriptors(len(targets), job_seed, lists), strict=True
    ):
        described, noun_end = describe(prompts[index], descriptor, match)
        if count_tokens is not None and count_tokens(described) > max_tokens:
            described = fit_to_token_window(described, count_tokens, max_tokens, described[:noun_end])
        result[index] = described
        descriptors[index] = descriptor
    record = {
        "mode": "diverse-prompts",
        "descriptors": descriptors,
        "left_alone": [reason for reason in reasons],
    }
    return tuple(result), record


def apply_to_job(
    prompts: tuple[str, ...],
    *,
    job_seed: int,
    given: bool,
    count_tokens: Callable[[str], int],
    max_tokens: int,
    blocklist: Sequence[re.Pattern[str]] = (),
) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The engine's step after expansion: descriptors on a new job's prompts, then the blocklist on them.

    Given prompts (Reproduce, rerun, re-render, variations) already carry the descriptors they were
    rendered with and are kept. A described prompt the blocklist stops (a pattern matching a descriptor)
    goes back to the prompt without one, and the record says so.
    """
    if given:
        return prompts, {"mode": "diverse-prompts", "descriptors": "kept: the job's given prompts"}
    described, record = diversify(prompts, job_seed, count_tokens=count_tokens, max_tokens=max_tokens)
    if blocklist:
        kept = list(described)
        for index, prompt in enumerate(described):
            if prompt != prompts[index] and is_blocked(prompt, blocklist):
                kept[index] = prompts[index]
                record["descriptors"][index] = None
                record["left_alone"][index] = "the content filter blocked the described prompt"
        described = tuple(kept)
    return described, record
