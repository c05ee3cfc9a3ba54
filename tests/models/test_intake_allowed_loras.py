"""The intake and a server's allowed LoRAs: a real SQLite store, LoRA files on disk, no Discord, no models."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from bot.engine.model_specs import LoraRef
from bot.intake import ActionRequest, Admitted, ImagineRequest, Intake, Refusal, Requester
from bot.models.allowed import allowed_names
from bot.preferences import PreferenceStore, check_guild_value
from bot.settings import Settings
from bot.store import HistoryStore, Tile
from tests.helpers import job_spec

GUILD, CHANNEL, ALICE, MOD = 1, 2, 10, 12
ALICE_HERE = Requester(ALICE, GUILD, CHANNEL)


def _settings(tmp_path: Path) -> Settings:
    values: dict[str, object] = {"data_dir": tmp_path, "width": 64, "height": 64, "steps": 2, "count": 2}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_allowed_names_keep_the_folders_order_and_an_empty_list_allows_all() -> None:
    assert allowed_names(["ink", "Neon", "old"], ()) == ["ink", "Neon", "old"]
    assert allowed_names(["ink", "Neon", "old"], ("neon", "ink", "gone")) == ["ink", "Neon"]
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert check_guild_value(settings, "loras", ["old", " ink ", "old", ""]) == ("ink", "old")
    assert check_guild_value(settings, "loras", []) == ()


async def test_the_intake_refuses_a_lora_the_server_does_not_allow_before_queueing(tmp_path: Path) -> None:
    folder = tmp_path / "loras"
    folder.mkdir()
    for name in ("ink", "neon", "old"):
        save_file({"unet.down.lora_A.weight": torch.ones(2, 2)}, str(folder / f"{name}.safetensors"))
    async with HistoryStore(tmp_path / "h.sqlite3") as store:
        prefs = PreferenceStore(store)
        intake = Intake(_settings(tmp_path), store, preferences=prefs)
        # A job made while every LoRA was allowed.
        spec = job_spec(
            seed_text="a garden",
            count=2,
            job_seed=1,
            user_id=ALICE,
            guild_id=GUILD,
            loras=(LoraRef("neon", 0.8),),
        )
        job = await store.create_job(spec)
        assert await store.mark_running(job.id)
        tiles = [Tile(i, f"prompt {i}", i, str(tmp_path / f"tile-{i}.png"), False) for i in (1, 2)]
        assert await store.mark_done(job.id, tiles=tiles, grid_path="", expander={}, render={})

        await prefs.change_guild(GUILD, MOD, "loras", ("ink", "old"))
        before = await store.count_jobs(any_user=True)
        refused = await intake.imagine(ALICE_HERE, ImagineRequest("a garden", loras=("ink", "neon:0.5")))
        assert isinstance(refused, Refusal) and refused.usage
        assert refused.message == "The LoRA `neon` is not allowed on this server; allowed here: `ink`, `old`."
        # Every door: a rerun of the old job with that LoRA is refused the same way.
        rerun = await intake.action(ALICE_HERE, ActionRequest(job.id, "rerun"))
        assert isinstance(rerun, Refusal)
        assert rerun.message == "The LoRA `neon` is not allowed on this server; allowed here: `ink`, `old`."
        assert await store.count_jobs(any_user=True) == before

        allowed = await intake.imagine(ALICE_HERE, ImagineRequest("a garden", loras=("ink:0.5",)))
        assert isinstance(allowed, Admitted) and allowed.spec.loras == (LoraRef("ink", 0.5),)
        # The command line belongs to no server: every LoRA of the bot.
        cli = await intake.imagine(Requester(None), ImagineRequest("a garden", loras=("neon",)))
        assert isinstance(cli, Admitted)

        # None of the allowed LoRAs left in the folder: the sentence says so.
        await prefs.change_guild(GUILD, MOD, "loras", ("gone",))
        refused = await intake.imagine(ALICE_HERE, ImagineRequest("a garden", loras=("ink",)))
        assert isinstance(refused, Refusal)
        assert refused.message == "The LoRA `ink` is not allowed on this server; allowed here: none."
