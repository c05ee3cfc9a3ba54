"""Privacy: /history never shows another member's jobs (or another server's), /forget is scoped, and the
per-user limits live in SQLite so a restart does not reset them."""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
from pathlib import Path

import pytest

from bot.app import run_bot
from bot.bot import ImagineBot
from bot.store import HistoryStore, JobRecord, JobSpec, Tile
from tests.cogs.conftest import RunningBot
from tests.fakediscord import FakeDiscord, FakeMessage
from tests.helpers import job_spec

EXTRA_USERS = [1_000_000_000_000_002_000 + i for i in range(4)]
OTHER_GUILDS = [5_000_000_000_000_000_001, 5_000_000_000_000_000_002]
HEX_ID = re.compile(r"(?<![0-9a-f])[0-9a-f]{10}(?![0-9a-f])")
NOT_FOUND = "No job `{}` in your history."


def _spec(user_id: int, guild_id: int, index: int) -> JobSpec:
    return job_spec(
        seed_text=f"private job {index} of {user_id % 10_000}",
        count=1,
        job_seed=index,
        user_id=user_id,
        guild_id=guild_id,
        channel_id=None,  # nobody waits for these in Discord
    )


async def _random_jobs(
    store: HistoryStore, users: list[int], guilds: list[int], count: int, rng: random.Random
) -> list[JobRecord]:
    """`count` final jobs with distinct creation times, random owners, servers and outcomes."""
    times = sorted(rng.sample(range(1_700_000_000, 1_760_000_000), count))
    jobs = []
    for index, created in enumerate(times):
        job = await store.create_job(_spec(rng.choice(users), rng.choice(guilds), index), now=float(created))
        outcome = rng.choice(["done", "failed", "cancelled"])
        if outcome == "done":
            await store.mark_running(job.id)
            tile = Tile(1, f"prompt of {job.id}", index, None)
            await store.mark_done(
                job.id, tiles=[tile], grid_path=f"/nonexistent/{job.id}.png", expander={}, render={}
            )
        else:
            await store.mark_failed(
                job.id, "cancelled by its owner" if outcome == "cancelled" else "boom", status=outcome
            )
        jobs.append(await store.get_job(job.id))
    return jobs


def _ids_in(message: FakeMessage, known: set[str]) -> set[str]:
    """Job ids a user can find anywhere in a message: text, embeds, buttons, select options."""
    blob = " ".join([message.content, json.dumps(message.embeds), json.dumps(message.components)])
    return {match for match in HEX_ID.findall(blob) if match in known}


def _page_ids(message: FakeMessage, known: set[str]) -> list[str]:
    description = message.embeds[0].get("description", "") if message.embeds else ""
    return [m for m in HEX_ID.findall(description) if m in known]


