"""/blend (issue 22) end to end through the fake Discord, with a tiny random-weight SD 2.1 unCLIP."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.engine.blend import SOURCE_SIDE, unpack_sheet
from bot.engine.tiny_blend import build_tiny_blend_model
from tests.cogs.conftest import start_bot, wait_job
from tests.cogs.test_actions import button, job_id_of, tile_message
from tests.cogs.test_image_prompts import refusal
from tests.fakediscord import FakeDiscord
from tests.helpers import cli_json, run_cli, tiny_cli_env
from tests.test_blend_children import blend_job
from tests.test_uploads import encoded, png_bomb, striped


@pytest.fixture(scope="module")
def unclip_model(tmp_path_factory: pytest.TempPathFactory, tiny_models: tuple[Path, Path]) -> Path:
    return build_tiny_blend_model(tmp_path_factory.mktemp("unclip"), tiny_models[0])


def picture(colour: tuple[int, int, int], size: tuple[int, int] = (80, 64)) -> bytes:
    return encoded(Image.new("RGB", size, colour), "PNG")


def data(path: str) -> bytes:
    return Path(path).read_bytes()


COLOURS = [(255, 0, 0), (0, 0, 255), (0, 200, 0), (250, 250, 0), (120, 0, 120)]


async def test_blend_two_images_records_weights_and_reruns_exactly(
    fake: FakeDiscord, bot_settings, unclip_model: Path
) -> None:
    """Two pictures with `--iw 1,0.5`, a prompt and `--ar`: a grid of blends, the sheet and weights stored;
    Reproduce renders the same bytes."""
    running = await start_bot(
        fake, bot_settings(blend_model=str(unclip_model), blend_noise_level=50, max_pending_per_user=4)
    )
    try:
        options = {
            "image1": ("a.png", picture(COLOURS[0])),
            "image2": ("b.jpg", encoded(striped(96, 64), "JPEG")),
            "prompt": "a red fox --iw 1,0.5 --ar 3:2 --seed 7",
        }
        interaction = await fake.send_slash("blend", options, user_id=fake.alice_id)
        grid = await interaction.wait_final(timeout=90, predicate=lambda m: bool(m.attachments and m.embeds))
        job = await wait_job(running.store, job_id_of(grid), lambda j: j.delivery == "sent")
        assert job.action == "blend" and job.status == "done" and job.job_seed == 7
        assert job.width > job.height  # --ar 3:2
        assert job.seed_text == "a red fox" and set(job.prompts) == {"a red fox"}
        blend = job.render["blend"]
        assert blend == {"images": 2, "weights": [1.0, 0.5], "prompt": "a red fox", "noise_level": 50}
        assert job.render["mode"] == "blend" and job.render["unclip_model"] == str(unclip_model)
        # The source pictures are stored with the job: its blend sheet, each picture fitted to a square.
        sheet = unpack_sheet(data(job.init_image))
        assert [im.size for im in sheet.images] == [(SOURCE_SIDE, SOURCE_SIDE)] * 2
        assert np.asarray(sheet.images[0])[5, 5].tolist() == [255, 0, 0]
        assert all(tile.path is not None for tile in job.tiles) and len(job.tiles) == job.count
        # Reproduce (from /history): the same pictures, byte for byte.
        detail = await fake.send_slash("history", {"job": job.id}, user_id=fake.alice_id)
        card = await detail.wait_final(timeout=10, predicate=lambda m: bool(m.embeds))
        repro = await fake.click_button(
            card, card.find_component(label="Reproduce")["custom_id"], user_id=fake.alice_id
        )
        again = await repro.wait_final(timeout=90, predicate=lambda m: bool(m.attachments and m.embeds))
        copy = await wait_job(running.store, job_id_of(again), lambda j: j.status == "done")
        assert copy.parent_id == job.id and copy.render_action == "blend"
        assert copy.render["blend"] == blend
        for first, second in zip(job.tiles, copy.tiles, strict=True):
            assert data(first.path) == data(second.path)
        assert data(copy.init_image) == data(job.init_image)
    finally:
        await running.stop()


async def test_blend_five_images(fake: FakeDiscord, bot_settings, unclip_model: Path) -> None:
    running = await start_bot(fake, bot_settings(blend_model=str(unclip_model)))
    try:
        options = {f"image{n}": (f"{n}.png", picture(COLOURS[n - 1])) for n in range(1, 6)}
        options["prompt"] = "--iw 2,1,1,1,0 --count 2"
        interaction = await fake.send_slash("blend", options, user_id=fake.alice_id)
        grid = await interaction.wait_final(timeout=90, predicate=lambda m: bool(m.attachments and m.embeds))
        job = await wait_job(running.store, job_id_of(grid), lambda j: j.status == "done")
        assert job.seed_text == "/blend 5 images" and job.count == 2
        assert job.render["blend"]["weights"] == [2.0, 1.0, 1.0, 1.0, 0.0]
        assert job.render["blend"]["prompt"] == "" and job.render["blend"]["noise_level"] == 0
        assert len(unpack_sheet(data(job.init_image)).images) == 5
    finally:
        await running.stop()


@pytest.mark.heavy
async def test_cli_rerun_of_a_blend_is_exact(
    fake: FakeDiscord, bot_settings, unclip_model: Path, tiny_models: tuple[Path, Path]
) -> None:
    """A blend without a prompt, then `python -m bot rerun JOB` on the same data folder: the same bytes."""
    settings = bot_settings(blend_model=str(unclip_model))
    running = await start_bot(fake, settings)
    try:
        options = {"image1": ("a.png", picture(COLOURS[0])), "image2": ("b.png", picture(COLOURS[1]))}
        interaction = await fake.send_slash("blend", options, user_id=fake.alice_id)
        grid = await interaction.wait_final(timeout=90, predicate=lambda m: bool(m.attachments and m.embeds))
        job = await wait_job(running.store, job_id_of(grid), lambda j: j.status == "done")
    finally:
        await running.stop()
    env = tiny_cli_env(tiny_models, settings.data_dir, IMAGINE_BLEND_MODEL=str(unclip_model))
    rerun = await asyncio.to_thread(run_cli, ["rerun", job.id, "--json"], env, settings.data_dir)
    again = cli_json(rerun)
    assert again["status"] == "done" and "byte-identical" not in rerun.stderr, rerun.stderr
    assert again["render"]["blend"] == job.render["blend"]
    assert [data(path) for path in again["images"]] == [data(t.path) for t in job.tiles]


async def test_blend_refuses_bad_input_and_says_when_it_is_off(
    fake: FakeDiscord, bot_settings, unclip_model: Path
) -> None:
    two = {"image1": ("a.png", picture(COLOURS[0])), "image2": ("b.png", picture(COLOURS[1]))}
    running = await start_bot(fake, bot_settings())
    try:
        interaction = await fake.send_slash("blend", two, user_id=fake.alice_id)
        message = (await refusal(interaction)).content
        assert message.startswith("/blend is off on this bot") and "IMAGINE_BLEND_MODEL" in message
        assert message.count(".") == 1  # one sentence
    finally:
        await running.stop()
    running = await start_bot(fake, bot_settings(blend_model=str(unclip_model)))
    try:
        bomb = {**two, "image2": ("bomb.png", png_bomb(100_000, 100_000))}
        interaction = await fake.send_slash("blend", bomb, user_id=fake.alice_id)
        assert "`image2` has far too many pixels" in (await refusal(interaction)).content
        text = {**two, "image3": ("notes.txt", b"milk\n")}
        interaction = await fake.send_slash("blend", text, user_id=fake.alice_id)
        assert "`image3` must be a PNG, JPEG or WebP picture" in (await refusal(interaction)).content
        fake_png = {**two, "image1": ("a.png", b"not a picture")}
        interaction = await fake.send_slash("blend", fake_png, user_id=fake.alice_id)
        assert "`image1` is not a PNG, JPEG or WebP picture" in (await refusal(interaction)).content
        for prompt, said in (
            ("--iw 1,2,3", "3 weights for 2 images"),
            ("--iw 0,0", "must not all be 0"),
            ("--iw 1,x", "numbers like"),
            ("cat --tile", "does not take --tile"),
        ):
            interaction = await fake.send_slash("blend", {**two, "prompt": prompt}, user_id=fake.alice_id)
            assert said in (await refusal(interaction)).content, prompt
        assert await running.store.count_jobs(any_user=True) == 0
    finally:
        await running.stop()


async def test_reproduce_of_a_blend_when_blend_is_off_is_refused_in_one_sentence(
    fake: FakeDiscord, bot_settings
) -> None:
    """A /blend job from when /blend was on; the bot now runs without it: Reproduce (from /history) says so,
    ephemeral, and queues nothing. Variations of one of its images still run (img2img on the SD model)."""
    settings = bot_settings()
    running = await start_bot(fake, settings)
    try:
        job = await blend_job(
            running.store,
            settings.images_dir / "old-blend",
            user_id=fake.alice_id,
            guild_id=fake.guild_id,
            channel_id=fake.channel_id,
        )
        detail = await fake.send_slash("history", {"job": job.id}, user_id=fake.alice_id)
        card = await detail.wait_final(timeout=10, predicate=lambda m: bool(m.embeds))
        repro = await fake.click_button(
            card, card.find_component(label="Reproduce")["custom_id"], user_id=fake.alice_id
        )
        message = (await refusal(repro)).content
        assert (
            message.startswith("Can't start that: /blend is off on this bot")
            and "IMAGINE_BLEND_MODEL" in message
        )
        assert message.count(". ") == 0 and message.endswith(".")  # one sentence
        assert await running.store.count_jobs(any_user=True) == 1  # nothing queued
    finally:
        await running.stop()


async def test_remix_of_a_blend_grid_reblends_with_the_new_text_and_one_image_remixes_on_sd(
    fake: FakeDiscord, bot_settings, unclip_model: Path
) -> None:
    """The grid's Remix of a blend without a prompt: the same sheet and image seeds, tile 1 with new text
    (a different picture), tile 2 kept (the same bytes). Remix of one blend image: Vary (Strong) on SD."""
    running = await start_bot(fake, bot_settings(blend_model=str(unclip_model), max_pending_per_user=4))
    try:
        options = {"image1": ("a.png", picture(COLOURS[0])), "image2": ("b.png", picture(COLOURS[1]))}
        options["prompt"] = "--count 2 --seed 3"
        interaction = await fake.send_slash("blend", options, user_id=fake.alice_id)
        grid = await interaction.wait_final(timeout=90, predicate=lambda m: bool(m.attachments and m.embeds))
        parent = await wait_job(running.store, job_id_of(grid), lambda j: j.delivery == "sent")
        assert parent.prompts == ("/blend 2 images",) * 2
        click = await fake.click_button(grid, button(grid, "Remix"), user_id=fake.alice_id)
        modal = await click.wait_modal()
        inputs = {c["custom_id"]: c for row in modal["components"] for c in row["components"]}
        assert inputs["p1"]["value"] == "/blend 2 images"
        submit = await fake.submit_modal(click, {"p1": "a red fox in the snow", "p2": "", "negative": ""})
        result = await submit.wait_final(timeout=90, predicate=lambda m: bool(m.attachments and m.embeds))
        child = await wait_job(running.store, job_id_of(result), lambda j: j.delivery == "sent")
        assert (child.action, child.render_action, child.parent_id) == ("remix", "blend", parent.id)
        assert child.prompts == ("a red fox in the snow", "/blend 2 images")
        assert [t.image_seed for t in child.tiles] == [t.image_seed for t in parent.tiles]
        assert child.render["blend"] == parent.render["blend"] and data(child.init_image) == data(
            parent.init_image
        )
        assert data(child.tiles[1].path) == data(parent.tiles[1].path)  # same seed, same (no) text
        assert data(child.tiles[0].path) != data(parent.tiles[0].path)  # the new text

        single = await tile_message(fake, grid, 1, fake.alice_id)
        click = await fake.click_button(single, button(single, "Remix"), user_id=fake.alice_id)
        await click.wait_modal()
        submit = await fake.submit_modal(click, {"p1": "a castle on a hill"})
        result = await submit.wait_final(timeout=90, predicate=lambda m: bool(m.attachments and m.embeds))
        one = await wait_job(running.store, job_id_of(result), lambda j: j.delivery == "sent")
        assert (one.action, one.render_action, one.source_tile) == ("remix", None, 1)
        assert one.render["mode"] == "img2img" and "blend" not in one.render
        assert set(one.prompts) == {"a castle on a hill"}
    finally:
        await running.stop()
