"""The SQLite history store: migrations, job lifecycle, crash recovery, limits, concurrency, scoping."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.engine.validation import normalize_user_text
from bot.store import (
    MIGRATIONS,
    Cooldown,
    HistoryStore,
    JobRecord,
    QueueFull,
    QueueRefused,
    Tile,
    UserLimit,
)
from tests.helpers import job_spec

pytestmark = pytest.mark.asyncio(loop_scope="session")


_spec = functools.partial(job_spec, count=2)


def _tiles(job_id: str, count: int = 2) -> list[Tile]:
    return [Tile(i, f"prompt {i}", 7 + i, f"/images/{job_id}/tile-{i}.png") for i in range(1, count + 1)]


async def _finish(store: HistoryStore, job: JobRecord) -> None:
    assert await store.mark_running(job.id)
    assert await store.mark_done(
        job.id,
        tiles=_tiles(job.id, job.count),
        grid_path=f"/images/{job.id}/grid.png",
        expander={},
        render={},
    )


async def _set_dead_owner(store: HistoryStore, job_id: str, attempts: int | None = None) -> None:
    # Simulates the row a crashed process left behind: another instance's lease, expired a second ago.
    query = "UPDATE jobs SET owner_instance = 'dead-process', lease_expires_at = ? WHERE id = ?"
    await store.db.execute(query, (time.time() - 1, job_id))
    if attempts is not None:
        await store.db.execute("UPDATE jobs SET attempts = ? WHERE id = ?", (attempts, job_id))


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[HistoryStore]:
    async with HistoryStore(tmp_path / "data" / "history.sqlite3") as opened:
        yield opened


# -- schema ----------------------------------------------------------------------------------------
async def test_migrations_set_the_version_and_reopen_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "history.sqlite3"
    async with HistoryStore(path) as first:
        assert await first.schema_version() == len(MIGRATIONS)
        job = await first.create_job(_spec())
        await first.set_meta("k", "v")
    async with HistoryStore(path) as again:
        assert await again.schema_version() == len(MIGRATIONS)
        assert (await again.get_job(job.id)) == job
        assert await again.get_meta("k") == "v"
        assert await again.integrity_check() == "ok"


async def test_closed_store_says_so(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite3")
    with pytest.raises(RuntimeError, match="not open"):
        await store.get_job("x")


# -- lifecycle -------------------------------------------------------------------------------------
async def test_queued_running_done_with_tiles(store: HistoryStore) -> None:
    job = await store.create_job(_spec(user_id=1, guild_id=10, channel_id=100), now=1000.0)
    assert job.status == "queued"
    assert job.attempts == 0 and job.started_at is None and job.tiles == ()
    assert job.created_at == 1000.0
    assert job.delivery == "pending"

    assert await store.mark_running(job.id)
    running = await store.get_job(job.id)
    assert running is not None
    assert running.status == "running"
    assert running.attempts == 1
    assert running.started_at is not None
    assert [j.id for j in await store.pending_jobs()] == [job.id]

    render = {"scheduler_config": {"beta": float("-inf"), "steps": (1, 2)}, "device": "cpu"}
    assert await store.mark_done(
        job.id, tiles=_tiles(job.id), grid_path="/g.png", expander={"seed": 7}, render=render
    )
    done = await store.get_job(job.id)
    assert done is not None
    assert done.status == "done"
    assert done.reason is None
    assert done.finished_at is not None
    assert done.grid_path == "/g.png"
    assert done.tiles == tuple(_tiles(job.id))
    assert done.prompts == ("prompt 1", "prompt 2")
    assert done.expander == {"seed": 7}
    # JSON has no -inf: it is stored as text, tuples as lists.
    assert done.render == {"scheduler_config": {"beta": "-inf", "steps": [1, 2]}, "device": "cpu"}
    assert await store.pending_jobs() == []
    payload = done.to_json()
    assert payload["job_id"] == job.id
    assert payload["images"] == [t.path for t in done.tiles]
    assert payload["image_seeds"] == [8, 9]


async def test_failed_and_cancelled(store: HistoryStore) -> None:
    queued = await store.create_job(_spec())
    running = await store.create_job(_spec())
    assert await store.mark_running(running.id)

    assert await store.mark_failed(queued.id, "cancelled by its owner", status="cancelled")
    assert await store.mark_failed(running.id, "x" * 2000)
    cancelled = await store.get_job(queued.id)
    failed = await store.get_job(running.id)
    assert cancelled is not None and failed is not None
    assert (cancelled.status, cancelled.reason) == ("cancelled", "cancelled by its owner")
    assert failed.status == "failed"
    assert failed.reason == "x" * 500  # user-facing reasons are capped
    # A cancelled job is never picked up afterwards.
    assert not await store.mark_running(queued.id)
    with pytest.raises(ValueError, match="status"):
        await store.mark_failed(queued.id, "nope", status="done")


async def test_no_double_final_state(store: HistoryStore) -> None:
    job = await store.create_job(_spec())
    await _finish(store, job)
    assert not await store.mark_failed(job.id, "late failure")
    assert not await store.mark_failed(job.id, "late cancel", status="cancelled")
    assert not await store.mark_done(job.id, tiles=[], grid_path="/other.png", expander={}, render={})
    assert not await store.mark_running(job.id)
    final = await store.get_job(job.id)
    assert final is not None
    assert (final.status, final.grid_path, len(final.tiles)) == ("done", f"/images/{job.id}/grid.png", 2)

    failed = await store.create_job(_spec())
    assert await store.mark_failed(failed.id, "boom")
    assert not await store.mark_done(failed.id, tiles=[], grid_path="/g.png", expander={}, render={})


async def test_delivery_is_claimed_at_most_once(store: HistoryStore) -> None:
    job = await store.create_job(_spec(channel_id=5))
    await _finish(store, job)
    assert [j.id for j in await store.undelivered_jobs()] == [job.id]
    assert await store.claim_delivery(job.id)
    assert not await store.claim_delivery(job.id)
    await store.mark_delivered(job.id, message_id=42)
    delivered = await store.get_job(job.id)
    assert delivered is not None
    assert (delivered.delivery, delivered.message_id, delivered.channel_id) == ("sent", 42, 5)
    assert await store.undelivered_jobs() == []


# -- crash recovery --------------------------------------------------------------------------------
async def test_running_rows_of_a_dead_process_fail_as_interrupted(store: HistoryStore) -> None:
    job = await store.create_job(_spec())
    assert await store.mark_running(job.id)
    await _set_dead_owner(store, job.id)
    requeued, failed = await store.recover_interrupted(requeue=False, max_attempts=2)
    assert (requeued, failed) == ([], [job.id])
    recovered = await store.get_job(job.id)
    assert recovered is not None
    assert (recovered.status, recovered.reason) == ("failed", "interrupted")
    assert recovered.finished_at is not None


async def test_running_rows_are_requeued_until_attempts_run_out(store: HistoryStore) -> None:
    fresh = await store.create_job(_spec())
    tired = await store.create_job(_spec())
    for job in (fresh, tired):
        assert await store.mark_running(job.id)
    await _set_dead_owner(store, fresh.id, attempts=1)
    await _set_dead_owner(store, tired.id, attempts=2)

    requeued, failed = await store.recover_interrupted(requeue=True, max_attempts=2)
    assert (requeued, failed) == ([fresh.id], [tired.id])
    again = await store.get_job(fresh.id)
    assert again is not None and again.status == "queued"
    # The retry counts as a second attempt; after it, the job fails instead of looping forever.
    assert await store.mark_running(fresh.id)
    await _set_dead_owner(store, fresh.id)
    requeued, failed = await store.recover_interrupted(requeue=True, max_attempts=2)
    assert (requeued, failed) == ([], [fresh.id])


async def test_a_live_lease_is_left_alone_and_an_expired_one_is_taken_over(tmp_path: Path) -> None:
    # Two processes on one data folder, e.g. two containers whose PIDs mean nothing to each other.
    path = tmp_path / "history.sqlite3"
    async with HistoryStore(path, lease_seconds=1.0) as owner, HistoryStore(path) as other:
        assert owner.instance_id != other.instance_id
        job = await owner.create_job(_spec())
        assert await owner.mark_running(job.id)
        assert await other.recover_interrupted(requeue=False, max_attempts=2) == ([], [])
        assert await other.recover_dead_cli_jobs() == []
        # The owner's own rows are never expired to itself, and only the owner may end a running row.
        assert await owner.recover_interrupted(requeue=False, max_attempts=2) == ([], [])
        assert not await other.mark_failed(job.id, "not yours")
        assert await other.release_running(job.id, requeue=True, max_attempts=2) is None
        assert not await other.mark_done(job.id, tiles=[], grid_path="x", expander={}, render={})
        # Renewed, the lease holds past its first second; unrenewed, it expires and is taken over.
        await asyncio.sleep(0.6)
        assert await owner.renew_leases([job.id]) == []
        await asyncio.sleep(0.6)
        assert await other.recover_dead_cli_jobs() == []
        await asyncio.sleep(0.6)
        assert await other.recover_dead_cli_jobs() == [job.id]
        recovered = await other.get_job(job.id)
        assert recovered is not None and (recovered.status, recovered.reason) == ("failed", "interrupted")
        # The old owner learns it lost the job, and can no longer finish it.
        assert await owner.renew_leases([job.id]) == [job.id]
        assert not await owner.mark_done(job.id, tiles=[], grid_path="x", expander={}, render={})


async def test_a_shutdown_gives_the_attempt_back(store: HistoryStore) -> None:
    job = await store.create_job(_spec())
    for _ in range(3):  # more planned restarts than attempts
        assert await store.mark_running(job.id)
        status = await store.release_running(job.id, requeue=True, max_attempts=2, spend_attempt=False)
        assert status == "queued"
    again = await store.get_job(job.id)
    assert again is not None and (again.status, again.attempts) == ("queued", 0)


async def test_migration_gives_running_rows_of_the_old_version_a_lease(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    conn = sqlite3.connect(path)
    for number, script in enumerate(MIGRATIONS[:4], start=1):
        conn.executescript(script)
        conn.execute(f"PRAGMA user_version = {number}")
    query = """
        INSERT INTO jobs (id, status, seed_text, count, steps, guidance, width, height, job_seed, expand,
            created_at, attempts, owner_pid)
        VALUES (?, ?, 'old', 1, 2, 7.5, 64, 64, 1, 1, ?, 1, 4242)
    """
    conn.execute(query, ("oldrunning", "running", time.time()))
    conn.execute(query, ("oldqueued", "queued", time.time()))
    conn.commit()
    conn.close()
    async with HistoryStore(path) as store:
        assert await store.schema_version() == len(MIGRATIONS)
        rows = {
            row["id"]: row
            for row in await store.db.execute_fetchall(
                "SELECT id, owner_instance, lease_expires_at FROM jobs"
            )
        }
        assert rows["oldrunning"]["owner_instance"] == "pid-4242"
        assert rows["oldrunning"]["lease_expires_at"] == pytest.approx(time.time() + 60, abs=5)
        assert rows["oldqueued"]["lease_expires_at"] is None
        # A live old-version process gets its minute: nothing is taken over yet.
        assert await store.recover_interrupted(requeue=True, max_attempts=2) == ([], [])


# -- queue limits ----------------------------------------------------------------------------------
async def test_queue_full(store: HistoryStore) -> None:
    for user in (1, 2):
        await store.create_job(_spec(user_id=user), max_queue=2)
    with pytest.raises(QueueFull, match=r"the queue is full \(2 jobs\)"):
        await store.create_job(_spec(user_id=3), max_queue=2)
    with pytest.raises(QueueFull):
        await store.create_job(_spec(), max_queue=2)
    assert await store.count_jobs(any_user=True) == 2


async def test_user_limit_counts_only_pending_jobs(store: HistoryStore) -> None:
    first = await store.create_job(_spec(user_id=1), max_pending_per_user=1)
    with pytest.raises(UserLimit, match=r"you already have 1 jobs waiting \(the limit is 1\)") as caught:
        await store.create_job(_spec(user_id=1), max_pending_per_user=1)
    assert isinstance(caught.value, QueueRefused)
    await store.create_job(_spec(user_id=2), max_pending_per_user=1)  # someone else is fine
    await _finish(store, first)
    await store.create_job(_spec(user_id=1), max_pending_per_user=1)  # done jobs do not count


async def test_cooldown(store: HistoryStore) -> None:
    await store.create_job(_spec(user_id=1), cooldown_seconds=10, now=1000.0)
    with pytest.raises(Cooldown, match=r"you queued a job 3 s ago; please wait 7 s more"):
        await store.create_job(_spec(user_id=1), cooldown_seconds=10, now=1003.0)
    await store.create_job(_spec(user_id=2), cooldown_seconds=10, now=1003.0)
    await store.create_job(_spec(user_id=1), cooldown_seconds=10, now=1010.5)
    assert await store.count_jobs(any_user=True) == 3


async def test_cooldown_does_not_hold_back_a_member_whose_job_has_finished(store: HistoryStore) -> None:
    first = await store.create_job(_spec(user_id=1), cooldown_seconds=10, now=1000.0)
    await _finish(store, first)
    # Nothing of theirs is waiting: the next job starts at once, whatever the cooldown.
    await store.create_job(_spec(user_id=1), cooldown_seconds=10, now=1001.0)


# -- concurrency -----------------------------------------------------------------------------------
async def _write_one_job(store: HistoryStore, index: int) -> None:
    job = await store.create_job(_spec(user_id=index, seed_text=f"writer {index}"))
    assert await store.mark_running(job.id)
    assert await store.mark_done(
        job.id, tiles=_tiles(job.id), grid_path=f"/g/{index}.png", expander={"i": index}, render={}
    )


async def test_concurrent_writers_on_separate_connections(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    writers = 20

    async def writer(index: int) -> None:
        async with HistoryStore(path) as own:
            await _write_one_job(own, index)

    results = await asyncio.gather(*(writer(i) for i in range(writers)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    locked = [e for e in errors if "locked" in str(e)]
    assert locked == [], f"{len(locked)} 'database is locked' errors"
    assert errors == []
    async with HistoryStore(path) as check:
        jobs = await check.list_jobs(any_user=True, limit=100)
        assert len(jobs) == writers
        assert {j.status for j in jobs} == {"done"}
        assert all(len(j.tiles) == 2 for j in jobs)
        assert await check.integrity_check() == "ok"


async def test_concurrent_writes_through_one_store(store: HistoryStore) -> None:
    results = await asyncio.gather(*(_write_one_job(store, i) for i in range(100)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    assert await store.count_jobs(any_user=True) == 100
    assert {j.status for j in await store.list_jobs(any_user=True, limit=200)} == {"done"}
    assert await store.integrity_check() == "ok"


# -- text is stored verbatim (user text normalised) -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "Robert'); DROP TABLE jobs; --",
        "' OR '1'='1",
        '"; DELETE FROM tiles WHERE "1"="1',
        "%_\\ LIKE '%'",
        "🎨👩‍🎓🔥 party",
        "שלום עולם",
        "مرحبا بالعالم",
        "\u202eevil\u202c RTL override",
        "漢字 ünïcödé\u200b zero width",
        "  leading and trailing spaces  ",
    ],
)
async def test_seed_text_round_trips_verbatim(store: HistoryStore, text: str) -> None:
    job = await store.create_job(_spec(seed_text=text, negative=text, given_prompts=(text, text)))
    assert await store.mark_running(job.id)
    tiles = [Tile(1, text, 1, None), Tile(2, text + "!", 2, None)]
    assert await store.mark_done(job.id, tiles=tiles, grid_path=text, expander={"t": text}, render={})
    again = await store.get_job(job.id)
    assert again is not None
    # The member's own text is stored as one plain line (bidi controls dropped, whitespace collapsed);
    # everything else round-trips byte for byte, SQL metacharacters included.
    assert again.seed_text == normalize_user_text(text)
    assert again.negative == normalize_user_text(text)
    assert again.given_prompts == (text, text)
    assert again.prompts == (text, text + "!")
    assert again.expander == {"t": text}
    assert again.grid_path == text
    assert await store.count_jobs(any_user=True) == 1
    assert await store.integrity_check() == "ok"


# -- reading, scoping, deleting --------------------------------------------------------------------
async def test_list_jobs_scoping(store: HistoryStore) -> None:
    a10 = await store.create_job(_spec(user_id=1, guild_id=10), now=1.0)
    a20 = await store.create_job(_spec(user_id=1, guild_id=20), now=2.0)
    b10 = await store.create_job(_spec(user_id=2, guild_id=10), now=3.0)
    cli = await store.create_job(_spec(), now=4.0)

    def ids(jobs: list[JobRecord]) -> list[str]:
        return [j.id for j in jobs]

    assert ids(await store.list_jobs(user_id=1)) == [a20.id, a10.id]  # newest first
    assert ids(await store.list_jobs(user_id=1, guild_id=10)) == [a10.id]
    assert ids(await store.list_jobs(user_id=2, guild_id=20)) == []
    assert ids(await store.list_jobs(user_id=None)) == [cli.id]
    assert ids(await store.list_jobs(any_user=True)) == [cli.id, b10.id, a20.id, a10.id]
    assert ids(await store.list_jobs(any_user=True, guild_id=10)) == [b10.id, a10.id]
    assert ids(await store.list_jobs(any_user=True, limit=2, offset=1)) == [b10.id, a20.id]
    assert await store.count_jobs(user_id=1) == 2
    assert await store.count_jobs(user_id=1, guild_id=20) == 1
    assert await store.count_jobs(any_user=True) == 4
    assert await store.get_job("no-such-id") is None


async def test_delete_user_jobs_deletes_final_jobs_and_their_tiles(store: HistoryStore) -> None:
    done10 = await store.create_job(_spec(user_id=1, guild_id=10))
    await _finish(store, done10)
    done20 = await store.create_job(_spec(user_id=1, guild_id=20))
    await _finish(store, done20)
    pending10 = await store.create_job(_spec(user_id=1, guild_id=10))
    other = await store.create_job(_spec(user_id=2, guild_id=10))
    await _finish(store, other)

    deleted = await store.delete_user_jobs(1, 10)
    assert [j.id for j in deleted] == [done10.id]
    assert deleted[0].tiles  # returned with tiles, so the caller can delete the files
    assert await store.get_job(done10.id) is None
    for kept in (done20, pending10, other):
        assert await store.get_job(kept.id) is not None
    query = "SELECT COUNT(*) FROM tiles WHERE job_id = ?"
    ((orphan_tiles,),) = await store.db.execute_fetchall(query, (done10.id,))
    assert orphan_tiles == 0  # ON DELETE CASCADE

    everywhere = await store.delete_user_jobs(1, None)
    assert [j.id for j in everywhere] == [done20.id]
    assert [j.id for j in await store.list_jobs(user_id=1)] == [pending10.id]
    assert await store.integrity_check() == "ok"


async def test_meta(store: HistoryStore) -> None:
    assert await store.get_meta("commands_hash") is None
    await store.set_meta("commands_hash", "abc")
    await store.set_meta("commands_hash", "def")
    await store.set_meta("other", "'; DROP TABLE meta; --")
    assert await store.get_meta("commands_hash") == "def"
    assert await store.get_meta("other") == "'; DROP TABLE meta; --"


async def test_rerun_parent_link_survives_parent_deletion(store: HistoryStore) -> None:
    parent = await store.create_job(_spec(user_id=1))
    await _finish(store, parent)
    child = await store.create_job(
        _spec(user_id=1, action="rerun", parent_id=parent.id, given_prompts=("a", "b"), given_seeds=(7, 8))
    )
    assert (child.action, child.parent_id) == ("rerun", parent.id)
    assert (child.given_prompts, child.given_seeds) == (("a", "b"), (7, 8))
    await store.delete_user_jobs(1, None)
    orphan = await store.get_job(child.id)
    assert orphan is not None and orphan.parent_id is None  # ON DELETE SET NULL
