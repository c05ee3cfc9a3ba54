"""End to end in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by Selenium):
`python -m bot web` as its own process, the fake Discord's OAuth2, real SQLite and PNG files.

Log in, own images, the server feed's privacy, search from the keyboard, star, lineage, download, delete,
the dashboard only for admins, a 390-px phone viewport, and axe-core (npm) with no serious violations.
Screenshots go to .cache/screenshots/ (docs/screenshots/ with UPDATE_SCREENSHOTS=1). Skips, naming what is missing, without chromium or selenium.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from bot.store import HistoryStore, JobRecord
from tests.fakediscord import FakeDiscord
from tests.web.conftest import CLIENT_SECRET, SESSION_SECRET, make_job

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[2]
# The README's pictures are refreshed with UPDATE_SCREENSHOTS=1; other runs keep theirs in .cache/ (ignored).
SCREENSHOTS = ROOT / ("docs" if os.environ.get("UPDATE_SCREENSHOTS") else ".cache") / "screenshots"
AXE = ROOT / ".cache" / "npm" / "node_modules" / "axe-core" / "axe.min.js"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

try:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
except ImportError:  # pragma: no cover - the dev extra brings it
    webdriver = None  # type: ignore[assignment]

if webdriver is None:
    pytest.skip("selenium is not installed (pip install -e '.[dev]')", allow_module_level=True)
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "Debian's chromium and chromium-driver are not installed (scripts/browser-deps.sh installs them)",
        allow_module_level=True,
    )
if not AXE.is_file():
    pytest.skip(
        "axe-core is not installed (scripts/browser-deps.sh installs it from npm)", allow_module_level=True
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Browser:
    """A Chrome driver whose blocking calls run off the event loop (the fake Discord lives on it)."""

    def __init__(self, base: str) -> None:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM  # type: ignore[assignment]
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-proxy-server",
            "--window-size=1280,900",
        ):
            options.add_argument(arg)
        service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
        self.driver = webdriver.Chrome(options=options, service=service)
        self.base = base

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def get(self, path: str) -> None:
        await self.call(self.driver.get, self.base + path)

    async def click(self, css: str) -> None:
        await self.call(lambda: self.driver.find_element(By.CSS_SELECTOR, css).click())

    async def text(self) -> str:
        return str(await self.call(lambda: self.driver.find_element(By.TAG_NAME, "body").text))

    async def source(self) -> str:
        return str(await self.call(lambda: self.driver.page_source))

    async def path(self) -> str:
        url = str(await self.call(lambda: self.driver.current_url))
        return url.removeprefix(self.base)

    async def shot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await self.call(self.driver.save_screenshot, str(SCREENSHOTS / name))

    async def axe_serious(self) -> list[str]:
        """axe-core's serious and critical violations on the current page (ids and a target each)."""
        script = AXE.read_text(encoding="utf-8")
        await self.call(self.driver.execute_script, script)
        result = await self.call(
            self.driver.execute_async_script,
            "const done = arguments[arguments.length - 1];"
            "axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations));",
        )
        return [
            f"{v['id']}: {v['nodes'][0]['target']}"
            for v in result
            if v.get("impact") in ("serious", "critical")
        ]

    async def wait_for(self, check: Callable[[], Any], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not await self.call(check):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out on {self.driver.current_url}")
            await asyncio.sleep(0.1)

    def quit(self) -> None:
        self.driver.quit()


class World:
    def __init__(self, fake: FakeDiscord, store: HistoryStore, data: Path, base: str) -> None:
        self.fake, self.store, self.data, self.base = fake, store, data, base
        self.jobs: dict[str, JobRecord] = {}


@pytest_asyncio.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    data = tmp_path / "data"
    async with FakeDiscord() as fake, HistoryStore(data / "history.sqlite3") as store:
        fake.oauth.client_secret = CLIENT_SECRET
        images = data / "generated_images"
        alice, bob = fake.alice_id, fake.bob_id
        w = World(fake, store, data, "")
        j = w.jobs
        j["castle"] = await make_job(
            store,
            images,
            user_id=alice,
            guild_id=fake.guild_id,
            seed_text="castle in the clouds",
            count=4,
            width=256,
            height=256,
        )
        j["upscale"] = await make_job(
            store,
            images,
            user_id=alice,
            guild_id=fake.guild_id,
            seed_text="castle in the clouds",
            parent_id=j["castle"].id,
            action="upscale-subtle",
            source_tile=2,
            count=1,
            width=256,
            height=256,
        )
        j["private"] = await make_job(
            store,
            images,
            user_id=alice,
            guild_id=fake.guild_id,
            seed_text="secret garden",
            private=True,
            width=256,
            height=256,
        )
        j["forest"] = await make_job(
            store,
            images,
            user_id=alice,
            guild_id=fake.guild_id,
            seed_text="misty forest",
            nsfw=(1,),
            width=256,
            height=144,
        )
        j["bob"] = await make_job(
            store,
            images,
            user_id=bob,
            guild_id=fake.guild_id,
            seed_text="bob's lighthouse",
            width=256,
            height=256,
        )
        port, metrics_port = _free_port(), _free_port()
        w.base = f"http://127.0.0.1:{port}"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("IMAGINE_", "DISCORD_"))},
            "IMAGINE_DATA_DIR": str(data),
            "IMAGINE_WEB_BIND": f"127.0.0.1:{port}",
            "IMAGINE_WEB_URL": w.base,
            "IMAGINE_WEB_METRICS_BIND": f"127.0.0.1:{metrics_port}",
            "IMAGINE_WEB_CLIENT_ID": fake.oauth.client_id,
            "IMAGINE_WEB_SESSION_SECRET": SESSION_SECRET,
            "IMAGINE_WEB_DISCORD_URL": fake.base_url,
            "IMAGINE_WEB_ADMINS": str(fake.owner_id),
        }
        secret_file = tmp_path / "client-secret"
        secret_file.write_text(CLIENT_SECRET + "\n")
        env["IMAGINE_WEB_CLIENT_SECRET_FILE"] = str(secret_file)
        log_path = tmp_path / "web.log"
        with log_path.open("w") as log_file:
            server = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "web", cwd=tmp_path, env=env, stderr=log_file
            )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                except OSError:
                    if server.returncode is not None or time.monotonic() > deadline:
                        raise AssertionError(f"bot web did not start: {log_path.read_text()}") from None
                    await asyncio.sleep(0.2)
            w.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"  # type: ignore[attr-defined]
            yield w
        finally:
            server.terminate()
            try:
                await asyncio.wait_for(server.wait(), 10)
            except TimeoutError:
                server.kill()
                await server.wait()
        # The secrets never reach the server's log.
        log_text = log_path.read_text()
        assert CLIENT_SECRET not in log_text and SESSION_SECRET not in log_text


