"""The gallery's features against real SQLite and the fake Discord: grids, search, likes, lineage, downloads,
delete (as /forget), managers, the operator dashboard and /metrics."""

from __future__ import annotations

import io
import itertools
import sqlite3
import zipfile
from pathlib import Path

import pytest

from bot.policy import in_server_feed
from bot.store import MIGRATIONS, HistoryStore, _statements
from bot.web.metrics import render_metrics
from bot.web.queries import Viewer
from bot.web.routes import CTX
from bot.web.search import parse_search
from tests.web.conftest import Gallery, csrf_of, login

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.mark.parametrize("dense", [False, True], ids=["from-the-index", "walk-newest-first"])
async def test_search_and_filters(gallery: Gallery, dense: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if dense:  # the plan for common words (more than _DENSE_HITS matches)
        monkeypatch.setattr("bot.web.queries._DENSE_HITS", 1)
    fake = gallery.fake
    alice = fake.alice_id
    castle = await gallery.job(user_id=alice, guild_id=fake.guild_id, seed_text="castle at noon")
    night = await gallery.job(user_id=alice, guild_id=fake.guild_id, seed_text="castle", negative="night")
    wide = await gallery.job(
        user_id=alice, guild_id=fake.guild_id, seed_text="wide castle", width=128, height=72
    )
    failed = await gallery.job(
        user_id=alice, guild_id=fake.guild_id, seed_text="broken castle", status="failed"
    )
    forest = await gallery.job(user_id=alice, guild_id=fake.guild_id, seed_text="forest")
    client = await gallery.client()
    await login(client, fake, alice)

    async def found(q: str) -> set[str]:
        page = await (await client.get("/mine", params={"q": q})).text()
        return {j.id for j in (castle, night, wide, failed, forest) if f"/job/{j.id}" in page}

    assert await found("castle") == {castle.id, night.id, wide.id, failed.id}
    assert await found("castle -night") == {castle.id, wide.id, failed.id}
    assert await found("detailed painting") == {castle.id, night.id, wide.id, forest.id}  # the prompts
    assert await found(str(forest.job_seed)) == {forest.id}  # the seed
    assert await found("aspect:16:9") == {wide.id}
    assert await found("status:failed") == {failed.id}
    assert await found("castle before:2000-01-01") == set()
    assert await found("server:1") == set()
    token = csrf_of(await (await client.get(f"/job/{forest.id}")).text())
    await client.post(f"/job/{forest.id}/like/2", data={"csrf": token})
    assert await found("liked") == {forest.id}
    page = await (await client.get("/mine", params={"q": "aspect:wide"})).text()
    assert "`aspect:` needs W:H" in page.replace("&#96;", "`")


async def test_search_index_follows_the_store(gallery: Gallery) -> None:
    fake = gallery.fake
    job = await gallery.job(user_id=fake.alice_id, guild_id=fake.guild_id, seed_text="lighthouse")
    queries = gallery.app[CTX].queries
    viewer = Viewer(fake.alice_id, "alice", frozenset(), frozenset())
    items, _ = await queries.grid(viewer, scope="mine", query=parse_search("lighthouse"), page=0)
    assert {i.job_id for i in items} == {job.id}
    await gallery.store.delete_jobs([job.id])
    assert (await gallery.store.read("SELECT COUNT(*) FROM job_search"))[0][0] == 0
    assert (await gallery.store.read("SELECT COUNT(*) FROM job_search_ids"))[0][0] == 0


async def test_migration_indexes_existing_rows(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    conn = sqlite3.connect(path)
    for script in MIGRATIONS[:4]:
        for statement in _statements(script):
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 4")
    conn.execute(
        """INSERT INTO jobs (id, status, seed_text, negative, count, steps, guidance, width, height, job_seed,
            expand, user_id, guild_id, created_at) VALUES ('aaaaaaaaaa', 'done', 'old harbour', 'fog', 1, 2, 7.5,
            64, 64, 77, 1, 5, 6, 1.0)"""
    )
    conn.execute(
        "INSERT INTO tiles (job_id, idx, prompt, image_seed) VALUES ('aaaaaaaaaa', 0, 'boats at dawn', 31337)"
    )
    conn.commit()
    conn.close()
    async with HistoryStore(path) as store:
        for term in ("harbour", "fog", "boats", "31337", "77"):
            rows = await store.read(
                "SELECT m.job_id FROM job_search s JOIN job_search_ids m ON m.rowid = s.rowid WHERE job_search MATCH ?",
                (f'"{term}"',),
            )
            assert [r[0] for r in rows] == ["aaaaaaaaaa"], term


async def test_feed_rule_in_sql_matches_the_policy(gallery: Gallery) -> None:
    fake = gallery.fake
    jobs = []
    for private, safe, delivered, guild, owner in itertools.product(
        (False, True), (False, True), (False, True), (fake.guild_id, 777), (fake.alice_id, fake.bob_id)
    ):
        jobs.append(
            await gallery.job(
                user_id=owner, guild_id=guild, private=private, safe_mode=safe, delivered=delivered, count=1
            )
        )
    jobs.append(await gallery.job(user_id=fake.alice_id, guild_id=fake.guild_id, status="failed"))
    member_of = frozenset({fake.guild_id})
    viewer = Viewer(fake.bob_id, "bob", member_of, frozenset())
    items, _ = await gallery.app[CTX].queries.grid(viewer, scope="feed", query=parse_search(""), page=0)
    expected = {j.id for j in jobs if in_server_feed(j, viewer_id=fake.bob_id, member_of=member_of)}
    assert {i.job_id for i in items} == expected and expected


async def test_job_page_lineage_downloads_and_commands(gallery: Gallery) -> None:
    fake = gallery.fake
    parent = await gallery.job(user_id=fake.alice_id, guild_id=fake.guild_id, seed_text="red fox")
    child = await gallery.job(
        user_id=fake.alice_id,
        guild_id=fake.guild_id,
        seed_text="red fox",
        parent_id=parent.id,
        action="upscale-subtle",
        source_tile=1,
        count=1,
    )
    client = await gallery.client()
    await login(client, fake, fake.alice_id)
    page = await (await client.get(f"/job/{parent.id}")).text()
    assert f'href="/job/{child.id}"' in page and "of image 1" in page
    assert f"python -m bot rerun {parent.id}" in page
    assert f"/imagine seed:red fox seed_number:{parent.job_seed}" in page
    child_page = await (await client.get(f"/job/{child.id}")).text()
    assert f'href="/job/{parent.id}"' in child_page
    response = await client.get(f"/file/{parent.id}/2.png", params={"download": "1"})
    assert response.status == 200 and (await response.read()).startswith(b"\x89PNG")
    assert "attachment" in response.headers["Content-Disposition"]
    archive = zipfile.ZipFile(io.BytesIO(await (await client.get(f"/zip/{parent.id}.zip")).read()))
    assert sorted(archive.namelist()) == sorted(
        [f"{parent.id}-grid.png", f"{parent.id}-1.png", f"{parent.id}-2.png", f"{parent.id}-recipe.txt"]
    )


async def test_thumbnails_small_cached_and_blurred(gallery: Gallery) -> None:
    fake = gallery.fake
    job = await gallery.job(user_id=fake.alice_id, guild_id=fake.guild_id, nsfw=(1,), width=512, height=512)
    client = await gallery.client()
    await login(client, fake, fake.alice_id)
    for idx in (1, 2):
        response = await client.get(f"/thumb/{job.id}/{idx}.webp")
        body = await response.read()
        assert response.status == 200 and body[8:12] == b"WEBP" and len(body) <= 15 * 1024
    cache = gallery.settings.data_dir / "web-thumbnails" / job.id
    assert sorted(p.name for p in cache.iterdir()) == ["1-blur.webp", "2.webp"]
    page = await (await client.get("/mine")).text()
    assert 'loading="lazy"' in page and "Flagged image (blurred)" in page


async def test_delete_own_job_like_forget(gallery: Gallery) -> None:
    fake = gallery.fake
    job = await gallery.job(user_id=fake.alice_id, guild_id=fake.guild_id)
    other = await gallery.job(user_id=fake.alice_id, guild_id=fake.guild_id)
    client = await gallery.client()
    await login(client, fake, fake.alice_id)
    await client.get(f"/thumb/{job.id}/1.webp")
    token = csrf_of(await (await client.get(f"/job/{job.id}")).text())
    response = await client.post(f"/job/{job.id}/delete", data={"csrf": token}, allow_redirects=False)
    assert response.status == 303
    assert await gallery.store.get_job(job.id) is None
    assert not (gallery.images_dir / job.id).exists()
    assert not (gallery.settings.data_dir / "web-thumbnails" / job.id).exists()
    assert (gallery.images_dir / other.id).exists()
    # bob may see alice's public job but not delete it
    bob = await gallery.client()
    await login(bob, fake, fake.bob_id)
    token = csrf_of(await (await bob.get(f"/job/{other.id}")).text())
    response = await bob.post(f"/job/{other.id}/delete", data={"csrf": token}, allow_redirects=False)
    assert response.status == 403
    assert await gallery.store.get_job(other.id) is not None


async def test_manager_sees_and_deletes_every_job(gallery: Gallery) -> None:
    fake = gallery.fake
    failed = await gallery.job(user_id=fake.alice_id, guild_id=fake.guild_id, status="failed")
    queued = await gallery.job(user_id=fake.alice_id, guild_id=fake.guild_id, status="queued")
    private = await gallery.job(user_id=fake.alice_id, guild_id=fake.guild_id, private=True)
    mod = await gallery.client()
    await login(mod, fake, fake.mod_id)
    page = await (await mod.get(f"/server/{fake.guild_id}")).text()
    assert all(j.id in page for j in (failed, queued, private))
    job_page = await (await mod.get(f"/job/{failed.id}")).text()
    assert "the GPU ran out of memory" in job_page and "Delete job" in job_page
    token = csrf_of(page)
    response = await mod.post(f"/job/{private.id}/delete", data={"csrf": token}, allow_redirects=False)
    assert response.status == 303 and await gallery.store.get_job(private.id) is None
    response = await mod.post(f"/job/{queued.id}/delete", data={"csrf": token}, allow_redirects=False)
    assert response.status == 409 and await gallery.store.get_job(queued.id) is not None  # still pending
    bob = await gallery.client()
    await login(bob, fake, fake.bob_id)
    assert (await bob.get(f"/server/{fake.guild_id}")).status == 404


async def test_dashboard_for_admins_only_and_metrics(gallery: Gallery) -> None:
    fake = gallery.fake
    await gallery.job(user_id=fake.alice_id, guild_id=fake.guild_id)
    await gallery.job(user_id=fake.alice_id, guild_id=fake.guild_id, status="failed")
    alice = await gallery.client()
    await login(alice, fake, fake.alice_id)
    assert (await alice.get("/admin")).status == 404
    owner = await gallery.client()
    await login(owner, fake, fake.owner_id)
    page = await (await owner.get("/admin")).text()
    assert "the GPU ran out of memory" in page and "Operator dashboard" in page
    text = (await render_metrics(gallery.store, gallery.settings.heartbeat_path)).decode()
    assert 'imagine_jobs{status="done"} 1.0' in text and 'imagine_jobs{status="failed"} 1.0' in text
    assert 'imagine_render_seconds_bucket{le="+Inf"} 1.0' in text
    assert "imagine_queue_wait_seconds_count 1.0" in text
    assert "imagine_bot_up 0.0" in text
