"""GPT-2 prompt expansion: one batched `generate`, cleanup, blocklist, 77-token fit. Runs on the GPU thread."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from bot.engine.prompts import (
    clean_prompt,
    compile_blocklist,
    fit_to_token_window,
    is_blocked,
    with_seed_prefix,
)
from bot.engine.types import BlockedText, ExpansionResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingSettings:
    """Every sampling parameter passed to `generate` (transformers 5 changed the defaults)."""

    max_new_tokens: int = 60
    temperature: float = 0.9
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.2
    candidates_per_tile: int = 2
    max_rounds: int = 3


class PromptExpander:
    """Turns a seed text into `count` distinct SD prompts with a GPT-2-family model."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_id: str,
        revision: str,
        device: torch.device,
        blocklist: Sequence[str],
        sampling: SamplingSettings,
        count_clip_tokens: Callable[[str], int],
        clip_max_tokens: int = 75,
        version: str = "base",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.revision = revision
        # "base", or the version a trained folder records (bot.train.expander): which model wrote a prompt.
        self.version = version
        self.device = device
        self.blocklist_patterns = list(blocklist)
        self.blocklist = compile_blocklist(blocklist)
        self.sampling = sampling
        self.count_clip_tokens = count_clip_tokens
        self.clip_max_tokens = clip_max_tokens
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"

    def settings_record(self, job_seed: int, sampling: SamplingSettings | None = None) -> dict[str, Any]:
        """What the history stores to reproduce an expansion."""
        s = sampling or self.sampling
        return {
            "model": self.model_id,
            "revision": self.revision,
            "version": self.version,
            "seed": job_seed,
            "do_sample": True,
            "max_new_tokens": s.max_new_tokens,
            "temperature": s.temperature,
            "top_k": s.top_k,
            "top_p": s.top_p,
            "repetition_penalty": s.repetition_penalty,
            "candidates_per_tile": s.candidates_per_tile,
            "max_rounds": s.max_rounds,
            "blocklist": self.blocklist_patterns,
        }

    def expand(
        self,
        seed_text: str,
        count: int,
        job_seed: int,
        *,
        safe_mode: bool = True,
        temperature: float | None = None,
    ) -> ExpansionResult:
        """Expand `seed_text` into `count` prompts; deterministic for the same seed and settings.

        `temperature` overrides the configured sampling temperature for this call (`--chaos`).
        """
        sampling = self.sampling if temperature is None else replace(self.sampling, temperature=temperature)
        seed = seed_text.strip()
        if safe_mode and is_blocked(seed, self.blocklist):
            # Checked before queueing too; never fall back to (render) a seed the filter blocks.
            raise BlockedText("`seed` is not allowed by the content filter here; rephrase it")
        started = time.perf_counter()
        prompts: list[str] = []
        seen = {seed.lower()}
        blocked = 0
        for round_index in range(sampling.max_rounds):
            needed = count - len(prompts)
            if needed <= 0:
                break
            for text in self._generate(seed, needed, job_seed + round_index * 7919, sampling):
                prompt = self._finish(seed, text)
                if prompt is None or prompt.lower() in seen:
                    continue
                if safe_mode and is_blocked(prompt, self.blocklist):
                    blocked += 1
                    continue
                seen.add(prompt.lower())
                prompts.append(prompt)
                if len(prompts) == count:
                    break
        fallback = count - len(prompts)
        prompts.extend([seed] * fallback)
        log.debug(
            "expanded %r into %d prompts (%d blocked, %d fallback) in %.3fs",
            seed,
            count,
            blocked,
            fallback,
            time.perf_counter() - started,
        )
        record = self.settings_record(job_seed, sampling) | {"blocked": blocked, "fallback": fallback}
        return ExpansionResult(prompts=tuple(prompts), settings=record)

    def _generate(self, seed: str, needed: int, rng_seed: int, sampling: SamplingSettings) -> list[str]:
        # transformers' sampling RNG is global; safe because every model call runs on one thread.
        _seed_everything(rng_seed)
        s = sampling
        encoded = self.tokenizer([seed + ","], return_tensors="pt", padding=True).to(self.device)
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=encoded["input_ids"],
                attention_mask=encoded["attention_mask"],
                do_sample=True,
                max_new_tokens=s.max_new_tokens,
                temperature=s.temperature,
                top_k=s.top_k,
                top_p=s.top_p,
                repetition_penalty=s.repetition_penalty,
                num_return_sequences=max(needed * s.candidates_per_tile, 2),
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
        new_tokens = output[:, encoded["input_ids"].shape[1] :]
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)

    def _finish(self, seed: str, continuation: str) -> str | None:
        cleaned = clean_prompt(continuation)
        prompt = with_seed_prefix(seed, cleaned)
        prompt = fit_to_token_window(prompt, self.count_clip_tokens, self.clip_max_tokens, seed)
        if len(prompt) <= len(seed) or not prompt.startswith(seed):
            return None
        return prompt


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
