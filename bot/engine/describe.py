"""`/describe` (issue 22): four prompts that would draw an image, the way CLIP Interrogator builds them.

A BLIP-family captioner (IMAGINE_CAPTION_MODEL) writes the subject; a CLIP model (IMAGINE_DESCRIBE_CLIP_MODEL,
for SD 2 the OpenCLIP ViT-H family its text encoder comes from) ranks the modifier lists kept in
`describe_modifiers.json` (medium, style, lighting, flavour) by image-text similarity. Prompt N takes the
N-th best medium, style and lighting and two flavours, so the four differ. GPU thread only.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from bot.engine.prompts import is_blocked
from bot.engine.types import ModelLoadError

log = logging.getLogger(__name__)

MODIFIERS_PATH = Path(__file__).with_name("describe_modifiers.json")
CATEGORIES = ("medium", "style", "lighting", "flavour")
PROMPTS = 4
MAX_CAPTION_TOKENS = 30
FALLBACK_CAPTION = "a picture"


@dataclass(frozen=True)
class DescribeResult:
    """The caption, four distinct prompts, and each category's modifiers best first (with scores)."""

    caption: str
    prompts: tuple[str, ...]
    ranked: dict[str, list[tuple[str, float]]]


def load_modifiers(path: Path = MODIFIERS_PATH) -> dict[str, list[str]]:
    """The modifier lists (data in the repository); each category needs PROMPTS entries at least."""
    data = json.loads(path.read_text(encoding="utf-8"))
    lists = {name: [str(entry) for entry in data[name]] for name in CATEGORIES}
    for name, entries in lists.items():
        if len(set(entries)) < PROMPTS:
            raise ValueError(f"{path}: `{name}` needs at least {PROMPTS} distinct entries")
    return lists


class Describer:
    """The captioner and CLIP, loaded on first use (the GPU thread), kept for the next job."""

    def __init__(
        self, caption_model: str, clip_model: str, *, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.caption_model = caption_model
        self.clip_model = clip_model
        self.device = device
        self.dtype = dtype
        self._models: tuple[Any, Any, Any, Any] | None = None
        self.modifiers = load_modifiers()

    def _load(self) -> tuple[Any, Any, Any, Any]:
        if self._models is None:
            from transformers import BlipForConditionalGeneration, BlipProcessor, CLIPModel, CLIPProcessor

            try:
                processor = BlipProcessor.from_pretrained(self.caption_model)
                captioner: Any = BlipForConditionalGeneration.from_pretrained(
                    self.caption_model, dtype=self.dtype
                )
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"IMAGINE_CAPTION_MODEL={self.caption_model}: {exc}") from exc
            try:
                clip_processor = CLIPProcessor.from_pretrained(self.clip_model)
                clip: Any = CLIPModel.from_pretrained(self.clip_model, dtype=self.dtype)
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"IMAGINE_DESCRIBE_CLIP_MODEL={self.clip_model}: {exc}") from exc
            self._models = (
                processor,
                captioner.to(self.device).eval(),
                clip_processor,
                clip.to(self.device).eval(),
            )
        return self._models

    def describe(
        self,
        image: Image.Image,
        *,
        blocklist: Sequence[re.Pattern[str]] = (),
        fits: Callable[[str], bool] = lambda text: True,
    ) -> DescribeResult:
        """Caption, rank, compose; modifiers and captions the blocklist matches are left out (filtered jobs)."""
        processor, captioner, clip_processor, clip = self._load()
        image = image.convert("RGB")
        with torch.inference_mode():
            inputs = processor(images=image, return_tensors="pt").to(self.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            ids = captioner.generate(
                **inputs, max_new_tokens=MAX_CAPTION_TOKENS, num_beams=1, do_sample=False
            )
            caption = " ".join(processor.decode(ids[0], skip_special_tokens=True).split())
            if not re.search(r"\w", caption) or is_blocked(caption, blocklist):
                caption = FALLBACK_CAPTION
            pixels = clip_processor(images=image, return_tensors="pt")["pixel_values"].to(
                self.device, self.dtype
            )
            image_embedding = torch.nn.functional.normalize(
                _features(clip.get_image_features(pixel_values=pixels)).float(), dim=-1
            )
            ranked: dict[str, list[tuple[str, float]]] = {}
            for name in CATEGORIES:
                entries = [e for e in self.modifiers[name] if not is_blocked(e, blocklist)]
                text = clip_processor(text=entries, return_tensors="pt", padding=True, truncation=True)
                text_embedding = clip.get_text_features(
                    input_ids=text["input_ids"].to(self.device),
                    attention_mask=text["attention_mask"].to(self.device),
                )
                text_embedding = torch.nn.functional.normalize(_features(text_embedding).float(), dim=-1)
                scores = (text_embedding @ image_embedding[0]).tolist()
                order = sorted(range(len(entries)), key=lambda i: (-scores[i], i))
                ranked[name] = [(entries[i], round(float(scores[i]), 4)) for i in order]
        prompts = compose_prompts(
            caption, {name: [e for e, _ in entries] for name, entries in ranked.items()}, fits=fits
        )
        return DescribeResult(caption=caption, prompts=prompts, ranked=ranked)


def _features(output: Any) -> torch.Tensor:
    """CLIP's projected features: a tensor in transformers 4, an output whose pooler_output it is in 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def compose_prompts(
    caption: str, ranked: dict[str, list[str]], *, fits: Callable[[str], bool] = lambda text: True
) -> tuple[str, ...]:
    """Prompt N: the caption, the N-th best medium, style and lighting, and the N-th and next flavours.

    `fits` (the SD tokenizer's window): modifiers are dropped from the end, then the caption's last words,
    until the prompt fits, so every prompt can be imagined as it stands."""
    prompts: list[str] = []
    for n in range(PROMPTS):
        flavours = ranked["flavour"][n : n + 2]
        parts = [
            f"{ranked['medium'][n]} of {caption}",
            ranked["style"][n],
            ranked["lighting"][n],
            *flavours,
        ]
        while len(parts) > 1 and not fits(", ".join(parts)):
            parts.pop()
        words = parts[0].split()
        while len(words) > 1 and not fits(" ".join(words)):
            words.pop()
        parts[0] = " ".join(words)
        prompts.append(", ".join(parts))
    return tuple(prompts)
