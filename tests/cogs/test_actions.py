"""Remix, Upscale, Vary, Zoom Out and Pan end to end: real discord.py client, fake Discord, tiny models."""

from __future__ import annotations

from pathlib import Path

from tests.cogs.conftest import RunningBot, decode, imagine, job_id_of, start_bot, wait_job
from tests.fakediscord import FakeDiscord, FakeMessage

TILE_LABELS = [
    "Upscale (Subtle)",
    "Upscale (Creative)",
    "Vary (Subtle)",
    "Vary (Strong)",
    "Remix",
    "Zoom Out 1.5x",
    "Zoom Out 2x",
    "Star",
]
PAN_ARROWS = ["⬅️", "➡️", "⬆️", "⬇️"]


async def tile_message(fake: FakeDiscord, grid: FakeMessage, tile: int, user_id: int) -> FakeMessage:
    """Press U<tile> and return the single-image message it posts."""
    click = await fake.click_button(grid, grid.find_component(label=f"U{tile}")["custom_id"], user_id=user_id)
    return await click.wait_final(timeout=30, predicate=lambda m: bool(m.attachments))


def button(message: FakeMessage, name: str) -> str:
    """custom_id of the button labelled or emoji'd `name`."""
    for item in message.buttons:
        if item.get("label") == name or (item.get("emoji") or {}).get("name") == name:
            return str(item["custom_id"])
    raise AssertionError(
        f"no button {name!r} in {[b.get('label') or b.get('emoji') for b in message.buttons]}"
    )


async def press(fake: FakeDiscord, message: FakeMessage, name: str, user_id: int) -> FakeMessage:
    """Press a button that starts a job and wait for the job's result message."""
    click = await fake.click_button(message, button(message, name), user_id=user_id)
    return await click.wait_final(timeout=90, predicate=lambda m: bool(m.attachments and m.embeds))


async def test_single_image_buttons_start_recorded_child_jobs(fake: FakeDiscord, running: RunningBot) -> None:
    _, grid = await imagine(fake, fake.alice_id, count=2)
    parent = await running.store.get_job(job_id_of(grid))
    single = await tile_message(fake, grid, 2, fake.alice_id)
    labels = [b.get("label") for b in single.buttons if b.get("label")]
    assert labels == TILE_LABELS
    assert [b["emoji"]["name"] for b in single.buttons if not b.get("label")] == PAN_ARROWS
    assert len(single.components) == 3 and all(len(row["components"]) <= 5 for row in single.components)
    assert all(
        b["custom_id"].startswith("ib:") and b["custom_id"].endswith(f":{parent.id}:2")
        for b in single.buttons
    )

    expected = {
        "Upscale (Subtle)": ("upscale-subtle", 1, (128, 128)),
        "Upscale (Creative)": ("upscale-creative", 1, (128, 128)),
        "Vary (Subtle)": ("vary-subtle", 4, (64, 64)),
        "Vary (Strong)": ("vary-strong", 4, (64, 64)),
        "Zoom Out 1.5x": ("zoom-1.5", 4, (64, 64)),
        "Zoom Out 2x": ("zoom-2", 4, (64, 64)),
        "⬅️": ("pan-left", 4, (96, 64)),
        "⬇️": ("pan-down", 4, (64, 96)),
    }
    settings = running.settings
    for name, (action, count, size) in expected.items():
        result = await press(fake, single, name, fake.alice_id)
        child = await wait_job(running.store, job_id_of(result), lambda j: j.delivery == "sent")
        assert (child.action, child.count, (child.width, child.height)) == (action, count, size), name
        assert child.status == "done" and child.parent_id == parent.id and child.source_tile == 2
        assert child.prompts == (parent.prompts[1],) * count
        assert result.embeds[0]["title"].endswith(parent.seed_text)
        folder = Path(child.grid_path).parent.parent  # the job's folder; the grid is in its attempt's
        assert folder.name == child.id
        # The source image (and mask) live in the child's own folder, so /forget removes them.
        assert child.init_image == str(folder / "source.png") and Path(child.init_image).is_file()  # noqa: ASYNC240
        if action.startswith(("zoom", "pan")):
            assert child.mask_image == str(folder / "mask.png")
            assert decode(Path(child.mask_image).read_bytes()).size == size  # noqa: ASYNC240
            assert child.render["mode"] == "outpaint"
        else:
            assert child.mask_image is None and child.render["mode"] == "img2img"
        if action.startswith("upscale"):
            assert child.render["tiled_vae"] is True
            strength = getattr(settings, action.replace("-", "_") + "_strength")
            assert child.strength == strength
        for tile in child.tiles:
            assert decode(Path(tile.path).read_bytes()).size == size  # noqa: ASYNC240


