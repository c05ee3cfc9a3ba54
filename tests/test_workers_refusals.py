"""The CLI against workers that answer but refuse: 503 (not ready), 409 (another format version).

A plain aiohttp server on 127.0.0.1 stands in for Serve's proxy at the boundary (no Ray needed: these run
in every CI job). The CLI must not wait: one `error:` line naming the workers' URL, exit 1, no row.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest_asyncio
from aiohttp import web

from bot.engine.workers.protocol import ROUTE_PREFIX, version_mismatch
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest_asyncio.fixture(loop_scope="function")
async def refusing() -> AsyncIterator[Callable[[int, dict[str, object]], Awaitable[str]]]:
    """Start a server answering every request with (status, JSON body); returns its base URL."""
    runners: list[web.AppRunner] = []

    async def serve(status: int, body: dict[str, object]) -> str:
        async def handler(request: web.Request) -> web.Response:
            return web.json_response(body, status=status)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    yield serve
    for runner in runners:
        await runner.cleanup()


async def _cli(url: str, data_dir: Path, models: tuple[Path, Path]) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HF_HUB_OFFLINE": "1",
        "IMAGINE_DATA_DIR": str(data_dir),
        "IMAGINE_SD_MODEL": str(models[0]),
        "IMAGINE_TEXT_MODEL": str(models[1]),
        "IMAGINE_BACKEND": "ray",
        "IMAGINE_WORKERS_URL": url,
        "IMAGINE_WORKERS_TOKEN": "t0ken",
        "IMAGINE_LOG_LEVEL": "WARNING",
    }
    return await asyncio.to_thread(run_cli, ["imagine", "a lighthouse"], env, ROOT, 60)


def _rows(data_dir: Path) -> list[tuple[str]]:
    db = data_dir / "history.sqlite3"
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return list(conn.execute("SELECT id FROM jobs"))


async def test_cli_does_not_wait_for_workers_answering_503(
    refusing: Callable[..., Awaitable[str]], tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    url = await refusing(503, {"error": "no healthy replica"})
    result = await _cli(url, tmp_path, tiny_models)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: cannot render: the GPU workers at {url} are not ready (503: no healthy replica)"
    ]
    assert _rows(tmp_path) == []


async def test_another_request_format_is_refused_with_one_line_naming_both_versions(
    refusing: Callable[..., Awaitable[str]], tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    url = await refusing(200, {"version": 2, "replicas": 1})
    result = await _cli(url, tmp_path, tiny_models)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: cannot render: render request format mismatch: the workers at {url} speak version 2, "
        "this bot sends version 1; run the same imagine-bot release on the bot and the workers"
    ]
    assert _rows(tmp_path) == []
    assert version_mismatch(7).startswith("render request format mismatch: the workers speak version 1, ")
    assert ROUTE_PREFIX == "/imagine"


def test_building_the_ray_backend_imports_no_ray(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from bot.settings import Settings\n"
        "from bot.wiring import build_backend, build_runner\n"
        "from bot.store import HistoryStore\n"
        f"s = Settings(_env_file=None, data_dir={str(tmp_path)!r}, backend='ray',\n"
        "             workers_url='http://10.0.0.9:8000', workers_token='t')\n"
        "backend = build_backend(s)\n"
        "build_runner(s, HistoryStore(s.db_path), backend)\n"
        "print(type(backend).__name__, 'ray' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.split() == ["HttpBackend", "False"], result.stderr


def test_the_deploy_keeps_every_other_serve_application() -> None:
    from bot.engine.workers.deploy import application_config, build_config, status_application_config

    theirs = {"name": "shop", "route_prefix": "/shop", "import_path": "shop:app"}
    current = {
        "proxy_location": "EveryNode",
        "http_options": {"host": "10.0.0.5", "port": 8123},
        "applications": {
            "shop": {"status": "RUNNING", "deployed_app_config": theirs},
            "imagine-workers": {"status": "RUNNING", "deployed_app_config": {"name": "imagine-workers"}},
        },
    }
    ours = [application_config(2, 1.0), status_application_config()]
    config = build_config(current, ours, 8000)
    # The PUT replaces every application: theirs goes back unchanged, ours is replaced, the proxy stays.
    assert config["applications"] == [theirs, *ours]
    assert config["proxy_location"] == "EveryNode"
    assert config["http_options"] == {"host": "10.0.0.5", "port": 8123}
    worker = ours[0]["deployments"][0]
    assert worker["num_replicas"] == 2 and worker["ray_actor_options"] == {"num_gpus": 1.0, "num_cpus": 0}
    assert "runtime_env" not in ours[0] and ours[0]["args"] == {}  # no secret, no environment
