"""/settings end to end through the fake Discord: panels, their effects on /imagine, restarts, permissions,
forgetting; and the image filter's blur/spoiler path with a classifier result injected at its boundary."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageStat

from bot.engine.safety import Detection, TileVerdict
from bot.preferences import GuildSettings, MemberSettings
from tests.cogs.conftest import RunningBot, decode, imagine, start_bot, wait_job
from tests.fakediscord import MEMBER_PERMISSIONS, FakeDiscord, FakeInteraction, FakeMessage

GUTTER = 4


def _component(message: FakeMessage, prefix: str) -> str:
    return next(c["custom_id"] for c in message.all_components() if c.get("custom_id", "").startswith(prefix))


def _field(message: FakeMessage, name: str) -> str:
    return next(f["value"] for f in message.embeds[0]["fields"] if f["name"] == name)


async def _panel(fake: FakeDiscord, user_id: int, scope: str = "mine") -> tuple[FakeInteraction, FakeMessage]:
    interaction = await fake.send_slash("settings", {"scope": scope}, user_id=user_id)
    return interaction, await interaction.wait_final(timeout=15)


async def _select(
    fake: FakeDiscord, panel: FakeMessage, prefix: str, values: list[str], user_id: int
) -> FakeMessage:
    interaction = await fake.select(panel, _component(panel, prefix), values, user_id=user_id)
    return await interaction.wait_final(timeout=15)


def _job_id(message: FakeMessage) -> str:
    return _field(message, "Job").strip("`")


class FlagTiles:
    """A classifier result injected at the classifier boundary: flags the given 1-based tiles of every job."""

    name = "injected"

    def __init__(self, tiles: set[int] | None) -> None:
        self.tiles = tiles  # None = every tile
        self.calls = 0

    def classify(self, images: Sequence[Image.Image]) -> list[TileVerdict]:
        self.calls += 1
        hit = (Detection("FEMALE_BREAST_EXPOSED", 0.9),)
        return [
            TileVerdict(True, hit) if self.tiles is None or i in self.tiles else TileVerdict(False)
            for i in range(1, len(images) + 1)
        ]


async def test_member_default_count_gives_two_tiles_and_survives_a_restart(
    fake: FakeDiscord, bot_settings
) -> None:
    settings = bot_settings()
    first = await start_bot(fake, settings)
    try:
        _, panel = await _panel(fake, fake.alice_id)
        assert panel.ephemeral and _field(panel, "Images") == "4 (bot)"
        updated = await _select(fake, panel, "ib:ss:m:count:", ["2"], fake.alice_id)
        assert _field(updated, "Images") == "2 (yours)"
    finally:
        await first.stop()

    second = await start_bot(fake, settings)
    try:
        _, message = await imagine(fake, fake.alice_id)
        assert decode(message.attachments[0].data).size == (2 * 64 + GUTTER, 64)
        assert _field(message, "From your /settings") == "count"
        # An option overrides the default for one job; another member is not affected.
        _, message = await imagine(fake, fake.alice_id, count=1)
        assert decode(message.attachments[0].data).size == (64, 64)
        assert "From your /settings" not in [f["name"] for f in message.embeds[0]["fields"]]
        # Reset returns to the server's (here the bot's) defaults.
        _, panel = await _panel(fake, fake.alice_id)
        reset = await fake.click_button(panel, _component(panel, "ib:sb:m:reset:"), user_id=fake.alice_id)
        assert _field(await reset.wait_final(timeout=15), "Images") == "4 (bot)"
        assert await second.bot.preferences.member(fake.guild_id, fake.alice_id) == MemberSettings()
    finally:
        await second.stop()


async def test_server_allowlist_refuses_elsewhere_and_only_managers_may_change_it(
    fake: FakeDiscord, running: RunningBot
) -> None:
    art = fake.add_channel(fake.snowflake(), "art")
    # A member without Manage Server can open neither the server panel nor reach it from their own.
    refused = await (
        await fake.send_slash("settings", {"scope": "server"}, user_id=fake.alice_id)
    ).wait_final()
    assert refused.ephemeral and "Manage Server" in refused.content and not refused.components
    _, mine = await _panel(fake, fake.alice_id)
    click = await fake.click_button(mine, _component(mine, "ib:sb:g:open:"), user_id=fake.alice_id)
    assert "Manage Server" in (await click.wait_final()).content

    _, server = await _panel(fake, fake.mod_id, "server")
    updated = await _select(fake, server, "ib:sc:channels:", [str(art.id)], fake.mod_id)
    assert _field(updated, "Channels") == f"<#{art.id}>"
    assert f"<@{fake.mod_id}> channels: unset → <#{art.id}>" in _field(updated, "Recent changes")

    elsewhere = await fake.send_slash("imagine", {"seed": "cat"}, user_id=fake.alice_id)
    reply = await elsewhere.wait_final()
    assert reply.ephemeral and f"runs only in <#{art.id}>" in reply.content
    assert await running.store.count_jobs(any_user=True) == 0
    allowed = await fake.send_slash(
        "imagine", {"seed": "cat", "count": 1}, user_id=fake.alice_id, channel_id=art.id
    )
    result = await allowed.wait_final(timeout=90, predicate=lambda m: bool(m.attachments))
    assert result.channel_id == art.id

    # Manage Server is checked again on every press: revoked, the same panel changes nothing.
    fake.add_member(fake.mod_id, "mod", MEMBER_PERMISSIONS)
    press = await fake.select(
        server, _component(server, "ib:ss:g:policy:"), ["filtered"], user_id=fake.mod_id
    )
    assert "Manage Server" in (await press.wait_final()).content
    assert (await running.bot.preferences.guild(fake.guild_id)).policy == "channel"


async def test_modals_refuse_values_outside_the_bound_above_and_the_server_cap_applies(
    fake: FakeDiscord, running: RunningBot
) -> None:
    _, mine = await _panel(fake, fake.alice_id)
    opened = await fake.click_button(mine, _component(mine, "ib:sb:m:modal:"), user_id=fake.alice_id)
    await opened.wait_modal()
    refused = await (await fake.submit_modal(opened, {"steps": "80", "negative": "blurry"})).wait_final()
    assert (
        refused.ephemeral
        and "`steps` must be 1..50 (the bot's limit IMAGINE_MAX_STEPS), got 80" in refused.content
    )
    assert (
        await running.bot.preferences.member(fake.guild_id, fake.alice_id) == MemberSettings()
    )  # nothing saved
    # A submitted modal is closed: the member opens it again.
    opened = await fake.click_button(mine, _component(mine, "ib:sb:m:modal:"), user_id=fake.alice_id)
    await opened.wait_modal()
    saved = await (await fake.submit_modal(opened, {"steps": "3", "negative": "blurry"})).wait_final()
    assert _field(saved, "Steps") == "3 (yours)" and _field(saved, "Negative prompt") == "blurry (yours)"

    _, server = await _panel(fake, fake.mod_id, "server")
    opened = await fake.click_button(server, _component(server, "ib:sb:g:modal:"), user_id=fake.mod_id)
    await opened.wait_modal()
    refused = await (await fake.submit_modal(opened, {"max_pending": "9"})).wait_final()
    assert "1..5 (the bot's limit IMAGINE_MAX_PENDING_PER_USER), got 9" in refused.content
    opened = await fake.click_button(server, _component(server, "ib:sb:g:modal:"), user_id=fake.mod_id)
    await opened.wait_modal()
    saved = await (await fake.submit_modal(opened, {"max_pending": "1"})).wait_final()
    assert _field(saved, "Pending jobs per member").startswith("1 ")

    # The server's cap of 1 pending job per member applies (the bot's own is 5).
    gate = threading.Event()
    blocker = asyncio.get_running_loop().run_in_executor(None, running.bot.backend.engine.run_sync, gate.wait)
    try:
        first = await fake.send_slash("imagine", {"seed": "one", "count": 1}, user_id=fake.alice_id)
        await first.wait_deferred()
        second = await (await fake.send_slash("imagine", {"seed": "two"}, user_id=fake.alice_id)).wait_final()
        assert second.ephemeral and "this server's limit" in second.content
    finally:
        gate.set()
        await blocker
    job = (await running.store.list_jobs(user_id=fake.alice_id, limit=5))[0]
    done = await wait_job(running.store, job.id, lambda j: j.status == "done", timeout=90)
    assert (done.steps, done.negative, done.from_defaults) == (3, "blurry", ("steps", "negative"))


async def test_flagged_tiles_are_blurred_spoilered_recorded_and_an_all_flagged_grid_says_so(
    fake: FakeDiscord, running: RunningBot
) -> None:
    running.bot.runner.classifier = FlagTiles({1})
    _, message = await imagine(fake, fake.alice_id, count=2)
    job = await wait_job(running.store, _job_id(message), lambda j: j.delivery == "sent")
    assert [t.nsfw for t in job.tiles] == [True, False]
    attachment = message.attachments[0]
    assert attachment.filename.startswith("SPOILER_")
    assert not message.embeds[0].get("image")  # never shown unblurred inside the embed
    assert "1 of 2 image(s) flagged" in _field(message, "Filtered")
    blurred, clean = (decode(Path(t.path).read_bytes()).convert("L") for t in job.tiles)  # noqa: ASYNC240
    assert ImageStat.Stat(blurred).stddev[0] < ImageStat.Stat(clean).stddev[0] / 2
    # /history shows the flag; the tile alone is posted as a spoiler too.
    detail = await (await fake.send_slash("history", {"job": job.id}, user_id=fake.alice_id)).wait_final()
    assert "⚠️ filtered" in detail.embeds[0]["description"]
    click = await fake.click_button(
        message, message.find_component(label="U1")["custom_id"], user_id=fake.alice_id
    )
    tile = await click.wait_final(timeout=30, predicate=lambda m: bool(m.attachments))
    assert tile.attachments[0].filename.startswith("SPOILER_") and not tile.embeds[0].get("image")

    running.bot.runner.classifier = FlagTiles(None)
    interaction = await fake.send_slash("imagine", {"seed": "all of them", "count": 2}, user_id=fake.alice_id)
    final = await interaction.wait_final(timeout=90, predicate=lambda m: "flagged every image" in m.content)
    assert not final.attachments and not final.embeds
    jobs = await running.store.list_jobs(user_id=fake.alice_id, limit=1)
    assert [t.nsfw for t in jobs[0].tiles] == [True, True]


async def test_private_results_reach_the_member_alone(fake: FakeDiscord, running: RunningBot) -> None:
    _, panel = await _panel(fake, fake.alice_id)
    await _select(fake, panel, "ib:ss:m:private:", ["on"], fake.alice_id)
    interaction, message = await imagine(fake, fake.alice_id, count=1)
    assert message.ephemeral and interaction.ephemeral
    # When the interaction token is gone, a DM, never the channel.
    before = len(fake.channel_messages())
    gate = threading.Event()
    blocker = asyncio.get_running_loop().run_in_executor(None, running.bot.backend.engine.run_sync, gate.wait)
    try:
        late = await fake.send_slash("imagine", {"seed": "late", "count": 1}, user_id=fake.alice_id)
        await late.wait_deferred()
        fake.expire_token(late.token)
    finally:
        gate.set()
        await blocker
    dm = fake.dm_channel(fake.alice_id)
    await fake.wait_until(
        lambda: any(m.attachments for m in fake.channel_messages(dm.id)),
        timeout=90,
        what="a DM with the grid",
    )
    assert len(fake.channel_messages()) == before


async def test_forget_and_leaving_a_server_remove_settings(fake: FakeDiscord, running: RunningBot) -> None:
    prefs = running.bot.preferences
    await prefs.set_member(fake.guild_id, fake.alice_id, MemberSettings(count=2))
    await prefs.set_member(fake.guild_id, fake.bob_id, MemberSettings(count=3))
    await prefs.change_guild(fake.guild_id, fake.mod_id, "default_steps", 3)
    reply = await (await fake.send_slash("forget", {"confirm": True}, user_id=fake.alice_id)).wait_final()
    assert "your /settings here" in reply.content
    assert await prefs.member(fake.guild_id, fake.alice_id) == MemberSettings()
    assert await prefs.member(fake.guild_id, fake.bob_id) == MemberSettings(count=3)

    await fake.dispatch("GUILD_DELETE", {"id": str(fake.guild_id)})  # the bot was removed from the server

    async def forgotten() -> bool:
        return await prefs.guild(fake.guild_id) == GuildSettings() and not await prefs.guild_changes(
            fake.guild_id
        )

    deadline = asyncio.get_running_loop().time() + 10
    while not await forgotten():
        assert asyncio.get_running_loop().time() < deadline, "guild settings were not removed"
        await asyncio.sleep(0.05)
    assert await prefs.member(fake.guild_id, fake.bob_id) == MemberSettings()


async def test_jobs_from_the_image_buttons_of_a_private_result_stay_private(
    fake: FakeDiscord, running: RunningBot
) -> None:
    from tests.cogs.test_actions import job_id_of, press, tile_message

    _, panel = await _panel(fake, fake.alice_id)
    await _select(fake, panel, "ib:ss:m:private:", ["on"], fake.alice_id)
    _, grid = await imagine(fake, fake.alice_id, count=1)
    single = await tile_message(fake, grid, 1, fake.alice_id)
    varied = await press(fake, single, "Vary (Subtle)", fake.alice_id)
    assert varied.ephemeral
    child = await running.store.get_job(job_id_of(varied))
    assert child is not None and child.action == "vary-subtle" and child.private
