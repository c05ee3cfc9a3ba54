"""Issue 18's Security list, one test each, with aiohttp's test client against real SQLite and the fake
Discord's OAuth2 endpoints."""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

import pytest

from bot.web.auth import SESSION_COOKIE
from bot.web.routes import CTX
from tests.web.conftest import CLIENT_SECRET, OTHER_GUILD, SESSION_SECRET, Gallery, csrf_of, login

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_no_session_no_images(gallery: Gallery) -> None:
    job = await gallery.job(user_id=gallery.fake.alice_id, guild_id=gallery.fake.guild_id)
    client = await gallery.client()
    response = await client.get("/mine", allow_redirects=False)
    assert response.status == 302 and response.headers["Location"].startswith("/?next=")
    for url in (
        f"/thumb/{job.id}/1.webp",
        f"/file/{job.id}/1.png",
        f"/file/{job.id}/grid.png",
        f"/zip/{job.id}.zip",
    ):
        response = await client.get(url, allow_redirects=False)
        assert response.status == 401, url
    response = await client.get(f"/job/{job.id}", allow_redirects=False)
    assert response.status == 302


async def test_login_makes_a_new_session_id(gallery: Gallery) -> None:
    fake = gallery.fake
    attacker = await gallery.client()
    await login(attacker, fake, fake.bob_id)
    planted = attacker.session.cookie_jar.filter_cookies(attacker.make_url("/"))[SESSION_COOKIE].value
    victim = await gallery.client()
    victim.session.cookie_jar.update_cookies({SESSION_COOKIE: planted}, victim.make_url("/"))
    await login(victim, fake, fake.alice_id)
    after = victim.session.cookie_jar.filter_cookies(victim.make_url("/"))[SESSION_COOKIE].value
    assert after != planted
    # The planted id is gone: the attacker is logged out rather than sharing the victim's session.
    response = await attacker.get("/mine", allow_redirects=False)
    assert response.status == 302
    page = await (await victim.get("/mine")).text()
    assert "alice" in page


async def test_session_cookie_flags(gallery: Gallery) -> None:
    client = await gallery.client()
    fake = gallery.fake
    fake.oauth.login_as = fake.alice_id
    response = await client.get("/login", allow_redirects=False)
    login_cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in login_cookie and "SameSite=Lax" in login_cookie
    async with client.session.get(response.headers["Location"], allow_redirects=False) as answer:
        back = urlsplit(answer.headers["Location"])
    response = await client.get(f"{back.path}?{back.query}", allow_redirects=False)
    cookie = next(v for v in response.headers.getall("Set-Cookie") if v.startswith(SESSION_COOKIE))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # IMAGINE_WEB_URL unset: plain http on loopback


async def test_authorize_url_has_state_and_pkce(gallery: Gallery) -> None:
    client = await gallery.client()
    response = await client.get("/login", allow_redirects=False)
    query = parse_qs(urlsplit(response.headers["Location"]).query)
    assert query["scope"] == ["identify guilds"] and query["response_type"] == ["code"]
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) >= 43
    assert len(query["state"][0]) >= 20


async def test_state_mismatch_and_replay_refused(gallery: Gallery) -> None:
    fake = gallery.fake
    client = await gallery.client()
    fake.oauth.login_as = fake.alice_id
    response = await client.get("/login", allow_redirects=False)
    async with client.session.get(response.headers["Location"], allow_redirects=False) as answer:
        back = urlsplit(answer.headers["Location"])
    code = parse_qs(back.query)["code"][0]
    # A state this browser never started (a forged callback) is refused.
    response = await client.get("/callback", params={"code": code, "state": "forged"}, allow_redirects=False)
    assert response.status == 400
    # The genuine callback works once ...
    response = await client.get(f"{back.path}?{back.query}", allow_redirects=False)
    assert response.status == 302
    # ... and a replay of it is refused, even with the login cookie put back.
    other = await gallery.client()
    response = await other.get(f"{back.path}?{back.query}", allow_redirects=False)
    assert response.status == 400
    assert fake.oauth.token_requests == 1


