"""Logging in with Discord (OAuth2 authorization code + state + PKCE), sessions, CSRF and the login rate limit.

The session cookie carries only a random session id, signed with itsdangerous (IMAGINE_WEB_SESSION_SECRET);
the session itself (the member's servers, their Discord access token, the CSRF token) stays in this process.
A new id is made at every login (no fixation); logging out forgets it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
from itsdangerous import BadSignature, URLSafeTimedSerializer

from bot.web.queries import Viewer

log = logging.getLogger(__name__)

SESSION_COOKIE = "imagine_session"
LOGIN_COOKIE = "imagine_login"
SESSION_MAX_AGE = 7 * 24 * 3600
LOGIN_MAX_AGE = 600
SCOPES = "identify guilds"
# Discord permission bits: Manage Server, Administrator.
MANAGE_GUILD = 1 << 5
ADMINISTRATOR = 1 << 3


class LoginFailed(Exception):
    """The OAuth2 round trip failed; the message is safe to show (never a token or secret)."""


@dataclass
class Session:
    """One logged-in browser."""

    id: str
    user_id: int
    name: str
    member_of: frozenset[int]
    manages: frozenset[int]
    access_token: str = field(repr=False)
    csrf: str
    created_at: float
    refreshed_at: float
    server_names: dict[int, str] = field(default_factory=dict)

    def viewer(self, admins: frozenset[int]) -> Viewer:
        return Viewer(
            self.user_id, self.name, self.member_of, self.manages, self.user_id in admins, self.server_names
        )


@dataclass(frozen=True)
class PendingLogin:
    verifier: str
    next_path: str
    created_at: float


def safe_next(value: str | None) -> str:
    """`next=` only to one of our own paths: `/x…`, never `//host`, `/\\host`, a scheme or a control char."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    if any(ord(c) < 32 or c == "\\" for c in value):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge), RFC 7636."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class RateLimiter:
    """At most `limit` events per `window` seconds per key (the login endpoints, per client address)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._events: dict[str, deque[float]] = {}

    def allow(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        events = self._events.setdefault(key, deque())
        while events and now - events[0] > self.window:
            events.popleft()
        if len(events) >= self.limit:
            return False
        events.append(now)
        if len(self._events) > 10_000:  # forget idle addresses
            self._events = {k: v for k, v in self._events.items() if v and now - v[-1] <= self.window}
        return True


class Auth:
    """OAuth2 against Discord (its base URL a setting, so tests use the fake) and the session table."""

    def __init__(
        self,
        *,
        discord_url: str,
        client_id: str,
        client_secret: str,
        session_secret: str,
        redirect_uri: str,
        secure_cookies: bool,
        refresh_seconds: float = 300.0,
    ) -> None:
        self.discord_url = discord_url.rstrip("/")
        self.client_id = client_id
        self._client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.secure_cookies = secure_cookies
        self.refresh_seconds = refresh_seconds
        self._signer = URLSafeTimedSerializer(session_secret, salt="imagine-web-session")
        self._login_signer = URLSafeTimedSerializer(session_secret, salt="imagine-web-login")
        self._sessions: dict[str, Session] = {}
        self._pending: dict[str, PendingLogin] = {}
        self._http: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        return self._http

    # -- the round trip ------------------------------------------------------------------------------
    def begin_login(self, next_path: str) -> tuple[str, str]:
        """(Discord's authorize URL, the signed value of the login cookie that binds `state` to this browser)."""
        now = time.time()
        self._pending = {k: v for k, v in self._pending.items() if now - v.created_at < LOGIN_MAX_AGE}
        state = secrets.token_urlsafe(24)
        verifier, challenge = pkce_pair()
        self._pending[state] = PendingLogin(verifier, safe_next(next_path), now)
        query = urlencode(
            {
                "client_id": self.client_id,
                "response_type": "code",
                "redirect_uri": self.redirect_uri,
                "scope": SCOPES,
                "state": state,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        return f"{self.discord_url}/oauth2/authorize?{query}", self._login_signer.dumps(state)

    async def finish_login(self, *, code: str, state: str, login_cookie: str | None) -> tuple[Session, str]:
        """Check `state` (this browser's, used once), trade the code (with the PKCE verifier), read the member
        and their servers; a new session with a new id. Returns it and the `next` path."""
        if not login_cookie:
            raise LoginFailed("the login took too long or cookies are off; please log in again")
        try:
            cookie_state = self._login_signer.loads(login_cookie, max_age=LOGIN_MAX_AGE)
        except BadSignature:
            raise LoginFailed("the login took too long or cookies are off; please log in again") from None
        if not isinstance(cookie_state, str) or not hmac.compare_digest(cookie_state, state):
            raise LoginFailed("this login link belongs to another browser; please log in again")
        pending = self._pending.pop(state, None)  # used once: a replayed callback finds nothing
        if pending is None or time.time() - pending.created_at > LOGIN_MAX_AGE:
            raise LoginFailed("this login link was already used or has expired; please log in again")
        token = await self._exchange_code(code, pending.verifier)
        user = await self._api(token, "/api/users/@me")
        member_of, manages, names = await self._guilds(token)
        now = time.time()
        session = Session(
            id=secrets.token_urlsafe(32),
            user_id=int(user["id"]),
            name=str(user.get("global_name") or user.get("username") or user["id"]),
            member_of=member_of,
            manages=manages,
            access_token=token,
            csrf=secrets.token_urlsafe(32),
            created_at=now,
            refreshed_at=now,
            server_names=names,
        )
        # Sessions older than the cookie's life are gone for good: forget them.
        self._sessions = {k: v for k, v in self._sessions.items() if now - v.created_at < SESSION_MAX_AGE}
        self._sessions[session.id] = session
        log.info("web login: user %s (%d servers)", session.user_id, len(member_of))
        return session, pending.next_path

    async def _exchange_code(self, code: str, verifier: str) -> str:
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": verifier,
        }
        # RFC 6749 2.3.1: client credentials in HTTP Basic.
        headers = {"Authorization": aiohttp.encode_basic_auth(self.client_id, self._client_secret)}
        try:
            url = f"{self.discord_url}/api/oauth2/token"
            async with self.http.post(url, data=data, headers=headers) as resp:
                if resp.status != 200:
                    log.warning("web login: Discord refused the code (HTTP %d)", resp.status)
                    raise LoginFailed("Discord refused the login; please try again")
                body = await resp.json()
        except aiohttp.ClientError as exc:
            log.warning("web login: cannot reach Discord (%s)", type(exc).__name__)
            raise LoginFailed("cannot reach Discord right now; please try again") from None
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise LoginFailed("Discord's answer had no access token; please try again")
        return token

    async def _api(self, token: str, path: str) -> Any:
        headers = {"Authorization": f"Bearer {token}"}
        try:
            async with self.http.get(f"{self.discord_url}{path}", headers=headers) as resp:
                if resp.status != 200:
                    log.warning("web: Discord answered HTTP %d to %s", resp.status, path)
                    raise LoginFailed("Discord did not let us read your account; please log in again")
                return await resp.json()
        except aiohttp.ClientError as exc:
            log.warning("web: cannot reach Discord (%s)", type(exc).__name__)
            raise LoginFailed("cannot reach Discord right now; please try again") from None

    async def _guilds(self, token: str) -> tuple[frozenset[int], frozenset[int], dict[int, str]]:
        guilds = await self._api(token, "/api/users/@me/guilds")
        member_of: set[int] = set()
        manages: set[int] = set()
        names: dict[int, str] = {}
        for guild in guilds if isinstance(guilds, list) else []:
            guild_id = int(guild["id"])
            member_of.add(guild_id)
            names[guild_id] = str(guild.get("name") or guild_id)[:100]
            permissions = int(guild.get("permissions") or 0)
            if guild.get("owner") or permissions & (MANAGE_GUILD | ADMINISTRATOR):
                manages.add(guild_id)
        return frozenset(member_of), frozenset(manages), names

    # -- sessions -------------------------------------------------------------------------------------
    def cookie_value(self, session: Session) -> str:
        return self._signer.dumps(session.id)

    async def session_from_cookie(self, value: str | None, *, force_refresh: bool = False) -> Session | None:
        """The session this cookie names; its servers re-read from Discord when stale (or `force_refresh`:
        every manager action). A member who left a server loses its feed here."""
        if not value:
            return None
        try:
            session_id = self._signer.loads(value, max_age=SESSION_MAX_AGE)
        except BadSignature:
            return None
        session = self._sessions.get(session_id) if isinstance(session_id, str) else None
        if session is None:
            return None
        if force_refresh or time.time() - session.refreshed_at > self.refresh_seconds:
            try:
                member_of, manages, names = await self._guilds(session.access_token)
            except LoginFailed:
                self._sessions.pop(session.id, None)  # revoked or expired token: log in again
                return None
            session = replace(
                session, member_of=member_of, manages=manages, server_names=names, refreshed_at=time.time()
            )
            self._sessions[session.id] = session
        return session

    def logout(self, session: Session) -> None:
        self._sessions.pop(session.id, None)

    @staticmethod
    def csrf_ok(session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(session.csrf, str(token))
