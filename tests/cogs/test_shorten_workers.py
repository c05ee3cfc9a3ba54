"""/shorten over the HTTP render workers (issue 22): `POST /imagine/shorten`, no Ray.

A plain aiohttp server on 127.0.0.1 stands in for a replica behind Serve's proxy: it checks the token as a
replica does and answers with the replica's own handler (`shorten_answer`) over a real tiny engine. The
replica's dispatch to that handler (serve_app.RenderWorker) is the only part left to the Ray tests.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web

from bot.engine.backend import BackendUnavailable
from bot.engine.executor import Engine
from bot.engine.types import InvalidRequest
from bot.engine.validation import Limits
from bot.engine.workers.http_backend import HttpBackend
from bot.engine.workers.protocol import PROTOCOL_VERSION, ROUTE_PREFIX, SHORTEN_PATH
from bot.engine.workers.shorten_route import shorten_answer
from bot.wiring import engine_config_from
from tests.cogs.conftest import start_bot
from tests.conftest import tiny_settings
from tests.fakediscord import FakeDiscord

TOKEN = "t0ken"
PROMPT = "a red fox sitting in deep snow, golden hour, oil painting"


@pytest_asyncio.fixture(loop_scope="function")
async def workers(tmp_path: Path, tiny_models: tuple[Path, Path]) -> AsyncIterator[tuple[str, Engine]]:
    """(URL, the engine behind it): status and /shorten as a replica answers them."""
    engine = Engine(engine_config_from(tiny_settings(tmp_path, tiny_models)))
    await engine.load()

    async def status(request: web.Request) -> web.Response:
        return web.json_response({"version": PROTOCOL_VERSION, "replicas": 1, "status": "HEALTHY"})

    async def shorten(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "the workers refused the token"}, status=401)
        code, body = await shorten_answer(engine, await request.json())
        return web.json_response(body, status=code)

    app = web.Application()
    app.router.add_get("/imagine-status", status)
    app.router.add_post(ROUTE_PREFIX + SHORTEN_PATH, shorten)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", engine
    await runner.cleanup()
    await engine.close()


async def test_the_workers_shorten_as_the_local_engine_does(workers: tuple[str, Engine]) -> None:
    url, engine = workers
    backend = HttpBackend(url, TOKEN, limits=Limits())
    try:
        remote = await backend.shorten(PROMPT)
        local = await engine.shorten(PROMPT)
        assert remote == local and remote.words == tuple(PROMPT.split()) and remote.prompts
        # The engine's refusal arrives as the same error, with its sentence.
        with pytest.raises(InvalidRequest, match="at most 60"):
            await backend.shorten("word " * 61)
        with pytest.raises(BackendUnavailable, match="refused the token"):
            await HttpBackend(url, "wrong", limits=Limits()).shorten(PROMPT)
    finally:
        await backend.close()
    nowhere = HttpBackend("http://127.0.0.1:9", TOKEN, limits=Limits())
    try:
        with pytest.raises(BackendUnavailable, match="cannot reach the GPU workers"):
            await nowhere.shorten(PROMPT)
    finally:
        await nowhere.close()


async def test_slash_shorten_works_with_remote_workers(
    fake: FakeDiscord, bot_settings, workers: tuple[str, Engine]
) -> None:
    url, engine = workers
    running = await start_bot(fake, bot_settings(backend="ray", workers_url=url, workers_token=TOKEN))
    try:
        interaction = await fake.send_slash("shorten", {"prompt": PROMPT}, user_id=fake.alice_id)
        answer = await interaction.wait_final(timeout=60, predicate=lambda m: bool(m.buttons))
        expected = await engine.shorten(PROMPT)
        shown = re.findall(r"^`\s*([\d.]+)` \S* ?(.+)$", answer.content, flags=re.MULTILINE)
        assert [w.strip() for _, w in shown] == [word for word, _ in expected.ranked()]
        assert [b["label"] for b in answer.buttons] == [
            f"Imagine {n}" for n in range(1, len(expected.prompts) + 1)
        ]
    finally:
        await running.stop()
    # Workers gone: one sentence, no traceback.
    running = await start_bot(
        fake, bot_settings(backend="ray", workers_url="http://127.0.0.1:9", workers_token=TOKEN)
    )
    try:
        interaction = await fake.send_slash("shorten", {"prompt": PROMPT}, user_id=fake.alice_id)
        answer = await interaction.wait_final(
            timeout=30, predicate=lambda m: bool(m.content) and "…" not in m.content
        )
        assert "The GPU workers are offline right now" in answer.content
    finally:
        await running.stop()
