"""Several models and LoRAs on the real engine (tiny models, CPU): residency, the record, LoRAs with peft."""

from __future__ import annotations

import json
import shutil
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio
import torch

from bot.engine.model_specs import LoraRef
from bot.engine.types import GenerationRequest, InvalidRequest
from bot.intake import ActionRequest, ImagineRequest, Intake, Refusal, Requester
from bot.jobs import JobRunner
from bot.settings import Settings
from bot.store import HistoryStore, JobRecord
from tests.conftest import tiny_job
from tests.models.conftest import write_models_toml

if TYPE_CHECKING:
    from bot.engine.executor import Engine


async def test_two_models_limit_one_unloads_the_first_before_the_second_loads(
    make_settings: Callable[..., Settings], tiny_models: tuple[Path, Path], tmp_path: Path
) -> None:
    from bot.engine.executor import Engine
    from bot.wiring import engine_config_from

    write_models_toml(tmp_path, tiny_models)
    engine = Engine(engine_config_from(make_settings(max_resident_models=1)))
    try:
        await engine.load()
        resident = engine.models.peek("tiny")
        assert resident is not None
        first_unet = weakref.ref(resident.renderer.pipe.unet)
        del resident
        plain = tiny_job(GenerationRequest, count=1, expand=False)
        a = await engine.generate(plain)
        b = await engine.generate(tiny_job(GenerationRequest, count=1, expand=False, model="tiny-b"))
        # Freed before the second model loaded, and really gone (no reference kept it alive).
        assert list(engine.models.events) == ["load tiny", "unload tiny", "load tiny-b"]
        assert first_unet() is None
        assert engine.models.names() == ("tiny-b",)
        assert (a.render["model_name"], a.render["model_kind"]) == ("tiny", "sd2-768-v")
        assert (b.render["model_name"], b.render["model_kind"]) == ("tiny-b", "sd2-512")
        assert b.render["sd_model"] == str(tiny_models[0].parent / "sd-b")
        assert a.images[0].tobytes() != b.images[0].tobytes()
        again = await engine.generate(plain)  # back on the first model: the same bytes as before
        assert again.images[0].tobytes() == a.images[0].tobytes()
        assert engine.models.swaps == 2
    finally:
        await engine.close()


def make_tiny_lora(
    sd_dir: Path, folder: Path, name: str, *, seed: int, cross_attention_dim: int | None = None
) -> Path:
    """A LoRA made with peft on the tiny UNet (random B matrices, so it changes the output), saved in
    diffusers' format as `folder/NAME.safetensors`."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    if cross_attention_dim is None:
        unet = UNet2DConditionModel.from_pretrained(sd_dir / "unet")
    else:  # the tiny layout for another text encoder width: a LoRA that cannot fit the tiny model
        from bot.engine.tiny_models import tiny_unet_config

        unet = UNet2DConditionModel(**(tiny_unet_config() | {"cross_attention_dim": cross_attention_dim}))
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param_name, param in unet.named_parameters():
            if "lora_B" in param_name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=layers, weight_name=f"{name}.safetensors", safe_serialization=True
    )
    return folder / f"{name}.safetensors"


@dataclass
class Cli:
    """The command line's path, in process: the intake, then the runner renders the job here."""

    intake: Intake
    runner: JobRunner

    async def imagine(self, request: ImagineRequest) -> JobRecord | Refusal:
        admitted = await self.intake.imagine(Requester(user_id=None), request)
        return admitted if isinstance(admitted, Refusal) else await self._run(admitted)

    async def action(self, request: ActionRequest) -> JobRecord | Refusal:
        admitted = await self.intake.action(Requester(user_id=None), request)
        return admitted if isinstance(admitted, Refusal) else await self._run(admitted)

    async def _run(self, admitted: object) -> JobRecord:
        job = await self.intake.submit(admitted)  # type: ignore[arg-type]
        outcome = await self.runner.run_now(job)
        assert outcome.job.status == "done", outcome.job.reason
        return outcome.job


@pytest_asyncio.fixture(loop_scope="function")
async def cli(
    make_settings: Callable[..., Settings], tiny_models: tuple[Path, Path], tmp_path: Path
) -> AsyncIterator[Cli]:
    from bot.wiring import build_backend, build_runner

    write_models_toml(tmp_path, tiny_models)
    settings = make_settings(image_classifier="off")
    async with HistoryStore(settings.db_path) as store:
        backend = build_backend(settings)
        runner = build_runner(settings, store, backend, requeue_on_shutdown=False, retry_inline=True)
        try:
            yield Cli(Intake(settings, store, runner=runner), runner)
        finally:
            await backend.close()


def tile_bytes(job: JobRecord) -> list[bytes]:
    return [Path(tile.path or "").read_bytes() for tile in job.tiles]


@pytest.mark.asyncio(loop_scope="session")
async def test_lora_on_the_engine_changes_the_output_and_repeats_byte_for_byte(
    engine: Engine, tiny_models: tuple[Path, Path]
) -> None:
    """The fast one (the session's engine): adapters change the picture, the same set repeats it exactly,
    and without them the plain model's bytes come back."""
    assert engine.config.lora_dir is not None
    make_tiny_lora(tiny_models[0], Path(engine.config.lora_dir), "fast-ink", seed=3)
    plain = tiny_job(GenerationRequest, count=1, expand=False)
    styled = replace(plain, loras=(LoraRef("fast-ink", 1.0),))
    before = (await engine.generate(plain)).images[0].tobytes()
    first = await engine.generate(styled)
    second = await engine.generate(styled)
    after = (await engine.generate(plain)).images[0].tobytes()
    assert first.images[0].tobytes() != before
    assert second.images[0].tobytes() == first.images[0].tobytes()
    assert after == before
    assert first.render["loras"][0]["name"] == "fast-ink"
    # A LoRA made for another width fails its job in one sentence; the model renders on unchanged.
    make_tiny_lora(tiny_models[0], Path(engine.config.lora_dir), "fast-wide", seed=4, cross_attention_dim=48)
    with pytest.raises(InvalidRequest) as refused:
        await engine.generate(replace(plain, loras=(LoraRef("fast-wide", 1.0),)))
    assert refused.value.user_message == (
        "the LoRA `fast-wide` does not fit the model `sd21` (its layer shapes differ from the model's: it was "
        "made for another base model)"
    )
    assert (await engine.generate(plain)).images[0].tobytes() == before


