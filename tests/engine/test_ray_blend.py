"""/blend on real Ray Serve replicas (issue 22): the nodes name the unCLIP model (IMAGINE_BLEND_MODEL in their
own environment), the bot sends the job's blend sheet over HTTP like any source image.

The same job rendered by a local engine pinned to one torch thread (what a CPU replica runs with) gives the
same PNG bytes. Marked `ray`: inside scripts/fence.sh.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bot.engine.blend import pack_sheet
from bot.engine.executor import Engine
from bot.engine.local_backend import LocalBackend
from bot.engine.tiny_blend import build_tiny_blend_model
from bot.engine.workers.http_backend import HttpBackend
from bot.jobs import JobRunner
from bot.settings import Settings
from bot.store import HistoryStore, JobRecord
from bot.uploads import stage_inputs
from bot.wiring import build_backend, build_runner, engine_config_from
from tests.conftest import tiny_settings
from tests.helpers import job_spec
from tests.raycluster import RayCluster, running_cluster
from tests.test_uploads import encoded, striped

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def unclip_model(tmp_path_factory: pytest.TempPathFactory, tiny_models: tuple[Path, Path]) -> Path:
    return build_tiny_blend_model(tmp_path_factory.mktemp("unclip"), tiny_models[0])


@pytest.fixture(scope="module")
def blend_cluster(tiny_models: tuple[Path, Path], unclip_model: Path) -> Iterator[RayCluster]:
    cluster = RayCluster(tiny_models, extra_env={"IMAGINE_BLEND_MODEL": str(unclip_model)})
    yield from running_cluster(cluster)


def blend_sheet() -> bytes:
    """A 2-picture blend sheet (weights 1 and 0.5, a prompt, noise level 50)."""
    red = encoded(striped(64, 64).convert("RGB").transpose(0), "PNG")
    return pack_sheet([encoded(striped(64, 64), "PNG"), red], (1.0, 0.5), "a red fox", 50)


async def _blend_on(settings: Settings, backend: object) -> JobRecord:
    """One 2-picture blend (seed 7, two images) through a runner on `backend`, to its end."""
    spec = job_spec(
        seed_text="a red fox", count=2, job_seed=7, guidance=10.0, expand=False, action="blend", user_id=1
    )
    spec = await asyncio.to_thread(
        stage_inputs, settings.images_dir, spec, init_image=blend_sheet(), mask_image=None
    )
    async with HistoryStore(settings.db_path) as store:
        runner: JobRunner = build_runner(settings, store, backend)  # type: ignore[arg-type]
        await runner.start()
        try:
            job = await runner.submit(spec)
            outcome = await asyncio.wait_for(runner.wait_for(job.id), 180)
        finally:
            await runner.stop(grace=30)
    return outcome.job


def _tiles(job: JobRecord) -> list[bytes]:
    return [Path(tile.path).read_bytes() for tile in job.tiles if tile.path is not None]


async def test_a_blend_on_the_workers_is_done_and_byte_identical_to_a_one_thread_local_render(
    blend_cluster: RayCluster,
    tiny_models: tuple[Path, Path],
    unclip_model: Path,
    tmp_path: Path,
) -> None:
    ray_settings = tiny_settings(
        tmp_path / "ray",
        tiny_models,
        backend="ray",
        workers_url=blend_cluster.url,
        workers_token=blend_cluster.token,
        blend_model=str(unclip_model),
        cooldown_seconds=0,
    )
    backend = build_backend(ray_settings)
    assert isinstance(backend, HttpBackend)
    try:
        remote = await _blend_on(ray_settings, backend)
    finally:
        await backend.close()
    assert remote.status == "done", remote.reason
    assert remote.render["mode"] == "blend" and remote.render["worker"]["backend"] == "ray"
    assert remote.render["unclip_model"] == str(unclip_model)
    assert remote.render["blend"] == {
        "images": 2,
        "weights": [1.0, 0.5],
        "prompt": "a red fox",
        "noise_level": 50,
    }
    assert remote.render["numerics"]["torch_threads"] == 1 and len(remote.tiles) == 2

    # The same job on a local engine with the replica's one torch thread (the process-wide count restored).
    local_settings = tiny_settings(
        tmp_path / "local", tiny_models, blend_model=str(unclip_model), cooldown_seconds=0
    )
    threads = torch.get_num_threads()
    engine = Engine(dataclasses.replace(engine_config_from(local_settings), torch_threads=1))
    try:
        local = await _blend_on(local_settings, LocalBackend(engine))
    finally:
        await engine.close()
        torch.set_num_threads(threads)
    assert local.status == "done", local.reason
    assert local.render["numerics"] == remote.render["numerics"]
    assert _tiles(local) == _tiles(remote)