@pytest.mark.parametrize(
    "queries",
    [pytest.param(80, id="80-queries"), pytest.param(400, id="400-queries", marks=pytest.mark.heavy)],
)
async def test_history_never_leaks_other_members_jobs(
    fake: FakeDiscord, running: RunningBot, queries: int
) -> None:
    rng = random.Random(20240611)
    for index, user_id in enumerate(EXTRA_USERS):
        fake.add_member(user_id, f"member-{index}")
    users = [fake.alice_id, fake.bob_id, fake.mod_id, fake.owner_id, *EXTRA_USERS]
    managers = {fake.mod_id, fake.owner_id}  # Manage Server (the owner through Administrator)
    guild = fake.guild_id
    jobs = await _random_jobs(running.store, users, [guild, *OTHER_GUILDS], 300, rng)
    by_id = {job.id: job for job in jobs}
    known = set(by_id)

    def visible(caller: int, job: JobRecord) -> bool:
        return job.guild_id == guild and (job.user_id == caller or caller in managers)

    def expected_page(target: int, page: int) -> list[str]:
        mine = sorted(
            (j for j in jobs if j.user_id == target and j.guild_id == guild), key=lambda j: -j.created_at
        )
        last = max(0, (len(mine) - 1) // 10)
        start = min(max(page, 0), last) * 10
        return [j.id for j in mine[start : start + 10]]

    leaks: list[str] = []
    kinds = {"own page": 0, "other's page": 0, "job id": 0, "next button": 0}
    refused = shown = 0
    for _ in range(queries):
        caller = rng.choice(users)
        kind = rng.choice(["own page", "other's page", "job id", "job id"])
        options: dict[str, object] = {}
        target = caller
        if kind == "own page":
            options["page"] = rng.randint(1, 5)
        elif kind == "other's page":
            target = rng.choice([u for u in users if u != caller])
            options.update(user=target, page=rng.randint(1, 5))
        else:
            options["job"] = rng.choice(jobs).id
        kinds[kind] += 1
        interaction = await fake.send_slash("history", options, user_id=caller)
        reply = await interaction.wait_final(timeout=15, predicate=lambda m: bool(m.content or m.embeds))
        assert reply.ephemeral, f"/history {options} by {caller} was not ephemeral"
        seen = _ids_in(reply, known)

        if kind == "job id":
            job = by_id[str(options["job"])]
            if visible(caller, job):
                shown += 1
                assert reply.embeds and job.id in json.dumps(reply.embeds)
            else:
                refused += 1
                assert reply.content == NOT_FOUND.format(job.id) and not reply.embeds
                seen.discard(job.id)  # the caller's own input, echoed back
        elif target != caller and caller not in managers:
            refused += 1
            assert "Manage Server" in reply.content and not reply.embeds
        else:
            shown += 1
            page = int(options["page"]) - 1
            assert _page_ids(reply, known) == expected_page(target, page), f"/history {options} by {caller}"
            next_button = reply.find_component(label="Next") if reply.components else None
            if next_button and not next_button.get("disabled"):
                kinds["next button"] += 1
                edits = reply.edit_count
                click = await fake.click_button(reply, next_button["custom_id"], user_id=caller)
                await click.wait_acked()
                await fake.wait_until(lambda r=reply, n=edits: r.edit_count > n, timeout=10, what="next page")
                assert _page_ids(reply, known) == expected_page(target, page + 1)
                seen |= _ids_in(reply, known)
        leaks += [
            f"{j} (owner {by_id[j].user_id}, guild {by_id[j].guild_id}) shown to {caller}"
            for j in seen
            if not visible(caller, by_id[j])
        ]

    print(
        f"privacy: {len(jobs)} jobs of {len(users)} users in 3 servers; {queries} /history queries {kinds}: "
        f"{shown} answered, {refused} refused; leaks {len(leaks)}"
    )
    assert leaks == []


async def test_forget_deletes_only_own_jobs_in_this_server(fake: FakeDiscord, running: RunningBot) -> None:
    store, images = running.store, running.settings.images_dir
    owners = [(fake.alice_id, fake.guild_id), (fake.alice_id, OTHER_GUILDS[0]), (fake.bob_id, fake.guild_id)]
    made: dict[tuple[int, int], list[tuple[str, Path]]] = {key: [] for key in owners}
    for index in range(30):
        user_id, guild_id = owners[index % 3]
        job = await store.create_job(_spec(user_id, guild_id, index), now=1_700_000_000.0 + index)
        folder = images / job.id
        folder.mkdir(parents=True)
        (folder / "grid.png").write_bytes(b"\x89PNG fake")
        await store.mark_running(job.id)
        tile = Tile(1, "p", index, str(folder / "tile-1.png"))
        await store.mark_done(
            job.id, tiles=[tile], grid_path=str(folder / "grid.png"), expander={}, render={}
        )
        made[(user_id, guild_id)].append((job.id, folder))

    interaction = await fake.send_slash("forget", {"confirm": True}, user_id=fake.alice_id)
    reply = await interaction.wait_final(timeout=15, predicate=lambda m: "Deleted" in m.content)
    gone = made[(fake.alice_id, fake.guild_id)]
    kept = made[(fake.alice_id, OTHER_GUILDS[0])] + made[(fake.bob_id, fake.guild_id)]
    print(f"forget: {reply.content!r}; {len(kept)} jobs of other servers/users kept with their files")
    assert reply.ephemeral and f"Deleted {len(gone)} job(s)" in reply.content
    for job_id, folder in gone:
        assert await store.get_job(job_id) is None and not folder.exists()
    for job_id, folder in kept:
        assert await store.get_job(job_id) is not None and (folder / "grid.png").exists()


async def test_cooldown_and_pending_cap_survive_a_restart(fake: FakeDiscord, bot_settings) -> None:
    # Both limits are read from SQLite, so a restart does not reset them. The cooldown counts only
    # while the member's earlier job is pending; the GPU thread is held so the rows stay pending.
    capped = bot_settings(cooldown_seconds=60.0, max_pending_per_user=2, count=1, steps=2)
    async with HistoryStore(capped.db_path) as store:
        # Bob: two jobs a crashed process left `running`; they are requeued and still count.
        for index in range(2):
            job = await store.create_job(_spec(fake.bob_id, fake.guild_id, index))
            await store.mark_running(job.id)
            # Its owner died: nobody renews the lease, which ran out a second ago.
            query = "UPDATE jobs SET owner_instance = 'dead', lease_expires_at = ? WHERE id = ?"
            await store.db.execute(query, (time.time() - 1, job.id))
        # Alice: one job queued just before the restart.
        await store.create_job(_spec(fake.alice_id, fake.guild_id, 9))
    gate = threading.Event()
    holder: dict[str, ImagineBot] = {}

    def hold_gpu(bot: ImagineBot) -> None:
        holder["bot"] = bot
        bot.backend.engine._executor.submit(gate.wait, 60)

    task = asyncio.create_task(run_bot(capped, on_bot=hold_gpu, handle_signals=False))
    await fake.wait_until(
        lambda: task.done() or ("bot" in holder and holder["bot"].is_ready()), 60, "bot ready"
    )
    third = RunningBot(fake, capped, holder["bot"], task)
    try:
        pending = await third.store.pending_jobs()
        cooled = await fake.send_slash("imagine", {"seed": "right after restart"}, user_id=fake.alice_id)
        reply = await cooled.wait_final(timeout=15)
        print(f"cooldown after restart: {reply.content!r}")
        assert reply.ephemeral and "please wait" in reply.content
        refused = await fake.send_slash("imagine", {"seed": "over the cap"}, user_id=fake.bob_id)
        reply = await refused.wait_final(timeout=15)
        print(f"pending cap after restart ({len(pending)} requeued jobs pending): {reply.content!r}")
        assert len(pending) == 3
        assert reply.ephemeral and "you already have 2 jobs waiting" in reply.content
        assert await third.store.count_jobs(any_user=True) == 3
        for job in pending:
            await third.bot.runner.cancel(job.id)
    finally:
        gate.set()
        await third.stop()
