"""Proves tests/fakediscord.py against a minimal *real* discord.py bot (no network)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import discord
import pytest
import pytest_asyncio
import yarl
from discord import app_commands
from discord.ext import commands
from PIL import Image

try:
    from tests.fakediscord import FLAG_EPHEMERAL, MANAGE_MESSAGES, FakeDiscord
except ImportError:  # tests/ not importable as a package
    from fakediscord import FLAG_EPHEMERAL, MANAGE_MESSAGES, FakeDiscord  # type: ignore[no-redef]


def _png(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), color).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()


class AgainButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"again:(?P<job>\d+)"):
    """Persistent button: works on messages sent before a restart (bot.add_dynamic_items)."""

    def __init__(self, job: int) -> None:
        super().__init__(
            discord.ui.Button(label="Again", style=discord.ButtonStyle.primary, custom_id=f"again:{job}")
        )
        self.job = job

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> AgainButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        bot = interaction.client
        assert isinstance(bot, MiniBot)
        bot.clicks.append((self.job, interaction.user.id, interaction.permissions.manage_messages))
        await interaction.response.send_message(f"again {self.job}", ephemeral=True)


class MiniBot(commands.Bot):
    def __init__(self, intents: discord.Intents | None = None) -> None:
        intents = intents or discord.Intents(guilds=True)
        super().__init__(command_prefix=commands.when_mentioned, intents=intents, guild_ready_timeout=0.05)
        self.ready = asyncio.Event()
        self.clicks: list[tuple[int, int, bool]] = []
        self.errors: list[BaseException] = []
        self.release = asyncio.Event()
        self.slow_result: asyncio.Future[Any] | None = None
        self.seen_options: list[dict[str, Any]] = []

    async def setup_hook(self) -> None:
        self.add_dynamic_items(AgainButton)
        self.slow_result = asyncio.get_running_loop().create_future()

        @self.tree.command(name="ping", description="Reply with a picture")
        @app_commands.describe(text="What to say", count="How many")
        async def ping(
            interaction: discord.Interaction,
            text: str = "pong",
            count: app_commands.Range[int, 1, 4] = 1,
            who: discord.Member | None = None,
        ) -> None:
            await interaction.response.defer(thinking=True)
            self.seen_options.append({"text": text, "count": count, "who": who and who.id})
            view = discord.ui.View(timeout=None)
            view.add_item(AgainButton(interaction.id % 100000))
            await interaction.followup.send(
                content=f"{text} x{count}", file=discord.File(io.BytesIO(PNG), "grid.png"), view=view
            )

        @self.tree.command(name="slow", description="Defers, waits, then follows up")
        async def slow(interaction: discord.Interaction) -> None:
            await interaction.response.defer(thinking=True, ephemeral=True)
            await self.release.wait()
            try:
                await interaction.followup.send("late")
            except discord.HTTPException as exc:
                assert self.slow_result is not None
                self.slow_result.set_result((exc.status, exc.code))
            else:
                assert self.slow_result is not None
                self.slow_result.set_result("sent")

        @self.tree.error
        async def on_app_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
            self.errors.append(error)

    async def on_ready(self) -> None:
        self.ready.set()


@pytest.fixture(autouse=True)
def no_discord_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """discord.py logs (and swallows) exceptions raised while parsing our payloads: fail on them."""
    caplog.set_level(logging.DEBUG, logger="discord")
    yield
    bad = [r for r in caplog.records if r.name.startswith("discord") and r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


@pytest_asyncio.fixture(loop_scope="function")
async def fake() -> AsyncIterator[FakeDiscord]:
    old_base = discord.http.Route.BASE
    old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    async with FakeDiscord(heartbeat_interval_ms=300) as fk:
        discord.http.Route.BASE = fk.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fk.gateway_url)
        try:
            yield fk
        finally:
            discord.http.Route.BASE = old_base
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway


async def _start(fake: FakeDiscord) -> tuple[MiniBot, asyncio.Task[None]]:
    bot = MiniBot()
    task = asyncio.create_task(bot.start(fake.token))
    ready = asyncio.create_task(bot.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if ready not in done:
        ready.cancel()
        if task.done():
            task.result()  # re-raise the login/connect failure
        raise AssertionError(f"bot not ready; {fake.debug_summary()}")
    return bot, task


async def _stop(bot: MiniBot, task: asyncio.Task[None]) -> None:
    await bot.close()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)


@pytest_asyncio.fixture(loop_scope="function")
async def bot(fake: FakeDiscord) -> AsyncIterator[MiniBot]:
    b, task = await _start(fake)
    await b.tree.sync()
    try:
        yield b
    finally:
        await _stop(b, task)
        assert not b.errors, b.errors
        assert not fake.unknown_requests, fake.debug_summary()


async def test_login_sync_slash_followup_and_button(fake: FakeDiscord, bot: MiniBot) -> None:
    # login + gateway handshake
    assert fake.identify_count == 1
    assert fake.intents == discord.Intents(guilds=True).value
    assert fake.gateway_connects == [{"v": "10", "encoding": "json", "compress": "zlib-stream"}]
    assert [r.path for r in fake.requests[:2]] == ["/users/@me", "/oauth2/applications/@me"]
    assert bot.application_id == fake.app_id
    assert bot.get_guild(fake.guild_id) is not None
    await fake.wait_until(lambda: len(fake.heartbeats) >= 2, 3, "heartbeats")

    # sync recorded
    assert fake.sync_count == 1
    assert sorted(c["name"] for c in fake.commands) == ["ping", "slow"]
    ping_cmd = next(c for c in fake.commands if c["name"] == "ping")
    assert {o["name"]: o["type"] for o in ping_cmd["options"]} == {"text": 3, "count": 4, "who": 6}

    # /ping → defer → followup with a PNG and a persistent button
    inter = await fake.send_slash(
        "ping", {"text": "hi", "count": 3, "who": fake.bob_id}, user_id=fake.alice_id
    )
    defer_s = await inter.wait_deferred(5)
    assert defer_s < 3.0 and inter.callback_types == [5]
    final = await inter.wait_final(10)
    assert final.id == inter.original_message_id and final.content == "hi x3" and not final.ephemeral
    assert final.type == 20 and final.author.id == fake.bot_user_id and final.edit_count == 1
    assert [a.filename for a in final.attachments] == ["grid.png"]
    png = final.attachments[0]
    assert png.data == PNG and (png.width, png.height) == (16, 12) and png.content_type == "image/png"
    assert inter.followups == [final]  # the first followup after a thinking defer fills the loading message
    assert bot.seen_options == [{"text": "hi", "count": 3, "who": fake.bob_id}]
    [button] = final.buttons
    assert button["custom_id"] == f"again:{inter.id % 100000}" and button["label"] == "Again"
    followup_req = fake.requests_to("POST", r"^/webhooks/")[-1]
    assert followup_req.query["wait"] == "1" and followup_req.files[0].data == PNG

    # the attachment URL serves the bytes
    channel = bot.get_channel(fake.channel_id)
    assert isinstance(channel, discord.TextChannel)
    fetched = await channel.fetch_message(final.id)
    assert await fetched.attachments[0].read() == PNG

    # the button reaches the bot's callback, with the clicking member's permissions
    click = await fake.click_button(final.id, button["custom_id"], user_id=fake.mod_id)
    reply = await click.wait_final(5)
    assert reply.content == f"again {inter.id % 100000}" and reply.flags & FLAG_EPHEMERAL
    assert bot.clicks == [(inter.id % 100000, fake.mod_id, True)]
    assert fake.members[fake.mod_id].permissions & MANAGE_MESSAGES

    # schema-aware validation: Discord's client would refuse an out-of-range value
    with pytest.raises(ValueError, match="max_value"):
        await fake.send_slash("ping", {"count": 9}, user_id=fake.alice_id)

    # persistent button survives a bot restart (DynamicItem registered in setup_hook)
    await bot.close()
    bot2, task2 = await _start(fake)
    try:
        assert fake.identify_count == 2
        click2 = await fake.click_button(final.id, button["custom_id"], user_id=fake.alice_id)
        await click2.wait_final(5)
        assert bot2.clicks == [(inter.id % 100000, fake.alice_id, False)]
    finally:
        await _stop(bot2, task2)


async def test_followup_429_is_retried_and_lands_once(fake: FakeDiscord, bot: MiniBot) -> None:
    fake.rate_limit_next("POST", r"^/webhooks/\d+/[^/]+$", retry_after=0.2)
    inter = await fake.send_slash("ping", {}, user_id=fake.alice_id)
    final = await inter.wait_final(10)
    attempts = fake.requests_to("POST", r"^/webhooks/\d+/[^/]+$")
    assert [r.status for r in attempts] == [429, 200]
    assert attempts[1].time - attempts[0].time >= 0.2
    assert final.content == "pong x1" and final.attachments[0].data == PNG
    assert len([m for m in fake.messages.values() if m.interaction_id == inter.id]) == 1


async def test_gateway_drop_resumes_and_reconnect(fake: FakeDiscord, bot: MiniBot) -> None:
    resumed = asyncio.Event()

    async def on_resumed() -> None:
        resumed.set()

    bot.add_listener(on_resumed)
    await fake.drop_gateway(code=4000)
    # sent while the bot is disconnected: buffered, replayed after the RESUME
    buffered = await fake.send_slash("ping", {"text": "buffered"}, user_id=fake.bob_id)
    await fake.wait_resumed(1, timeout=10)
    await asyncio.wait_for(resumed.wait(), 5)
    assert fake.resume_count == 1 and fake.identify_count == 1 and fake.replayed_count == 1
    assert (await buffered.wait_final(10)).content == "buffered x1"

    inter = await fake.send_slash("ping", {"text": "after resume"}, user_id=fake.bob_id)
    assert (await inter.wait_final(10)).content == "after resume x1"

    # op 7 RECONNECT: the client closes and resumes by itself
    await fake.send_reconnect()
    await fake.wait_resumed(2, timeout=10)
    inter2 = await fake.send_slash("ping", {"text": "after reconnect"}, user_id=fake.bob_id)
    assert (await inter2.wait_final(10)).content == "after reconnect x1"
    assert fake.resume_count == 2 and fake.identify_count == 1
    seqs = [s for _, _, s in fake.dispatched]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_expired_token_gives_401_50027(fake: FakeDiscord, bot: MiniBot) -> None:
    inter = await fake.send_slash("slow", {}, user_id=fake.alice_id)
    await inter.wait_deferred(5)
    assert inter.original is not None and inter.original.loading and inter.ephemeral
    fake.expire_token(inter.token)
    bot.release.set()
    assert bot.slow_result is not None
    assert await asyncio.wait_for(bot.slow_result, 5) == (401, 50027)
    assert inter.original.loading and not inter.followups


async def test_enforced_nonce_returns_the_first_message(fake: FakeDiscord, bot: MiniBot) -> None:
    channel = bot.get_channel(fake.channel_id)
    assert isinstance(channel, discord.TextChannel)
    # discord.py sends `enforce_nonce` with every nonce: a repeat within the window is the same message.
    first = await channel.send("hello", nonce="ib-0123456789")
    again = await channel.send("hello", nonce="ib-0123456789")
    other = await channel.send("hello", nonce="ib-other")
    assert again.id == first.id and first.nonce == "ib-0123456789"
    assert other.id != first.id
    assert [m.id for m in fake.channel_messages() if m.content == "hello"] == [first.id, other.id]
    fake.nonce_window = 0.0  # Discord forgets a nonce after a few minutes
    late = await channel.send("hello", nonce="ib-0123456789")
    assert late.id != first.id


async def test_rest_rules(fake: FakeDiscord, bot: MiniBot) -> None:
    channel = bot.get_channel(fake.channel_id)
    assert isinstance(channel, discord.TextChannel)
    # empty and oversized messages are refused like Discord does
    with pytest.raises(discord.HTTPException) as empty:
        await channel.send("")
    assert (empty.value.status, empty.value.code) == (400, 50006)
    with pytest.raises(discord.HTTPException) as long:
        await channel.send("x" * 2001)
    assert (long.value.status, long.value.code) == (400, 50035)
    # missing permissions
    fake.channel_bot_permissions[fake.nsfw_channel_id] = fake.bot_permissions & ~(1 << 15)  # no ATTACH_FILES
    nsfw = bot.get_channel(fake.nsfw_channel_id)
    assert isinstance(nsfw, discord.TextChannel) and nsfw.is_nsfw()
    with pytest.raises(discord.Forbidden):
        await nsfw.send(file=discord.File(io.BytesIO(PNG), "a.png"))
    # reply + edit + delete
    msg = await channel.send(
        f"hello <@{fake.alice_id}> @everyone", allowed_mentions=discord.AllowedMentions.none()
    )
    reply = await msg.reply("reply", mention_author=False)
    stored = fake.messages[reply.id]
    assert stored.type == 19 and stored.message_reference is not None
    assert fake.pinged_user_ids(fake.messages[msg.id]) == [] and not fake.pings_everyone(
        fake.messages[msg.id]
    )
    await msg.edit(content="edited")
    assert fake.messages[msg.id].content == "edited" and fake.messages[msg.id].edit_count == 1
    await msg.delete()
    assert fake.messages[msg.id].deleted
    # raw platform rules on the interaction endpoints
    inter = await fake.send_slash("ping", {}, user_id=fake.alice_id)
    await inter.wait_final(10)
    assert [m.id for m in fake.channel_messages()][-1] == inter.original_message_id
    async with aiohttp.ClientSession() as http:
        url = f"{fake.api_base}/interactions/{inter.id}/{inter.token}/callback"
        async with http.post(url, json={"type": 4, "data": {"content": "again"}}) as resp:
            assert resp.status == 400 and resp.headers["Content-Type"] == "application/json"
            assert (await resp.json())["code"] == 40060
        async with http.post(
            f"{fake.api_base}/webhooks/{fake.app_id}/nope?wait=1", json={"content": "x"}
        ) as resp:
            assert resp.status == 401 and (await resp.json())["code"] == 50027
        async with http.get(f"{fake.api_base}/no/such/route") as resp:
            assert resp.status == 404 and (await resp.json()) == {"message": "404: Not Found", "code": 0}
    assert [r.path for r in fake.unknown_requests] == ["/no/such/route"]
    fake.requests = [r for r in fake.requests if r.route is not None]  # the bot fixture asserts none are left


class Styles(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=60)
        self.picked: list[str] = []

    @discord.ui.select(
        custom_id="style",
        options=[
            discord.SelectOption(label="Photo", value="photo"),
            discord.SelectOption(label="Anime", value="anime"),
        ],
    )
    async def style(self, interaction: discord.Interaction, select: discord.ui.Select[Styles]) -> None:
        self.picked.extend(select.values)
        await interaction.response.edit_message(content=f"style={select.values[0]}", view=None)


class Seed(discord.ui.Modal, title="Seed"):
    seed: discord.ui.TextInput[Seed] = discord.ui.TextInput(label="Seed", custom_id="seed")

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"seed={self.seed.value}", ephemeral=True)


class FlowBot(MiniBot):
    def __init__(self) -> None:
        super().__init__(discord.Intents(guilds=True, members=True, guild_messages=True))
        self.messages_seen: list[str] = []

    async def setup_hook(self) -> None:
        @self.tree.command(name="edit", description="Defer, progress edits, final edit with a file")
        async def edit(interaction: discord.Interaction) -> None:
            await interaction.response.defer()
            for step in range(3):
                await interaction.edit_original_response(content=f"step {step}")
            embed = discord.Embed(title="done").set_image(url="attachment://out.png")
            await interaction.edit_original_response(
                content=None, embed=embed, attachments=[discord.File(io.BytesIO(PNG), "out.png")]
            )
            await interaction.followup.send("only you", ephemeral=True)

        @self.tree.command(name="style", description="Pick a style")
        async def style(interaction: discord.Interaction) -> None:
            await interaction.response.send_message(
                "pick", view=Styles(), file=discord.File(io.BytesIO(PNG), "a.png")
            )

        @self.tree.command(name="seed", description="Ask for a seed")
        async def seed(interaction: discord.Interaction) -> None:
            await interaction.response.send_modal(Seed())

        @self.tree.command(name="model", description="Autocomplete")
        async def model(interaction: discord.Interaction, name: str) -> None:
            await interaction.response.send_message(name)

        @model.autocomplete("name")
        async def model_ac(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
            return [app_commands.Choice(name=n, value=n) for n in ("sd2", "sd21") if n.startswith(current)]

    async def on_message(self, message: discord.Message) -> None:
        self.messages_seen.append(message.content)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        pass  # discord.py sleeps 5 s before every non-initial IDENTIFY


async def test_more_flows(fake: FakeDiscord) -> None:
    bot = FlowBot()
    task = asyncio.create_task(bot.start(fake.token))
    await asyncio.wait_for(bot.ready.wait(), 10)
    try:
        bot.tree.copy_global_to(guild=discord.Object(fake.guild_id))
        await bot.tree.sync(guild=discord.Object(fake.guild_id))  # guild commands carry data.guild_id
        assert fake.guild_commands[fake.guild_id] and not fake.global_commands
        assert fake.gateway_ops[1][1] == 2 and any(op == 8 for _, op, _ in fake.gateway_ops)  # chunking
        guild = bot.get_guild(fake.guild_id)
        assert guild is not None and guild.get_member(fake.alice_id) is not None

        inter = await fake.send_slash("edit", user_id=fake.alice_id)
        final = await inter.wait_final(10, predicate=lambda m: bool(m.attachments))
        assert (
            final.edit_count == 4
            and final.content == ""
            and final.embeds[0]["image"]["url"] == final.attachments[0].url
        )
        only_you = await inter.wait_followup(5)
        assert only_you.ephemeral and only_you.content == "only you"
        await fake.wait_until(lambda: "step 0" in bot.messages_seen, 5, "MESSAGE_CREATE")

        pick = await fake.send_slash("style", user_id=fake.bob_id)
        menu = await pick.wait_final(5)
        assert menu.attachments[0].data == PNG and [s["custom_id"] for s in menu.selects] == ["style"]
        chosen = await fake.select(menu, "style", ["anime"], user_id=fake.bob_id)
        assert await chosen.wait_acked(5) == 7
        assert menu.content == "style=anime" and menu.components == [] and menu.attachments

        ask = await fake.send_slash("seed", user_id=fake.alice_id)
        modal = await ask.wait_modal(5)
        assert modal["title"] == "Seed"
        submitted = await fake.submit_modal(ask, {"seed": "42"})
        assert (await submitted.wait_final(5)).content == "seed=42"

        ac = await fake.send_autocomplete("model", {"name": "sd2"}, "name", user_id=fake.alice_id)
        assert [c["value"] for c in await ac.wait_autocomplete(5)] == ["sd2", "sd21"]

        # non-resumable INVALID_SESSION: the bot identifies again
        await fake.invalidate_session(resumable=False)
        await fake.wait_until(lambda: fake.identify_count == 2, 10, "re-IDENTIFY")
        again = await fake.send_slash("model", {"name": "x"}, user_id=fake.alice_id)
        assert (await again.wait_final(10)).content == "x"
        assert not bot.errors and not fake.unknown_requests, fake.debug_summary()
    finally:
        await _stop(bot, task)