async def test_csrf_token_required(gallery: Gallery) -> None:
    fake = gallery.fake
    job = await gallery.job(user_id=fake.alice_id, guild_id=fake.guild_id)
    client = await gallery.client()
    await login(client, fake, fake.alice_id)
    for url in (f"/job/{job.id}/like/1", f"/job/{job.id}/delete", "/logout"):
        response = await client.post(url, data={}, allow_redirects=False)
        assert response.status == 403, url
        response = await client.post(url, data={"csrf": "wrong"}, allow_redirects=False)
        assert response.status == 403, url
    assert await gallery.store.get_job(job.id) is not None
    token = csrf_of(await (await client.get(f"/job/{job.id}")).text())
    response = await client.post(f"/job/{job.id}/like/1", data={"csrf": token}, allow_redirects=False)
    assert response.status == 303
    assert await gallery.app[CTX].queries.liked_tiles(fake.alice_id, job.id) == {1}


async def test_open_redirect_refused(gallery: Gallery) -> None:
    client = await gallery.client()
    assert await login(client, gallery.fake, gallery.fake.alice_id, "https://evil.example/x") == "/"
    assert await login(client, gallery.fake, gallery.fake.alice_id, "//evil.example/x") == "/"
    assert await login(client, gallery.fake, gallery.fake.alice_id, "/feed?q=castle") == "/feed?q=castle"


async def test_no_idor_and_no_traversal(gallery: Gallery) -> None:
    fake = gallery.fake
    private = await gallery.job(user_id=fake.alice_id, guild_id=fake.guild_id, private=True)
    bob = await gallery.client()
    await login(bob, fake, fake.bob_id)
    missing = "0123456789"
    for job_id in (private.id, missing):
        for url in (
            f"/job/{job_id}",
            f"/thumb/{job_id}/1.webp",
            f"/file/{job_id}/1.png",
            f"/zip/{job_id}.zip",
        ):
            response = await bob.get(url, allow_redirects=False)
            assert response.status == 404, url
    for url in (
        f"/file/{private.id}/../../history.sqlite3",
        f"/file/{private.id}/..%2f..%2fhistory.sqlite3",
        "/static/../history.sqlite3",
        "/static/%2e%2e/%2e%2e/settings.py",
        f"/thumb/{private.id}/../1.webp",
    ):
        response = await bob.get(url, allow_redirects=False)
        assert response.status in (403, 404), url
    # A path in the database that points outside the images folder is never served.
    mine = await gallery.job(user_id=fake.bob_id, guild_id=fake.guild_id)
    async with gallery.store.transaction() as db:
        await db.execute("UPDATE tiles SET path = ? WHERE job_id = ?", (str(gallery.store.path), mine.id))
    response = await bob.get(f"/file/{mine.id}/1.png")
    assert response.status == 404


async def test_feed_privacy(gallery: Gallery) -> None:
    fake = gallery.fake
    gallery.fake.oauth.extra_guilds[fake.alice_id] = [{"id": OTHER_GUILD, "name": "Elsewhere"}]
    public = await gallery.job(user_id=fake.alice_id, guild_id=fake.guild_id, seed_text="public meadow")
    private = await gallery.job(
        user_id=fake.alice_id, guild_id=fake.guild_id, seed_text="private diary", private=True
    )
    unfiltered = await gallery.job(
        user_id=fake.alice_id, guild_id=fake.guild_id, seed_text="unfiltered dusk", safe_mode=False
    )
    elsewhere = await gallery.job(user_id=fake.alice_id, guild_id=OTHER_GUILD, seed_text="other server")
    unposted = await gallery.job(
        user_id=fake.alice_id, guild_id=fake.guild_id, seed_text="never posted", delivered=False
    )
    bob = await gallery.client()
    await login(bob, fake, fake.bob_id)
    feed = await (await bob.get("/feed")).text()
    assert public.id in feed
    for hidden in (private, unfiltered, elsewhere, unposted):
        assert hidden.id not in feed, hidden.seed_text
        assert (await bob.get(f"/job/{hidden.id}")).status == 404
    alice = await gallery.client()
    await login(alice, fake, fake.alice_id)
    mine = await (await alice.get("/mine")).text()
    for job in (public, private, unfiltered, elsewhere, unposted):
        assert job.id in mine
    alice_feed = await (await alice.get("/feed")).text()
    assert elsewhere.id in alice_feed and private.id not in alice_feed


