"""One intake and one policy for every job (issue 17, items 1-8), end to end: the real discord.py client
against the fake Discord, tiny models. Each test names the item and how it failed before the intake."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from bot.policy import WITHHELD_REASON
from bot.preferences import MemberSettings
from bot.settings import Settings
from tests.cogs.conftest import RunningBot, imagine, start_bot, wait_job
from tests.cogs.test_actions import button, job_id_of
from tests.cogs.test_settings_panel import FlagTiles
from tests.fakediscord import FakeDiscord, FakeInteraction, FakeMessage
from tests.test_uploads import encoded, striped


@contextlib.asynccontextmanager
async def gpu_held(running: RunningBot) -> AsyncIterator[None]:
    """Occupy the one GPU thread: jobs queue (and a claimed one waits) until the block ends."""
    gate = threading.Event()
    blocker = asyncio.get_running_loop().run_in_executor(None, running.bot.backend.engine.run_sync, gate.wait)
    try:
        yield
    finally:
        gate.set()
        await blocker


def is_grid(message: FakeMessage) -> bool:
    return bool(message.attachments and message.embeds)


async def grid_in(
    fake: FakeDiscord, user_id: int, channel_id: int, seed: str = "a garden", **options: Any
) -> FakeMessage:
    interaction = await fake.send_slash(
        "imagine", {"seed": seed, "count": 1, **options}, user_id=user_id, channel_id=channel_id
    )
    return await interaction.wait_final(timeout=90, predicate=is_grid)


async def press_reply(fake: FakeDiscord, message: FakeMessage, name: str, user_id: int) -> FakeMessage:
    """Press a button and return its first answer (an ephemeral refusal, or the thinking message)."""
    click = await fake.click_button(message, button(message, name), user_id=user_id)
    return await click.wait_final(timeout=30)


async def history_card(fake: FakeDiscord, job_id: str, user_id: int) -> FakeMessage:
    opened = await fake.send_slash("history", {"job": job_id}, user_id=user_id)
    return await opened.wait_final(timeout=30, predicate=lambda m: bool(m.embeds))


def previews(interaction: FakeInteraction) -> list[dict[str, Any]]:
    """Every state of the interaction's response that carried a live preview."""
    original = interaction.original
    assert original is not None
    states = [*original.history, original.snapshot()]
    return [state for state in states if "preview.png" in state["attachments"]]


# -- item 1 ---------------------------------------------------------------------------------------------
async def test_server_channels_cap_and_cooldown_apply_to_every_button(
    fake: FakeDiscord, running: RunningBot
) -> None:
    prefs = running.bot.preferences
    elsewhere = await grid_in(fake, fake.alice_id, fake.nsfw_channel_id)
    # The server then limits /imagine to #general and to one pending job per member.
    await prefs.change_guild(fake.guild_id, fake.mod_id, "channels", (fake.channel_id,))
    await prefs.change_guild(fake.guild_id, fake.mod_id, "max_pending", 1)
    # Before: 🔄 under a grid in another channel started a job there.
    refused = await press_reply(fake, elsewhere, "🔄", fake.alice_id)
    assert refused.ephemeral and f"runs only in <#{fake.channel_id}>" in refused.content, refused.content

    _, grid = await imagine(fake, fake.alice_id, count=1)
    async with gpu_held(running):
        first = await fake.click_button(grid, button(grid, "🔄"), user_id=fake.alice_id)
        await first.wait_deferred()
        # Before: each of these queued another job past the server's cap of 1.
        for name in ("🔄", "✨", "V1"):
            reply = await press_reply(fake, grid, name, fake.alice_id)
            assert reply.ephemeral and "this server's limit" in reply.content, (name, reply.content)
    jobs = await running.store.list_jobs(user_id=fake.alice_id, limit=10)
    assert len(jobs) == 3  # the two grids and the one 🔄 within the cap


# -- item 2 ---------------------------------------------------------------------------------------------
async def test_post_here_of_a_private_result_is_for_its_owner_alone(
    fake: FakeDiscord, running: RunningBot
) -> None:
    await running.bot.preferences.set_member(fake.guild_id, fake.alice_id, MemberSettings(private=True))
    _, result = await imagine(fake, fake.alice_id, count=1)
    assert result.ephemeral
    job_id = job_id_of(result)
    card = await history_card(fake, job_id, fake.mod_id)  # a server manager may open any job here
    before = len(fake.channel_messages())
    click = await fake.click_button(card, f"ib:post:{job_id}", user_id=fake.mod_id)
    reply = await click.wait_final(timeout=30)
    # Before: the manager's press posted the private grid into the channel ("Posted.").
    assert reply.ephemeral and "private" in reply.content, reply.content
    assert len(fake.channel_messages()) == before


