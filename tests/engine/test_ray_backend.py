"""The job runner on Ray Serve: a local cluster on 127.0.0.1, two CPU replicas of the tiny models.

Marked `ray`: scripts/test.sh runs these inside the loopback-only network fence (`unshare -n`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from bot.engine.ray_backend import RayBackend
from bot.jobs import JobOutcome, JobRunner
from bot.settings import Settings
from bot.store import HistoryStore, JobRecord, JobSpec
from bot.wiring import build_runner, limits_from
from tests.raycluster import ROOT, RayCluster

pytestmark = pytest.mark.ray


def _spec(user_id: int | None, **overrides: Any) -> JobSpec:
    values: dict[str, Any] = {
        "seed_text": "Northeastern University",
        "count": 1,
        "steps": 6,
        "guidance": 7.5,
        "width": 64,
        "height": 64,
        "job_seed": 7,
        "user_id": user_id,
    }
    values.update(overrides)
    return JobSpec(**values)


class Recorder:
    """The runner's handlers: what started, progressed and finished (and how often)."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.progress: list[tuple[str, int, int, bool]] = []
        self.finished: list[JobOutcome] = []

    async def on_started(self, job: JobRecord) -> None:
        self.started.append(job.id)

    def on_progress(self, job_id: str, step: int, total: int, preview: bytes | None) -> None:
        self.progress.append((job_id, step, total, preview is not None))

    async def on_finished(self, outcome: JobOutcome) -> None:
        self.finished.append(outcome)


@pytest_asyncio.fixture(loop_scope="function")
async def ray_runner(
    ray_cluster: RayCluster,
    make_settings: Callable[..., Settings],
) -> AsyncIterator[tuple[JobRunner, RayBackend, Recorder]]:
    settings = make_settings(backend="ray", ray_address=ray_cluster.address, cooldown_seconds=0)
    async with HistoryStore(settings.db_path) as store:
        backend = RayBackend(ray_cluster.address, limits=limits_from(settings))
        runner = build_runner(settings, store, backend)
        runner.poll_seconds = 0.5
        recorder = Recorder()
        runner.set_handlers(
            on_started=recorder.on_started, on_progress=recorder.on_progress, on_finished=recorder.on_finished
        )
        await runner.start()
        yield runner, backend, recorder
        await runner.stop(grace=30)


async def _until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def test_workers_command_deployed_two_replicas(ray_cluster: RayCluster) -> None:
    assert "deploying 2 worker replica(s) (0 GPU each)" in ray_cluster.deploy_output
    assert "ready: 2 worker replica(s) running" in ray_cluster.deploy_output


async def test_two_members_render_at_once_on_two_replicas_in_fair_order(
    ray_runner: tuple[JobRunner, RayBackend, Recorder],
) -> None:
    runner, backend, recorder = ray_runner
    await _until(lambda: runner.backend_online and backend.capacity == 2, 30, "two replicas online")
    alice = [await runner.submit(_spec(1, steps=12)) for _ in range(2)]
    bob = await runner.submit(_spec(2, steps=12))
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(runner.wait_for(job.id) for job in [*alice, bob])), 120
    )
    rows = {outcome.job.id: outcome.job for outcome in outcomes}
    assert [row.status for row in rows.values()] == ["done"] * 3
    assert recorder.started == [alice[0].id, bob.id, alice[1].id]  # Bob does not wait behind Alice
    a1, b1 = rows[alice[0].id], rows[bob.id]
    assert b1.started_at < a1.finished_at and a1.started_at < b1.finished_at  # type: ignore[operator]
    replicas = {a1.render["worker"]["replica"], b1.render["worker"]["replica"]}
    assert len(replicas) == 2, replicas
    assert a1.render["worker"]["backend"] == "ray" and a1.render["worker"]["ray"] == "2.60.0"
    assert a1.render["device"] == "cpu"
    # A CPU replica pins torch to one thread, and its record says so: a local rerun may round differently.
    assert a1.render["numerics"]["torch_threads"] == 1
    assert {step for job_id, step, total, _ in recorder.progress if job_id == bob.id} >= {1, 12}
    assert len(a1.tiles) == 1 and a1.tiles[0].path is not None


async def test_cancelled_remote_job_ends_cancelled_and_the_replicas_serve_the_next(
    ray_runner: tuple[JobRunner, RayBackend, Recorder],
) -> None:
    runner, _, recorder = ray_runner
    job = await runner.submit(_spec(1, steps=50, width=128, height=128, count=2))
    await _until(lambda: any(p[0] == job.id for p in recorder.progress), 60, "the remote render to start")
    assert await runner.cancel(job.id)
    began = time.monotonic()
    outcome = await asyncio.wait_for(runner.wait_for(job.id), 30)
    assert time.monotonic() - began < 5
    assert (outcome.job.status, outcome.job.reason) == ("cancelled", "cancelled by its owner")
    assert max(step for job_id, step, _, _ in recorder.progress if job_id == job.id) < 50
    nxt = [await runner.submit(_spec(1)) for _ in range(2)]
    done = await asyncio.wait_for(asyncio.gather(*(runner.wait_for(j.id) for j in nxt)), 60)
    assert [o.job.status for o in done] == ["done", "done"]


async def test_replica_killed_mid_job_is_requeued_done_and_delivered_once(
    ray_runner: tuple[JobRunner, RayBackend, Recorder],
) -> None:
    runner, backend, recorder = ray_runner
    await _until(lambda: runner.backend_online, 30, "the replicas")
    job = await runner.submit(_spec(1, steps=50, width=128, height=128))
    await _until(lambda: backend.running_workers and recorder.progress, 60, "the remote render to start")
    victim = backend.running_workers[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    outcome = await asyncio.wait_for(runner.wait_for(job.id), 120)
    assert outcome.job.status == "done", outcome.job.reason
    assert outcome.job.attempts == 2
    assert outcome.job.render["worker"]["pid"] != victim
    await asyncio.sleep(0.5)
    assert [o.job.id for o in recorder.finished] == [job.id]  # delivered exactly once


async def test_unreachable_cluster_gives_one_clear_line_and_a_red_health(
    make_settings: Callable[..., Settings],
    ray_cluster: RayCluster,
) -> None:
    dead = "127.0.0.1:1"
    settings = make_settings(backend="ray", ray_address=dead)
    async with HistoryStore(settings.db_path) as store:
        backend = RayBackend(dead, limits=limits_from(settings))
        runner = build_runner(settings, store, backend)
        await runner.start()
        try:
            job = await runner.submit(_spec(1))  # still queued durably
            await _until(lambda: not runner.backend_online, 10, "the dispatcher to notice")
            ok, reason = runner.health()
            assert not ok
            assert (
                reason
                == f"render backend unreachable: cannot reach the Ray cluster at {dead}: Connection refused"
            )
            row = await store.get_job(job.id)
            assert row is not None and row.status == "queued"
        finally:
            await runner.stop(grace=5)
    env = {**ray_cluster.env, "RAY_ADDRESS": dead}
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bot", "workers"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"error: cannot reach the Ray cluster at {dead}: Connection refused"
    )
    assert "Traceback" not in result.stderr
