"""The registry (models.toml), the LoRA folder and the inline flags: plain data, no model loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bot.engine.model_specs import LoraRef
from bot.flags import parse_inline_flags
from bot.models.queue import prefer_resident
from bot.models.registry import LoraLibrary, ModelRefused, load_registry
from bot.settings import Settings, SettingsError
from bot.store import JobRecord
from tests.models.conftest import write_models_toml


@pytest.fixture
def models_file(tmp_path: Path) -> Path:
    """A models file over folders that need not exist: nothing here loads a model."""
    return write_models_toml(tmp_path, (tmp_path / "tiny" / "sd", tmp_path / "tiny" / "text"))


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"data_dir": tmp_path, "width": 64, "height": 64, "steps": 2}
    return Settings(_env_file=None, **(values | overrides))  # type: ignore[arg-type]


def test_no_models_file_is_the_one_model_of_today(tmp_path: Path) -> None:
    registry = load_registry(_settings(tmp_path, sd_model="org/model"))
    assert [e.name for e in registry.entries] == ["sd21"] and registry.path is None
    entry = registry.usable(None)
    assert (entry.source, entry.width, entry.steps, entry.guidance) == ("org/model", 64, 2, 7.5)
    with pytest.raises(ModelRefused, match="Draft mode is not set up"):
        registry.draft_entry()


def test_models_file_entries_defaults_and_refusals(tmp_path: Path, models_file: Path) -> None:
    registry = load_registry(_settings(tmp_path))
    assert [e.name for e in registry.entries] == ["tiny", "tiny-b", "tiny-draft"]
    assert (registry.default, registry.draft) == ("tiny", "tiny-draft")
    draft = registry.draft_entry()
    assert (draft.kind, draft.guidance, draft.scheduler, draft.max_steps) == ("sd-turbo", 0.0, "euler-a", 4)
    assert registry.usable("TINY-B").name == "tiny-b"
    with pytest.raises(ModelRefused) as refused:
        registry.usable("sdxl")
    assert str(refused.value) == "There is no model `sdxl`. Models here: `tiny`, `tiny-b`, `tiny-draft`."


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[models.a]\nkind = 'sd2-512'\n", "[models.a] needs source"),
        ("[models.a]\nsource = 'x/y'\nkind = 'sdxl'\n", "kind must be one of sd1, sd2-512"),
        ("[models.a]\nsource = 'x/y'\nwidth = 100\n", "width must be a multiple of 8"),
        ("[models.a]\nsource = 'x/y'\nspeed = 1\n", "unknown key(s) speed"),
        ("default = 'b'\n[models.a]\nsource = 'x/y'\n", "default = 'b' is not an enabled model"),
        ("[models.a\n", "is not valid TOML"),
    ],
)
def test_a_bad_models_file_is_one_line_naming_it(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "models.toml").write_text(text)
    with pytest.raises(SettingsError) as error:
        load_registry(_settings(tmp_path))
    assert message in str(error.value) and "\n" not in str(error.value)
    assert str(tmp_path / "models.toml") in str(error.value)


def test_a_named_models_file_that_is_missing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="IMAGINE_MODELS_FILE: no such file"):
        load_registry(_settings(tmp_path, models_file=tmp_path / "nope.toml"))


def _lora_file(path: Path, scale: float = 1.0) -> None:
    save_file({"unet.down.lora_A.weight": torch.ones(2, 2) * scale}, str(path))


def test_lora_library_sidecars_hashes_and_refusals(tmp_path: Path, models_file: Path) -> None:
    registry = load_registry(_settings(tmp_path))
    library = LoraLibrary(tmp_path / "loras")
    assert (
        library.listing() == f"There are no LoRAs on this bot (they are looked for in {tmp_path / 'loras'})."
    )
    library.folder.mkdir()
    _lora_file(library.folder / "ink.safetensors")
    _lora_file(library.folder / "old.safetensors")
    (library.folder / "old.json").write_text(
        json.dumps({"base": "sd1", "triggers": ["oldstyle"], "weight": 0.7})
    )
    (library.folder / "broken.safetensors").write_bytes(b"not a safetensors file at all")
    assert library.names() == ["broken", "ink", "old"]
    info = library.info("OLD")
    assert (info.name, info.family, info.triggers, info.weight) == ("old", "sd1", ("oldstyle",), 0.7)
    tiny = registry.usable(None)
    assert library.check(LoraRef("ink", 0.5), tiny).name == "ink"
    with pytest.raises(
        ModelRefused, match=r"The LoRA `old` is for sd1 models; `tiny` is a sd2-768-v model\."
    ):
        library.check(LoraRef("old"), tiny)
    with pytest.raises(ModelRefused, match="is damaged or not a safetensors file"):
        library.check(LoraRef("broken"), tiny)
    with pytest.raises(ModelRefused, match=r"There is no LoRA `nope`\. LoRAs here: `broken`, `ink`, `old`\."):
        library.check(LoraRef("nope"), tiny)
    first = library.sha256("ink")
    _lora_file(library.folder / "ink.safetensors", scale=2.0)
    assert library.sha256("ink") != first


def test_inline_model_lora_and_draft_flags() -> None:
    flags = parse_inline_flags("a fox --model tiny-b --lora ink:0.5 --lora old --draft in snow")
    assert (flags.text, flags.model, flags.loras, flags.draft) == (
        "a fox in snow",
        "tiny-b",
        ("ink:0.5", "old"),
        True,
    )


def _job(job_id: str, user: int, model: str, at: float) -> JobRecord:
    return JobRecord(
        id=job_id, parent_id=None, action="imagine", status="queued", reason=None, seed_text="x", negative="",
        count=1, steps=1, guidance=0.0, width=64, height=64, job_seed=0, expand=False, safe_mode=True,
        source_tile=None, strength=None, given_prompts=None, given_seeds=None, init_image=None, user_id=user,
        guild_id=1, channel_id=1, created_at=at, started_at=None, finished_at=None, attempts=0, expander={},
        render={}, grid_path=None, delivery="pending", message_id=None, model=model,
    )  # fmt: skip


def test_fair_queue_prefers_the_loaded_model_passing_a_job_over_once_at_most() -> None:
    """The fair pick (b) trades places with the runner-up on the loaded model (a), once; a busy member's job
    does not jump the queue for it."""
    passed: dict[str, int | None] = {}
    queue = [_job("j1", 1, "b", 1.0), _job("j2", 2, "a", 2.0), _job("j3", 3, "a", 3.0)]
    first = prefer_resident(queue[0], queue, ("a",), passed)
    assert first.id == "j2" and passed == {"j1": 2}
    assert prefer_resident(queue[0], [queue[0], queue[2]], ("a",), passed).id == "j1"  # its one pass is used
    assert prefer_resident(_job("j4", 1, "b", 4.0), [_job("j5", 2, "a", 5.0)], ("a",), {}, {2}).id == "j4"


def test_mixed_model_queues_save_swaps_and_no_job_starts_more_than_one_job_later() -> None:
    """The runner's decisions replayed on 100 random mixed queues (bench/models.py's replay)."""
    import random

    from bench.models import dispatch_order, moved_back, swaps_of

    plain_swaps = aware_swaps = 0
    for seed in range(100):
        rng = random.Random(seed)
        queue = [_job(f"j{i:02d}", i % 4, rng.choice(("a", "b")), float(i)) for i in range(12)]
        plain = dispatch_order(queue, "a", model_aware=False)
        aware = dispatch_order(queue, "a", model_aware=True)
        assert sorted(j.id for j in aware) == sorted(j.id for j in queue)
        assert moved_back(plain, aware) <= 1
        plain_swaps += swaps_of(plain, "a")
        aware_swaps += swaps_of(aware, "a")
    assert aware_swaps < plain_swaps * 0.8


def test_a_request_with_its_model_and_loras_crosses_to_the_workers_unchanged() -> None:
    from bot.engine.types import GenerationRequest
    from bot.engine.workers.protocol import decode_request, encode_request

    request = GenerationRequest(
        "a fox", 1, 2, 7.5, 64, 64, 3, model="tiny-b", loras=(LoraRef("ink", 0.8), LoraRef("old", 1.0))
    )
    body = json.loads(json.dumps(encode_request(request, job="j1")))
    assert decode_request(body) == ("j1", request)
