"""Fixtures for the reliability and security tests (issue "Reliability and security").

The in-process fixtures (`fake`, `bot_settings`, `running`, `heartbeat_blocked`) are the ones of
tests/cogs; this adds a factory for fakes with other options and a pipeline wrapper that injects faults
or slows each step down on the GPU thread.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import discord
import pytest
import pytest_asyncio
import yarl

from bot.bot import ImagineBot
from bot.settings import Settings
from tests.cogs.conftest import (  # noqa: F401  (fixtures re-exported for this folder)
    TOKEN,
    bot_settings,
    fake,
    fake_bot_settings,
    heartbeat_blocked,
    running,
)
from tests.fakediscord import FakeDiscord

FakeFactory = Callable[..., Awaitable[FakeDiscord]]


@pytest_asyncio.fixture(loop_scope="function")
async def make_fake() -> AsyncIterator[FakeFactory]:
    """Start extra fakes with other options (`attachment_size_limit`, `token`, ...); stopped afterwards."""
    base, gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    started: list[FakeDiscord] = []

    async def factory(**options: Any) -> FakeDiscord:
        values: dict[str, Any] = {"token": TOKEN, "heartbeat_interval_ms": 500}
        values.update(options)
        server = FakeDiscord(**values)
        await server.start()
        started.append(server)
        return server

    yield factory
    for server in started:
        await server.stop()
    discord.http.Route.BASE = base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(str(gateway))


@pytest.fixture
def settings_for(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """Like `bot_settings`, for any fake: `settings_for(fake, steps=4)`."""

    return lambda server, **overrides: fake_bot_settings(make_settings, server, **overrides)


class PipelineProxy:
    """Stands in for the diffusers pipeline: raises one injected error, or sleeps after every step.

    Everything else (tokenizer, scheduler, components) is the real pipeline's. The sleep runs inside the
    pipeline's `callback_on_step_end`, on the GPU thread, so a job stays `running` long enough to disturb.
    """

    def __init__(self, pipe: Any, *, error: BaseException | None = None, step_delay: float = 0.0) -> None:
        self._pipe = pipe
        self._error = error
        self.step_delay = step_delay
        self.raised_at: float | None = None
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self._error is not None:
            error, self._error = self._error, None
            self.raised_at = time.monotonic()
            raise error
        callback = kwargs.get("callback_on_step_end")
        if self.step_delay and callback is not None:
            delay = self.step_delay

            def slow_step(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
                time.sleep(delay)
                return callback(pipeline, step, timestep, tensors)

            kwargs["callback_on_step_end"] = slow_step
        return self._pipe(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)


async def loaded_renderer(bot: ImagineBot, fake_server: FakeDiscord) -> Any:
    """The engine's renderer once the background model load finished."""
    await fake_server.wait_until(
        lambda: bot.backend.engine.renderer is not None, timeout=120, what="models loaded"
    )
    return bot.backend.engine.renderer


@pytest.fixture
def wrap_pipeline(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Awaitable[PipelineProxy]]:
    """`await wrap_pipeline(bot, fake, error=..., step_delay=...)` swaps in a PipelineProxy until the test ends."""

    async def install(bot: ImagineBot, fake_server: FakeDiscord, **options: Any) -> PipelineProxy:
        renderer = await loaded_renderer(bot, fake_server)
        proxy = PipelineProxy(renderer.pipe, **options)
        monkeypatch.setattr(renderer, "pipe", proxy)
        return proxy

    return install
