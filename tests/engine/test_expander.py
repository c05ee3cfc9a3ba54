"""The GPT-2 prompt expander with the real tiny model; every model call runs on the engine's gpu thread."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from bot.engine.executor import Engine
from bot.engine.expander import PromptExpander
from bot.engine.types import BlockedText, ExpansionResult, GenerationRequest
from bot.settings import Settings

SEED = "Northeastern University"
CLIP_MAX = 75
# The tiny GPT-2 is fine-tuned on a small art-prompt corpus: these words appear in most of its outputs.
COMMON_WORDS = r"\b(8k|painting|gold\w*|digital)\b"


def _expand(engine: Engine, seed_text: str, count: int, job_seed: int) -> ExpansionResult:
    assert engine.expander is not None
    expander = engine.expander
    return engine.run_sync(lambda: expander.expand(seed_text, count, job_seed))


def _expand_with(
    engine: Engine,
    job_seed: int,
    *,
    blocklist: list[str],
    safe_mode: bool = True,
    count: int = 4,
    **sampling: Any,
) -> ExpansionResult:
    """Expand with the loaded model but another blocklist/sampling (built and run on the gpu thread)."""
    loaded = engine.expander
    assert loaded is not None

    def run() -> ExpansionResult:
        expander = PromptExpander(
            loaded.model,
            loaded.tokenizer,
            model_id=loaded.model_id,
            revision=loaded.revision,
            device=loaded.device,
            blocklist=blocklist,
            sampling=dataclasses.replace(loaded.sampling, **sampling),
            count_clip_tokens=loaded.count_clip_tokens,
            clip_max_tokens=loaded.clip_max_tokens,
        )
        return expander.expand(SEED, count, job_seed, safe_mode=safe_mode)

    return engine.run_sync(run)


def _clip_tokens(engine: Engine, texts: tuple[str, ...]) -> list[int]:
    renderer = engine.renderer
    assert renderer is not None
    return engine.run_sync(lambda: [renderer.count_clip_tokens(text) for text in texts])


@pytest.mark.parametrize("count", [1, 2, 4])
def test_prompts_extend_the_seed(engine: Engine, count: int) -> None:
    result = _expand(engine, SEED, count, job_seed=7)
    assert len(result.prompts) == count
    assert result.settings["fallback"] == 0, result
    assert len(set(result.prompts)) == count
    for prompt in result.prompts:
        assert prompt.startswith(SEED + ", ")
        assert len(prompt) > len(SEED)
    assert max(_clip_tokens(engine, result.prompts)) <= CLIP_MAX


def test_seed_is_kept_verbatim(engine: Engine) -> None:
    seed = "  ÉCOLE «Zürich» 🎨 (campus:1.5) --ar 16:9  "
    result = _expand(engine, seed, 3, job_seed=3)
    for prompt in result.prompts:
        assert prompt.startswith(seed.strip())


def test_prompts_are_distinct_case_insensitively(engine: Engine) -> None:
    for job_seed in range(5):
        prompts = _expand(engine, SEED, 4, job_seed).prompts
        non_fallback = [p.lower() for p in prompts if p != SEED]
        assert len(set(non_fallback)) == len(non_fallback)


def test_same_seed_same_prompts_other_seed_other_prompts(engine: Engine) -> None:
    first = _expand(engine, SEED, 4, job_seed=11)
    # Something else in between must not matter: the expander reseeds its RNG every time.
    _expand(engine, "a castle", 2, job_seed=99)
    again = _expand(engine, SEED, 4, job_seed=11)
    other = _expand(engine, SEED, 4, job_seed=12)
    assert again.prompts == first.prompts
    assert other.prompts != first.prompts


def test_blocked_prompts_are_regenerated(engine: Engine) -> None:
    # With one round, blocked candidates can only fall back to the seed; with more rounds they are
    # regenerated. Find a job seed whose first round is short of allowed prompts.
    for job_seed in range(10):
        one_round = _expand_with(engine, job_seed, blocklist=[COMMON_WORDS], max_rounds=1)
        if one_round.settings["fallback"] > 0:
            break
    else:
        pytest.fail(f"{COMMON_WORDS!r} never blocked enough of a first round; pick more common words")
    regenerated = _expand_with(engine, job_seed, blocklist=[COMMON_WORDS], max_rounds=3)

    kept = [p for p in one_round.prompts if p != SEED]
    assert one_round.settings["blocked"] > 0
    # The first round's allowed prompts stay, in order; later rounds fill the blocked slots.
    assert list(regenerated.prompts[: len(kept)]) == kept
    assert regenerated.settings["fallback"] < one_round.settings["fallback"]
    assert regenerated.settings["blocked"] >= one_round.settings["blocked"]
    blocked = re.compile(COMMON_WORDS, re.IGNORECASE)
    for prompt in regenerated.prompts:
        assert prompt.startswith(SEED)
        assert not blocked.search(prompt), prompt
    real = [p for p in regenerated.prompts if p != SEED]
    assert len(set(real)) == len(real)


def test_every_expansion_blocked_falls_back_to_a_seed_that_passes(engine: Engine) -> None:
    # Every expansion is "seed, continuation"; the seed itself has no comma and passes.
    result = _expand_with(engine, 0, blocklist=[","])
    assert result.prompts == (SEED,) * 4
    assert result.settings["fallback"] == 4
    assert result.settings["blocked"] > 0


@pytest.mark.parametrize("blocklist", [["."], [r"\w"], [r"\bnortheastern\b"]])
def test_a_blocked_seed_never_falls_back_to_itself(engine: Engine, blocklist: list[str]) -> None:
    # Before: the blocked seed itself became all four prompts and was rendered as typed.
    with pytest.raises(BlockedText):
        _expand_with(engine, 0, blocklist=blocklist)


def test_safe_mode_off_skips_the_blocklist(engine: Engine) -> None:
    result = _expand_with(engine, 0, blocklist=["."], safe_mode=False)
    assert result.settings["blocked"] == 0
    assert all(p.startswith(SEED + ", ") for p in result.prompts)


def test_settings_record_reproduces_the_expansion(engine: Engine, engine_settings: Settings) -> None:
    record = _expand(engine, SEED, 4, job_seed=5).settings
    assert record["model"] == engine_settings.text_model
    assert str(record["revision"]).startswith("sha256:")
    assert record["seed"] == 5
    assert record["do_sample"] is True
    assert record["max_new_tokens"] == engine_settings.expand_max_new_tokens
    assert record["temperature"] == engine_settings.expand_temperature
    assert record["top_k"] == engine_settings.expand_top_k
    assert record["top_p"] == 1.0
    assert record["repetition_penalty"] == engine_settings.expand_repetition_penalty
    assert record["candidates_per_tile"] >= 1
    assert record["max_rounds"] >= 1
    assert record["blocklist"] == list(engine_settings.blocklist)
    assert record["blocked"] >= 0 and record["fallback"] >= 0


@pytest.mark.asyncio(loop_scope="session")
async def test_generate_records_the_expansion(engine: Engine) -> None:
    request = GenerationRequest(
        seed_text=SEED, count=2, steps=1, guidance=7.5, width=64, height=64, job_seed=5
    )
    result = await engine.generate(request)
    assert result.expander["seed"] == 5
    assert result.expander["model"] == engine.config.text_model
    assert result.prompts == _expand(engine, SEED, 2, job_seed=5).prompts


@pytest.mark.asyncio(loop_scope="session")
async def test_expand_false_uses_the_seed_for_every_tile(engine: Engine) -> None:
    request = GenerationRequest(
        seed_text=f"  {SEED} ", count=3, steps=1, guidance=7.5, width=64, height=64, job_seed=5, expand=False
    )
    result = await engine.generate(request)
    assert result.prompts == (SEED,) * 3
    assert result.expander == {"source": "seed", "expand": False}
    assert len(result.images) == 3
