"""Issue 22: /blend's unCLIP model as a models.toml entry (`kind = "sd2-unclip"`) or IMAGINE_BLEND_MODEL."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.models.registry import ModelRefused, blend_model, load_registry
from bot.settings import Settings, SettingsError
from bot.wiring import engine_config_from

MODELS = """
[models.mix]
source = "./unclip"
kind = "sd2-unclip"

[models.sd]
source = "org/sd"
kind = "sd2-512"
"""


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"data_dir": tmp_path, "width": 64, "height": 64, "steps": 2}
    return Settings(_env_file=None, **(values | overrides))  # type: ignore[arg-type]


def test_an_unclip_entry_is_the_blend_model_and_no_imagine_model(tmp_path: Path) -> None:
    (tmp_path / "models.toml").write_text(MODELS)
    settings = _settings(tmp_path, blend_model="org/other-unclip")
    registry = load_registry(settings)
    entry, setting = blend_model(settings, registry)  # type: ignore[misc]
    # The registry's entry wins over IMAGINE_BLEND_MODEL; its defaults are the kind's (768², 20 steps, 10).
    assert (entry.name, entry.source, setting) == ("mix", str(tmp_path / "unclip"), "models.mix.source")
    assert (entry.width, entry.steps, entry.guidance) == (768, 20, 10.0)
    assert [e.name for e in registry.enabled] == ["sd"] and registry.names() == "`sd`"
    assert registry.default == "sd"  # the first model that is not an unCLIP one
    with pytest.raises(ModelRefused, match="only blends pictures"):
        registry.usable("mix")
    config = engine_config_from(settings)
    assert [e.name for e in config.models] == ["sd"]
    assert (config.blend_model, config.blend_model_setting) == (str(tmp_path / "unclip"), "models.mix.source")


def test_without_an_entry_the_setting_decides(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert blend_model(settings, load_registry(settings)) is None
    assert engine_config_from(settings).blend_model is None
    settings = _settings(tmp_path, blend_model="org/unclip", blend_noise_level=250)
    entry, setting = blend_model(settings, load_registry(settings))  # type: ignore[misc]
    assert (entry.source, entry.width, entry.steps, setting) == ("org/unclip", 64, 2, "IMAGINE_BLEND_MODEL")
    assert _settings(tmp_path, blend_model=" ").blend_model is None
    with pytest.raises(ValueError, match="blend_noise_level"):
        _settings(tmp_path, blend_noise_level=1000)


def test_an_unclip_model_cannot_be_the_default(tmp_path: Path) -> None:
    (tmp_path / "models.toml").write_text('default = "mix"\n' + MODELS)
    with pytest.raises(SettingsError, match="default = 'mix' is not an enabled model"):
        load_registry(_settings(tmp_path))
