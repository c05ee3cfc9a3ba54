"""The /describe engine (issue 22) on tiny BLIP and CLIP models: four distinct prompts, the blocklist, the fit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from bot.engine.describe import Describer, compose_prompts, load_modifiers
from bot.engine.tiny_describe import build_tiny_describe_models


@pytest.fixture(scope="module")
def describer(tmp_path_factory: pytest.TempPathFactory, tiny_models: tuple[Path, Path]) -> Describer:
    caption, clip = build_tiny_describe_models(
        tmp_path_factory.mktemp("describe"), tiny_models[0] / "tokenizer"
    )
    return Describer(str(caption), str(clip), device=torch.device("cpu"), dtype=torch.float32)


def test_four_distinct_prompts_and_the_blocklist(describer: Describer) -> None:
    image = Image.new("RGB", (48, 40), (200, 40, 40))
    result = describer.describe(image)
    assert len(result.prompts) == 4 and len(set(result.prompts)) == 4
    assert [len(v) for v in result.ranked.values()] == [len(v) for v in load_modifiers().values()]
    blocked = describer.describe(image, blocklist=[re.compile(r"paint|photo", re.IGNORECASE)])
    assert not any(re.search("paint|photo", p, re.IGNORECASE) for p in blocked.prompts)


def test_prompts_are_trimmed_to_fit() -> None:
    ranked = {name: [f"{name}{i}" for i in range(6)] for name in ("medium", "style", "lighting", "flavour")}
    prompts = compose_prompts("a very long caption here", ranked, fits=lambda text: len(text.split()) <= 6)
    assert prompts[0] == "medium0 of a very long caption"
    assert all(len(p.split()) <= 6 for p in prompts) and len(set(prompts)) == 4