# -- item 3 ---------------------------------------------------------------------------------------------
async def test_previews_of_filtered_jobs_are_screened_or_not_shown(
    fake: FakeDiscord, bot_settings: Callable[..., Settings]
) -> None:
    bot = await start_bot(fake, bot_settings(steps=40, image_classifier="off"))
    try:
        # No classifier: a filtered job shows step x/y as text only. Before: every edit carried the preview.
        interaction, _ = await imagine(fake, fake.alice_id, count=1)
        original = interaction.original
        assert original is not None
        assert any("step" in state["content"] for state in original.history), "no progress edit happened"
        assert previews(interaction) == []
        # A classifier that passes the previews: they are shown.
        bot.bot.runner.classifier = FlagTiles(set())
        interaction, _ = await imagine(fake, fake.alice_id, count=1)
        assert previews(interaction)
    finally:
        await bot.stop()


async def test_the_preview_goes_when_the_result_falls_back_to_a_channel_post(
    fake: FakeDiscord, bot_settings: Callable[..., Settings]
) -> None:
    bot = await start_bot(fake, bot_settings(allow_nsfw=True, steps=50))
    try:
        interaction = await fake.send_slash(
            "imagine",
            {"seed": "a garden", "count": 1},
            user_id=fake.alice_id,
            channel_id=fake.nsfw_channel_id,
        )

        def preview_on_response() -> bool:
            original = interaction.original
            return original is not None and any(a.filename == "preview.png" for a in original.attachments)

        await fake.wait_until(preview_on_response, 60, "a live preview")  # unfiltered: previews are shown
        fake.expire_token(interaction.token)

        def channel_post() -> FakeMessage | None:
            return next(
                (
                    m
                    for m in fake.channel_messages(fake.nsfw_channel_id)
                    if is_grid(m) and m.sent_via == "channel"
                ),
                None,
            )

        await fake.wait_until(channel_post, 90, "the result posted in the channel")
        await fake.wait_until(lambda: not preview_on_response(), 10, "the preview cleared")
        # Before: the last preview stayed on the expired response above the channel post.
    finally:
        await bot.stop()


# -- item 4 ---------------------------------------------------------------------------------------------
async def test_an_unfiltered_result_is_not_shown_where_the_filter_applies_by_the_time_it_lands(
    fake: FakeDiscord, bot_settings: Callable[..., Settings]
) -> None:
    bot = await start_bot(fake, bot_settings(allow_nsfw=True))
    try:
        for change in ("the channel loses its age-restricted flag", "the server switches to always filtered"):
            async with gpu_held(bot):
                interaction = await fake.send_slash(
                    "imagine",
                    {"seed": "a garden", "count": 1},
                    user_id=fake.alice_id,
                    channel_id=fake.nsfw_channel_id,
                )
                await interaction.wait_deferred()
                if change.startswith("the channel"):
                    await fake.set_channel_nsfw(fake.nsfw_channel_id, False)
                    await fake.wait_until(
                        lambda: not bot.bot.get_channel(fake.nsfw_channel_id).is_nsfw(),  # type: ignore[union-attr]
                        10,
                        "the bot to see the channel update",
                    )
                else:
                    await bot.bot.preferences.change_guild(fake.guild_id, fake.mod_id, "policy", "filtered")
            # Before: the unfiltered grid was posted.
            final = await interaction.wait_final(
                timeout=60, predicate=lambda m: "not shown here" in m.content
            )
            assert not final.attachments and not final.embeds and not final.components, change
            (job,) = [j for j in await bot.store.list_jobs(user_id=fake.alice_id, limit=1)]
            job = await wait_job(bot.store, job.id, lambda j: j.undelivered_reason is not None)
            assert job.status == "done" and not job.safe_mode and job.undelivered_reason == WITHHELD_REASON
            await fake.set_channel_nsfw(fake.nsfw_channel_id, True)
    finally:
        await bot.stop()


# -- item 5 ---------------------------------------------------------------------------------------------
async def test_v_and_reproduce_follow_the_made_without_the_filter_rule(
    fake: FakeDiscord, bot_settings: Callable[..., Settings]
) -> None:
    bot = await start_bot(fake, bot_settings(allow_nsfw=True))
    try:
        upload = ("photo.png", encoded(striped(64, 64), "PNG"))
        grid = await grid_in(fake, fake.alice_id, fake.nsfw_channel_id, image=upload)
        job_id = job_id_of(grid)
        job = await bot.store.get_job(job_id)
        assert job is not None and not job.safe_mode and job.init_image is not None
        await bot.bot.preferences.change_guild(fake.guild_id, fake.mod_id, "policy", "filtered")
        # Before: V1 started a variation of the unfiltered tile (Upscale, Vary, Zoom and Pan refused it).
        reply = await press_reply(fake, grid, "V1", fake.alice_id)
        assert reply.ephemeral and "can't be used in this channel" in reply.content, reply.content
        # Before: Reproduce started from a copy of the unfiltered job's source image.
        card = await history_card(fake, job_id, fake.alice_id)
        assert not card.attachments  # no unfiltered thumbnail where the filter applies (bot.policy)
        reply = await press_reply(fake, card, "Reproduce", fake.alice_id)
        assert reply.ephemeral and "can't be used in this channel" in reply.content, reply.content
        assert len(await bot.store.list_jobs(user_id=fake.alice_id, limit=10)) == 1
    finally:
        await bot.stop()


