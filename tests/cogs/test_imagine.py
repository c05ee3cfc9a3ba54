"""/imagine end to end: real discord.py client, fake Discord, tiny real models."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path

from tests.cogs.conftest import LagProbe, RunningBot, decode, imagine, start_bot, wait_job
from tests.fakediscord import FakeDiscord

GUTTER = 4


async def test_imagine_posts_grid_with_prompts_and_buttons(
    fake: FakeDiscord, running: RunningBot, heartbeat_blocked
) -> None:
    with LagProbe() as lag:
        interaction = await fake.send_slash(
            "imagine", {"seed": "Northeastern University"}, user_id=fake.alice_id
        )
        defer_seconds = await interaction.wait_deferred()
        message = await interaction.wait_final(
            timeout=90, predicate=lambda m: bool(m.attachments and m.embeds)
        )
    print(
        f"defer {defer_seconds * 1000:.0f} ms; loop lag p50 {lag.percentile(0.5) * 1000:.1f} ms, "
        f"p99 {lag.percentile(0.99) * 1000:.1f} ms, max {max(lag.samples) * 1000:.1f} ms ({len(lag.samples)} samples)"
    )
    assert defer_seconds < 3.0
    assert max(lag.samples) < 0.25
    assert heartbeat_blocked() == []

    grid = decode(message.attachments[0].data)
    assert grid.size == (2 * 64 + GUTTER, 2 * 64 + GUTTER)
    embed = message.embeds[0]
    assert embed["title"] == "Northeastern University"
    lines = embed["description"].splitlines()
    assert len(lines) == 4
    for index, line in enumerate(lines, start=1):
        assert line.startswith(f"**{index}.** Northeastern University")
    labels = [b.get("label") for b in message.buttons]
    assert labels[:8] == ["U1", "U2", "U3", "U4", "V1", "V2", "V3", "V4"]
    assert len(message.buttons) == 12
    assert [b.get("label") for b in message.buttons][8:] == [None, None, "Remix", None]

    job_id = next(f["value"] for f in embed["fields"] if f["name"] == "Job").strip("`")
    job = await wait_job(running.store, job_id, lambda j: j.delivery == "sent")
    assert job.status == "done" and job.user_id == fake.alice_id
    assert job.prompts == tuple(line.split("** ", 1)[1] for line in lines)
    # Progress was edited into the same message before the result replaced it.
    assert any("step" in (snap.get("content") or "") for snap in message.history)


async def test_upscale_button_posts_one_tile(fake: FakeDiscord, running: RunningBot) -> None:
    _, message = await imagine(fake, fake.alice_id, count=2)
    custom_id = message.find_component(label="U2")["custom_id"]
    click = await fake.click_button(message, custom_id, user_id=fake.alice_id)
    tile_message = await click.wait_final(timeout=30, predicate=lambda m: bool(m.attachments))
    tile = decode(tile_message.attachments[0].data)
    assert tile.size == (64, 64)
    job_id = custom_id.split(":")[2]
    job = await running.store.get_job(job_id)
    assert tile_message.attachments[0].data == Path(job.tiles[1].path).read_bytes()  # noqa: ASYNC240


async def test_rerender_and_variation_create_child_jobs(fake: FakeDiscord, running: RunningBot) -> None:
    _, message = await imagine(fake, fake.alice_id, count=2)
    parent_id = message.find_component(label="U1")["custom_id"].split(":")[2]
    rerender = next(b for b in message.buttons if b.get("emoji", {}).get("name") == "🔄")
    click = await fake.click_button(message, rerender["custom_id"], user_id=fake.alice_id)
    await click.wait_final(timeout=60, predicate=lambda m: bool(m.attachments and m.embeds))
    click = await fake.click_button(
        message, message.find_component(label="V1")["custom_id"], user_id=fake.alice_id
    )
    await click.wait_final(timeout=60, predicate=lambda m: bool(m.attachments and m.embeds))

    children = [
        j for j in await running.store.list_jobs(user_id=fake.alice_id, limit=10) if j.parent_id == parent_id
    ]
    by_action = {j.action: j for j in children}
    parent = await running.store.get_job(parent_id)
    assert set(by_action) == {"rerender", "variation"}
    assert by_action["rerender"].prompts == parent.prompts
    assert by_action["rerender"].job_seed != parent.job_seed
    variation = by_action["variation"]
    assert variation.source_tile == 1 and variation.prompts == (parent.prompts[0],) * 2
    assert variation.render["mode"] == "img2img"


async def test_other_users_cannot_use_my_buttons(fake: FakeDiscord, running: RunningBot) -> None:
    _, message = await imagine(fake, fake.alice_id, count=1)
    before = len(await running.store.list_jobs(any_user=True, limit=100))
    for label in ("U1", "V1"):
        click = await fake.click_button(
            message, message.find_component(label=label)["custom_id"], user_id=fake.bob_id
        )
        reply = await click.wait_final(timeout=10)
        assert reply.ephemeral and "Only the person" in reply.content
    assert len(await running.store.list_jobs(any_user=True, limit=100)) == before


async def test_mentions_in_prompts_ping_nobody(fake: FakeDiscord, running: RunningBot) -> None:
    seed = f"@everyone @here <@{fake.bob_id}> <@&{fake.guild_id}> party"
    _, message = await imagine(fake, fake.alice_id, seed=seed, count=1, negative="@everyone")
    assert fake.pinged_user_ids(message) == []
    assert not fake.pings_everyone(message)
    for other in fake.channel_messages():
        assert fake.pinged_user_ids(other) == [] and not fake.pings_everyone(other)
    job_id = message.find_component(label="U1")["custom_id"].split(":")[2]
    assert (await running.store.get_job(job_id)).seed_text == seed


async def test_buttons_work_after_restart(fake: FakeDiscord, bot_settings) -> None:
    settings = bot_settings()
    first = await start_bot(fake, settings)
    _, message = await imagine(fake, fake.alice_id, count=1)
    await first.stop()

    second = await start_bot(fake, settings)
    try:
        click = await fake.click_button(
            message, message.find_component(label="U1")["custom_id"], user_id=fake.alice_id
        )
        tile_message = await click.wait_final(timeout=30, predicate=lambda m: bool(m.attachments))
        assert decode(tile_message.attachments[0].data).size == (64, 64)
        # Command definitions unchanged: the restart did not sync again.
        assert fake.sync_count == 1
    finally:
        await second.stop()


async def test_queued_job_is_delivered_in_channel_after_token_expiry(fake: FakeDiscord, bot_settings) -> None:
    bot = await start_bot(fake, bot_settings())
    gate = threading.Event()
    # Hold the GPU thread so both jobs are still queued when their tokens die.
    blocker = asyncio.get_running_loop().run_in_executor(None, bot.bot.backend.engine.run_sync, gate.wait)
    try:
        first = await fake.send_slash("imagine", {"seed": "first job"}, user_id=fake.alice_id)
        second = await fake.send_slash("imagine", {"seed": "second job"}, user_id=fake.bob_id)
        await first.wait_deferred()
        await second.wait_deferred()
        fake.expire_token(first.token)
        fake.expire_token(second.token)
        gate.set()
        await blocker

        def delivered() -> list:
            return [
                m for m in fake.channel_messages() if m.attachments and m.embeds and m.sent_via == "channel"
            ]

        await fake.wait_until(lambda: len(delivered()) == 2, timeout=90, what="two channel deliveries")
        for message in delivered():
            title = message.embeds[0]["title"]
            owner = fake.alice_id if title == "first job" else fake.bob_id
            assert fake.pinged_user_ids(message) == [owner]
            assert not fake.pings_everyone(message)
        jobs = await bot.store.list_jobs(any_user=True, limit=10)
        assert len(jobs) == 2
        for job in jobs:
            await wait_job(bot.store, job.id, lambda j: j.status == "done" and j.delivery == "sent")
    finally:
        gate.set()
        await bot.stop()


async def test_invalid_options_get_ephemeral_range_message(fake: FakeDiscord, running: RunningBot) -> None:
    interaction = await fake.send_slash("imagine", {"seed": "cat", "steps": 400}, user_id=fake.alice_id)
    reply = await interaction.wait_final(timeout=10)
    assert reply.ephemeral and "`steps` must be 1..50, got 400" in reply.content
    assert await running.store.count_jobs(any_user=True) == 0


async def test_member_text_is_shown_with_markdown_escaped(fake: FakeDiscord, running: RunningBot) -> None:
    link = "[free nitro](https://evil.example/claim)"
    seed = f"{link} **castle**"
    _, message = await imagine(fake, fake.alice_id, seed=seed, count=1, negative=f"{link} _blur_")
    embed = message.embeds[0]
    shown = [embed["title"], embed["description"], *(f["value"] for f in embed["fields"])]
    # Before: the seed (title, every prompt) and the negative were shown verbatim: a live masked link.
    for text in shown:
        assert not re.search(r"(?<!\\)\[free nitro(?<!\\)\]\(", text), text
        assert "**castle**" not in text and "_blur_" not in text, text
    assert r"\[free nitro\](https://evil.example/claim) \*\*castle\*\*" in embed["title"]
    job_id = message.find_component(label="U1")["custom_id"].split(":")[2]
    assert (await running.store.get_job(job_id)).seed_text == seed  # stored as typed

    listing = await fake.send_slash("history", {}, user_id=fake.alice_id)
    page = await listing.wait_final(timeout=30, predicate=lambda m: bool(m.embeds))
    assert r"\[free nitro\]" in page.embeds[0]["description"]
    assert "[free nitro](" not in page.embeds[0]["description"]
