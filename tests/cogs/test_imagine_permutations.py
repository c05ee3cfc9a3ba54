"""Issue 22 end to end through the fake Discord: `{a, b}` permutations, `--repeat`, the confirmation above 4
jobs, the cap, and `--tile`."""

from __future__ import annotations

import asyncio

import pytest

from tests.cogs.conftest import RunningBot, start_bot, wait_job
from tests.cogs.test_actions import job_id_of
from tests.cogs.test_image_prompts import refusal
from tests.fakediscord import FakeDiscord, FakeInteraction


async def _group(running: RunningBot, first_id: str, size: int) -> list:
    """The finished, delivered sibling jobs of `first_id`'s group, in queue order."""

    async def settled() -> list:
        siblings = await running.store.sibling_jobs(first_id)
        done = [j for j in siblings if j.status == "done" and j.delivery == "sent"]
        return siblings if len(done) == size else []

    for _ in range(900):
        siblings = await settled()
        if siblings:
            return siblings
        await asyncio.sleep(0.1)
    raise AssertionError(f"group {first_id} never finished: {await running.store.sibling_jobs(first_id)}")


async def _first_grid(interaction: FakeInteraction) -> str:
    message = await interaction.wait_final(timeout=90, predicate=lambda m: bool(m.attachments and m.embeds))
    return job_id_of(message)


async def test_permutations_and_repeat_queue_sibling_jobs(fake: FakeDiscord, running: RunningBot) -> None:
    seed = "a {red, blue} cat --repeat 2 --seed 40 --count 1"
    interaction = await fake.send_slash("imagine", {"seed": seed}, user_id=fake.alice_id)
    first = await _first_grid(interaction)
    jobs = await _group(running, first, 4)
    assert [j.seed_text for j in jobs] == ["a red cat", "a red cat", "a blue cat", "a blue cat"]
    assert {j.group_id for j in jobs} == {first} and jobs[0].id == first
    assert [j.job_seed for j in jobs] == [40, 41, 40, 41]  # a repeat: the next seed, one image count on
    assert all(j.user_id == fake.alice_id and j.count == 1 for j in jobs)
    # The first job's result is the interaction's response; the others are posted in the channel.
    posted = [m for m in fake.channel_messages() if m.embeds and m.attachments]
    assert {job_id_of(m) for m in posted} >= {j.id for j in jobs[1:]}
    summary = next(m for m in interaction.followups if m.ephemeral and "Queued 4 jobs" in (m.content or ""))
    assert all(j.id in summary.content for j in jobs)


async def test_nested_and_escaped_braces(fake: FakeDiscord, running: RunningBot) -> None:
    seed = r"{salt\, pepper, {big, small} fish} --count 1"
    interaction = await fake.send_slash("imagine", {"seed": seed}, user_id=fake.alice_id)
    first = await _first_grid(interaction)
    jobs = await _group(running, first, 3)
    assert [j.seed_text for j in jobs] == ["salt, pepper", "big fish", "small fish"]


async def test_more_than_the_cap_is_refused(fake: FakeDiscord, running: RunningBot) -> None:
    interaction = await fake.send_slash(
        "imagine", {"seed": "{a, b, c} cat --repeat 2"}, user_id=fake.alice_id
    )
    reply = await refusal(interaction)
    assert "6 jobs; the limit is 4 (IMAGINE_MAX_PERMUTATIONS)" in reply.content
    interaction = await fake.send_slash("imagine", {"seed": "{a, b, c, d, e} cat"}, user_id=fake.alice_id)
    reply = await refusal(interaction)
    assert "5 permutations; the limit is 4" in reply.content
    assert await running.store.count_jobs(any_user=True) == 0


@pytest.mark.heavy
async def test_above_four_jobs_the_member_confirms_first(fake: FakeDiscord, bot_settings) -> None:
    running = await start_bot(fake, bot_settings(max_permutations=6, max_pending_per_user=6))
    try:
        seed = "{a, b, c, d, e} cat --count 1 --steps 1"
        interaction = await fake.send_slash("imagine", {"seed": seed}, user_id=fake.alice_id)
        question = await interaction.wait_final(timeout=30, predicate=lambda m: bool(m.buttons))
        assert question.ephemeral and "That makes 5 jobs" in question.content
        assert await running.store.count_jobs(any_user=True) == 0  # nothing before the member says yes
        yes = question.find_component(label="Queue 5 jobs")["custom_id"]
        click = await fake.click_button(question, yes, user_id=fake.alice_id)
        first = await _first_grid(click)
        jobs = await _group(running, first, 5)
        assert [j.seed_text for j in jobs] == [f"{x} cat" for x in "abcde"]
        # Cancel queues nothing.
        interaction = await fake.send_slash("imagine", {"seed": seed}, user_id=fake.alice_id)
        question = await interaction.wait_final(timeout=30, predicate=lambda m: bool(m.buttons))
        no = question.find_component(label="Cancel")["custom_id"]
        click = await fake.click_button(question, no, user_id=fake.alice_id)
        await fake.wait_until(lambda: "Nothing was queued" in (question.content or ""), 10, "cancelled")
        assert await running.store.count_jobs(any_user=True) == 5
    finally:
        await running.stop()


async def test_confirmation_question_then_cancel(fake: FakeDiscord, bot_settings) -> None:
    """The fast representative of the confirmation: asked above four jobs, Cancel queues nothing."""
    running = await start_bot(fake, bot_settings(max_permutations=6))
    try:
        interaction = await fake.send_slash("imagine", {"seed": "{a, b, c, d, e} cat"}, user_id=fake.alice_id)
        question = await interaction.wait_final(timeout=30, predicate=lambda m: bool(m.buttons))
        assert question.ephemeral and "That makes 5 jobs" in question.content
        assert [b["label"] for b in question.buttons] == ["Queue 5 jobs", "Cancel"]
        no = question.find_component(label="Cancel")["custom_id"]
        await fake.click_button(question, no, user_id=fake.alice_id)
        await fake.wait_until(lambda: "Nothing was queued" in (question.content or ""), 10, "cancelled")
        assert await running.store.count_jobs(any_user=True) == 0
    finally:
        await running.stop()


async def test_tile_flag_is_recorded(fake: FakeDiscord, running: RunningBot) -> None:
    interaction = await fake.send_slash(
        "imagine", {"seed": "moss texture --tile --count 1"}, user_id=fake.alice_id
    )
    job = await wait_job(running.store, await _first_grid(interaction), lambda j: j.delivery == "sent")
    assert job.tiling and job.render["tile"] is True and job.to_json()["tile"] is True
    assert job.seed_text == "moss texture" and job.group_id is None


async def test_the_pending_cap_must_hold_the_whole_batch(fake: FakeDiscord, bot_settings) -> None:
    running = await start_bot(fake, bot_settings(max_pending_per_user=3))
    try:
        interaction = await fake.send_slash("imagine", {"seed": "{a, b, c, d} cat"}, user_id=fake.alice_id)
        reply = await refusal(interaction)
        assert "it is 4 jobs and you have 0 waiting (the limit is 3)" in reply.content
        assert await running.store.count_jobs(any_user=True) == 0
    finally:
        await running.stop()
