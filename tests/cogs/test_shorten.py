"""/shorten (issue 22) end to end through the fake Discord, on the tiny SD text encoder."""

from __future__ import annotations

import re

import torch
from transformers import CLIPTextModel, CLIPTokenizer

from tests.cogs.conftest import RunningBot, start_bot, wait_job
from tests.cogs.test_actions import job_id_of
from tests.fakediscord import FakeDiscord

PROMPT = "a red fox sitting in deep snow, golden hour, oil painting"


def measured_order(sd_model: str, words: list[str]) -> list[str]:
    """The words by how far CLIP's pooled embedding moves without each, computed here independently."""
    tokenizer = CLIPTokenizer.from_pretrained(sd_model, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(sd_model, subfolder="text_encoder").eval()
    texts = [" ".join(words)] + [" ".join(words[:i] + words[i + 1 :]) for i in range(len(words))]
    ids = tokenizer(
        texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        pooled = torch.nn.functional.normalize(encoder(ids).pooler_output, dim=-1)
    effect = [1 - float(pooled[i + 1] @ pooled[0]) for i in range(len(words))]
    return [words[i] for i in sorted(range(len(words)), key=lambda i: (-effect[i], i))]


async def test_shorten_orders_words_by_their_effect_and_imagines_a_shorter_prompt(
    fake: FakeDiscord, running: RunningBot
) -> None:
    interaction = await fake.send_slash("shorten", {"prompt": PROMPT + " --ar 3:2"}, user_id=fake.alice_id)
    answer = await interaction.wait_final(timeout=60, predicate=lambda m: bool(m.buttons))
    assert answer.ephemeral
    shown = re.findall(r"^`\s*([\d.]+)` \S* ?(.+)$", answer.content, flags=re.MULTILINE)
    weights = [float(w) for w, _ in shown]
    words = [w.strip() for _, w in shown]
    assert sorted(words) == sorted(PROMPT.split())  # every word once; the flag is left out
    assert weights == sorted(weights, reverse=True) and weights[0] == 1.0
    assert words == measured_order(running.settings.sd_model, PROMPT.split())
    prompts = re.findall(r"^\*\*(\d)\.\*\* (.+)$", answer.content, flags=re.MULTILINE)
    assert 1 <= len(prompts) <= 5
    lengths = [len(p.split()) for _, p in prompts]
    assert lengths == sorted(lengths, reverse=True) and lengths[0] < len(PROMPT.split())
    assert [b["label"] for b in answer.buttons] == [f"Imagine {n}" for n in range(1, len(prompts) + 1)]
    # The shortest prompt keeps the strongest words, in the prompt's order.
    kept = prompts[-1][1].split()
    assert words[0] in kept and kept == [w for w in PROMPT.split() if w in kept]

    click = await fake.click_button(
        answer, answer.find_component(label="Imagine 1")["custom_id"], user_id=fake.alice_id
    )
    grid = await click.wait_final(timeout=90, predicate=lambda m: bool(m.attachments and m.embeds))
    job = await wait_job(running.store, job_id_of(grid), lambda j: j.status == "done")
    assert job.seed_text == prompts[0][1] and job.user_id == fake.alice_id


async def test_shorten_refuses_permutations(fake: FakeDiscord, running: RunningBot) -> None:
    interaction = await fake.send_slash("shorten", {"prompt": "a {red, blue} fox"}, user_id=fake.alice_id)
    reply = await interaction.wait_final(timeout=30, predicate=lambda m: bool(m.content))
    assert reply.ephemeral and "without `{…}` permutations" in reply.content


async def test_shorten_buttons_survive_a_restart(fake: FakeDiscord, bot_settings) -> None:
    """The Imagine N buttons are persistent (the answer's prompts are stored: migration 10, bot/shortened.py)."""
    from bot.shortened import load_shortened

    settings = bot_settings()
    first = await start_bot(fake, settings)
    try:
        interaction = await fake.send_slash("shorten", {"prompt": PROMPT}, user_id=fake.alice_id)
        answer = await interaction.wait_final(timeout=60, predicate=lambda m: bool(m.buttons))
    finally:
        await first.stop()
    prompts = re.findall(r"^\*\*(\d)\.\*\* (.+)$", answer.content, flags=re.MULTILINE)
    custom_id = answer.find_component(label="Imagine 2")["custom_id"]
    assert custom_id.startswith("ib-sh:")
    second = await start_bot(fake, settings)
    try:
        click = await fake.click_button(answer, custom_id, user_id=fake.alice_id)
        grid = await click.wait_final(timeout=90, predicate=lambda m: bool(m.attachments and m.embeds))
        job = await wait_job(second.store, job_id_of(grid), lambda j: j.status == "done")
        assert job.seed_text == prompts[1][1] and job.user_id == fake.alice_id
        # /forget deletes the member's stored answers too.
        answer_id = custom_id.split(":")[1]
        assert await load_shortened(second.store, answer_id) is not None
        forget = await fake.send_slash("forget", {"confirm": True}, user_id=fake.alice_id)
        await forget.wait_final(timeout=10, predicate=lambda m: "Deleted" in m.content)
        assert await load_shortened(second.store, answer_id) is None
    finally:
        await second.stop()
