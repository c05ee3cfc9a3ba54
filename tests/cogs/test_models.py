"""Several models and Draft end to end: real discord.py client, fake Discord, tiny models (issue 19)."""

from __future__ import annotations

from pathlib import Path

from bot.intake import Admitted, ImagineRequest, Requester
from bot.store import JobRecord
from tests.cogs.conftest import RunningBot, imagine, job_id_of, wait_job
from tests.fakediscord import FakeDiscord


def tile_bytes(job: JobRecord) -> list[bytes]:
    return [Path(tile.path or "").read_bytes() for tile in job.tiles]


async def test_model_choice_autocomplete_second_model_reproduce_and_unknown(
    fake: FakeDiscord, models_bot: RunningBot
) -> None:
    typed = await fake.send_autocomplete(
        "imagine", {"seed": "a fox", "model": "tiny"}, "model", user_id=fake.alice_id
    )
    choices = await typed.wait_autocomplete()
    assert [c["value"] for c in choices] == ["tiny", "tiny-b", "tiny-draft"]
    assert choices[1]["name"] == "tiny-b — a second tiny model"
    narrowed = await fake.send_autocomplete(
        "imagine", {"seed": "a fox", "model": "-b"}, "model", user_id=fake.alice_id
    )
    assert [c["value"] for c in await narrowed.wait_autocomplete()] == ["tiny-b"]

    _, grid = await imagine(fake, fake.alice_id, "a fox", count=1, model="tiny-b", expand=False)
    job = await wait_job(models_bot.store, job_id_of(grid), lambda j: j.delivery == "sent")
    assert (job.model, job.render["model_name"], job.render["model_kind"]) == ("tiny-b", "tiny-b", "sd2-512")
    assert job.render["sd_model"].endswith("sd-b")

    # Reproduce (from /history) renders on the same model, byte for byte.
    opened = await fake.send_slash("history", {"job": job.id}, user_id=fake.alice_id)
    detail = await opened.wait_final(timeout=30, predicate=lambda m: bool(m.embeds))
    repro = await fake.click_button(detail, f"ib:repro:{job.id}", user_id=fake.alice_id)
    await repro.wait_final(timeout=90, predicate=lambda m: bool(m.attachments and m.embeds))
    (child,) = [
        j for j in await models_bot.store.list_jobs(user_id=fake.alice_id, limit=5) if j.parent_id == job.id
    ]
    child = await wait_job(models_bot.store, child.id, lambda j: j.status == "done")
    assert child.model == "tiny-b" and child.action == "reproduce"
    assert tile_bytes(child) == tile_bytes(job)

    # An unknown model is refused before queueing, with the valid ones; nothing is written.
    before = await models_bot.store.count_jobs(any_user=True)
    refused = await fake.send_slash("imagine", {"seed": "a fox --model sdxl"}, user_id=fake.alice_id)
    reply = await refused.wait_final(timeout=30)
    assert reply.ephemeral
    assert reply.content == "There is no model `sdxl`. Models here: `tiny`, `tiny-b`, `tiny-draft`."
    assert await models_bot.store.count_jobs(any_user=True) == before

    # A manager sets the server's default model in /settings (the button cycles bot → tiny → tiny-b …);
    # a job that names no model then gets it (asked of the intake: nothing is queued here).
    opened = await fake.send_slash("settings", {"scope": "server"}, user_id=fake.mod_id)
    panel = await opened.wait_final(timeout=15)
    for expected in ("tiny", "tiny-b"):
        custom_id = next(
            c["custom_id"]
            for c in panel.all_components()
            if c.get("custom_id", "").startswith("ib:sb:g:model:")
        )
        panel = await (await fake.click_button(panel, custom_id, user_id=fake.mod_id)).wait_final(timeout=15)
        assert (await models_bot.bot.preferences.guild(fake.guild_id)).model == expected
    assert any(c.get("label") == "Default model: tiny-b" for c in panel.all_components())
    who = Requester(fake.alice_id, guild_id=fake.guild_id, channel_id=fake.channel_id)
    admitted = await models_bot.bot.intake.imagine(who, ImagineRequest("a fox"))
    assert isinstance(admitted, Admitted) and admitted.spec.model == "tiny-b"

    listed = await fake.send_slash("models", {}, user_id=fake.alice_id)
    text = (await listed.wait_final(timeout=30)).content
    assert "`tiny` (bot default)" in text and "`tiny-draft` (`--draft`)" in text
    assert "`tiny-b` (this server's default)" in text
    loras = await fake.send_slash("loras", {}, user_id=fake.alice_id)
    assert (await loras.wait_final(timeout=30)).content.startswith("There are no LoRAs on this bot")


async def test_draft_grid_enhance_button_renders_the_tile_on_the_main_model(
    fake: FakeDiscord, models_bot: RunningBot
) -> None:
    _, grid = await imagine(fake, fake.alice_id, "a lighthouse --draft", count=2, expand=False)
    draft = await wait_job(models_bot.store, job_id_of(grid), lambda j: j.delivery == "sent")
    assert (draft.model, draft.steps, draft.guidance) == ("tiny-draft", 1, 0.0)
    labels = [b.get("label") for b in grid.buttons]
    assert "Enhance 1" in labels and "Enhance 2" in labels and "V1" in labels

    click = await fake.click_button(
        grid, grid.find_component(label="Enhance 2")["custom_id"], user_id=fake.alice_id
    )
    result = await click.wait_final(timeout=90, predicate=lambda m: bool(m.attachments and m.embeds))
    child = await wait_job(models_bot.store, job_id_of(result), lambda j: j.delivery == "sent")
    assert (child.action, child.parent_id, child.source_tile, child.model) == ("enhance", draft.id, 2, "tiny")
    assert (child.count, child.steps, child.guidance, child.strength) == (1, 2, 7.5, 0.55)
    assert child.render["mode"] == "img2img" and child.prompts == (draft.prompts[1],)
    assert not any(b.get("label", "").startswith("Enhance") for b in result.buttons)

    refused = await fake.send_slash(
        "imagine", {"seed": "a lighthouse --draft --no fog"}, user_id=fake.alice_id
    )
    reply = await refused.wait_final(timeout=30)
    assert reply.ephemeral and "takes no negative prompt" in reply.content
