"""The N-slot job runner on real tiny engines and real SQLite files: fairness, supervision, shutdown, cancel."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bot.engine.backend import CancelToken, ProgressEvents, RenderOutput
from bot.engine.executor import Engine
from bot.engine.local_backend import LocalBackend
from bot.engine.types import GenerationRequest
from bot.jobs import JobOutcome
from bot.settings import Settings
from bot.store import HistoryStore, JobRecord, JobSpec
from bot.wiring import build_runner, engine_config_from
from tests.conftest import tiny_settings
from tests.helpers import job_spec, until

session_loop = pytest.mark.asyncio(loop_scope="session")
ROOT = Path(__file__).resolve().parents[1]


def _spec(user_id: int | None = None, **overrides: Any) -> JobSpec:
    return job_spec(user_id=user_id, **({"count": 1} | overrides))


class PoolBackend:
    """Several real local engines as one backend of capacity N (what Ray replicas are to the runner)."""

    name = "pool"

    def __init__(self, backends: list[LocalBackend]) -> None:
        self.backends = backends
        self._free = list(backends)

    @property
    def capacity(self) -> int:
        return len(self.backends)

    async def start(self) -> None:
        for backend in self.backends:
            await backend.start()

    async def close(self) -> None:
        return None

    def validate(self, request: GenerationRequest) -> None:
        self.backends[0].validate(request)

    async def available(self) -> tuple[bool, str]:
        return True, f"{len(self.backends)} local engines"

    async def render(
        self,
        request: GenerationRequest,
        *,
        on_progress: ProgressEvents | None,
        on_rendered: Callable[[], None],
        cancel: CancelToken,
    ) -> RenderOutput:
        backend = self._free.pop()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._free.append(backend)

        def rendered() -> None:
            release()
            on_rendered()

        try:
            return await backend.render(request, on_progress=on_progress, on_rendered=rendered, cancel=cancel)
        finally:
            release()


@pytest_asyncio.fixture(loop_scope="session")
async def second_engine(engine_settings: Settings) -> AsyncIterator[Engine]:
    loaded = Engine(engine_config_from(engine_settings))
    await loaded.load()
    yield loaded
    await loaded.close()


@pytest_asyncio.fixture(loop_scope="session")
async def store(settings: Settings) -> AsyncIterator[HistoryStore]:
    async with HistoryStore(settings.db_path) as opened:
        yield opened


# -- N slots and fairness ----------------------------------------------------------------------------
@session_loop
async def test_two_slots_run_two_members_at_once_and_one_job_per_member_while_others_wait(
    make_settings: Callable[..., Settings], engine: Engine, second_engine: Engine
) -> None:
    settings = make_settings(cooldown_seconds=0)
    async with HistoryStore(settings.db_path) as store:
        await _two_slots_fair(settings, store, engine, second_engine)


async def _two_slots_fair(
    settings: Settings, store: HistoryStore, engine: Engine, second_engine: Engine
) -> None:
    backend = PoolBackend([LocalBackend(engine), LocalBackend(second_engine)])
    runner = build_runner(settings, store, backend)  # type: ignore[arg-type]
    started: list[str] = []

    async def on_started(job: JobRecord) -> None:
        started.append(job.id)

    runner.set_handlers(on_started=on_started)
    alice = [await runner.submit(_spec(1, steps=6)) for _ in range(3)]
    bob = await runner.submit(_spec(2, steps=6))
    carol = await runner.submit(_spec(3, steps=6))
    waiters = [runner.wait_for(job.id) for job in [*alice, bob, carol]]
    await runner.start()
    try:
        outcomes = await asyncio.wait_for(asyncio.gather(*waiters), 120)
    finally:
        await runner.stop(grace=30)
    assert [o.job.status for o in outcomes] == ["done"] * 5
    # Round-robin across members; Alice's 2nd job waits while Carol's is queued, though a slot was free.
    assert started == [alice[0].id, bob.id, carol.id, alice[1].id, alice[2].id]
    rows = {o.job.id: o.job for o in outcomes}
    a1, b1 = rows[alice[0].id], rows[bob.id]
    assert a1.started_at is not None and b1.started_at is not None
    assert a1.finished_at is not None and b1.finished_at is not None
    assert b1.started_at < a1.finished_at and a1.started_at < b1.finished_at  # they ran at the same time
    assert runner.eta_seconds(4) is not None
    assert runner.eta_seconds(4) == pytest.approx(2 * runner.eta_seconds(2))  # type: ignore[operator]


# -- supervision (item 4) ------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a real file system that can be filled up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with contextlib.suppress(OSError), filler.open("wb", buffering=0) as handle:
        for size in (65536, 4096, 1):  # big chunks, then top up what is left
            with contextlib.suppress(OSError):
                while True:
                    handle.write(b"\0" * size)
    with pytest.raises(OSError) as full:
        (folder / "probe").write_bytes(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC
    return filler


@session_loop
async def test_dispatcher_survives_a_full_disk_and_runs_the_job_once_space_is_back(
    tiny_models: tuple[Path, Path], small_disk: Path, engine: Engine
) -> None:
    settings = tiny_settings(small_disk, tiny_models)
    async with HistoryStore(settings.db_path) as store:
        runner = build_runner(settings, store, LocalBackend(engine))
        job = await runner.submit(_spec())
        waiter = runner.wait_for(job.id)
        filler = _fill(small_disk)
        await runner.start()
        try:
            # mark_running fails (SQLITE_FULL): the dispatcher logs, backs off and stays alive.
            await until(lambda: runner.dispatcher_error is not None, 15, "the dispatcher to hit the disk")
            ok, reason = runner.health()
            assert not ok and "keeps failing" in reason
            assert not waiter.done()
            filler.unlink()
            outcome = await asyncio.wait_for(waiter, 60)
            assert outcome.job.status == "done", outcome.job.reason
            assert len(outcome.job.tiles) == 1
            assert runner.health()[0]
        finally:
            await runner.stop(grace=30)


# -- shutdown (item 8, item 10) -----------------------------------------------------------------------
@session_loop
async def test_shutdown_interrupts_the_render_at_its_next_step_and_requeues_the_row(
    settings: Settings, store: HistoryStore, engine: Engine
) -> None:
    runner = build_runner(settings, store, LocalBackend(engine))
    steps: list[int] = []
    runner.set_handlers(on_progress=lambda job_id, step, total, preview: steps.append(step))
    await runner.start()
    job = await runner.submit(_spec(steps=50, count=4, width=128, height=128))
    await until(lambda: len(steps) >= 2, 60, "the render to start")
    began = time.monotonic()
    await runner.stop(grace=0)  # must not raise after the grace period
    assert time.monotonic() - began < 10
    assert max(steps) < 50
    # The GPU thread is free again at once: the render stopped, it did not run to the end.
    probe = asyncio.get_running_loop().run_in_executor(None, engine.run_sync, lambda: "free")
    assert await asyncio.wait_for(probe, 10) == "free"
    row = await store.get_job(job.id)
    # The restart runs it, and a planned stop spends none of its attempts (issue 17 item 10).
    assert row is not None and (row.status, row.attempts) == ("queued", 0)


# -- cancel vs. save (item 5) ---------------------------------------------------------------------------
@session_loop
async def test_cancel_after_the_render_ended_is_refused_and_the_job_is_saved_and_finished_once(
    settings: Settings, store: HistoryStore, engine: Engine
) -> None:
    runner = build_runner(settings, store, LocalBackend(engine))
    finished: list[JobOutcome] = []

    async def on_finished(outcome: JobOutcome) -> None:
        finished.append(outcome)

    runner.set_handlers(on_finished=on_finished)
    loop = asyncio.get_running_loop()
    # A congested worker-thread pool holds the job between its render and its save (like a slow disk).
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    loop.set_default_executor(pool)
    gate = threading.Event()
    blocker = loop.run_in_executor(None, gate.wait, 60)
    try:
        await runner.start()
        rendered_before = engine.stats.jobs
        job = await runner.submit(_spec(count=2))
        await until(lambda: engine.stats.jobs > rendered_before, 60, "the render to end")
        await asyncio.sleep(0.3)
        assert not await runner.cancel(job.id)  # too late: its images exist
        gate.set()
        await blocker
        await until(lambda: finished, 60, "the job to finish")
        await asyncio.sleep(0.5)  # a second finish would land now
    finally:
        gate.set()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor())
        pool.shutdown(wait=False)
        await runner.stop(grace=30)
    assert len(finished) == 1
    row = finished[0].job
    assert row.status == "done" and len(row.tiles) == 2
    assert all([await asyncio.to_thread(os.path.isfile, tile.path or "") for tile in row.tiles])


# -- a CLI job the bot picked up (item 9) ---------------------------------------------------------------
@session_loop
async def test_cli_job_picked_up_by_a_running_bot_does_not_leave_the_cli_waiting(
    settings: Settings, engine: Engine
) -> None:
    async with HistoryStore(settings.db_path) as bot_store, HistoryStore(settings.db_path) as cli_store:
        bot_runner = build_runner(settings, bot_store, LocalBackend(engine))
        cli_runner = build_runner(settings, cli_store, LocalBackend(engine), requeue_on_shutdown=False)
        cli_job = await cli_runner.submit(_spec())
        await bot_runner.start()  # its dispatcher sees the queued CLI row first and claims it
        try:
            deadline = time.monotonic() + 30
            while (row := await cli_store.get_job(cli_job.id)) is not None and row.status == "queued":
                assert time.monotonic() < deadline, "the bot never claimed the CLI job"
                await asyncio.sleep(0.02)
            outcome = await asyncio.wait_for(cli_runner.run_now(cli_job), 60)
        finally:
            await bot_runner.stop(grace=30)
    assert outcome.job.id == cli_job.id
    assert outcome.job.status == "done"
    assert outcome.grid_png is not None


# -- the seam does not drag torch or Ray into the job queue ------------------------------------------------
def test_importing_the_job_queue_imports_neither_torch_nor_ray() -> None:
    code = "import bot.jobs, bot.wiring, sys; assert 'torch' not in sys.modules and 'ray' not in sys.modules"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr


def test_bounded_bookkeeping() -> None:
    from bot.engine.executor import GpuStats

    stats = GpuStats()
    for gap in range(5000):
        stats.idle_gaps.append(float(gap))
    assert len(stats.idle_gaps) <= 1000
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
