"""Enhance under a single Draft image: the tile a U button posts, and a one-image job made from a Draft tile.

Real discord.py client, fake Discord, tiny models (README → Draft).
"""

from __future__ import annotations

from tests.cogs.conftest import RunningBot, imagine, job_id_of, wait_job
from tests.fakediscord import FakeDiscord


async def test_a_draft_tile_posted_alone_has_enhance_and_it_renders_that_tile_on_the_main_model(
    fake: FakeDiscord, models_bot: RunningBot
) -> None:
    _, grid = await imagine(fake, fake.alice_id, "a lighthouse --draft", count=2, expand=False)
    draft = await wait_job(models_bot.store, job_id_of(grid), lambda j: j.delivery == "sent")
    assert draft.model == "tiny-draft"

    # U2 posts the second Draft image alone, with an Enhance button beside Upscale, Vary, Zoom, Pan.
    posted = await fake.click_button(
        grid, grid.find_component(label="U2")["custom_id"], user_id=fake.alice_id
    )
    tile = await posted.wait_final(timeout=30, predicate=lambda m: bool(m.attachments and m.embeds))
    labels = [b.get("label") for b in tile.buttons]
    assert "Enhance" in labels and "Upscale (Subtle)" in labels

    click = await fake.click_button(
        tile, tile.find_component(label="Enhance")["custom_id"], user_id=fake.alice_id
    )
    result = await click.wait_final(timeout=90, predicate=lambda m: bool(m.attachments and m.embeds))
    child = await wait_job(models_bot.store, job_id_of(result), lambda j: j.delivery == "sent")
    assert (child.action, child.parent_id, child.source_tile, child.model) == ("enhance", draft.id, 2, "tiny")
    assert child.render["mode"] == "img2img" and child.prompts == (draft.prompts[1],)

    # Upscale of a Draft tile: a one-image Draft job, posted with Enhance too.
    up = await fake.click_button(
        tile, tile.find_component(label="Upscale (Subtle)")["custom_id"], user_id=fake.alice_id
    )
    upscaled = await up.wait_final(timeout=90, predicate=lambda m: bool(m.attachments and m.embeds))
    one = await wait_job(models_bot.store, job_id_of(upscaled), lambda j: j.delivery == "sent")
    assert (one.action, one.model, one.count) == ("upscale-subtle", "tiny-draft", 1)
    assert "Enhance 1" in [b.get("label") for b in upscaled.buttons]

    # A tile posted from a full-quality job has no Enhance.
    posted = await fake.click_button(
        result, result.find_component(label="U1")["custom_id"], user_id=fake.alice_id
    )
    plain = await posted.wait_final(timeout=30, predicate=lambda m: bool(m.attachments and m.embeds))
    assert "Upscale (Subtle)" in [b.get("label") for b in plain.buttons]
    assert not any(b.get("label", "").startswith("Enhance") for b in plain.buttons)