async def test_gallery_in_a_real_browser(world: World) -> None:
    fake, jobs = world.fake, world.jobs
    browser = await asyncio.to_thread(Browser, world.base)
    try:
        # -- the login page, keyboard first: the skip link, then the login button
        await browser.get("/")
        assert await browser.axe_serious() == [], await browser.source()
        await browser.shot("login.png")
        fake.oauth.login_as = fake.alice_id
        await browser.click("a.button")
        await browser.wait_for(lambda: browser.driver.current_url.endswith("/mine"))
        # -- own images: every tile of hers, the private one too; flagged one blurred
        source = await browser.source()
        for key in ("castle", "upscale", "private", "forest"):
            assert f"/job/{jobs[key].id}" in source, key
        assert f"/job/{jobs['bob'].id}" not in source
        assert "Flagged image (blurred)" in source
        await browser.wait_for(
            lambda: browser.driver.execute_script(
                "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"
            )
        )
        assert await browser.axe_serious() == [], "gallery page"
        await browser.shot("gallery.png")
        # -- keyboard: Tab reaches the skip link first, then the nav; search with Enter
        await browser.call(lambda: browser.driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB))
        active = await browser.call(lambda: browser.driver.switch_to.active_element.get_attribute("class"))
        assert active == "skip"
        box = await browser.call(lambda: browser.driver.find_element(By.ID, "q"))
        await browser.call(box.send_keys, "castle -clouds")
        await browser.call(box.send_keys, Keys.ENTER)
        await browser.wait_for(lambda: "q=castle" in browser.driver.current_url)
        assert f"/job/{jobs['castle'].id}" not in await browser.source()
        await browser.get("/mine?q=castle%20action%3Aupscale")
        source = await browser.source()
        assert f"/job/{jobs['upscale'].id}" in source and f'/job/{jobs["castle"].id}"' not in source
        # -- the job page: star (JavaScript, in place), lineage links, downloads, commands
        await browser.get(f"/job/{jobs['castle'].id}")
        assert await browser.axe_serious() == [], "job page"
        await browser.click("#tile-1 form.like button")
        await browser.wait_for(
            lambda: (
                browser.driver.find_element(By.CSS_SELECTOR, "#tile-1 form.like button").get_attribute(
                    "aria-pressed"
                )
                == "true"
            )
        )
        await browser.shot("job.png")
        await browser.click(f'a[href="/job/{jobs["upscale"].id}"]')
        await browser.wait_for(lambda: jobs["upscale"].id in browser.driver.current_url)
        assert f'href="/job/{jobs["castle"].id}"' in await browser.source()
        zip_href = await browser.call(
            lambda: browser.driver.find_element(By.CSS_SELECTOR, 'a[href$=".zip"]').get_attribute("href")
        )
        assert zip_href.endswith(f"/zip/{jobs['upscale'].id}.zip")
        await browser.get("/mine?q=liked")
        assert f"/job/{jobs['castle'].id}" in await browser.source()
        # -- delete own job (confirm dialog), as /forget: gone from the grid and from disk
        await browser.get(f"/job/{jobs['forest'].id}")
        await browser.click("form.delete button")
        await browser.call(lambda: browser.driver.switch_to.alert.accept())
        await browser.wait_for(lambda: browser.driver.current_url.endswith("/mine"))
        assert f"/job/{jobs['forest'].id}" not in await browser.source()
        assert not (world.data / "generated_images" / jobs["forest"].id).exists()
        # -- a phone: 390 px wide, nothing wider than the screen
        await browser.call(browser.driver.set_window_size, 390, 844)
        await browser.get("/mine")
        width = await browser.call(
            lambda: browser.driver.execute_script("return document.documentElement.scrollWidth")
        )
        assert width <= 390
        await browser.shot("gallery-phone.png")
        await browser.get(f"/job/{jobs['castle'].id}")
        width = await browser.call(
            lambda: browser.driver.execute_script("return document.documentElement.scrollWidth")
        )
        assert width <= 390
        await browser.call(browser.driver.set_window_size, 1280, 900)
        # -- log out; bob's feed: alice's public results, never her private one; no dashboard
        await browser.get("/mine")
        await browser.click("form.logout button")
        await browser.wait_for(lambda: browser.driver.current_url.rstrip("/") == world.base)
        fake.oauth.login_as = fake.bob_id
        await browser.get("/login?next=/feed")
        await browser.wait_for(lambda: browser.driver.current_url.endswith("/feed"))
        source = await browser.source()
        assert f"/job/{jobs['castle'].id}" in source and f"/job/{jobs['bob'].id}" in source
        assert f"/job/{jobs['private'].id}" not in source
        await browser.shot("feed.png")
        await browser.get(f"/job/{jobs['private'].id}")
        assert "no such job" in await browser.text()
        await browser.get("/admin")
        assert "no such page" in await browser.text()
        # -- the operator sees the dashboard
        await browser.click("form.logout button")
        await browser.wait_for(lambda: browser.driver.current_url.rstrip("/") == world.base)
        fake.oauth.login_as = fake.owner_id
        await browser.get("/login?next=/admin")
        await browser.wait_for(lambda: browser.driver.current_url.endswith("/admin"))
        assert "Operator dashboard" in await browser.text()
        await browser.shot("dashboard.png")
        # -- and Prometheus reads /metrics from `bot web`'s second address
        async with aiohttp.ClientSession() as http, http.get(world.metrics_url) as response:  # type: ignore[attr-defined]
            assert 'imagine_jobs{status="done"} 4.0' in await response.text()
    finally:
        await asyncio.to_thread(browser.quit)
