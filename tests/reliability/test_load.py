"""Load: a burst of /imagine from many users, and many concurrent history writes."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from bot.store import HistoryStore, JobRecord, JobSpec, Tile
from tests.cogs.conftest import LagProbe, start_bot
from tests.fakediscord import FakeDiscord
from tests.helpers import job_spec
from tests.reliability.harness import result_counts

FIRST_EXTRA_USER = 1_000_000_000_000_001_000
FINAL = ("done", "failed", "cancelled")


def _fairness(jobs: list[JobRecord]) -> tuple[bool, list[str]]:
    """(strict, violations) for the order in which jobs started.

    strict: every user's first job started before any user's second job. A violation is a second (or
    later) job that started while another user's first job had already been waiting in the queue; a
    first job that had not arrived yet cannot be served first, so it is not counted.
    """
    rank: dict[str, int] = {}
    seen: Counter[int | None] = Counter()
    for job in sorted(jobs, key=lambda j: j.created_at):
        seen[job.user_id] += 1
        rank[job.id] = seen[job.user_id]
    started = sorted(jobs, key=lambda j: j.started_at or 0.0)
    firsts = [j for j in started if rank[j.id] == 1]
    laters = [j for j in started if rank[j.id] > 1]
    strict = bool(firsts) and (
        not laters or max(j.started_at for j in firsts) < min(j.started_at for j in laters)
    )
    violations = [
        f"{later.id} (user {later.user_id} #{rank[later.id]}) started before {first.id} (user {first.user_id})"
        for later in laters
        for first in firsts
        if first.user_id != later.user_id
        # 0.2 s: the worker picks the next job a moment before it stamps started_at.
        and first.created_at < later.started_at - 0.2
        and first.started_at > later.started_at
    ]
    return strict, violations


async def _wait_all_final(store: HistoryStore, count: int, timeout: float) -> list[JobRecord]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = await store.list_jobs(any_user=True, limit=1000)
        if len(jobs) == count and all(j.status in FINAL and j.delivery == "sent" for j in jobs):
            return jobs
        if time.monotonic() > deadline:
            states = Counter((j.status, j.delivery) for j in jobs)
            raise AssertionError(f"after {timeout}s: {len(jobs)}/{count} rows, states {dict(states)}")
        await asyncio.sleep(0.1)


@pytest.mark.parametrize(
    ("users", "per_user"),
    [pytest.param(4, 3, id="12-jobs"), pytest.param(10, 5, id="50-jobs", marks=pytest.mark.heavy)],
)
async def test_burst_of_imagine_from_many_users(
    fake: FakeDiscord, bot_settings, heartbeat_blocked, users: int, per_user: int
) -> None:
    settings = bot_settings(
        count=1,
        steps=2,
        max_pending_per_user=5,
        max_queue=60,
        cooldown_seconds=0.0,
        # Production pacing: progress edits every 2 s, a preview every 5 steps.
        progress_interval=2.0,
        preview_every=5,
        log_level="INFO",
    )
    user_ids = [fake.alice_id, fake.bob_id] + [FIRST_EXTRA_USER + i for i in range(users - 2)]
    for index, user_id in enumerate(user_ids[2:]):
        fake.add_member(user_id, f"load-user-{index}")
    bot = await start_bot(fake, settings)
    total = users * per_user
    try:
        with LagProbe() as lag:
            started = time.monotonic()
            # User-major order (all of user 1's jobs first): the worst case for a FIFO queue.
            interactions = await asyncio.gather(
                *(
                    fake.send_slash("imagine", {"seed": f"load {u} job {k}"}, user_id=user_id)
                    for u, user_id in enumerate(user_ids)
                    for k in range(per_user)
                )
            )
            sent_in = time.monotonic() - started
            defers = await asyncio.gather(*(i.wait_deferred(timeout=10) for i in interactions))
            jobs = await _wait_all_final(bot.store, total, timeout=120 + 8 * total)
            elapsed = time.monotonic() - started
        await asyncio.sleep(0.5)  # a double post would show up now

        counts = result_counts(fake)
        strict, violations = _fairness(jobs)
        order = [j.user_id for j in sorted(jobs, key=lambda j: j.started_at or 0.0)]
        first_round = [user_ids.index(u) for u in order[:users]]
        ordered_defers = sorted(defers)
        print(
            f"load {total} jobs from {users} users (sent within {sent_in:.2f}s): defer p50 "
            f"{ordered_defers[len(defers) // 2] * 1000:.0f} ms, max {max(defers) * 1000:.0f} ms; all final and "
            f"delivered after {elapsed:.1f}s ({total / elapsed:.2f} jobs/s); loop lag p50 "
            f"{lag.percentile(0.5) * 1000:.1f} ms, p99 {lag.percentile(0.99) * 1000:.1f} ms, max "
            f"{max(lag.samples) * 1000:.1f} ms ({len(lag.samples)} samples); fairness: first round users "
            f"{first_round}, every 1st job before any 2nd: {strict}, violations {len(violations)}; results per "
            f"job {sorted(Counter(counts[j.id] for j in jobs).items())}"
        )
        assert max(defers) < 3.0
        assert len(jobs) == total and all(j.status == "done" for j in jobs)
        assert all(counts[j.id] == 1 for j in jobs), {j.id: counts[j.id] for j in jobs if counts[j.id] != 1}
        assert violations == []
        assert lag.percentile(0.99) <= 0.050
        assert max(lag.samples) <= 0.250
        assert heartbeat_blocked() == []
    finally:
        await bot.stop()


def _spec(index: int) -> JobSpec:
    return job_spec(
        seed_text=f"concurrent write {index}",
        count=1,
        job_seed=index,
        user_id=1000 + index % 10,
        guild_id=1,
        channel_id=2,
    )


async def _write_one(store: HistoryStore, index: int) -> None:
    job = await store.create_job(_spec(index), max_pending_per_user=100, max_queue=1000)
    assert await store.mark_running(job.id)
    tile = Tile(1, f"prompt {index}", index, f"/tmp/{job.id}/tile-1.png")
    assert await store.mark_done(
        job.id, tiles=[tile], grid_path=f"/tmp/{job.id}/grid.png", expander={}, render={}
    )


async def _concurrent_writes(stores: list[HistoryStore], count: int) -> tuple[list[BaseException], float]:
    started = time.perf_counter()
    results = await asyncio.gather(
        *(_write_one(stores[i % len(stores)], i) for i in range(count)), return_exceptions=True
    )
    return [r for r in results if isinstance(r, BaseException)], time.perf_counter() - started


async def test_concurrent_history_writes_never_lock(tmp_path) -> None:
    path = tmp_path / "history.sqlite3"
    async with HistoryStore(path) as store:
        errors, seconds = await _concurrent_writes([store], 100)
        rows = await store.count_jobs(any_user=True)
        done = len([j for j in await store.list_jobs(any_user=True, limit=200) if j.status == "done"])
        integrity = await store.integrity_check()
    locked = [e for e in errors if "database is locked" in str(e)]
    print(
        f"history writes: 100 jobs x (create, running, done) through one store in {seconds:.2f}s: "
        f"{len(errors)} errors, {len(locked)} 'database is locked'; {rows} rows, {done} done; {integrity}"
    )
    assert errors == [] and locked == []
    assert rows == 100 and done == 100 and integrity == "ok"

    # Several connections on one file (the bot and CLI commands at once): BEGIN IMMEDIATE + busy_timeout.
    other = tmp_path / "shared.sqlite3"
    stores = [HistoryStore(other) for _ in range(4)]
    for each in stores:
        await each.open()
    try:
        errors, seconds = await _concurrent_writes(stores, 100)
        rows = await stores[0].count_jobs(any_user=True)
    finally:
        for each in stores:
            await each.close()
    locked = [e for e in errors if "database is locked" in str(e)]
    print(
        f"history writes: 100 jobs through 4 connections in {seconds:.2f}s: {len(errors)} errors, "
        f"{len(locked)} 'database is locked'; {rows} rows"
    )
    assert errors == [] and rows == 100
