"""Fixtures for several models: a models.toml over the tiny models (default, a second one, a draft one)."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_MODELS_TOML = """
default = "tiny"
draft = "tiny-draft"

[models.tiny]
source = "{sd}"
kind = "sd2-768-v"
width = 64
height = 64
steps = 2
description = "tiny default"

[models.tiny-b]
source = "{sd_b}"
kind = "sd2-512"
width = 64
height = 64
steps = 2
{revision_b}
description = "a second tiny model"

[models.tiny-draft]
source = "{draft}"
kind = "sd-turbo"
width = 64
height = 64
steps = 1
max_steps = 4
scheduler = "euler-a"
"""


def write_models_toml(folder: Path, tiny_models: tuple[Path, Path], *, revision_b: str | None = None) -> Path:
    """models.toml in `folder` naming the tiny model, the second tiny model and the tiny draft model."""
    sd = tiny_models[0]
    text = TINY_MODELS_TOML.format(
        sd=sd,
        sd_b=sd.parent / "sd-b",
        draft=sd.parent / "draft",
        revision_b=f'revision = "{revision_b}"' if revision_b else "",
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "models.toml"
    path.write_text(text)
    return path


@pytest.fixture
def models_file(tmp_path: Path, tiny_models: tuple[Path, Path]) -> Path:
    return write_models_toml(tmp_path, tiny_models)
