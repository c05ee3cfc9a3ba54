"""Managers allow a subset of the bot's LoRAs in `/settings scope:loras`: real discord.py client, fake Discord.

The allowed ones are all `/imagine lora:` autocomplete and `/loras` show in that server; the intake refuses
any other before queueing, naming it and the allowed ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest_asyncio
import torch
from safetensors.torch import save_file

from bot.settings import Settings
from tests.cogs.conftest import RunningBot, start_bot
from tests.fakediscord import FakeDiscord, FakeMessage
from tests.models.conftest import write_models_toml

LORAS = ("ink", "neon", "old")


def _component(message: FakeMessage, prefix: str) -> str:
    return next(c["custom_id"] for c in message.all_components() if c.get("custom_id", "").startswith(prefix))


@pytest_asyncio.fixture(loop_scope="function")
async def loras_bot(
    fake: FakeDiscord, bot_settings: Callable[..., Settings], tiny_models: tuple[Path, Path], tmp_path: Path
) -> AsyncIterator[RunningBot]:
    """The bot over the tiny models with three LoRA files (any base: no sidecars) in its data folder."""
    write_models_toml(tmp_path, tiny_models)
    folder = tmp_path / "loras"
    folder.mkdir()
    for name in LORAS:
        save_file({"unet.down.lora_A.weight": torch.ones(2, 2)}, str(folder / f"{name}.safetensors"))
    bot = await start_bot(fake, bot_settings(image_classifier="off"))
    yield bot
    if not bot.task.done():
        await bot.stop()


async def _autocomplete(fake: FakeDiscord, typed: str = "") -> list[str]:
    asked = await fake.send_autocomplete(
        "imagine", {"seed": "a fox", "lora": typed}, "lora", user_id=fake.alice_id
    )
    return [c["value"] for c in await asked.wait_autocomplete()]


async def test_managers_allow_a_subset_of_loras_that_autocomplete_loras_and_the_intake_follow(
    fake: FakeDiscord, loras_bot: RunningBot
) -> None:
    assert await _autocomplete(fake) == list(LORAS)

    # Only a manager opens the LoRAs panel.
    refused = await (
        await fake.send_slash("settings", {"scope": "loras"}, user_id=fake.alice_id)
    ).wait_final()
    assert refused.ephemeral and "Manage Server" in refused.content and not refused.components

    panel = await (await fake.send_slash("settings", {"scope": "loras"}, user_id=fake.mod_id)).wait_final(
        timeout=15
    )
    assert panel.ephemeral
    assert panel.embeds[0]["description"].startswith("Members may use every LoRA of the bot (3).")
    select = panel.find_component(_component(panel, "ib:sl:loras:"))
    assert [o["value"] for o in select["options"]] == list(LORAS)
    assert (select["min_values"], select["max_values"]) == (0, 3)

    picked = await fake.select(panel, select["custom_id"], ["old", "ink"], user_id=fake.mod_id)
    panel = await picked.wait_final(timeout=15)
    assert (await loras_bot.bot.preferences.guild(fake.guild_id)).loras == ("ink", "old")
    assert panel.embeds[0]["description"].startswith("Members may use `ink`, `old`.")
    changes = await loras_bot.bot.preferences.guild_changes(fake.guild_id)
    assert (changes[0].key, changes[0].old, changes[0].new) == ("loras", "unset", "`ink`, `old`")

    # Autocomplete and /loras show the allowed ones only.
    assert await _autocomplete(fake) == ["ink", "old"]
    assert await _autocomplete(fake, "ne") == []
    listed = (
        await (await fake.send_slash("loras", {}, user_id=fake.alice_id)).wait_final(timeout=30)
    ).content
    assert listed.startswith("LoRAs allowed on this server, page 1 of 1")
    assert "`ink`" in listed and "`old`" in listed and "neon" not in listed

    # The intake refuses a LoRA the server does not allow before queueing, in one sentence; nothing is written.
    before = await loras_bot.store.count_jobs(any_user=True)
    for options in ({"seed": "a fox --lora neon:0.5"}, {"seed": "a fox", "lora": "neon"}):
        reply = await (await fake.send_slash("imagine", options, user_id=fake.alice_id)).wait_final(
            timeout=30
        )
        assert reply.ephemeral
        assert reply.content == "The LoRA `neon` is not allowed on this server; allowed here: `ink`, `old`."
    assert await loras_bot.store.count_jobs(any_user=True) == before

    # "Allow every LoRA" clears the list.
    again = await fake.click_button(panel, _component(panel, "ib:sb:g:loras_all:"), user_id=fake.mod_id)
    panel = await again.wait_final(timeout=15)
    assert (await loras_bot.bot.preferences.guild(fake.guild_id)).loras == ()
    assert panel.embeds[0]["description"].startswith("Members may use every LoRA of the bot (3).")
    assert await _autocomplete(fake) == list(LORAS)
    server = await (await fake.send_slash("settings", {"scope": "server"}, user_id=fake.mod_id)).wait_final(
        timeout=15
    )
    field = next(f["value"] for f in server.embeds[0]["fields"] if f["name"] == "LoRAs")
    assert field == "every LoRA of the bot (`/settings scope:loras`)"
