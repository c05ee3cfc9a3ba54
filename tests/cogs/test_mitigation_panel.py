"""The server's bias mitigation in /settings through the fake Discord: each mode explained in one line, the
button cycles it, and the next /imagine runs with it (the result says so, the prompts carry descriptors)."""

from __future__ import annotations

import re

from tests.cogs.conftest import RunningBot
from tests.fakediscord import FakeDiscord, FakeMessage


def _field(message: FakeMessage, prefix: str) -> tuple[str, str]:
    field = next(f for f in message.embeds[0]["fields"] if f["name"].startswith(prefix))
    return field["name"], field["value"]


async def test_the_server_default_is_explained_cycled_and_applied(
    fake: FakeDiscord, running: RunningBot
) -> None:
    panel = await (await fake.send_slash("settings", {"scope": "server"}, user_id=fake.mod_id)).wait_final(
        timeout=15
    )
    name, value = _field(panel, "Bias mitigation")
    assert name == "Bias mitigation: off"
    assert all(f"**{mode}**:" in value for mode in ("off", "diverse-prompts", "fair-guidance"))
    button = next(
        c["custom_id"]
        for c in panel.all_components()
        if c.get("custom_id", "").startswith("ib:sb:g:mitigation:")
    )
    updated = await (await fake.click_button(panel, button, user_id=fake.mod_id)).wait_final(timeout=15)
    assert _field(updated, "Bias mitigation")[0] == "Bias mitigation: diverse-prompts"
    assert (await running.bot.preferences.guild(fake.guild_id)).mitigation == "diverse-prompts"

    asked = await fake.send_slash(
        "imagine",
        {"seed": "a photo of the face of a nurse", "count": 2, "expand": False},
        user_id=fake.alice_id,
    )
    result = await asked.wait_final(timeout=90, predicate=lambda m: bool(m.attachments and m.embeds))
    assert _field(result, "Bias mitigation")[1] == "diverse-prompts"
    description = result.embeds[0]["description"]
    assert len(re.findall(r"(?:fe)?male nurse", description)) == 2
