"""`/imagine image:` uploads and inline `--flags` end to end through the fake Discord."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from tests.cogs.conftest import RunningBot, decode, imagine, start_bot, wait_job
from tests.cogs.test_actions import job_id_of
from tests.fakediscord import FakeDiscord, FakeInteraction, FakeMessage
from tests.test_uploads import encoded, png_bomb, striped


async def refusal(interaction: FakeInteraction) -> FakeMessage:
    """The ephemeral refusal: the immediate reply, or a followup after the thinking message was removed."""

    def check() -> FakeMessage | None:
        for message in interaction.messages:
            if message.ephemeral and message.content:
                return message
        return None

    return await interaction.fake.wait_until(check, 30, "an ephemeral refusal")


async def test_png_upload_starts_every_tile_from_the_image(fake: FakeDiscord, running: RunningBot) -> None:
    upload = ("photo.png", encoded(striped(150, 50), "PNG"))
    _, message = await imagine(fake, fake.alice_id, seed="a painting", count=2, image=upload, strength=0.5)
    job = await wait_job(running.store, job_id_of(message), lambda j: j.delivery == "sent")
    assert job.action == "image" and job.strength == 0.5 and job.render["mode"] == "img2img"
    source = Path(job.init_image)
    # The job's folder: its inputs, and each attempt's own folder of tiles and grid.
    assert source.parent == Path(job.grid_path).parent.parent and source.name == "source.png"
    stored = decode(source.read_bytes())  # noqa: ASYNC240
    assert stored.format == "PNG" and stored.size == (64, 64)  # fitted: cover + centre crop
    assert stored.getpixel((32, 32)) == (0, 255, 0)
    fields = {f["name"]: f["value"] for f in message.embeds[0]["fields"]}
    assert fields["Strength"] == "0.5"


async def test_jpeg_named_png_is_read_as_the_jpeg_it_is(fake: FakeDiscord, running: RunningBot) -> None:
    upload = ("holiday.png", encoded(striped(64, 64), "JPEG", quality=90))
    _, message = await imagine(fake, fake.alice_id, seed="a painting", count=1, image=upload)
    job = await wait_job(running.store, job_id_of(message), lambda j: j.delivery == "sent")
    assert job.status == "done" and job.strength == running.settings.image_strength
    assert decode(Path(job.init_image).read_bytes()).format == "PNG"  # noqa: ASYNC240


@pytest.mark.parametrize(
    ("upload", "message"),
    [
        (("bomb.png", png_bomb(100_000, 100_000)), "pixels"),
        (("big.png", png_bomb(5000, 5000)), "5000×5000 pixels; the limit is 4096"),
        (("notes.txt", b"remember the milk\n"), "not text/plain"),
        (("notes.png", b"remember the milk\n"), "not a PNG, JPEG or WebP"),
    ],
)
async def test_unfit_uploads_are_refused_before_queueing(
    fake: FakeDiscord, running: RunningBot, upload: tuple[str, bytes], message: str
) -> None:
    interaction = await fake.send_slash("imagine", {"seed": "cat", "image": upload}, user_id=fake.alice_id)
    reply = await refusal(interaction)
    assert message in reply.content and "Traceback" not in reply.content
    assert await running.store.count_jobs(any_user=True) == 0
    # No public leftover: a thinking message, if one was shown, is gone.
    assert all(m.deleted or m.ephemeral for m in interaction.messages)
    assert not any(running.settings.images_dir.glob("*/source.png"))


async def test_strength_without_an_image_is_refused(fake: FakeDiscord, running: RunningBot) -> None:
    interaction = await fake.send_slash("imagine", {"seed": "cat", "strength": 0.5}, user_id=fake.alice_id)
    reply = await refusal(interaction)
    assert "`strength` only applies together with `image`" in reply.content


async def test_inline_flags_table(fake: FakeDiscord, bot_settings) -> None:
    bot = await start_bot(fake, bot_settings(width=128, height=128))
    try:
        seed = "a cat --ar 2:1 --no dogs --seed 5 --steps 3 --count 2 --chaos 50"
        _, message = await imagine(fake, fake.alice_id, seed=seed)
        job = await wait_job(bot.store, job_id_of(message), lambda j: j.delivery == "sent")
        assert (job.seed_text, job.width, job.height, job.negative) == ("a cat", 176, 88, "dogs")
        assert (job.job_seed, job.steps, job.count, job.chaos, job.expand) == (5, 3, 2, 50, True)
        assert job.expander["temperature"] == 1.25
        fields = {f["name"]: f["value"] for f in message.embeds[0]["fields"]}
        assert fields["Seed"] == "`5`" and fields["Size"] == "176×88" and fields["Steps"] == "3"
        assert fields["Negative"] == "dogs" and fields["Chaos"] == "50 (temperature 1.25)"
        assert message.embeds[0]["title"] == "a cat"

        _, raw = await imagine(fake, fake.alice_id, seed="a lighthouse --raw", count=1)
        job = await wait_job(bot.store, job_id_of(raw), lambda j: j.delivery == "sent")
        assert job.expand is False and job.prompts == ("a lighthouse",)

        bad = [
            ({"seed": "a cat --stylize 9"}, "unknown flag `--stylize`"),
            ({"seed": "a cat --chaos 500"}, "`--chaos` must be 0..100"),
            ({"seed": "a cat --ar wide"}, "`--ar` needs a ratio like 16:9"),
            (
                {"seed": "a cat --seed 5", "seed_number": 6},
                "`--seed 5` in the text and the `seed_number` option",
            ),
            (
                {"seed": "a cat --ar 16:9", "aspect": "portrait"},
                "and the `aspect` option (portrait) disagree",
            ),
            ({"seed": "--seed 5"}, "`seed` must not be empty"),
        ]
        before = await bot.store.count_jobs(any_user=True)
        for options, text in bad:
            interaction = await fake.send_slash("imagine", options, user_id=fake.alice_id)
            reply = await refusal(interaction)
            assert text in reply.content, (options, reply.content)
            if "seed` must" not in text:
                assert "Accepted flags" in reply.content
        assert await bot.store.count_jobs(any_user=True) == before
    finally:
        await bot.stop()


async def test_reproduce_of_an_outpaint_is_exact_and_forget_removes_its_inputs(
    fake: FakeDiscord, running: RunningBot
) -> None:
    from tests.cogs.test_actions import press, tile_message

    _, grid = await imagine(fake, fake.alice_id, count=1)
    single = await tile_message(fake, grid, 1, fake.alice_id)
    jobs = []
    for name in ("Zoom Out 2x", "Upscale (Subtle)"):
        result = await press(fake, single, name, fake.alice_id)
        original = await wait_job(running.store, job_id_of(result), lambda j: j.delivery == "sent")
        card = await fake.send_slash("history", {"job": original.id}, user_id=fake.alice_id)
        shown = await card.wait_final(timeout=10, predicate=lambda m: bool(m.embeds))
        repro = shown.find_component(label="Reproduce")["custom_id"]
        click = await fake.click_button(shown, repro, user_id=fake.alice_id)
        again = await click.wait_final(timeout=90, predicate=lambda m: bool(m.attachments and m.embeds))
        copy = await wait_job(running.store, job_id_of(again), lambda j: j.delivery == "sent")
        assert copy.action == "reproduce" and copy.parent_id == original.id
        assert copy.render_action == original.action
        assert copy.render["tiled_vae"] == original.render["tiled_vae"]
        assert copy.init_image != original.init_image and Path(copy.init_image).parent.name == copy.id
        for mine, theirs in zip(copy.tiles, original.tiles, strict=True):
            assert Path(mine.path).read_bytes() == Path(theirs.path).read_bytes()  # noqa: ASYNC240
        jobs += [original, copy]

    forget = await fake.send_slash("forget", {"confirm": True}, user_id=fake.alice_id)
    await forget.wait_final(timeout=30, predicate=lambda m: "Deleted" in (m.content or ""))
    for job in jobs:
        assert not Path(job.init_image).exists()  # noqa: ASYNC240
        assert job.mask_image is None or not Path(job.mask_image).exists()  # noqa: ASYNC240


async def test_forget_removes_the_upload_of_a_job_that_never_rendered(
    fake: FakeDiscord, running: RunningBot
) -> None:
    gate = threading.Event()
    # Hold the GPU thread so the job is still queued when it is cancelled: it never gets a grid.
    blocker = asyncio.get_running_loop().run_in_executor(None, running.bot.backend.engine.run_sync, gate.wait)
    try:
        upload = ("photo.png", encoded(striped(80, 80), "PNG"))
        interaction = await fake.send_slash(
            "imagine", {"seed": "cat", "image": upload}, user_id=fake.alice_id
        )
        await interaction.wait_deferred()
        await fake.wait_until(
            lambda: bool(list(running.settings.images_dir.glob("*/source.png"))), 30, "upload"
        )
        (source,) = running.settings.images_dir.glob("*/source.png")
        cancel = await fake.send_slash("cancel", {}, user_id=fake.alice_id)
        await cancel.wait_final(timeout=10)
    finally:
        gate.set()
        await blocker
    job = await wait_job(running.store, source.parent.name, lambda j: j.status == "cancelled")
    assert job.grid_path is None and Path(job.init_image) == source
    forget = await fake.send_slash("forget", {"confirm": True}, user_id=fake.alice_id)
    await forget.wait_final(timeout=30, predicate=lambda m: "Deleted" in (m.content or ""))
    assert not source.parent.exists()