async def test_star_under_one_image_likes_it_for_the_presser_and_a_second_press_takes_it_off(
    fake: FakeDiscord, running: RunningBot
) -> None:
    """Issue 18: a ⭐ button under U posts; the like is the gallery's (one `likes` table), per presser."""
    _, grid = await imagine(fake, fake.alice_id, count=2)
    job_id = job_id_of(grid)
    single = await tile_message(fake, grid, 2, fake.alice_id)
    star = button(single, "Star")
    assert star == f"ib:star:{job_id}:2"

    async def press_star(user_id: int) -> str:
        click = await fake.click_button(single, star, user_id=user_id)
        reply = await click.wait_final(timeout=30, predicate=lambda m: bool(m.content))
        assert reply.ephemeral
        return reply.content

    async def likes() -> list[tuple[int, str, int]]:
        rows = await running.store.read("SELECT user_id, job_id, idx FROM likes ORDER BY user_id")
        return [(int(r["user_id"]), str(r["job_id"]), int(r["idx"])) for r in rows]

    assert (await press_star(fake.alice_id)).startswith(f"⭐ Starred image 2 of job `{job_id}`")
    # Another member who sees the public post may star it too: each like is the presser's own.
    assert (await press_star(fake.bob_id)).startswith("⭐ Starred")
    assert await likes() == sorted([(fake.alice_id, job_id, 2), (fake.bob_id, job_id, 2)])
    assert (await press_star(fake.alice_id)).startswith("Star taken off image 2")
    assert await likes() == [(fake.bob_id, job_id, 2)]


async def test_grid_remix_modal_keeps_image_seeds_and_changes_only_the_text(
    fake: FakeDiscord, running: RunningBot
) -> None:
    _, grid = await imagine(fake, fake.alice_id, count=2, negative="blurry")
    parent = await running.store.get_job(job_id_of(grid))
    click = await fake.click_button(grid, button(grid, "Remix"), user_id=fake.alice_id)
    modal = await click.wait_modal()
    inputs = {c["custom_id"]: c for row in modal["components"] for c in row["components"]}
    assert set(inputs) == {"p1", "p2", "negative"}
    assert inputs["p1"]["value"] == parent.prompts[0] and inputs["negative"]["value"] == "blurry"
    submit = await fake.submit_modal(click, {"p1": "a red fox in the snow", "p2": "", "negative": "blurry"})
    result = await submit.wait_final(timeout=90, predicate=lambda m: bool(m.attachments and m.embeds))
    child = await wait_job(running.store, job_id_of(result), lambda j: j.delivery == "sent")
    assert child.action == "remix" and child.parent_id == parent.id
    assert child.prompts == ("a red fox in the snow", parent.prompts[1])  # empty keeps the old prompt
    assert [t.image_seed for t in child.tiles] == [t.image_seed for t in parent.tiles]
    assert child.negative == "blurry"
    # Same seed and prompt for tile 2 → the same picture; tile 1's new text → a different one.
    assert Path(child.tiles[1].path).read_bytes() == Path(parent.tiles[1].path).read_bytes()  # noqa: ASYNC240
    assert Path(child.tiles[0].path).read_bytes() != Path(parent.tiles[0].path).read_bytes()  # noqa: ASYNC240


async def test_tile_remix_runs_vary_strong_with_the_new_prompt(
    fake: FakeDiscord, running: RunningBot
) -> None:
    _, grid = await imagine(fake, fake.alice_id, count=1)
    single = await tile_message(fake, grid, 1, fake.alice_id)
    click = await fake.click_button(single, button(single, "Remix"), user_id=fake.alice_id)
    modal = await click.wait_modal()
    assert [c["custom_id"] for row in modal["components"] for c in row["components"]] == ["p1"]
    submit = await fake.submit_modal(click, {"p1": "a castle on a hill"})
    result = await submit.wait_final(timeout=90, predicate=lambda m: bool(m.attachments and m.embeds))
    child = await wait_job(running.store, job_id_of(result), lambda j: j.delivery == "sent")
    assert child.action == "remix" and child.source_tile == 1
    assert child.prompts == ("a castle on a hill",) * 4
    assert child.strength == running.settings.vary_strong_strength and child.render["mode"] == "img2img"


async def test_only_the_requester_can_press_or_submit(fake: FakeDiscord, running: RunningBot) -> None:
    _, grid = await imagine(fake, fake.alice_id, count=1)
    single = await tile_message(fake, grid, 1, fake.alice_id)
    before = await running.store.count_jobs(any_user=True)
    for message, name in ((grid, "Remix"), (single, "Upscale (Subtle)"), (single, "Remix"), (single, "⬅️")):
        click = await fake.click_button(message, button(message, name), user_id=fake.bob_id)
        reply = await click.wait_final(timeout=10)
        assert reply.ephemeral and "Only the person" in reply.content, name
    # A modal opened by the owner but submitted by someone else (a forged submit) is refused too.
    click = await fake.click_button(grid, button(grid, "Remix"), user_id=fake.alice_id)
    await click.wait_modal()
    forged = await fake.submit_modal(click, {"p1": "mine now"}, user_id=fake.bob_id)
    reply = await forged.wait_final(timeout=10)
    assert reply.ephemeral and "Only the person" in reply.content
    assert await running.store.count_jobs(any_user=True) == before


async def test_upscale_over_the_output_limit_says_why(fake: FakeDiscord, bot_settings) -> None:
    bot = await start_bot(fake, bot_settings(max_output_pixels=100 * 100))
    try:
        _, grid = await imagine(fake, fake.alice_id, count=1)
        single = await tile_message(fake, grid, 1, fake.alice_id)
        before = await bot.store.count_jobs(any_user=True)
        click = await fake.click_button(single, button(single, "Upscale (Subtle)"), user_id=fake.alice_id)
        reply = await click.wait_final(timeout=10)
        assert reply.ephemeral and "128×128" in reply.content and "IMAGINE_MAX_OUTPUT_PIXELS" in reply.content
        assert await bot.store.count_jobs(any_user=True) == before
    finally:
        await bot.stop()
