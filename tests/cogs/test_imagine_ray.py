"""/imagine end to end through the fake Discord with IMAGINE_BACKEND=ray, the cluster on "another host".

The bot reaches the workers only over TCP (tests/raycluster.py: the cluster has its own PID, mount and
network namespaces) and never imports Ray. The head is killed mid-job and brought back. Marked `ray`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

import pytest

from bot.health import check_health
from bot.settings import Settings
from tests.cogs.conftest import decode, imagine, start_bot, wait_job
from tests.fakediscord import FakeDiscord
from tests.raycluster import RayCluster

pytestmark = pytest.mark.ray


def _job_id(message: object) -> str:
    embeds = message.embeds  # type: ignore[attr-defined]
    return str(next(f["value"] for f in embeds[0]["fields"] if f["name"] == "Job")).strip("`")


async def test_imagine_renders_on_the_workers_and_survives_the_head_going_away(
    fake: FakeDiscord, bot_settings: Callable[..., Settings], ray_cluster: RayCluster
) -> None:
    settings = bot_settings(
        backend="ray", workers_url=ray_cluster.url, workers_token=ray_cluster.token, width=128, height=128
    )
    running = await start_bot(fake, settings)
    try:
        _, message = await imagine(fake, fake.alice_id, count=2, timeout=120)
        assert decode(message.attachments[0].data).size == (2 * 128 + 4, 128)
        job = await wait_job(running.store, _job_id(message), lambda j: j.delivery == "sent")
        assert job.status == "done" and job.render["worker"]["backend"] == "ray"
        assert {"host", "pid", "replica"} <= set(job.render["worker"])

        # The head dies mid-job (its whole namespace: a host gone).
        await fake.send_slash(
            "imagine", {"seed": "a slow one", "steps": 50, "count": 4}, user_id=fake.alice_id
        )
        waiting = await wait_job_by_seed(running, "a slow one", lambda j: j.status == "running", 60)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(ray_cluster.kill_head)
        await fake.send_slash("imagine", {"seed": "queued meanwhile"}, user_id=fake.bob_id)
        queued = await wait_job_by_seed(running, "queued meanwhile", lambda j: True, 30)
        # The job in flight goes back to waiting with its attempt refunded; health says why.
        row = await wait_job(running.store, waiting.id, lambda j: j.status == "queued", 30)
        assert row.attempts == 0 and row.reason is None
        deadline = time.monotonic() + 30
        healthy, reason = check_health(settings)
        while "GPU workers" not in reason and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            healthy, reason = check_health(settings)
        assert not healthy
        assert reason.startswith(f"unhealthy: jobs cannot run: render backend unreachable: cannot reach the "
                                 f"GPU workers at {ray_cluster.url}: "), reason  # fmt: skip
        assert not running.task.done()  # the bot stays up
        for job_id in (waiting.id, queued.id):
            row = await running.store.get_job(job_id)
            assert (row.status, row.attempts) == ("queued", 0)

        # The head comes back and the workers are redeployed: the waiting jobs run, once each.
        await asyncio.to_thread(ray_cluster.start)
        for job_id in (waiting.id, queued.id):
            row = await wait_job(running.store, job_id, lambda j: j.status == "done", 180)
            assert row.attempts == 1
        assert not running.task.done()
    finally:
        await running.stop()
    assert "ray" not in sys.modules


async def wait_job_by_seed(running: object, seed: str, predicate: Callable[[object], bool], timeout: float):  # type: ignore[no-untyped-def]
    store = running.store  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job in await store.list_jobs(any_user=True, limit=50):
            if job.seed_text == seed and predicate(job):
                return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"no job {seed!r} satisfied the condition")
