"""Discord's OAuth2 side for the fake Discord: /oauth2/authorize, /api/oauth2/token, and /api/users/@me and
/api/users/@me/guilds with a Bearer token (the web gallery's login). Mounted by FakeDiscord.

The authorize page approves at once as `login_as` (a test or a browser test sets who "clicks Authorize");
None answers `error=access_denied`, as when the member presses Cancel.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from aiohttp import BasicAuth, web

if TYPE_CHECKING:
    from tests.fakediscord import FakeDiscord


@dataclass
class _Grant:
    user_id: int
    challenge: str
    redirect_uri: str
    client_id: str
    used: bool = False


@dataclass
class FakeOAuth:
    fake: FakeDiscord
    client_id: str = "fake-client-id"
    client_secret: str = "fake-client-secret"
    login_as: int | None = None
    #: servers other than the fake's one guild, per user: [{"id", "name", "permissions", "owner"}]
    extra_guilds: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    grants: dict[str, _Grant] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    token_requests: int = 0
    guild_requests: int = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/oauth2/authorize", self.authorize)
        app.router.add_post("/api/oauth2/token", self.token)
        app.router.add_post("/api/v10/oauth2/token", self.token)

    def revoke(self, user_id: int) -> None:
        self.tokens = {t: u for t, u in self.tokens.items() if u != user_id}

    async def authorize(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        redirect_uri = q.get("redirect_uri", "")
        if q.get("client_id") != self.client_id or not redirect_uri:
            return web.Response(status=400, text="invalid client_id or redirect_uri")
        if q.get("response_type") != "code" or set(q.get("scope", "").split()) != {"identify", "guilds"}:
            return web.Response(status=400, text="invalid response_type or scope")
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return web.Response(status=400, text="PKCE S256 required by this fake")
        state = q.get("state", "")
        if self.login_as is None:
            raise web.HTTPFound(f"{redirect_uri}?{urlencode({'error': 'access_denied', 'state': state})}")
        code = secrets.token_urlsafe(16)
        self.grants[code] = _Grant(self.login_as, q["code_challenge"], redirect_uri, self.client_id)
        raise web.HTTPFound(f"{redirect_uri}?{urlencode({'code': code, 'state': state})}")

    async def token(self, request: web.Request) -> web.StreamResponse:
        self.token_requests += 1
        form = await request.post()
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        header = request.headers.get("Authorization")
        if header:
            basic = BasicAuth.decode(header)  # the server side of Basic: not deprecated
            client_id, client_secret = basic.login, basic.password
        if client_id != self.client_id or client_secret != self.client_secret:
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") != "authorization_code":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        grant = self.grants.get(str(form.get("code")))
        if grant is None or grant.used or grant.redirect_uri != form.get("redirect_uri"):
            return web.json_response({"error": "invalid_grant"}, status=400)
        grant.used = True
        verifier = str(form.get("code_verifier") or "")
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if digest != grant.challenge:
            return web.json_response({"error": "invalid_grant", "error_description": "PKCE"}, status=400)
        access = secrets.token_urlsafe(24)
        self.tokens[access] = grant.user_id
        return web.json_response(
            {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": 604800,
                "refresh_token": secrets.token_urlsafe(24),
                "scope": "identify guilds",
            }
        )

    def bearer_user(self, request: web.Request) -> int | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return None
        return self.tokens.get(header.removeprefix("Bearer "), -1)

    def answer(self, sub: str, user_id: int) -> web.Response:
        """GET /users/@me or /users/@me/guilds for a Bearer token's user (-1: an unknown token)."""
        if user_id == -1 or user_id not in self.fake.users:
            return web.json_response({"message": "401: Unauthorized", "code": 0}, status=401)
        if sub == "/users/@me":
            return web.json_response(self.fake.users[user_id].payload())
        self.guild_requests += 1
        guilds: list[dict[str, Any]] = []
        member = self.fake.members.get(user_id)
        if member is not None:
            guilds.append(
                {
                    "id": str(self.fake.guild_id),
                    "name": self.fake.guild_name,
                    "icon": None,
                    "owner": user_id == self.fake.owner_id,
                    "permissions": str(member.permissions),
                    "features": [],
                }
            )
        for extra in self.extra_guilds.get(user_id, []):
            guilds.append(
                {
                    "id": str(extra["id"]),
                    "name": extra.get("name", "Other"),
                    "icon": None,
                    "owner": bool(extra.get("owner", False)),
                    "permissions": str(extra.get("permissions", 0)),
                    "features": [],
                }
            )
        return web.json_response(guilds)
