"""Model multiplexing on Ray Serve: each job goes to the replica that already holds its model.

The nodes read the tiny models' `models.toml` (IMAGINE_MODELS_FILE: `tiny`, the default, and `tiny-b`); two CPU
replicas keep one model each (IMAGINE_MAX_RESIDENT_MODELS=1). The bot's HTTP client names each job's model in
the `serve_multiplexed_model_id` header; every job records the replica that rendered it, the models that
replica held afterwards and the swaps it had made. Marked `ray`: inside scripts/fence.sh.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.engine.backend import CancelToken
from bot.engine.types import GenerationRequest
from bot.engine.workers.http_backend import HttpBackend
from bot.settings import Settings
from bot.wiring import build_backend
from tests.conftest import tiny_job
from tests.raycluster import RayCluster, running_cluster

pytestmark = pytest.mark.ray


def _models_file(tiny_models: tuple[Path, Path]) -> Path:
    return tiny_models[0].parent / "models.toml"


@pytest.fixture(scope="module")
def models_cluster(tiny_models: tuple[Path, Path]) -> Iterator[RayCluster]:
    cluster = RayCluster(tiny_models, extra_env={"IMAGINE_MODELS_FILE": str(_models_file(tiny_models))})
    yield from running_cluster(cluster)


async def test_jobs_alternating_models_land_on_the_replica_holding_theirs_with_no_needless_swap(
    models_cluster: RayCluster, make_settings: Callable[..., Settings], tiny_models: tuple[Path, Path]
) -> None:
    assert "models: tiny (default), tiny-b, tiny-draft (draft)" in models_cluster.deploy_output
    settings = make_settings(
        backend="ray",
        workers_url=models_cluster.url,
        workers_token=models_cluster.token,
        models_file=_models_file(tiny_models),
    )
    backend = build_backend(settings)
    assert isinstance(backend, HttpBackend)

    async def render(model: str) -> dict[str, Any]:
        request = tiny_job(GenerationRequest, model=model, count=1, job_seed=len(model))
        output = await backend.render(
            request, on_progress=None, on_rendered=lambda: None, cancel=CancelToken()
        )
        assert output.render["model_name"] == model
        return {"model": model, **output.render["worker"]}

    try:
        jobs = [await render(model) for model in ("tiny", "tiny-b") * 3]
        jobs += await asyncio.gather(render("tiny"), render("tiny-b"))  # one of each at once
    finally:
        await backend.close()

    by_model = {
        model: {job["replica"] for job in jobs if job["model"] == model} for model in ("tiny", "tiny-b")
    }
    assert all(len(replicas) == 1 for replicas in by_model.values()), jobs  # always the same replica
    assert by_model["tiny"] != by_model["tiny-b"], jobs  # the two models live on the two replicas
    for job in jobs:
        assert job["resident"] == [job["model"]], job  # the replica held only this job's model
    # No needless swap: a replica loaded its model before its first job and never again. The replica
    # that got `tiny-b` swapped out the default model once (its start loads `tiny`); the other never swapped.
    for model, expected_swaps in (("tiny", 0), ("tiny-b", 1)):
        assert [job["swaps"] for job in jobs if job["model"] == model] == [expected_swaps] * 4, jobs
