"""One error path for every interaction, and replies that say what is true (issue 10, items 13 and 14)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest

from tests.cogs.conftest import RunningBot, imagine, wait_job
from tests.fakediscord import FakeDiscord

WEBHOOK = r"^/webhooks/"


async def test_button_and_select_errors_reach_the_one_handler(fake: FakeDiscord, running: RunningBot) -> None:
    _, message = await imagine(fake, fake.alice_id, count=1)
    job_id = message.find_component(label="U1")["custom_id"].split(":")[2]
    await wait_job(running.store, job_id, lambda j: j.delivery == "sent")

    # U1: Discord refuses the followup with the tile (413 upload too large); the error reply still lands.
    fake.fail_next("POST", WEBHOOK, status=413, code=40005, message="Request entity too large")
    click = await fake.click_button(message, f"ib:u:{job_id}:1", user_id=fake.alice_id)
    # Before: the exception was only logged by discord.py and the member stayed on "thinking…".
    reply = await click.wait_final(timeout=30)
    assert "something went wrong on our side" in reply.content

    # The /history select: opening a job whose detail message Discord refuses.
    opened = await fake.send_slash("history", {}, user_id=fake.alice_id)
    page = await opened.wait_final(timeout=30, predicate=lambda m: bool(m.embeds))
    fake.fail_next("POST", WEBHOOK, status=413, code=40005, message="Request entity too large")
    chosen = await fake.select(page, page.selects[0]["custom_id"], [job_id], user_id=fake.alice_id)
    reply = await chosen.wait_final(timeout=30)
    assert reply.ephemeral and "something went wrong on our side" in reply.content


async def test_imagine_says_the_job_is_queued_when_the_position_lookup_fails(
    fake: FakeDiscord, running: RunningBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = running.store
    real_pending_jobs = store.pending_jobs
    failures = [sqlite3.OperationalError("disk I/O error")]

    async def pending_jobs_failing_once() -> list:
        if failures:
            raise failures.pop()
        return await real_pending_jobs()

    # The queue-position read after the row is written fails once (the first caller is /imagine's lookup).
    monkeypatch.setattr(store, "pending_jobs", pending_jobs_failing_once)
    gate = threading.Event()
    # Hold the GPU thread so the job has not finished while its message is checked.
    blocker = asyncio.get_running_loop().run_in_executor(None, running.bot.backend.engine.run_sync, gate.wait)
    try:
        interaction = await fake.send_slash(
            "imagine", {"seed": "a lighthouse", "count": 1}, user_id=fake.alice_id
        )
        # Before: "something went wrong on our side; nothing was changed", though the job was queued.
        message = await interaction.wait_final(timeout=30)
        assert not failures
        assert message.content.startswith(("Queued `", "Rendering `")), message.content
    finally:
        gate.set()
        await blocker
    await interaction.wait_final(timeout=90, predicate=lambda m: bool(m.attachments and m.embeds))
    texts = [snapshot.get("content") or "" for snapshot in message.history]
    assert not any("went wrong" in text for text in texts), texts
    (job,) = await store.list_jobs(user_id=fake.alice_id, limit=5)
    await wait_job(store, job.id, lambda j: j.status == "done" and j.delivery == "sent")


async def test_modal_errors_reach_the_one_handler(fake: FakeDiscord, running: RunningBot) -> None:
    _, grid = await imagine(fake, fake.alice_id, count=1)
    click = await fake.click_button(
        grid, grid.find_component(label="Remix")["custom_id"], user_id=fake.alice_id
    )
    await click.wait_modal()
    # Discord refuses the submit's first answer (the defer); the handler's reply still reaches the member.
    fake.fail_next(
        "POST", r"^/interactions/\d+/[^/]+/callback$", status=400, code=50035, message="Invalid Form Body"
    )
    submit = await fake.submit_modal(click, {"p1": "a red fox in the snow"})
    reply = await submit.wait_final(timeout=30)
    assert reply.ephemeral and reply.content == "something went wrong on our side; it was logged"
