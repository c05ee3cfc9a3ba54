"""/history and /forget end to end."""

from __future__ import annotations

from pathlib import Path

from bot.store import JobSpec
from tests.cogs.conftest import RunningBot, decode, imagine, wait_job
from tests.fakediscord import FakeDiscord
from tests.helpers import job_spec


def _spec(fake: FakeDiscord, user_id: int, index: int) -> JobSpec:
    return job_spec(
        seed_text=f"old job {index}",
        count=1,
        job_seed=index,
        user_id=user_id,
        guild_id=fake.guild_id,
        channel_id=fake.channel_id,
    )


async def _add_failed_jobs(running: RunningBot, fake: FakeDiscord, user_id: int, count: int) -> list[str]:
    ids = []
    for index in range(count):
        job = await running.store.create_job(_spec(fake, user_id, index))
        await running.store.mark_failed(job.id, "cancelled by its owner", status="cancelled")
        await running.store.claim_delivery(job.id)  # nobody waits for these in Discord
        ids.append(job.id)
    return ids


async def test_history_lists_jobs_and_pages(fake: FakeDiscord, running: RunningBot) -> None:
    _, message = await imagine(fake, fake.alice_id, count=1)
    job_id = message.find_component(label="U1")["custom_id"].split(":")[2]
    await _add_failed_jobs(running, fake, fake.alice_id, 11)
    interaction = await fake.send_slash("history", {}, user_id=fake.alice_id)
    page = await interaction.wait_final(timeout=10, predicate=lambda m: bool(m.embeds))
    assert page.ephemeral
    first = page.embeds[0]
    assert first["footer"]["text"] == "Page 1/2 · 12 job(s)"
    assert len(first["description"].splitlines()) == 10
    assert "old job 10" in first["description"]  # newest first

    click = await fake.click_button(
        page, page.find_component(label="Next")["custom_id"], user_id=fake.alice_id
    )
    await click.wait_acked()
    await fake.wait_until(lambda: "Page 2/2" in page.embeds[0]["footer"]["text"], what="page 2")
    assert job_id in page.embeds[0]["description"]
    assert len(page.embeds[0]["description"].splitlines()) == 2

    # Discord shows an ephemeral page only to its viewer; forged page custom_ids are covered by the
    # reliability suite's bad-input table.


async def test_history_job_detail_post_here_and_reproduce(fake: FakeDiscord, running: RunningBot) -> None:
    _, message = await imagine(fake, fake.alice_id, count=2, seed_number=1234)
    job_id = message.find_component(label="U1")["custom_id"].split(":")[2]
    detail = await fake.send_slash("history", {"job": job_id}, user_id=fake.alice_id)
    card = await detail.wait_final(timeout=10, predicate=lambda m: bool(m.embeds))
    assert card.ephemeral
    assert "1234" in str(card.embeds[0]["fields"])
    assert card.attachments and decode(card.attachments[0].data).width <= 256

    post = await fake.click_button(
        card, card.find_component(label="Post here")["custom_id"], user_id=fake.alice_id
    )
    await post.wait_final(timeout=20, predicate=lambda m: m.content == "Posted.")
    reposts = [m for m in fake.channel_messages() if m.sent_via == "channel" and m.attachments]
    assert len(reposts) == 1
    original = await running.store.get_job(job_id)
    assert reposts[0].attachments[0].data == Path(original.grid_path).read_bytes()  # noqa: ASYNC240
    assert await running.store.count_jobs(any_user=True) == 1  # re-post, not re-render

    repro = await fake.click_button(
        card, card.find_component(label="Reproduce")["custom_id"], user_id=fake.alice_id
    )
    await repro.wait_final(timeout=60, predicate=lambda m: bool(m.attachments and m.embeds))
    copies = [j for j in await running.store.list_jobs(user_id=fake.alice_id) if j.action == "reproduce"]
    assert len(copies) == 1
    copy = await wait_job(running.store, copies[0].id, lambda j: j.status == "done")
    assert copy.parent_id == job_id and copy.prompts == original.prompts
    for mine, theirs in zip(copy.tiles, original.tiles, strict=True):
        assert Path(mine.path).read_bytes() == Path(theirs.path).read_bytes()  # noqa: ASYNC240


async def test_history_of_another_member_needs_manage_server(fake: FakeDiscord, running: RunningBot) -> None:
    secret_ids = await _add_failed_jobs(running, fake, fake.alice_id, 2)
    refused = await fake.send_slash("history", {"user": fake.alice_id}, user_id=fake.bob_id)
    reply = await refused.wait_final(timeout=10)
    assert reply.ephemeral and "Manage Server" in reply.content
    assert not any(job_id in reply.content for job_id in secret_ids)

    hidden = await fake.send_slash("history", {"job": secret_ids[0]}, user_id=fake.bob_id)
    reply = await hidden.wait_final(timeout=10)
    assert reply.ephemeral and "No job" in reply.content

    allowed = await fake.send_slash("history", {"user": fake.alice_id}, user_id=fake.mod_id)
    page = await allowed.wait_final(timeout=10, predicate=lambda m: bool(m.embeds))
    assert page.ephemeral and all(job_id in page.embeds[0]["description"] for job_id in secret_ids)


async def test_forget_deletes_own_jobs_and_files(fake: FakeDiscord, running: RunningBot) -> None:
    _, message = await imagine(fake, fake.alice_id, count=1)
    job_id = message.find_component(label="U1")["custom_id"].split(":")[2]
    job = await wait_job(running.store, job_id, lambda j: j.delivery == "sent")
    folder = Path(job.grid_path).parent.parent  # the job's folder, around its attempt's
    assert folder.name == job_id
    bobs = await _add_failed_jobs(running, fake, fake.bob_id, 1)
    interaction = await fake.send_slash("forget", {"confirm": True}, user_id=fake.alice_id)
    reply = await interaction.wait_final(timeout=10, predicate=lambda m: "Deleted" in m.content)
    assert reply.ephemeral and "Deleted 1 job(s)" in reply.content
    assert await running.store.get_job(job_id) is None
    assert not folder.exists()
    assert await running.store.get_job(bobs[0]) is not None
