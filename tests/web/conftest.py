"""The web gallery's fixtures: the fake Discord (with its OAuth2 side), a real SQLite store with jobs whose
images are real PNG files, and the gallery app. Everything on loopback."""

from __future__ import annotations

import io
import itertools
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image, ImageDraw

from bot.settings import Settings
from bot.store import HistoryStore, JobRecord, JobSpec, Tile
from bot.web.app import build_app
from tests.fakediscord import FakeDiscord

CLIENT_SECRET = "fake-client-secret-DO-NOT-LEAK-7f3a"
SESSION_SECRET = "test-session-secret-0123456789abcdef"
OTHER_GUILD = 424242
_clock = itertools.count()


def web_settings(data_dir: Path, fake: FakeDiscord, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "web_client_id": fake.oauth.client_id,
        "web_client_secret": CLIENT_SECRET,
        "web_session_secret": SESSION_SECRET,
        "web_discord_url": fake.base_url,
        "web_admins": [fake.owner_id],
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def png(color: tuple[int, int, int], size: int = 64, height: int | None = None) -> bytes:
    """A small picture with some structure (a sky gradient, a hill, a sun) so screenshots read as a gallery."""
    height = height or size
    sky = Image.linear_gradient("L").resize((size, height))
    image = Image.merge(
        "RGB", [sky.point(lambda v, c=c: int(c * 0.4 + v * 0.6 * (c / 255 + 0.3))) for c in color]
    )
    draw = ImageDraw.Draw(image)
    r = max(2, size // 8)
    cx, cy = (color[0] * 7) % (size - 2 * r) + r, height // 4
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(255, 214, 102))
    draw.ellipse(
        (-size // 2, height * 2 // 3, size * 3 // 2, height * 2), fill=(color[1] // 3, 90, color[2] // 3)
    )
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


async def make_job(
    store: HistoryStore,
    images_dir: Path,
    *,
    user_id: int,
    guild_id: int | None,
    seed_text: str = "a castle on a hill",
    status: str = "done",
    private: bool = False,
    safe_mode: bool = True,
    delivered: bool = True,
    nsfw: tuple[int, ...] = (),
    count: int = 2,
    width: int = 64,
    height: int = 64,
    parent_id: str | None = None,
    action: str = "imagine",
    source_tile: int | None = None,
    negative: str = "",
    created_at: float | None = None,
) -> JobRecord:
    """A job row as the bot leaves it, with real PNG files in its own folder."""
    spec = JobSpec(
        seed_text=seed_text,
        count=count,
        steps=2,
        guidance=7.5,
        width=width,
        height=height,
        job_seed=1000 + next(_clock),
        negative=negative,
        safe_mode=safe_mode,
        user_id=user_id,
        guild_id=guild_id,
        channel_id=555 if guild_id else None,
        private=private,
        parent_id=parent_id,
        action=action,
        source_tile=source_tile,
    )
    job = await store.create_job(
        spec, now=created_at if created_at is not None else time.time() + next(_clock)
    )
    if status == "queued":
        return job
    assert await store.mark_running(job.id)
    if status == "running":
        return job
    if status in ("failed", "cancelled"):
        await store.mark_failed(job.id, "the GPU ran out of memory", status=status)
        result = await store.get_job(job.id)
        assert result is not None
        return result
    folder = images_dir / job.id
    folder.mkdir(parents=True, exist_ok=True)
    tiles = []
    for index in range(1, count + 1):  # the bot numbers tiles from 1, as its U1…U4 buttons
        path = folder / f"tile-{index}.png"
        path.write_bytes(png(((70 * index + len(seed_text) * 13) % 256, 120, 200), width, height))
        tiles.append(
            Tile(index, f"{seed_text}, detailed painting {index}", 5000 + index, str(path), index in nsfw)
        )
    grid = folder / "grid.png"
    grid.write_bytes(png((30, 60, 90), width, height))
    await store.mark_done(job.id, tiles=tiles, grid_path=str(grid), expander={}, render={"model": "tiny"})
    if delivered:
        await store.mark_delivered(job.id, message_id=99, channel_id=555)
    else:
        await store.set_delivery_none(job.id)
    result = await store.get_job(job.id)
    assert result is not None
    return result


@dataclass
class Gallery:
    fake: FakeDiscord
    store: HistoryStore
    settings: Settings
    app: web.Application

    @property
    def images_dir(self) -> Path:
        return self.settings.images_dir

    async def job(self, **kwargs: Any) -> JobRecord:
        return await make_job(self.store, self.images_dir, **kwargs)

    async def client(self) -> TestClient[web.Request, web.Application]:
        client = TestClient(TestServer(self.app))
        await client.start_server()
        self._clients.append(client)
        return client

    _clients: list[Any]


async def login(client: TestClient[Any, Any], fake: FakeDiscord, user_id: int, next_path: str = "/") -> str:
    """Log `user_id` in through the fake Discord; returns the path the gallery sent the browser to."""
    fake.oauth.login_as = user_id
    response = await client.get("/login", params={"next": next_path}, allow_redirects=False)
    assert response.status == 302, await response.text()
    authorize = response.headers["Location"]
    async with client.session.get(authorize, allow_redirects=False) as answer:
        assert answer.status == 302, await answer.text()
        back = urlsplit(answer.headers["Location"])
    response = await client.get(f"{back.path}?{back.query}", allow_redirects=False)
    assert response.status == 302, await response.text()
    return response.headers["Location"]


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match[1]


@pytest_asyncio.fixture
async def gallery(tmp_path: Path) -> AsyncIterator[Gallery]:
    async with FakeDiscord() as fake, HistoryStore(tmp_path / "data" / "history.sqlite3") as store:
        fake.oauth.client_secret = CLIENT_SECRET
        settings = web_settings(tmp_path / "data", fake)
        app = build_app(settings, store, refresh_seconds=0.0, login_limit=1000)
        g = Gallery(fake, store, settings, app, [])
        try:
            yield g
        finally:
            for client in g._clients:
                await client.close()
