"""/imagine end to end through the fake Discord with IMAGINE_BACKEND=ray (marked `ray`: runs in the fence)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bot.settings import Settings
from tests.cogs.conftest import decode, imagine, start_bot, wait_job
from tests.fakediscord import FakeDiscord
from tests.raycluster import RayCluster

pytestmark = pytest.mark.ray


async def test_imagine_renders_on_the_ray_workers(
    fake: FakeDiscord,
    bot_settings: Callable[..., Settings],
    ray_cluster: RayCluster,
) -> None:
    running = await start_bot(fake, bot_settings(backend="ray", ray_address=ray_cluster.address))
    try:
        _, message = await imagine(fake, fake.alice_id, count=2, timeout=120)
        assert decode(message.attachments[0].data).size == (2 * 64 + 4, 64)
        job_id = next(f["value"] for f in message.embeds[0]["fields"] if f["name"] == "Job").strip("`")
        job = await wait_job(running.store, job_id, lambda j: j.delivery == "sent")
        assert job.status == "done"
        assert job.render["worker"]["backend"] == "ray"
        assert len(message.history) >= 1
    finally:
        await running.stop()