async def test_lora_changes_the_output_reruns_exactly_and_refuses_a_changed_or_wrong_kind_file(
    cli: Cli, tiny_models: tuple[Path, Path]
) -> None:
    loras = cli.intake.loras.folder
    ink = make_tiny_lora(tiny_models[0], loras, "ink", seed=1)
    request = ImagineRequest("a castle", count=1, expand=False, job_seed=5)

    plain = await cli.imagine(request)
    styled = await cli.imagine(
        ImagineRequest("a castle", count=1, expand=False, job_seed=5, loras=("ink:0.8",))
    )
    assert isinstance(plain, JobRecord) and isinstance(styled, JobRecord)
    assert tile_bytes(plain) != tile_bytes(styled)
    (record,) = styled.render["loras"]
    assert record["name"] == "ink" and record["weight"] == 0.8 and len(record["sha256"]) == 64
    assert [(r.name, r.weight) for r in styled.loras] == [("ink", 0.8)]

    rerun = await cli.action(ActionRequest(styled.id, "rerun"))
    assert isinstance(rerun, JobRecord) and tile_bytes(rerun) == tile_bytes(styled)
    again = await cli.imagine(request)  # the adapters are gone again: the plain model's bytes
    assert isinstance(again, JobRecord) and tile_bytes(again) == tile_bytes(plain)

    # A LoRA made for another base kind is refused before queueing, in one sentence.
    shutil.copy(ink, loras / "old.safetensors")
    (loras / "old.json").write_text(json.dumps({"base": "sd1", "description": "SD 1.5 style"}))
    refused = await cli.imagine(ImagineRequest("a castle", loras=("old",)))
    assert refused == Refusal("The LoRA `old` is for sd1 models; `tiny` is a sd2-768-v model.", usage=True)
    unknown = await cli.imagine(ImagineRequest("a castle", loras=("nope",)))
    assert isinstance(unknown, Refusal) and unknown.message == (
        "There is no LoRA `nope`. LoRAs here: `ink`, `old`."
    )

    # The file changed since: a rerun would render differently, so it is refused.
    make_tiny_lora(tiny_models[0], loras, "ink", seed=2)
    changed = await cli.action(ActionRequest(styled.id, "rerun"))
    assert isinstance(changed, Refusal)
    assert changed.message == (
        f"Can't repeat job `{styled.id}` exactly: the LoRA file `ink.safetensors` changed since it was made "
        "(its sha256 differs)."
    )


async def test_draft_then_enhance_and_a_changed_revision_refuses_rerun(
    cli: Cli, tiny_models: tuple[Path, Path], tmp_path: Path
) -> None:
    draft = await cli.imagine(ImagineRequest("a fox", count=2, draft=True, expand=False))
    assert isinstance(draft, JobRecord)
    assert (draft.model, draft.steps, draft.guidance, draft.render["model_kind"]) == (
        "tiny-draft",
        1,
        0.0,
        "sd-turbo",
    )
    assert draft.render["scheduler"] == "EulerAncestralDiscreteScheduler"
    no_negative = await cli.imagine(ImagineRequest("a fox", draft=True, negative="blur"))
    assert isinstance(no_negative, Refusal) and "takes no negative prompt" in no_negative.message
    too_many = await cli.imagine(ImagineRequest("a fox", draft=True, steps=8))
    assert isinstance(too_many, Refusal) and too_many.message == (
        "`steps` must be 1..4 with the model `tiny-draft`, got 8."
    )

    enhanced = await cli.action(ActionRequest(draft.id, "enhance", 2))
    assert isinstance(enhanced, JobRecord)
    assert (enhanced.action, enhanced.parent_id, enhanced.source_tile, enhanced.model) == (
        "enhance",
        draft.id,
        2,
        "tiny",
    )
    assert (enhanced.count, enhanced.steps, enhanced.strength) == (1, 2, 0.55)
    assert enhanced.prompts == (draft.prompts[1],) and enhanced.render["mode"] == "img2img"
    not_draft = await cli.action(ActionRequest(enhanced.id, "enhance", 1))
    assert not_draft == Refusal("Enhance works on Draft images (made with `--draft`).", usage=True)

    # A model whose registry entry changed revision since: a rerun is refused, not rendered differently.
    on_b = await cli.imagine(ImagineRequest("a fox", count=1, model="tiny-b", expand=False))
    assert isinstance(on_b, JobRecord) and on_b.model == "tiny-b"
    write_models_toml(tmp_path, tiny_models, revision_b="v2")
    cli.intake.registry = __import__("bot.models.registry", fromlist=["x"]).load_registry(cli.intake.settings)
    refused = await cli.action(ActionRequest(on_b.id, "rerun"))
    assert isinstance(refused, Refusal) and refused.message.startswith(
        f"Can't repeat job `{on_b.id}` exactly: the model `tiny-b` changed since it was made"
    )
