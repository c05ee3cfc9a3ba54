"""`/shorten`: which words of a prompt matter to the model, by how far CLIP's text embedding moves without each.

Runs on the GPU thread with the SD pipeline's own tokenizer and text encoder (the embedding the UNet is
conditioned on comes from the same encoder). One batch: the whole prompt plus one copy without each word;
a word's effect is 1 - cosine similarity of the pooled text embeddings (the end-of-text token, the
embedding CLIP itself compares texts by). Weights are scaled so the strongest word is 1.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from bot.engine.types import InvalidRequest

MAX_WORDS = 60
MAX_SHORTENED = 5
# The fractions of the words each shortened prompt keeps (most important first, original order).
_KEEP = (0.8, 0.65, 0.5, 0.35, 0.2)


@dataclass(frozen=True)
class ShortenResult:
    """Each word with its weight (0..1, in prompt order), and up to five shorter prompts, longest first."""

    words: tuple[str, ...]
    weights: tuple[float, ...]
    effects: tuple[float, ...]
    prompts: tuple[str, ...]

    def ranked(self) -> list[tuple[str, float]]:
        """Words by weight, strongest first (ties keep prompt order)."""
        order = sorted(range(len(self.words)), key=lambda i: (-self.weights[i], i))
        return [(self.words[i], self.weights[i]) for i in order]


def split_words(text: str) -> list[str]:
    """The prompt's words as typed (punctuation stays with its word)."""
    words = text.split()
    if not any(re.search(r"\w", word) for word in words):
        raise InvalidRequest("`prompt` needs at least one word")
    if len(words) > MAX_WORDS:
        raise InvalidRequest(f"`prompt` has {len(words)} words; /shorten takes at most {MAX_WORDS}")
    return words


def word_effects(tokenizer: Any, text_encoder: Any, words: list[str], device: torch.device) -> list[float]:
    """1 - cos(embedding(prompt), embedding(prompt without word i)) for every word i (GPU thread)."""
    texts = [" ".join(words)] + [" ".join(words[:i] + words[i + 1 :]) for i in range(len(words))]
    tokens = tokenizer(
        texts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    with torch.inference_mode():
        output = text_encoder(tokens.input_ids.to(device))
    pooled = output.pooler_output.float()
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    similarity = pooled[1:] @ pooled[0]
    return [max(0.0, float(1.0 - s)) for s in similarity]


def shortened_prompts(words: list[str], weights: list[float], limit: int = MAX_SHORTENED) -> list[str]:
    """Up to `limit` distinct shorter prompts: the most important words, in their original order."""
    ranked = sorted(range(len(words)), key=lambda i: (-weights[i], i))
    prompts: list[str] = []
    for fraction in _KEEP:
        keep = max(1, math.ceil(len(words) * fraction))
        if keep >= len(words):
            continue
        kept = sorted(ranked[:keep])
        prompt = " ".join(words[i] for i in kept).strip(" ,;")
        if prompt and prompt not in prompts:
            prompts.append(prompt)
        if len(prompts) == limit:
            break
    return prompts


def shorten(tokenizer: Any, text_encoder: Any, text: str, device: torch.device) -> ShortenResult:
    """The whole analysis of one prompt (GPU thread)."""
    words = split_words(text)
    effects = word_effects(tokenizer, text_encoder, words, device)
    top = max(effects)
    weights = [round(e / top, 3) if top > 0 else 0.0 for e in effects]
    return ShortenResult(
        words=tuple(words),
        weights=tuple(weights),
        effects=tuple(effects),
        prompts=tuple(shortened_prompts(words, weights)),
    )
