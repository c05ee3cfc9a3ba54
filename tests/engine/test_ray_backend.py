"""The job runner and the CLI on Ray Serve workers reached over HTTP, the cluster on "another host".

The cluster (tests/raycluster.py) runs in its own PID, mount and network namespaces; this process (the
bot's runner) reaches it only over TCP at a private address and never imports Ray. The CLI runs in its own
PID and mount namespaces too (`unshare --pid --fork --mount-proc`). Marked `ray`: inside scripts/fence.sh.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bot.engine.workers.http_backend import HttpBackend
from bot.jobs import JobOutcome, JobRunner
from bot.messages import plain_reason
from bot.settings import Settings
from bot.store import HistoryStore, JobRecord, JobSpec
from bot.uploads import stage_inputs
from bot.wiring import build_backend, build_runner
from tests.engine.test_ray_blend import blend_sheet
from tests.helpers import job_spec, until
from tests.raycluster import ROOT, RayCluster

pytestmark = pytest.mark.ray

# Runs `python -m bot ARGS…` and then says on stderr whether `ray` was ever imported in that process.
NO_RAY_WRAPPER = (
    "import runpy, sys\n"
    "try:\n"
    "    runpy.run_module('bot', run_name='__main__', alter_sys=True)\n"
    "finally:\n"
    "    print('ray imported: %s' % ('ray' in sys.modules), file=sys.stderr)\n"
)


def _spec(user_id: int | None, **overrides: Any) -> JobSpec:
    return job_spec(user_id=user_id, **({"count": 1, "steps": 6} | overrides))


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


def ray_settings(make_settings: Callable[..., Settings], cluster: RayCluster, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "backend": "ray",
        "workers_url": cluster.url,
        "workers_token": cluster.token,
        "cooldown_seconds": 0,
    }
    values.update(overrides)
    return make_settings(**values)


@pytest_asyncio.fixture(loop_scope="function")
async def ray_runner(
    ray_cluster: RayCluster, make_settings: Callable[..., Settings]
) -> AsyncIterator[tuple[JobRunner, HttpBackend, Recorder]]:
    settings = ray_settings(make_settings, ray_cluster)
    async with HistoryStore(settings.db_path) as store:
        backend = build_backend(settings)
        assert isinstance(backend, HttpBackend)
        runner = build_runner(settings, store, backend)
        runner.poll_seconds = 0.5
        recorder = Recorder()
        runner.set_handlers(
            on_started=recorder.on_started, on_progress=recorder.on_progress, on_finished=recorder.on_finished
        )
        await runner.start()
        try:
            yield runner, backend, recorder
        finally:
            await runner.stop(grace=30)
            await backend.close()


def run_cli(cluster: RayCluster, data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m bot ARGS` in its own PID and mount namespaces, reaching the workers only over TCP."""
    environment = {
        **cluster.env,
        "IMAGINE_DATA_DIR": str(data_dir),
        "IMAGINE_BACKEND": "ray",
        "IMAGINE_WORKERS_URL": cluster.url,
        "IMAGINE_WIDTH": "64",
        "IMAGINE_HEIGHT": "64",
        "IMAGINE_LOG_LEVEL": "WARNING",
        **env,
    }
    return subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", NO_RAY_WRAPPER, *args],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def rows(data_dir: Path) -> list[tuple[str, str]]:
    db = data_dir / "history.sqlite3"
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return list(conn.execute("SELECT id, status FROM jobs"))


def test_workers_command_deployed_two_replicas_through_the_dashboard(ray_cluster: RayCluster) -> None:
    assert (
        "deploying 2 worker replica(s) (0 GPU each) through http://10.231.0.2:8265"
        in ray_cluster.deploy_output
    )
    assert (
        "ready: 2 worker replica(s) running; give the bot IMAGINE_WORKERS_URL=http://10.231.0.2:8000"
        in ray_cluster.deploy_output
    )


