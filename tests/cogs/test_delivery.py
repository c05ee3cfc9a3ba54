"""Results that cannot be posted, and posts that must not repeat (issue 10, items 11 and 15)."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from tests.cogs.conftest import RunningBot, imagine, start_bot, wait_job
from tests.fakediscord import SEND_MESSAGES, FakeDiscord
from tests.reliability.harness import result_counts


async def test_result_nobody_can_post_is_recorded_undelivered_and_kept_in_history(
    fake: FakeDiscord, running: RunningBot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bot.delivery")
    # The bot may not send messages in the channel, and the member's token dies before the result.
    fake.channel_bot_permissions[fake.channel_id] = fake.bot_permissions & ~SEND_MESSAGES
    interaction = await fake.send_slash(
        "imagine", {"seed": "a quiet harbour", "count": 1}, user_id=fake.alice_id
    )
    await interaction.wait_deferred()
    fake.expire_token(interaction.token)
    await fake.wait_until(
        lambda: any(
            r.method == "POST" and r.path.startswith("/channels/") and r.status == 403 for r in fake.requests
        ),
        timeout=90,
        what="the refused channel post",
    )
    (job,) = await running.store.list_jobs(user_id=fake.alice_id, limit=5)
    # Before: delivery 'sent' with no message id, as if the member had seen it.
    job = await wait_job(running.store, job.id, lambda j: j.status == "done" and j.delivery != "sending")
    assert job.delivery == "none" and job.message_id is None
    assert job.undelivered_reason and "403" in job.undelivered_reason
    warnings = [r.getMessage() for r in caplog.records if job.id in r.getMessage()]
    assert any(str(fake.channel_id) in text for text in warnings), warnings

    listing = await fake.send_slash("history", {}, user_id=fake.alice_id)
    page = await listing.wait_final(timeout=30, predicate=lambda m: bool(m.embeds))
    line = next(line for line in page.embeds[0]["description"].splitlines() if job.id in line)
    assert "not delivered" in line
    opened = await fake.send_slash("history", {"job": job.id}, user_id=fake.alice_id)
    detail = await opened.wait_final(timeout=30, predicate=lambda m: bool(m.embeds))
    fields = {f["name"]: f["value"] for f in detail.embeds[0]["fields"]}
    assert "403" in fields["Not delivered"]


async def test_restart_after_a_crash_mid_edit_checks_the_recorded_message_not_the_last_100(
    fake: FakeDiscord, bot_settings
) -> None:
    settings = bot_settings()
    first = await start_bot(fake, settings)
    _, message = await imagine(fake, fake.alice_id, count=1)
    job_id = message.find_component(label="U1")["custom_id"].split(":")[2]
    job = await wait_job(first.store, job_id, lambda j: j.delivery == "sent")
    assert job.message_id == message.id  # the response recorded at claim time is the one edited
    await first.stop()
    # The state a kill -9 between the edit and its confirmation leaves (the claim recorded the response
    # id first), in a channel where 150 messages came after the result.
    with sqlite3.connect(settings.db_path) as db:
        db.execute("UPDATE jobs SET delivery = 'sending' WHERE id = ?", (job_id,))
    for index in range(150):
        await fake.post_user_message(f"chatter {index}", user_id=fake.bob_id)

    second = await start_bot(fake, settings)
    try:
        await wait_job(second.store, job_id, lambda j: j.delivery == "sent")
        assert result_counts(fake)[job_id] == 1
        assert not any(r.method == "POST" and r.path.startswith("/channels/") for r in fake.requests)
    finally:
        await second.stop()
