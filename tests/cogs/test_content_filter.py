"""The content filter on the member's own text and across channels (issue 10, items 1 and 2)."""

from __future__ import annotations

from tests.cogs.conftest import RunningBot, start_bot, wait_job
from tests.fakediscord import FakeDiscord, FakeMessage


async def _imagine_in_the_nsfw_channel(fake: FakeDiscord, seed: str) -> FakeMessage:
    """Alice's /imagine of one image in the age-restricted channel, to its final grid message."""
    interaction = await fake.send_slash(
        "imagine", {"seed": seed, "count": 1}, user_id=fake.alice_id, channel_id=fake.nsfw_channel_id
    )
    return await interaction.wait_final(timeout=90, predicate=lambda m: bool(m.attachments and m.embeds))


async def test_blocked_seed_or_negative_is_refused_before_queueing(
    fake: FakeDiscord, running: RunningBot
) -> None:
    # Before: each of these was queued and rendered (the seed as typed after every expansion was blocked).
    for options in (
        {"seed": "nude portrait of a woman"},
        {"seed": "nude portrait of a woman", "expand": False},
        {"seed": "a castle at dusk", "negative": "clothes, NAKED"},
    ):
        interaction = await fake.send_slash("imagine", {"count": 1, **options}, user_id=fake.alice_id)
        reply = await interaction.wait_final(timeout=30)
        assert reply.ephemeral, reply.content
        assert "content filter" in reply.content, reply.content
        assert interaction.deferred_at is None  # refused up front, never "thinking…"
    assert await running.store.count_jobs(any_user=True) == 0


async def test_age_restricted_channel_skips_the_filter_when_allowed(fake: FakeDiscord, bot_settings) -> None:
    bot = await start_bot(fake, bot_settings(allow_nsfw=True))
    try:
        message = await _imagine_in_the_nsfw_channel(fake, "nude figure study")
        assert not message.ephemeral
        (job,) = await bot.store.list_jobs(user_id=fake.alice_id, limit=5)
        assert job.status == "done" and not job.safe_mode
    finally:
        await bot.stop()


async def test_reproduce_and_post_here_take_the_filter_of_the_channel_they_land_in(
    fake: FakeDiscord, bot_settings
) -> None:
    bot = await start_bot(fake, bot_settings(allow_nsfw=True))
    try:
        result = await _imagine_in_the_nsfw_channel(fake, "a castle")
        job_id = result.find_component(label="U1")["custom_id"].split(":")[2]
        unfiltered = await wait_job(bot.store, job_id, lambda j: j.delivery == "sent")
        assert not unfiltered.safe_mode
        # /history in the normal channel: the buttons under the job land here.
        opened = await fake.send_slash("history", {"job": job_id}, user_id=fake.alice_id)
        detail = await opened.wait_final(timeout=30, predicate=lambda m: bool(m.embeds))

        before = len(fake.channel_messages())
        post = await fake.click_button(detail, f"ib:post:{job_id}", user_id=fake.alice_id)
        reply = await post.wait_final(timeout=30)
        # Before: the unfiltered grid was posted into the normal channel.
        assert reply.ephemeral and "can't be posted in this channel" in reply.content, reply.content
        assert len(fake.channel_messages()) == before

        repro = await fake.click_button(detail, f"ib:repro:{job_id}", user_id=fake.alice_id)
        await repro.wait_final(timeout=90, predicate=lambda m: bool(m.attachments and m.embeds))
        (child,) = [
            j for j in await bot.store.list_jobs(user_id=fake.alice_id, limit=5) if j.parent_id == job_id
        ]
        # Before: safe_mode False and the NSFW channel, copied from the old row.
        assert child.safe_mode and child.channel_id == fake.channel_id
    finally:
        await bot.stop()


async def test_remix_follows_the_servers_always_filtered_policy(fake: FakeDiscord, bot_settings) -> None:
    # An unfiltered job from an age-restricted channel; then the server switches to "always filtered".
    from tests.cogs.test_actions import button, tile_message

    bot = await start_bot(fake, bot_settings(allow_nsfw=True))
    try:
        grid = await _imagine_in_the_nsfw_channel(fake, "a garden")
        (job,) = await bot.store.list_jobs(user_id=fake.alice_id, limit=5)
        assert not job.safe_mode
        single = await tile_message(fake, grid, 1, fake.alice_id)
        click = await fake.click_button(single, button(single, "Remix"), user_id=fake.alice_id)
        await click.wait_modal()
        # The policy changes while the member has the Remix form open: the submit decides, not the press.
        await bot.bot.preferences.change_guild(fake.guild_id, fake.mod_id, "policy", "filtered")
        submit = await fake.submit_modal(click, {"p1": "a garden at night"})
        reply = await submit.wait_final(timeout=30)
        assert reply.ephemeral and "without the content filter" in reply.content
        assert len(await bot.store.list_jobs(user_id=fake.alice_id, limit=5)) == 1
    finally:
        await bot.stop()
