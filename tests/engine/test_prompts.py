"""Cleanup rules, seed prefix, blocklist and the 75-token fit, on crafted strings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bot.engine.prompts import (
    clean_prompt,
    compile_blocklist,
    dedupe_phrases,
    fit_to_token_window,
    is_blocked,
    with_seed_prefix,
)
from bot.settings import DEFAULT_BLOCKLIST

CLIP_MAX = 75


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # URLs and words with an inner dot go, the phrase boundary (comma) stays.
        ("castle, visit https://example.com/x?y=1 now", "castle, visit now"),
        ("castle www.example.org, gold", "castle, gold"),
        ("castle, trending on artstation.com, 8k", "castle, trending, 8k"),
        ("castle, e.g. this, a.b", "castle, this"),
        # Midjourney flags with and without values.
        ("castle --ar 16:9 --v 5.2, gold", "castle, gold"),
        ("castle -q 2", "castle"),
        ("castle --no people, gold", "castle, gold"),
        # Weights: `::n` and `(word:1.2)` lose the weight, keep the word.
        ("castle::2 forest::-0.5", "castle forest"),
        ("castle:: gold", "castle gold"),
        ("(masterpiece:1.2), castle", "masterpiece, castle"),
        ("(castle: 0.8) at dusk", "castle at dusk"),
        # Brackets and markup characters.
        ('[castle] {gold} <lora> | "q" *bold* _u_ #tag ~^`\\', "castle gold lora q bold u tag"),
        # Repeated punctuation and whitespace.
        ("castle,, gold;; silver!!", "castle, gold, silver!"),
        ("castle... gold", "castle. gold"),
        ("castle ,gold", "castle, gold"),
        ("castle   gold\t\tx", "castle gold x"),
        ("castle,,, ,, gold", "castle, gold"),
        ("castle\nforest", "castle, forest"),
        ("castle\x00\x07forest", "castle forest"),
        # Dangling endings.
        ("castle, gold, by", "castle, gold"),
        ("castle and", "castle"),
        ("castle of", "castle"),
        ("castle WITH", "castle"),
        ("castle ,", "castle"),
        ("castle:", "castle"),
        ("castle -", "castle"),
        ("castle, by and of", "castle"),
        ("castle, in the, gold", "castle, gold"),
        ("by", ""),
        # Case-insensitive phrase dedupe keeps the first spelling.
        ("castle, Gold, gold , GOLD, silver", "castle, Gold, silver"),
        # Things that must survive.
        ("portrait of a wizard, by greg rutkowski, 8k", "portrait of a wizard, by greg rutkowski, 8k"),
        ("well-known castle", "well-known castle"),
        ("standby", "standby"),
        ("castle.", "castle."),
        ("🎨 שלום عالم, 漢字", "🎨 שלום عالم, 漢字"),
    ],
)
def test_clean_prompt(raw: str, expected: str) -> None:
    assert clean_prompt(raw) == expected


def test_clean_prompt_is_idempotent() -> None:
    raw = "castle::1.5, (gold:1.2),, by https://x.y/z --ar 3:2 [[wow]] and"
    once = clean_prompt(raw)
    assert clean_prompt(once) == once


def test_dedupe_phrases_drops_empties_and_keeps_order() -> None:
    assert dedupe_phrases("b, a, , B, c, a") == "b, a, c"


@pytest.mark.parametrize(
    ("continuation", "expected"),
    [
        ("gold, silver", "Northeastern University, gold, silver"),
        (", ; : gold", "Northeastern University, gold"),
        ("   ", "Northeastern University"),
        ("", "Northeastern University"),
    ],
)
def test_seed_is_a_verbatim_prefix(continuation: str, expected: str) -> None:
    assert with_seed_prefix("Northeastern University", continuation) == expected


def test_seed_prefix_is_not_cleaned() -> None:
    # The seed is the user's text: cleanup rules apply to the continuation only.
    seed = "castle::2 (gold:1.2) www.example.org --ar 16:9"
    assert with_seed_prefix(seed, clean_prompt("by, forest")) == f"{seed}, forest"


def test_blocklist_matches_case_insensitively_on_word_boundaries() -> None:
    blocklist = compile_blocklist(DEFAULT_BLOCKLIST)
    assert is_blocked("a castle, NSFW, gold", blocklist)
    assert is_blocked("Naked tree", blocklist)
    assert is_blocked("pornographic", blocklist)
    assert is_blocked("sexually", blocklist)
    assert not is_blocked("Sussex castle, essex coast", blocklist)
    assert not is_blocked("a castle at sunset", blocklist)
    assert not is_blocked("anything", compile_blocklist([]))
    custom = compile_blocklist([r"\bgold(en)?\b"])
    assert is_blocked("castle, GOLDEN light", custom)
    assert not is_blocked("castle, goldfish", custom)


# -- fitting into CLIP's window, with the real tokenizer of the tiny SD model ----------------------
@pytest.fixture(scope="module")
def count_clip_tokens(tiny_models: tuple[Path, Path]) -> Callable[[str], int]:
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_models[0], subfolder="tokenizer", local_files_only=True)
    assert tokenizer.model_max_length - 2 == CLIP_MAX

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"])

    return count


def test_fit_leaves_short_prompts_alone(count_clip_tokens: Callable[[str], int]) -> None:
    prompt = "Northeastern University, gold, highly detailed"
    assert fit_to_token_window(prompt, count_clip_tokens, CLIP_MAX, "Northeastern University") == prompt


def test_fit_cuts_at_a_comma_boundary(count_clip_tokens: Callable[[str], int]) -> None:
    seed = "Northeastern University"
    phrases = [f"phrase number {i} with several words" for i in range(40)]
    prompt = ", ".join([seed, *phrases])
    assert count_clip_tokens(prompt) > CLIP_MAX
    fitted = fit_to_token_window(prompt, count_clip_tokens, CLIP_MAX, seed)
    assert count_clip_tokens(fitted) <= CLIP_MAX
    assert fitted.startswith(seed + ", ")
    # A prefix of whole phrases: nothing cut mid-phrase...
    kept = fitted.split(", ")
    assert kept == [seed, *phrases[: len(kept) - 1]]
    # ...and as many as fit.
    assert count_clip_tokens(", ".join([*kept, phrases[len(kept) - 1]])) > CLIP_MAX


@pytest.mark.parametrize("seed", ["Northeastern University", "a, b, c", "🎨 שלום عالم"])
def test_fit_never_exceeds_the_window_and_keeps_the_seed(
    count_clip_tokens: Callable[[str], int], seed: str
) -> None:
    for repeat in (1, 5, 20, 80):
        prompt = seed + ", " + ", ".join(["gold", "highly detailed digital art", "8k"] * repeat)
        fitted = fit_to_token_window(prompt, count_clip_tokens, CLIP_MAX, seed)
        assert count_clip_tokens(fitted) <= CLIP_MAX
        assert fitted.startswith(seed)


def test_fit_with_an_over_long_seed_cuts_words(count_clip_tokens: Callable[[str], int]) -> None:
    seed = " ".join(f"word{i}" for i in range(100))
    fitted = fit_to_token_window(seed + ", gold", count_clip_tokens, CLIP_MAX, seed)
    assert 0 < count_clip_tokens(fitted) <= CLIP_MAX
    assert seed.startswith(fitted)