async def test_member_who_left_loses_the_feed(gallery: Gallery) -> None:
    fake = gallery.fake
    public = await gallery.job(user_id=fake.alice_id, guild_id=fake.guild_id)
    bob = await gallery.client()
    await login(bob, fake, fake.bob_id)
    assert public.id in await (await bob.get("/feed")).text()
    del fake.members[fake.bob_id]  # bob leaves the server; the gallery refreshes his servers
    assert public.id not in await (await bob.get("/feed")).text()
    assert (await bob.get(f"/job/{public.id}")).status == 404


async def test_security_headers(gallery: Gallery) -> None:
    client = await gallery.client()
    for url in ("/", "/nope", "/static/app.css"):
        response = await client.get(url)
        assert "default-src 'self'" in response.headers["Content-Security-Policy"], url
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"


async def test_login_rate_limited(gallery: Gallery) -> None:
    from bot.web.app import build_app

    gallery.app = build_app(gallery.settings, gallery.store, login_limit=5)
    client = await gallery.client()
    statuses = [(await client.get("/login", allow_redirects=False)).status for _ in range(7)]
    assert statuses[:5] == [302] * 5 and statuses[5:] == [429, 429]


async def test_secrets_never_shown_or_logged(gallery: Gallery, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake = gallery.fake
    job = await gallery.job(user_id=fake.alice_id, guild_id=fake.guild_id)
    client = await gallery.client()
    await login(client, fake, fake.owner_id)
    bodies = [await (await client.get(url)).text() for url in ("/mine", "/feed", f"/job/{job.id}", "/admin")]
    # A refused token exchange (wrong secret on Discord's side) shows and logs no secret either.
    fake.oauth.client_secret = "rotated"
    other = await gallery.client()
    fake.oauth.login_as = fake.alice_id
    response = await other.get("/login", allow_redirects=False)
    async with other.session.get(response.headers["Location"], allow_redirects=False) as answer:
        back = urlsplit(answer.headers["Location"])
    response = await other.get(f"{back.path}?{back.query}")
    assert response.status == 400
    bodies.append(await response.text())
    for secret in (CLIENT_SECRET, SESSION_SECRET, fake.token):
        for body in bodies:
            assert secret not in body
        assert secret not in caplog.text


async def test_public_url_decides_secure_cookies_and_redirect_uri(gallery: Gallery) -> None:
    from bot.web.app import build_app
    from tests.web.conftest import web_settings

    settings = web_settings(gallery.settings.data_dir, gallery.fake, web_url="https://gallery.example")
    gallery.app = build_app(settings, gallery.store)
    client = await gallery.client()
    response = await client.get("/login", allow_redirects=False)
    query = parse_qs(urlsplit(response.headers["Location"]).query)
    assert query["redirect_uri"] == ["https://gallery.example/callback"]
    assert "Secure" in response.headers["Set-Cookie"]
    gallery.fake.oauth.login_as = gallery.fake.alice_id
    async with client.session.get(response.headers["Location"], allow_redirects=False) as answer:
        back = urlsplit(answer.headers["Location"])
    assert back.netloc == "gallery.example"
    # The login cookie is Secure, so this plain-http test client does not send it back: put it back by hand.
    login_cookie = response.cookies["imagine_login"].value
    response = await client.get(
        f"{back.path}?{back.query}",
        allow_redirects=False,
        headers={"Cookie": f"imagine_login={login_cookie}"},
    )
    cookie = next(v for v in response.headers.getall("Set-Cookie") if v.startswith(SESSION_COOKIE))
    assert "Secure" in cookie and "HttpOnly" in cookie
