"""/describe (issue 22) end to end through the fake Discord, with tiny BLIP and CLIP models."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.engine.describe import load_modifiers
from bot.engine.tiny_describe import build_tiny_describe_models
from tests.cogs.conftest import start_bot, wait_job
from tests.cogs.test_actions import job_id_of
from tests.cogs.test_image_prompts import refusal
from tests.fakediscord import FakeDiscord
from tests.test_uploads import encoded, png_bomb, striped


@pytest.fixture(scope="module")
def describe_models(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: tuple[Path, Path]
) -> tuple[Path, Path]:
    return build_tiny_describe_models(
        tmp_path_factory.mktemp("describe-models"), tiny_models[0] / "tokenizer"
    )


@pytest.mark.parametrize("with_buttons", [False, True], ids=["prompts", "buttons"])
async def test_describe_gives_four_prompts_with_working_buttons(
    fake: FakeDiscord, bot_settings, describe_models: tuple[Path, Path], with_buttons: bool
) -> None:
    """Four distinct prompts and their buttons; with_buttons: Imagine 2, another member's press, Imagine all
    (~5 s on a quiet box)."""
    caption, clip = describe_models
    running = await start_bot(
        fake, bot_settings(caption_model=str(caption), describe_clip_model=str(clip), max_pending_per_user=6)
    )
    try:
        upload = ("holiday.png", encoded(striped(96, 64), "PNG"))
        interaction = await fake.send_slash("describe", {"image": upload}, user_id=fake.alice_id)
        answer = await interaction.wait_final(timeout=90, predicate=lambda m: bool(m.embeds and m.buttons))
        job = await wait_job(running.store, job_id_of(answer), lambda j: j.delivery == "sent")
        # A job of kind describe: no images, its source image kept, the four prompts as its record.
        assert job.action == "describe" and job.status == "done" and job.render["mode"] == "describe"
        assert all(tile.path is None for tile in job.tiles) and job.init_image.endswith("source.png")
        prompts = job.prompts
        assert len(prompts) == 4 and len(set(prompts)) == 4
        mediums = load_modifiers()["medium"]
        assert all(any(p.startswith(m + " of ") for m in mediums) for p in prompts)
        assert all(p in answer.embeds[0]["description"] for p in prompts)
        labels = [b["label"] for b in answer.buttons]
        assert labels == ["Imagine 1", "Imagine 2", "Imagine 3", "Imagine 4", "Imagine all"]
        assert job.to_json()["seed_text"].startswith("/describe holiday.png")
        if not with_buttons:
            return

        # Imagine 2 queues /imagine with prompt 2.
        click = await fake.click_button(
            answer, answer.find_component(label="Imagine 2")["custom_id"], user_id=fake.alice_id
        )
        grid = await click.wait_final(timeout=90, predicate=lambda m: bool(m.attachments and m.embeds))
        made = await wait_job(running.store, job_id_of(grid), lambda j: j.status == "done")
        assert made.seed_text == prompts[1] and made.action == "imagine"
        # Someone else's press is refused.
        other = await fake.click_button(
            answer, answer.find_component(label="Imagine all")["custom_id"], user_id=fake.bob_id
        )
        assert "Only the person who asked" in (await refusal(other)).content
        # Imagine all: four sibling jobs, one per prompt.
        click = await fake.click_button(
            answer, answer.find_component(label="Imagine all")["custom_id"], user_id=fake.alice_id
        )
        grid = await click.wait_final(timeout=90, predicate=lambda m: bool(m.attachments and m.embeds))
        first = await running.store.get_job(job_id_of(grid))
        siblings = await running.store.sibling_jobs(first.group_id)
        assert [j.seed_text for j in siblings] == list(prompts)
        # Reproduce from /history: the same four prompts again, recorded and delivered as a describe.
        detail = await fake.send_slash("history", {"job": job.id}, user_id=fake.alice_id)
        card = await detail.wait_final(timeout=10, predicate=lambda m: bool(m.embeds))
        repro = await fake.click_button(
            card, card.find_component(label="Reproduce")["custom_id"], user_id=fake.alice_id
        )
        again = await repro.wait_final(timeout=60, predicate=lambda m: bool(m.embeds and m.buttons))
        copy = await wait_job(running.store, job_id_of(again), lambda j: j.status == "done")
        assert copy.action == "reproduce" and copy.parent_id == job.id and copy.prompts == prompts
        assert [b["label"] for b in again.buttons][-1] == "Imagine all"
    finally:
        await running.stop()


async def test_describe_checks_the_upload_and_says_when_it_is_off(
    fake: FakeDiscord, bot_settings, describe_models: tuple[Path, Path]
) -> None:
    running = await start_bot(fake, bot_settings())
    try:
        upload = ("photo.png", encoded(striped(64, 64), "PNG"))
        interaction = await fake.send_slash("describe", {"image": upload}, user_id=fake.alice_id)
        assert "IMAGINE_CAPTION_MODEL" in (await refusal(interaction)).content
    finally:
        await running.stop()
    caption, clip = describe_models
    running = await start_bot(fake, bot_settings(caption_model=str(caption), describe_clip_model=str(clip)))
    try:
        interaction = await fake.send_slash(
            "describe", {"image": ("bomb.png", png_bomb(100_000, 100_000))}, user_id=fake.alice_id
        )
        assert "pixels" in (await refusal(interaction)).content
        interaction = await fake.send_slash(
            "describe", {"image": ("notes.txt", b"milk\n")}, user_id=fake.alice_id
        )
        assert "not text/plain" in (await refusal(interaction)).content
        assert await running.store.count_jobs(any_user=True) == 0
    finally:
        await running.stop()
