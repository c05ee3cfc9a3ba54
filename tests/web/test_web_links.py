"""The bot links to the web gallery when IMAGINE_WEB_URL is set: result embeds, /history's list and job."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.messages import history_page_embed, job_detail_embed, result_embed
from bot.store import HistoryStore
from tests.web.conftest import make_job

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_embeds_link_to_the_job_page(tmp_path: Path) -> None:
    async with HistoryStore(tmp_path / "h.sqlite3") as store:
        job = await make_job(store, tmp_path / "images", user_id=1, guild_id=2)
    url = "https://gallery.example"
    assert result_embed(job, filename="x.png", web_url=url).url == f"{url}/job/{job.id}"
    assert job_detail_embed(job, thumbnail=None, web_url=url).url == f"{url}/job/{job.id}"
    page = history_page_embed([job], page=0, pages=1, total=1, whose="you", web_url=url)
    assert f"[open]({url}/job/{job.id})" in (page.description or "") and page.url == f"{url}/mine"
    # Without IMAGINE_WEB_URL nothing changes.
    assert result_embed(job, filename="x.png").url is None
    assert "[open]" not in (
        history_page_embed([job], page=0, pages=1, total=1, whose="you").description or ""
    )
