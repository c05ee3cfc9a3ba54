"""The bot end to end: the real `run_bot()` path and discord.py client against the fake Discord."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import discord
import pytest
import pytest_asyncio
import yarl
from PIL import Image

from bot.app import run_bot
from bot.bot import ImagineBot
from bot.settings import Settings
from tests.fakediscord import FakeDiscord, FakeInteraction, FakeMessage
from tests.models.conftest import write_models_toml

TOKEN = "fake-bot-token-0123456789"


@dataclass
class RunningBot:
    """A bot started through `run_bot` (the `python -m bot run` path) and the task running it."""

    fake: FakeDiscord
    settings: Settings
    bot: ImagineBot
    task: asyncio.Task[int]
    lag_samples: list[float] = field(default_factory=list)

    async def stop(self) -> int:
        await self.bot.close()
        return await asyncio.wait_for(self.task, 120)

    @property
    def store(self) -> Any:
        return self.bot.store


async def start_bot(fake: FakeDiscord, settings: Settings) -> RunningBot:
    """Start the bot and wait until it is ready in the fake guild."""
    holder: dict[str, ImagineBot] = {}
    task = asyncio.create_task(
        run_bot(settings, on_bot=lambda b: holder.setdefault("bot", b), handle_signals=False)
    )

    def ready() -> bool:
        return task.done() or ("bot" in holder and holder["bot"].is_ready())

    await fake.wait_until(ready, timeout=60, what="bot ready")
    if task.done():
        raise RuntimeError(f"run_bot ended early with {task.result()}")
    return RunningBot(fake, settings, holder["bot"], task)


@pytest_asyncio.fixture(loop_scope="function")
async def fake() -> AsyncIterator[FakeDiscord]:
    """A fresh fake Discord per test; discord.py's global endpoints restored afterwards."""
    base, gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    async with FakeDiscord(token=TOKEN, heartbeat_interval_ms=500) as server:
        yield server
    discord.http.Route.BASE = base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(str(gateway))


def fake_bot_settings(
    make_settings: Callable[..., Settings], server: FakeDiscord, **overrides: Any
) -> Settings:
    """Tiny-model bot settings pointed at `server`, tuned for fast tests; keyword arguments override fields."""
    values: dict[str, Any] = {
        "discord_token": TOKEN,
        "discord_api_base": server.api_base,
        "discord_gateway_url": server.gateway_url,
        "progress_interval": 0.2,
        "cooldown_seconds": 0.0,
        "preview_every": 1,
        "max_pending_per_user": 5,
        "log_level": "DEBUG",
    }
    values.update(overrides)
    return make_settings(**values)


@pytest.fixture
def bot_settings(make_settings: Callable[..., Settings], fake: FakeDiscord) -> Callable[..., Settings]:
    """Tiny-model bot settings pointed at the fake; keyword arguments override fields."""
    return lambda **overrides: fake_bot_settings(make_settings, fake, **overrides)


@pytest_asyncio.fixture(loop_scope="function")
async def models_bot(
    fake: FakeDiscord, bot_settings: Callable[..., Settings], tiny_models: tuple[Path, Path], tmp_path: Path
) -> AsyncIterator[RunningBot]:
    """The bot over a models.toml naming the tiny model, a second one and a draft one."""
    write_models_toml(tmp_path, tiny_models)
    bot = await start_bot(fake, bot_settings(image_classifier="off"))
    yield bot
    if not bot.task.done():
        await bot.stop()


def job_id_of(message: FakeMessage) -> str:
    """The job id a result message's embed names (its "Job" field)."""
    return next(f["value"] for f in message.embeds[0]["fields"] if f["name"] == "Job").strip("`")


@pytest_asyncio.fixture(loop_scope="function")
async def running(fake: FakeDiscord, bot_settings: Callable[..., Settings]) -> AsyncIterator[RunningBot]:
    """The bot, started with default test settings and stopped after the test."""
    bot = await start_bot(fake, bot_settings())
    yield bot
    if not bot.task.done():
        await bot.stop()


async def imagine(
    fake: FakeDiscord,
    user_id: int,
    seed: str = "Northeastern University",
    timeout: float = 90,
    **options: Any,
) -> tuple[FakeInteraction, FakeMessage]:
    """Run /imagine and wait for the final grid message."""
    interaction = await fake.send_slash("imagine", {"seed": seed, **options}, user_id=user_id)
    message = await interaction.wait_final(
        timeout=timeout, predicate=lambda m: bool(m.attachments and m.embeds)
    )
    return interaction, message


def decode(data: bytes) -> Image.Image:
    """Decode image bytes (fails the test if they are not an image)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


class LagProbe:
    """Samples event-loop lag: how late a 10 ms sleep wakes up."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(0.01)
            self.samples.append(loop.time() - start - 0.01)

    def __enter__(self) -> LagProbe:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    def percentile(self, q: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


@pytest.fixture
def heartbeat_blocked(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """discord.py's "heartbeat blocked" warnings seen so far."""
    caplog.set_level(logging.WARNING, logger="discord.gateway")
    return lambda: [r.getMessage() for r in caplog.records if "heartbeat blocked" in r.getMessage().lower()]


async def wait_job(store: Any, job_id: str, predicate: Callable[[Any], bool], timeout: float = 30.0) -> Any:
    """Poll the store until the job satisfies `predicate`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job = await store.get_job(job_id)
        if job is not None and predicate(job):
            return job
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"job {job_id} never satisfied the condition; last: {job}")
        await asyncio.sleep(0.05)
