"""The synced slash-command definitions: names, option descriptions, minimal intents."""

from __future__ import annotations

from tests.cogs.conftest import RunningBot
from tests.fakediscord import FakeDiscord


async def test_commands_synced_once_with_described_options(fake: FakeDiscord, running: RunningBot) -> None:
    names = {command["name"] for command in fake.commands}
    assert {"imagine", "queue", "cancel", "history", "forget"} <= names
    for command in fake.commands:
        assert command["description"] and command["description"] != "…"
        for option in command.get("options", []):
            assert option["description"] not in ("", "…"), (command["name"], option["name"])
    assert fake.sync_count == 1
    assert fake.intents == 1  # GUILDS only: no privileged intents, no message content


async def test_force_sync_ignores_the_stored_hash(fake: FakeDiscord, running: RunningBot) -> None:
    assert await running.bot.sync_commands(force=False) is False
    assert await running.bot.sync_commands(force=True) is True
    assert fake.sync_count == 2