async def test_two_members_render_at_once_on_two_replicas_in_fair_order(
    ray_runner: tuple[JobRunner, HttpBackend, Recorder],
) -> None:
    runner, backend, recorder = ray_runner
    await until(lambda: runner.backend_online and backend.capacity == 2, 30, "two replicas online")
    alice = [await runner.submit(_spec(1, steps=12)) for _ in range(2)]
    bob = await runner.submit(_spec(2, steps=12))
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(runner.wait_for(job.id) for job in [*alice, bob])), 120
    )
    by_id = {outcome.job.id: outcome.job for outcome in outcomes}
    assert [row.status for row in by_id.values()] == ["done"] * 3
    assert recorder.started == [alice[0].id, bob.id, alice[1].id]  # Bob does not wait behind Alice
    a1, b1 = by_id[alice[0].id], by_id[bob.id]
    assert b1.started_at < a1.finished_at and a1.started_at < b1.finished_at  # type: ignore[operator]
    workers = [a1.render["worker"], b1.render["worker"]]
    assert len({worker["replica"] for worker in workers}) == 2, workers
    assert {key for key in workers[0]} >= {"backend", "host", "pid", "replica"}
    assert workers[0]["backend"] == "ray" and workers[0]["ray"] == "2.60.0"
    assert a1.render["device"] == "cpu"
    # A CPU replica pins torch to one thread, and its record says so: a local rerun may round differently.
    assert a1.render["numerics"]["torch_threads"] == 1
    assert {step for job_id, step, total, _ in recorder.progress if job_id == bob.id} >= {1, 12}
    assert any(has_preview for job_id, *_, has_preview in recorder.progress if job_id == bob.id)
    assert len(a1.tiles) == 1 and a1.tiles[0].path is not None


async def test_a_blend_on_workers_without_the_blend_model_fails_in_one_sentence(
    ray_runner: tuple[JobRunner, HttpBackend, Recorder], make_settings: Callable[..., Settings]
) -> None:
    """Issue 22: the bot has /blend on, these nodes have no IMAGINE_BLEND_MODEL: the member reads why."""
    runner, _, _ = ray_runner
    spec = _spec(1, seed_text="a red fox", count=2, guidance=10.0, expand=False, action="blend")
    images_dir = make_settings().images_dir
    spec = await asyncio.to_thread(stage_inputs, images_dir, spec, init_image=blend_sheet(), mask_image=None)
    outcome = await asyncio.wait_for(runner.wait_for((await runner.submit(spec)).id), 120)
    assert (outcome.job.status, outcome.job.attempts) == ("failed", 1)
    assert outcome.job.reason == (
        "/blend is off on the machine that renders this bot's images: IMAGINE_BLEND_MODEL is not set there"
    )
    assert plain_reason(outcome.job) == outcome.job.reason


async def test_cancel_closes_the_stream_and_stops_the_replicas_gpu_loop(
    ray_runner: tuple[JobRunner, HttpBackend, Recorder], ray_cluster: RayCluster
) -> None:
    runner, _, recorder = ray_runner
    job = await runner.submit(_spec(1, steps=50, width=128, height=128, count=2))
    await until(lambda: any(p[0] == job.id for p in recorder.progress), 60, "the remote render to start")
    assert await runner.cancel(job.id)
    began = time.monotonic()
    outcome = await asyncio.wait_for(runner.wait_for(job.id), 30)
    assert time.monotonic() - began < 5
    assert (outcome.job.status, outcome.job.reason) == ("cancelled", "cancelled by its owner")
    # The replica's own log: its GPU thread raised JobCancelled at a denoising step before the last.
    line = ""
    deadline = time.monotonic() + 20
    while not line and time.monotonic() < deadline:
        found = [text for text in ray_cluster.logs().splitlines() if "cancelled in the GPU loop" in text]
        line = found[-1] if found else ""
        await asyncio.sleep(0.5)
    assert line, "the replica never logged the cancelled render"
    step = int(line.split("stopped at step ")[1].split()[0])
    assert 1 <= step < 50, line
    nxt = [await runner.submit(_spec(1)) for _ in range(2)]
    done = await asyncio.wait_for(asyncio.gather(*(runner.wait_for(j.id) for j in nxt)), 60)
    assert [o.job.status for o in done] == ["done", "done"]


