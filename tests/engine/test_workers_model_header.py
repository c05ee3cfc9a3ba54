"""The HTTP client names each job's model for Serve's routing; `workers` says which models it deploys with.

No Ray: a plain aiohttp server on 127.0.0.1 stands in for Serve's proxy (tests/engine/test_ray_models.py
runs the real routing inside the fence).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from bot.cli import workers_models_line
from bot.engine.backend import BackendUnavailable, CancelToken
from bot.engine.model_specs import KINDS
from bot.engine.types import GenerationRequest
from bot.engine.workers.http_backend import MODEL_HEADER, HttpBackend
from bot.settings import Settings
from bot.wiring import limits_from
from tests.conftest import tiny_job
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]


async def test_each_render_request_names_its_model_in_serves_multiplexing_header(
    make_settings: Callable[..., Settings],
) -> None:
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get(MODEL_HEADER))
        return web.json_response({"error": "no"}, status=401)

    app = web.Application()
    app.router.add_post("/imagine/render", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    backend = HttpBackend(f"http://127.0.0.1:{port}", "t0ken", limits=limits_from(make_settings()))
    try:
        for model in ("tiny-b", ""):
            with pytest.raises(BackendUnavailable):
                await backend.render(
                    tiny_job(GenerationRequest, model=model),
                    on_progress=None,
                    on_rendered=lambda: None,
                    cancel=CancelToken(),
                )
    finally:
        await backend.close()
        await runner.cleanup()
    assert MODEL_HEADER == "serve_multiplexed_model_id"
    assert seen == ["tiny-b", None]  # no model named (an old job): no header, any replica


def test_workers_command_names_the_registry_it_deploys_with(
    make_settings: Callable[..., Settings], tiny_models: tuple[Path, Path]
) -> None:
    toml = tiny_models[0].parent / "models.toml"
    line = workers_models_line(make_settings(models_file=toml, max_resident_models=2))
    assert line == (
        f"models: tiny (default), tiny-b, tiny-draft (draft) from {toml}; each replica keeps at most 2 loaded, "
        "and each job goes to a replica holding its model"
    )


def test_workers_command_stops_on_a_broken_models_file_before_deploying(tmp_path: Path) -> None:
    broken = tmp_path / "models.toml"
    broken.write_text('default = "a"\n[models.a]\nsource = "x"\nkind = "sdxl"\n')
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "IMAGINE_DATA_DIR": str(tmp_path),
        "RAY_DASHBOARD_ADDRESS": "http://127.0.0.1:9",  # never asked: the file is read first
    }
    result = run_cli(["workers", "--replicas", "1"], env, tmp_path, 60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: models file {broken}: [models.a] kind must be one of {', '.join(KINDS)}, got 'sdxl'"
    ]
    assert result.stdout == ""
