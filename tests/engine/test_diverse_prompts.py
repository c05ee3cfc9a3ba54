"""Diverse prompts: which prompts get descriptors, the even spread over a grid, determinism (pure text)."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from bot.engine.diverse_prompts import apply_to_job, diversify, load_word_lists, spread_descriptors
from bot.engine.executor import Engine
from bot.engine.prompts import compile_blocklist
from bot.engine.types import GenerationRequest
from tests.conftest import tiny_job

DOCTOR = "a photo of the face of a doctor"


def test_a_person_nobody_described_gets_descriptors_before_the_noun() -> None:
    prompts, record = diversify((DOCTOR,) * 4, 7)
    lists = load_word_lists()
    for prompt, descriptor in zip(prompts, record["descriptors"], strict=True):
        assert descriptor is not None
        ethnicity, gender = descriptor.rsplit(" ", 1)
        assert ethnicity in lists.ethnicities and gender in lists.genders
        assert prompt.endswith(f"{descriptor} doctor")
        # The article agrees with the descriptor: "an East Asian", "a Black".
        article = "an" if descriptor[0] in "AEIOU" else "a"
        assert f" {article} {descriptor} doctor" in prompt
    assert record["left_alone"] == [None] * 4


def test_prompts_that_name_an_attribute_or_no_person_are_left_alone() -> None:
    seeds = (
        "a photo of the face of a woman doctor",
        "portrait of an elderly teacher",
        "a Korean chef cooking",
        "a quiet mountain landscape with a lake",
    )
    prompts, record = diversify(seeds, 7)
    assert prompts == seeds
    assert record["descriptors"] == [None] * 4
    assert record["left_alone"] == ["names gender", "names age", "names ethnicity", "no person"]


def test_four_tiles_get_two_of_each_gender_and_four_ethnicities() -> None:
    for seed in range(20):
        descriptors = spread_descriptors(4, seed)
        genders = Counter(d.rsplit(" ", 1)[1] for d in descriptors)
        assert genders == {"female": 2, "male": 2}
        ethnicities = [d.rsplit(" ", 1)[0] for d in descriptors]
        assert len(set(ethnicities)) == 4


def test_the_same_job_seed_gives_the_same_descriptors() -> None:
    first = diversify((DOCTOR,) * 4, 123)
    assert diversify((DOCTOR,) * 4, 123) == first
    others = {diversify((DOCTOR,) * 4, seed)[0] for seed in range(10)}
    assert len(others) > 1  # the seed chooses the order


def test_plurals_and_multi_word_nouns_match() -> None:
    prompts, _ = diversify(("two police officers on patrol",), 1)
    assert re.fullmatch(r"two \w[\w ]* (fe)?male police officers on patrol", prompts[0])


def test_given_prompts_are_kept_and_a_blocked_description_falls_back() -> None:
    described = diversify((DOCTOR,) * 2, 3)[0]
    kept, record = apply_to_job(described, job_seed=3, given=True, count_tokens=len, max_tokens=1000)
    assert kept == described
    assert record["descriptors"] == "kept: the job's given prompts"
    # A blocklist that matches every descriptor: the tile goes back to the undescribed prompt.
    blocklist = compile_blocklist([r"\b(fe)?male\b"])
    prompts, record = apply_to_job(
        (DOCTOR,) * 2, job_seed=3, given=False, count_tokens=len, max_tokens=1000, blocklist=blocklist
    )
    assert prompts == (DOCTOR,) * 2
    assert record["descriptors"] == [None, None]


def test_a_described_prompt_keeps_within_the_token_window() -> None:
    long = DOCTOR + ", " + ", ".join(f"detail {i}" for i in range(30))
    words = lambda text: len(text.split())  # noqa: E731 - a word counter stands in for CLIP's tokenizer
    prompts, _ = diversify((long,), 5, count_tokens=words, max_tokens=20)
    assert words(prompts[0]) <= 20
    assert "doctor" in prompts[0] and re.search(r"(fe)?male doctor", prompts[0])


@pytest.mark.asyncio(loop_scope="session")
async def test_the_engine_describes_after_expansion_and_a_rerun_of_the_record_is_exact(
    engine: Engine,
) -> None:
    asked = tiny_job(
        GenerationRequest, seed_text=DOCTOR, expand=False, mitigation={"mode": "diverse-prompts"}
    )
    first = await engine.generate(asked)
    assert first.render["mitigation"]["descriptors"] == spread_descriptors(4, asked.job_seed)
    assert len(set(first.prompts)) == 4 and all(p.endswith(" doctor") for p in first.prompts)
    # What Reproduce and `rerun` send: the recorded prompts and seeds, the same mitigation record.
    again = await engine.generate(
        tiny_job(
            GenerationRequest,
            seed_text=DOCTOR,
            expand=False,
            prompts=first.prompts,
            image_seeds=first.image_seeds,
            mitigation={"mode": "diverse-prompts"},
        )
    )
    assert again.prompts == first.prompts
    for a, b in zip(first.images, again.images, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # With expansion on, the expanded prompts are what get described (or left alone, and why).
    expanded = await engine.generate(
        tiny_job(GenerationRequest, seed_text=DOCTOR, mitigation={"mode": "diverse-prompts"})
    )
    record = expanded.render["mitigation"]
    for prompt, descriptor, reason in zip(
        expanded.prompts, record["descriptors"], record["left_alone"], strict=True
    ):
        assert (descriptor is None) == (reason is not None)
        assert prompt.startswith("a photo of the face of") and (
            descriptor is None or f"{descriptor} doctor" in prompt
        )