async def test_replica_killed_mid_job_is_done_once_on_another_replica(
    ray_runner: tuple[JobRunner, HttpBackend, Recorder], ray_cluster: RayCluster
) -> None:
    runner, backend, recorder = ray_runner
    await until(lambda: runner.backend_online and backend.capacity == 2, 60, "two replicas")
    job = await runner.submit(_spec(1, steps=50, width=128, height=128))
    await until(lambda: backend.running_workers and recorder.progress, 60, "the remote render to start")
    victim = backend.running_workers[0]
    os.kill(ray_cluster.host_pid(victim["pid"]), signal.SIGKILL)
    outcome = await asyncio.wait_for(runner.wait_for(job.id), 120)
    assert outcome.job.status == "done", outcome.job.reason
    assert outcome.job.attempts == 2  # the lost worker spent one attempt
    assert outcome.job.render["worker"]["replica"] != victim["replica"]
    await asyncio.sleep(0.5)
    assert [o.job.id for o in recorder.finished] == [job.id]  # delivered exactly once


def test_cli_renders_on_the_workers_from_its_own_namespaces_without_ray(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    result = run_cli(
        ray_cluster, tmp_path, "imagine", "a lighthouse", "--steps", "2", "--count", "1", "--json"
    )
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["status"] == "done" and job["render"]["worker"]["backend"] == "ray"
    assert result.stderr.strip().splitlines()[-1] == "ray imported: False"


def test_cli_with_a_wrong_token_says_so_in_one_line_and_leaves_no_row(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    result = run_cli(ray_cluster, tmp_path, "imagine", "a lighthouse", IMAGINE_WORKERS_TOKEN="wrong")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0] == (
        f"error: cannot render: the GPU workers at {ray_cluster.url} refused the token (401): give the bot "
        "and the workers the same IMAGINE_WORKERS_TOKEN"
    )
    assert lines[1:] == ["ray imported: False"]
    assert "Traceback" not in result.stderr
    assert rows(tmp_path) == []


@pytest.mark.parametrize(
    "url", ["http://10.231.0.2:1", "http://10.231.0.77:8000"], ids=["refused", "no-host"]
)
def test_cli_does_not_wait_for_unreachable_workers(ray_cluster: RayCluster, tmp_path: Path, url: str) -> None:
    began = time.monotonic()
    result = run_cli(ray_cluster, tmp_path, "imagine", "a lighthouse", IMAGINE_WORKERS_URL=url)
    assert time.monotonic() - began < 60
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"error: cannot render: cannot reach the GPU workers at {url}: "), lines
    assert len(lines) == 2 and "Traceback" not in result.stderr
    assert rows(tmp_path) == []


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"RAY_AUTH_TOKEN": "0" * 64},
            "error: the Ray dashboard at http://10.231.0.2:8265 refused the request (403): set "
            "RAY_AUTH_MODE=token and the cluster's RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH)",
        ),
        (
            {"RAY_DASHBOARD_ADDRESS": "http://10.231.0.2:1"},
            "error: cannot reach the Ray dashboard at http://10.231.0.2:1: Connection refused "
            "(RAY_DASHBOARD_ADDRESS)",
        ),
    ],
    ids=["wrong-ray-token", "no-dashboard"],
)
def test_workers_command_failure_is_one_line(
    ray_cluster: RayCluster, tmp_path: Path, env: dict[str, str], line: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bot", "workers", "--replicas", "2"],
        cwd=ROOT, env={**ray_cluster.env, "IMAGINE_DATA_DIR": str(tmp_path), **env},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [line]


def test_this_process_never_imported_ray() -> None:
    assert "ray" not in sys.modules