# -- item 6 ---------------------------------------------------------------------------------------------
async def test_a_stale_default_above_a_lowered_limit_is_clamped_and_told_once(
    fake: FakeDiscord, bot_settings: Callable[..., Settings]
) -> None:
    bot = await start_bot(fake, bot_settings(max_steps=3))
    try:
        prefs = bot.bot.preferences
        # Saved while the operator's limit was higher; the operator has since lowered IMAGINE_MAX_STEPS to 3.
        await prefs.set_member(fake.guild_id, fake.alice_id, MemberSettings(steps=40))
        interaction = await fake.send_slash(
            "imagine", {"seed": "a garden", "count": 1}, user_id=fake.alice_id
        )
        # Before: refused with "`steps` must be 1..3 …", never mentioning /settings.
        await interaction.wait_final(timeout=90, predicate=is_grid)
        notice = await interaction.wait_followup(
            timeout=10, predicate=lambda m: "IMAGINE_MAX_STEPS" in m.content
        )
        assert notice.ephemeral and "/settings" in notice.content and "(40)" in notice.content
        (job,) = await bot.store.list_jobs(user_id=fake.alice_id, limit=5)
        assert job.steps == 3 and job.from_defaults == ("steps",)
        assert await prefs.member(fake.guild_id, fake.alice_id) == MemberSettings(steps=3)
        again = await fake.send_slash("imagine", {"seed": "a garden", "count": 1}, user_id=fake.alice_id)
        await again.wait_final(timeout=90, predicate=is_grid)
        assert not any("IMAGINE_MAX_STEPS" in m.content for m in again.followups)  # told once
    finally:
        await bot.stop()


# -- item 7 ---------------------------------------------------------------------------------------------
async def test_forget_cancels_pending_jobs_and_removes_copies_of_uploads_and_log_rows(
    fake: FakeDiscord, running: RunningBot
) -> None:
    store, prefs, images = running.store, running.bot.preferences, running.settings.images_dir
    upload = ("photo.png", encoded(striped(64, 64), "PNG"))
    _, grid = await imagine(fake, fake.alice_id, seed="a painting", count=1, image=upload)
    original = job_id_of(grid)
    # A moderator reproduces the job from /history: a copy of alice's upload in the moderator's job.
    card = await history_card(fake, original, fake.mod_id)
    click = await fake.click_button(card, button(card, "Reproduce"), user_id=fake.mod_id)
    copy_id = job_id_of(await click.wait_final(timeout=90, predicate=is_grid))
    copy = await wait_job(store, copy_id, lambda j: j.delivery == "sent")
    assert copy.user_id == fake.mod_id and Path(copy.init_image).parent.name == copy.id
    # A change alice made while she managed the server.
    await prefs.change_guild(fake.guild_id, fake.alice_id, "default_negative", "blurry")

    async with gpu_held(running):
        for seed in ("one", "two"):
            waiting = await fake.send_slash("imagine", {"seed": seed, "count": 1}, user_id=fake.alice_id)
            await waiting.wait_deferred()
        for _ in range(100):  # the rows are written just after the defer
            pending = [
                j for j in await store.list_jobs(user_id=fake.alice_id, limit=10) if j.status != "done"
            ]
            if len(pending) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(pending) == 2
        forget = await fake.send_slash("forget", {"confirm": True}, user_id=fake.alice_id)
        await asyncio.sleep(0.5)  # /forget is waiting for the claimed job to stop
    reply = await forget.wait_final(timeout=60, predicate=lambda m: "Deleted" in m.content)
    assert "cancelling 2" in reply.content, reply.content
    await asyncio.sleep(1.0)  # a job that kept running would now write its row and files again
    # Before: the waiting jobs stayed (and rendered), the copy and the change-log row stayed.
    assert await store.count_jobs(user_id=fake.alice_id, guild_id=fake.guild_id) == 0
    assert not any((images / job.id).exists() for job in pending)
    assert await store.get_job(copy.id) is None and not Path(copy.init_image).exists()  # noqa: ASYNC240
    assert all(change.actor_id != fake.alice_id for change in await prefs.guild_changes(fake.guild_id))


# -- item 8 ---------------------------------------------------------------------------------------------
async def test_a_result_delivered_by_dm_carries_no_buttons(fake: FakeDiscord, running: RunningBot) -> None:
    await running.bot.preferences.set_member(fake.guild_id, fake.alice_id, MemberSettings(private=True))
    async with gpu_held(running):
        late = await fake.send_slash("imagine", {"seed": "late", "count": 1}, user_id=fake.alice_id)
        await late.wait_deferred()
        fake.expire_token(late.token)
    dm = fake.dm_channel(fake.alice_id)
    message = await fake.wait_until(
        lambda: next((m for m in fake.channel_messages(dm.id) if m.attachments), None),
        90,
        "a DM with the grid",
    )
    # Before: U1, V1, 🔄, ✨, Remix and 🗑 under the DM, none of which can work there.
    assert message.components == [] and message.embeds
