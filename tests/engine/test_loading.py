"""Model loading: all-or-nothing and retryable, plain messages for members, the dtype that was asked for."""

from __future__ import annotations

import logging
import re
import shutil
import tomllib
from pathlib import Path

import pytest
import torch

from bot.engine.executor import Engine, EngineConfig
from bot.engine.local_backend import LocalBackend
from bot.engine.types import GenerationRequest, ModelLoadError
from bot.settings import Settings
from bot.store import HistoryStore
from bot.wiring import build_runner, engine_config_from
from tests.helpers import job_spec

ROOT = Path(__file__).resolve().parents[2]


def _break_text_model(folder: Path) -> None:
    """A GPT-2 folder whose weights file is garbage: the tokenizer loads, the model does not."""
    (folder / "model.safetensors").write_bytes(b"this is not a safetensors file" * 100)


def _request() -> GenerationRequest:
    return GenerationRequest(
        seed_text="a lighthouse", count=1, steps=2, guidance=7.5, width=64, height=64, job_seed=3
    )


async def test_a_failed_text_model_load_leaves_nothing_loaded_and_a_later_load_retries(
    tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    sd_path, text_path = tiny_models
    text_copy = tmp_path / "text"
    shutil.copytree(text_path, text_copy)
    _break_text_model(text_copy)
    engine = Engine(
        EngineConfig(sd_model=str(sd_path), text_model=str(text_copy), device="cpu", dtype="float32")
    )
    try:
        with pytest.raises(ModelLoadError) as failed:
            await engine.load()
        # All or nothing: the SD pipeline that did load is not kept half-wired.
        assert engine.renderer is None
        assert engine.expander is None
        # The second attempt really tries again (and fails again) instead of short-circuiting.
        with pytest.raises(ModelLoadError):
            await engine.generate(_request())
        assert "IMAGINE_TEXT_MODEL" in failed.value.detail
        # The operator fixes the folder; the same engine now loads and renders.
        shutil.rmtree(text_copy)
        shutil.copytree(text_path, text_copy)
        result = await engine.generate(_request())
        assert len(result.images) == 1
        assert engine.renderer is not None and engine.expander is not None
    finally:
        await engine.close()


def test_load_error_detail_is_whole_and_the_member_message_is_plain(tmp_path: Path) -> None:
    from bot.engine.loading import load_text_model

    missing = tmp_path / ("a-very-long-folder-name-" * 12) / "text"
    with pytest.raises(ModelLoadError) as failed:
        load_text_model(str(missing), device=torch.device("cpu"))
    detail = failed.value.detail
    # Not cut mid-sentence: the operator's hint is there to its end.
    assert detail.endswith("IMAGINE_TEXT_MODEL=.tiny-models/text)")
    assert str(missing) in detail
    member = failed.value.user_message
    assert str(tmp_path) not in member
    assert not re.search(r"[A-Z][a-z]+Error|IMAGINE_|python -m|/", member)
    assert member.endswith(".") or member[0].islower()


async def test_a_job_on_an_unloadable_model_stores_a_plain_reason_and_logs_the_detail(
    make_settings: type[Settings],
    tmp_path: Path,
    tiny_models: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    text_copy = tmp_path / "broken-text"
    shutil.copytree(tiny_models[1], text_copy)
    _break_text_model(text_copy)
    settings = make_settings(text_model=str(text_copy))
    engine = Engine(engine_config_from(settings))
    try:
        async with HistoryStore(settings.db_path) as store:
            runner = build_runner(settings, store, LocalBackend(engine))
            spec = job_spec(seed_text="a lighthouse", count=1, job_seed=3)
            job = await runner.submit(spec)
            with caplog.at_level(logging.ERROR):
                outcome = await runner.run_now(job)
    finally:
        await engine.close()
    assert outcome.job.status == "failed"
    reason = outcome.job.reason or ""
    assert reason == ModelLoadError.user_message
    for operator_only in (str(text_copy), "IMAGINE_TEXT_MODEL", "Error", "tiny-models", "python -m"):
        assert operator_only not in reason
    assert str(text_copy) in caplog.text
    assert "IMAGINE_TEXT_MODEL" in caplog.text


async def test_the_pipeline_loads_in_the_dtype_it_records(tiny_models: tuple[Path, Path]) -> None:
    sd_path, text_path = tiny_models
    engine = Engine(
        EngineConfig(sd_model=str(sd_path), text_model=str(text_path), device="cpu", dtype="bfloat16")
    )
    try:
        result = await engine.generate(_request())
        assert engine.renderer is not None
        pipe = engine.renderer.pipe
        for component in (pipe.unet, pipe.vae, pipe.text_encoder):
            assert component.dtype == torch.bfloat16
        assert engine.model_info["dtype"] == "bfloat16"
        assert result.render["dtype"] == "bfloat16"
    finally:
        await engine.close()


def test_the_diffusers_floor_honours_the_dtype_argument() -> None:
    """`from_pretrained(dtype=...)` is read by diffusers' pipelines only from 0.40.0 on (before: `torch_dtype`)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    (spec,) = [dep for dep in project["dependencies"] if dep.startswith("diffusers")]
    floor = re.search(r">=\s*(\d+)\.(\d+)", spec)
    assert floor is not None
    assert (int(floor.group(1)), int(floor.group(2))) >= (0, 40)
