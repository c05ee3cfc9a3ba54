"""Store transactions as units: cancellation cannot leave the connection inside BEGIN, reads never see a
half-written transaction, and a bad database file fails `open` promptly with one line."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from pathlib import Path

import pytest

from bot.store import HistoryStore, JobSpec, StoreError, Tile
from tests.helpers import job_spec


def _spec(seed: str = "a lighthouse") -> JobSpec:
    return job_spec(seed_text=seed, job_seed=1)


def _tiles(job_id: str) -> list[Tile]:
    return [Tile(i, f"prompt {i}", i, f"/images/{job_id}/tile-{i}.png") for i in range(4)]


async def test_a_write_cancelled_inside_begin_immediate_leaves_the_store_writable(tmp_path: Path) -> None:
    db_path = tmp_path / "history.sqlite3"
    async with HistoryStore(db_path) as store:
        job = await store.create_job(_spec())
        # Another process (the CLI, a second bot) holds the write lock: our BEGIN IMMEDIATE waits in
        # SQLite's busy handler on the connection's thread.
        other = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        stuck = asyncio.create_task(store.mark_running(job.id))
        await asyncio.sleep(0.3)
        stuck.cancel()
        await asyncio.sleep(0.1)
        # The other process finishes; the cancelled BEGIN then completes on the store's thread.
        await asyncio.to_thread(other.execute, "COMMIT")
        other.close()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        # Every later write works: the connection is not left inside the cancelled transaction.
        async with asyncio.timeout(10):
            assert await store.mark_running(job.id)
            second = await store.create_job(_spec("a second job"))
            assert await store.mark_failed(second.id, "test")
        # And the cancelled write left nothing behind: the job moved once, by the later call.
        reloaded = await store.get_job(job.id)
        assert reloaded is not None and reloaded.status == "running" and reloaded.attempts == 1


async def test_a_write_cancelled_mid_transaction_rolls_back_whole(tmp_path: Path) -> None:
    async with HistoryStore(tmp_path / "history.sqlite3") as store:
        job = await store.create_job(_spec())
        assert await store.mark_running(job.id)
        # Cancel mark_done later and later, through each of its awaits: it lands whole or not at all.
        for ticks in range(200):
            task = asyncio.create_task(
                store.mark_done(job.id, tiles=_tiles(job.id), grid_path="grid.png", expander={}, render={})
            )
            for _ in range(ticks):
                await asyncio.sleep(0)
            if ticks > 20:  # past the loop-tick granularity: real time, for a slow database thread
                await asyncio.sleep(0.001 * (ticks - 20))
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            state = await store.get_job(job.id)
            assert state is not None
            assert (state.status, len(state.tiles)) in {("running", 0), ("done", 4)}, ticks
            if state.status == "done":
                break
            assert await store.create_job(_spec(f"still writable {ticks}"))
        else:
            pytest.fail("mark_done never completed")


async def test_reads_never_see_a_transaction_before_its_commit(tmp_path: Path) -> None:
    seen: list[tuple[str, int]] = []
    async with HistoryStore(tmp_path / "history.sqlite3") as store:
        for i in range(5):
            job = await store.create_job(_spec(f"job {i}"))
            assert await store.mark_running(job.id)
            writing = asyncio.create_task(
                store.mark_done(job.id, tiles=_tiles(job.id), grid_path="grid.png", expander={}, render={})
            )
            # Read the same job on the same store while mark_done's statements are in flight.
            while not writing.done():
                state = await store.get_job(job.id)
                assert state is not None
                seen.append((state.status, len(state.tiles)))
            assert await writing
    assert seen, "the reader never ran"
    # A `done` job is only ever seen with its tiles (it used to be seen with none mid-mark_done).
    assert ("done", 0) not in seen
    assert set(seen) <= {("running", 0), ("done", 4)}


async def test_a_database_of_random_bytes_fails_open_with_one_line_and_no_thread_left(tmp_path: Path) -> None:
    db_path = tmp_path / "history.sqlite3"
    db_path.write_bytes(bytes(range(256)) * 64)
    threads_before = set(threading.enumerate())
    store = HistoryStore(db_path)
    with pytest.raises(StoreError) as failed:
        await store.open()
    message = str(failed.value)
    assert str(db_path) in message
    assert "\n" not in message
    assert "backup" in message
    # aiosqlite's thread is not a daemon: one left behind keeps the process from ever exiting.
    await asyncio.sleep(0.1)
    leftover = [
        t
        for t in set(threading.enumerate()) - threads_before
        if t.is_alive() and "_connection_worker_thread" in t.name  # aiosqlite's, named after its target
    ]
    assert leftover == []


async def test_a_data_folder_that_is_a_file_fails_open_with_one_line(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("oops")
    with pytest.raises(StoreError) as failed:
        await HistoryStore(not_a_folder / "history.sqlite3").open()
    assert str(not_a_folder) in str(failed.value)
    assert "IMAGINE_DATA_DIR" in str(failed.value)
