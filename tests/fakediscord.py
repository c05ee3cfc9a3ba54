"""In-process fake Discord (gateway + REST) for driving the *real* discord.py client in tests.

An aiohttp server on 127.0.0.1 (random free port) speaks enough of the Discord API v10 for a slash-command
bot built on discord.py 2.7 to run unmodified against it::

    async with FakeDiscord() as fake:
        discord.http.Route.BASE = fake.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
        ...start the bot with fake.token...
        await fake.wait_ready()
        inter = await fake.send_slash("imagine", {"prompt": "a cat"}, user_id=fake.alice_id)
        final = await inter.wait_final(timeout=10)
        assert final.attachments[0].data.startswith(b"\\x89PNG")

Everything the bot does is recorded and inspectable (``requests``, ``messages``, ``interactions``,
``commands``, ``heartbeats``, ...). Where the real platform has a rule a bot can trip over, the fake
enforces it with the real error code: interaction tokens (401 50027 after ``interaction_ttl`` or
``expire_token``), double acknowledgements (400 40060), webhook calls before the callback (404 10015),
message limits (400 50035: 2000 chars, 10 embeds, 6000 embed chars, 5 action rows, custom_id <= 100,
duplicate custom_ids), empty messages (400 50006), oversized uploads (413 40005), missing channel
permissions (403 50013) and command schemas that Discord would reject on sync (400 50035).

Simplifications: one guild; permissions are per member (no channel overwrites); no per-route rate limits
unless injected with ``rate_limit_next``; gateway frames are zlib-stream compressed when the client asks for
``compress=zlib-stream`` (discord.py does by default) and plain text otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import mimetypes
import re
import secrets
import socket
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import BodyPartReader, WSMsgType, web

from tests.fakeoauth import FakeOAuth

__all__ = [
    "ADMINISTRATOR",
    "ALL_PERMISSIONS",
    "BOT_PERMISSIONS",
    "MANAGE_GUILD",
    "MANAGE_MESSAGES",
    "MEMBER_PERMISSIONS",
    "MODERATOR_PERMISSIONS",
    "FakeAttachment",
    "FakeChannel",
    "FakeDiscord",
    "FakeInteraction",
    "FakeMember",
    "FakeMessage",
    "FakeRole",
    "FakeUser",
    "RecordedFile",
    "RecordedRequest",
    "snowflake_at",
]

DISCORD_EPOCH_MS = 1420070400000

# --- permission bits (https://discord.com/developers/docs/topics/permissions) ---
CREATE_INSTANT_INVITE = 1 << 0
ADMINISTRATOR = 1 << 3
MANAGE_CHANNELS = 1 << 4
MANAGE_GUILD = 1 << 5
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
MENTION_EVERYONE = 1 << 17
USE_EXTERNAL_EMOJIS = 1 << 18
CONNECT = 1 << 20
SPEAK = 1 << 21
CHANGE_NICKNAME = 1 << 26
USE_APPLICATION_COMMANDS = 1 << 31
CREATE_PUBLIC_THREADS = 1 << 35
SEND_MESSAGES_IN_THREADS = 1 << 38
ALL_PERMISSIONS = (1 << 53) - 1

MEMBER_PERMISSIONS = (
    CREATE_INSTANT_INVITE
    | ADD_REACTIONS
    | VIEW_CHANNEL
    | SEND_MESSAGES
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | USE_EXTERNAL_EMOJIS
    | CONNECT
    | SPEAK
    | CHANGE_NICKNAME
    | USE_APPLICATION_COMMANDS
    | CREATE_PUBLIC_THREADS
    | SEND_MESSAGES_IN_THREADS
)
MODERATOR_PERMISSIONS = MEMBER_PERMISSIONS | MANAGE_MESSAGES | MANAGE_GUILD
BOT_PERMISSIONS = (
    VIEW_CHANNEL
    | SEND_MESSAGES
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | ADD_REACTIONS
    | USE_EXTERNAL_EMOJIS
    | SEND_MESSAGES_IN_THREADS
)

# --- gateway intents ---
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_PRESENCES = 1 << 8
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12

# --- message flags ---
FLAG_SUPPRESS_EMBEDS = 1 << 2
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
FLAG_SUPPRESS_NOTIFICATIONS = 1 << 12
FLAG_IS_COMPONENTS_V2 = 1 << 15

# --- interaction / callback types ---
INTERACTION_APPLICATION_COMMAND = 2
INTERACTION_MESSAGE_COMPONENT = 3
INTERACTION_AUTOCOMPLETE = 4
INTERACTION_MODAL_SUBMIT = 5
CALLBACK_MESSAGE = 4
CALLBACK_DEFERRED_MESSAGE = 5
CALLBACK_DEFERRED_UPDATE = 6
CALLBACK_UPDATE_MESSAGE = 7
CALLBACK_AUTOCOMPLETE = 8
CALLBACK_MODAL = 9
_ALLOWED_CALLBACKS: dict[int, set[int]] = {
    INTERACTION_APPLICATION_COMMAND: {CALLBACK_MESSAGE, CALLBACK_DEFERRED_MESSAGE, CALLBACK_MODAL},
    INTERACTION_MESSAGE_COMPONENT: {
        CALLBACK_MESSAGE,
        CALLBACK_DEFERRED_MESSAGE,
        CALLBACK_DEFERRED_UPDATE,
        CALLBACK_UPDATE_MESSAGE,
        CALLBACK_MODAL,
    },
    INTERACTION_AUTOCOMPLETE: {CALLBACK_AUTOCOMPLETE},
    INTERACTION_MODAL_SUBMIT: {
        CALLBACK_MESSAGE,
        CALLBACK_DEFERRED_MESSAGE,
        CALLBACK_DEFERRED_UPDATE,
        CALLBACK_UPDATE_MESSAGE,
    },
}

# --- application command option types ---
OPT_SUB_COMMAND = 1
OPT_SUB_COMMAND_GROUP = 2
OPT_STRING = 3
OPT_INTEGER = 4
OPT_BOOLEAN = 5
OPT_USER = 6
OPT_CHANNEL = 7
OPT_ROLE = 8
OPT_MENTIONABLE = 9
OPT_NUMBER = 10
OPT_ATTACHMENT = 11

DEFAULT_GUILD_ID = 1_000_000_000_000_000_001
DEFAULT_CHANNEL_ID = 1_000_000_000_000_000_002
DEFAULT_NSFW_CHANNEL_ID = 1_000_000_000_000_000_003
DEFAULT_APP_ID = 1_000_000_000_000_000_100
DEFAULT_ALICE_ID = 1_000_000_000_000_000_201
DEFAULT_BOB_ID = 1_000_000_000_000_000_202
DEFAULT_MOD_ID = 1_000_000_000_000_000_203
DEFAULT_OWNER_ID = 1_000_000_000_000_000_204

_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")
_CHANNEL_MENTION = re.compile(r"<#(\d+)>")
_FILES_FIELD = re.compile(r"files\[(\d+)\]")
_COMMAND_NAME = re.compile(r"[-_\w]{1,32}")
_JSON_HEADERS = {"Content-Type": "application/json"}


def snowflake_at(unix_seconds: float, increment: int = 0) -> int:
    """Snowflake for a wall-clock time, as Discord builds them (worker/process bits zero)."""
    return ((int(unix_seconds * 1000) - DISCORD_EPOCH_MS) << 22) | (increment & 0xFFF)


class _Snowflakes:
    """Time-based, strictly increasing snowflakes."""

    def __init__(self) -> None:
        self._last = 0
        self._counter = itertools.count()

    def __call__(self) -> int:
        value = snowflake_at(time.time(), next(self._counter))
        if value <= self._last:
            value = self._last + 1
        self._last = value
        return value


def _iso_now() -> str:
    return datetime.now(UTC).isoformat()


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True)


class ApiError(Exception):
    """Raised inside route handlers; becomes a Discord-shaped JSON error response."""

    def __init__(self, status: int, code: int, message: str, errors: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def _form_error(path: str, code: str, message: str) -> ApiError:
    """400 50035 Invalid Form Body with a nested ``errors`` tree like Discord's (``a.0.b`` paths)."""
    tree: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for part in reversed(path.split(".")):
        tree = {part: tree}
    return ApiError(400, 50035, "Invalid Form Body", tree)


# ----------------------------------------------------------------------------------------------------------
# Recorded state
# ----------------------------------------------------------------------------------------------------------


@dataclass
class RecordedFile:
    field: str
    filename: str
    data: bytes
    content_type: str | None = None


@dataclass
class RecordedRequest:
    """One REST request the bot made (also failed/unknown ones; ``route`` is None when no route matched)."""

    method: str
    path: str  # relative to the API base, e.g. "/webhooks/1/abc"
    query: dict[str, str]
    json: Any
    files: list[RecordedFile]
    time: float  # time.monotonic()
    authorization: str | None = None
    status: int = 0
    response: Any = None
    route: str | None = None
    injected: bool = False  # answered by rate_limit_next / fail_next
    nonce_reused: bool = False  # a channel post answered with an earlier message (enforce_nonce)

    @property
    def matched(self) -> bool:
        return self.route is not None


@dataclass
class FakeUser:
    id: int
    username: str
    bot: bool = False
    global_name: str | None = None

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "avatar_decoration_data": None,
            "banner": None,
            "accent_color": None,
            "bot": self.bot,
            "public_flags": 0,
            "flags": 0,
        }

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"


@dataclass
class FakeRole:
    id: int
    name: str
    permissions: int
    position: int = 0
    managed: bool = False
    bot_id: int | None = None

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "name": self.name,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(self.permissions),
            "managed": self.managed,
            "mentionable": False,
            "flags": 0,
        }
        if self.bot_id is not None:
            data["tags"] = {"bot_id": str(self.bot_id)}
        return data


@dataclass
class FakeMember:
    user: FakeUser
    roles: list[int]
    permissions: int  # effective guild permissions (everyone + roles; everything with ADMINISTRATOR)
    nick: str | None = None
    joined_at: str = field(default_factory=_iso_now)

    @property
    def id(self) -> int:
        return self.user.id

    def payload(self, *, with_user: bool = True, with_permissions: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "roles": [str(r) for r in self.roles],
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "joined_at": self.joined_at,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = self.user.payload()
        if with_permissions:
            data["permissions"] = str(self.permissions)
        return data


@dataclass
class FakeChannel:
    id: int
    name: str
    type: int = 0  # 0 guild text, 1 DM
    guild_id: int | None = None
    nsfw: bool = False
    position: int = 0
    recipient: FakeUser | None = None  # DMs

    def payload(self, *, permissions: int | None = None) -> dict[str, Any]:
        if self.type == 1:
            assert self.recipient is not None
            return {
                "id": str(self.id),
                "type": 1,
                "last_message_id": None,
                "flags": 0,
                "recipients": [self.recipient.payload()],
            }
        data: dict[str, Any] = {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id),
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [],
            "nsfw": self.nsfw,
            "topic": None,
            "parent_id": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "flags": 0,
        }
        if permissions is not None:
            data["permissions"] = str(permissions)
        return data


@dataclass
class FakeAttachment:
    id: int
    filename: str
    data: bytes = field(repr=False)
    url: str
    content_type: str | None = None
    description: str | None = None
    width: int | None = None
    height: int | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url,
            "content_type": self.content_type,
            "flags": 0,
        }
        if self.description is not None:
            data["description"] = self.description
        if self.width is not None and self.height is not None:
            data["width"] = self.width
            data["height"] = self.height
        return data


def _image_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    try:
        import io

        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            return int(img.width), int(img.height)
    except Exception:
        return None


def _wrap_subcommand(path: list[str], options: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Nest options under ``sub`` or ``group sub`` option objects."""
    if len(path) > 2:
        raise ValueError(f"subcommand path too deep: {path}")
    kinds = [OPT_SUB_COMMAND_GROUP, OPT_SUB_COMMAND][-len(path) :] if path else []
    for part, kind in reversed(list(zip(path, kinds, strict=True))):
        options = [{"name": part, "type": kind, "options": options}]
    return options


def _walk_components(components: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every component dict, depth first (action rows, v2 containers/sections/labels included)."""
    for comp in components:
        yield comp
        children = list(comp.get("components") or [])
        for key in ("accessory", "component"):
            if isinstance(comp.get(key), dict):
                children.append(comp[key])
        yield from _walk_components(children)


@dataclass(eq=False)
class FakeMessage:
    """A message as the fake stores it. ``payload()`` is what the API returns for it."""

    id: int
    channel_id: int
    guild_id: int | None
    author: FakeUser
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[FakeAttachment] = field(default_factory=list)
    allowed_mentions: dict[str, Any] | None = None
    message_reference: dict[str, Any] | None = None
    flags: int = 0
    tts: bool = False
    type: int = 0
    webhook_id: int | None = None
    application_id: int | None = None
    interaction_id: int | None = None  # the interaction this message answers (response or followup)
    interaction_metadata: dict[str, Any] | None = None
    timestamp: str = field(default_factory=_iso_now)
    edited_timestamp: str | None = None
    created_at: float = field(default_factory=time.monotonic)
    edited_at: float | None = None
    deleted: bool = False
    deleted_at: float | None = None
    pinned: bool = False
    reactions: dict[str, set[int]] = field(default_factory=dict)  # emoji -> user ids
    history: list[dict[str, Any]] = field(default_factory=list)  # snapshots before each edit
    sent_via: str = ""  # "callback", "followup", "channel", ...
    nonce: str | None = None

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        """True while this is a deferred "Bot is thinking..." placeholder."""
        return bool(self.flags & FLAG_LOADING)

    @property
    def edit_count(self) -> int:
        return len(self.history)

    @property
    def has_body(self) -> bool:
        return bool(self.content or self.embeds or self.attachments or self.components)

    def all_components(self) -> list[dict[str, Any]]:
        return list(_walk_components(self.components))

    @property
    def buttons(self) -> list[dict[str, Any]]:
        return [c for c in self.all_components() if c.get("type") == 2]

    @property
    def selects(self) -> list[dict[str, Any]]:
        return [c for c in self.all_components() if c.get("type") in (3, 5, 6, 7, 8)]

    @property
    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for c in self.all_components() if "custom_id" in c]

    def find_component(self, custom_id: str | None = None, *, label: str | None = None) -> dict[str, Any]:
        for comp in self.all_components():
            if custom_id is not None and comp.get("custom_id") != custom_id:
                continue
            if label is not None and comp.get("label") != label:
                continue
            if custom_id is None and label is None:
                continue
            return comp
        raise KeyError(f"no component custom_id={custom_id!r} label={label!r} on message {self.id}")

    def snapshot(self) -> dict[str, Any]:
        return {
            "content": self.content,
            "embeds": [dict(e) for e in self.embeds],
            "components": list(self.components),
            "attachments": [a.filename for a in self.attachments],
            "flags": self.flags,
            "time": self.edited_at or self.created_at,
        }


@dataclass(eq=False)
class FakeInteraction:
    """One interaction the fake sent to the bot, and everything the bot did with its token."""

    id: int
    token: str
    type: int
    user_id: int
    channel_id: int
    guild_id: int | None
    data: dict[str, Any]
    payload: dict[str, Any] = field(repr=False)
    created_at: float
    name: str | None = None  # command name
    custom_id: str | None = None  # component / modal custom_id
    message_id: int | None = None  # message the component is on
    callback_types: list[int] = field(default_factory=list)
    callbacks: list[dict[str, Any]] = field(
        default_factory=list
    )  # callback bodies (payload_json for multipart)
    acked_at: float | None = None
    deferred_at: float | None = None
    original_message_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)
    modal: dict[str, Any] | None = None
    autocomplete_choices: list[dict[str, Any]] | None = None
    expired: bool = False
    responded: bool = False  # the original response has real content (not just "thinking")
    late_callback: bool = False  # a callback arrived after callback_deadline
    _fake: FakeDiscord | None = field(default=None, repr=False)

    # ---- derived ----
    @property
    def fake(self) -> FakeDiscord:
        assert self._fake is not None
        return self._fake

    @property
    def ack_latency(self) -> float | None:
        return None if self.acked_at is None else self.acked_at - self.created_at

    @property
    def defer_latency(self) -> float | None:
        return None if self.deferred_at is None else self.deferred_at - self.created_at

    @property
    def original(self) -> FakeMessage | None:
        if self.original_message_id is None:
            return None
        return self.fake.messages.get(self.original_message_id)

    @property
    def followups(self) -> list[FakeMessage]:
        """Messages created or (for the first one after a thinking defer) filled by POST /webhooks."""
        return [self.fake.messages[i] for i in self.followup_ids]

    @property
    def messages(self) -> list[FakeMessage]:
        """The original response (if any) and every followup, without duplicates."""
        ids = ([self.original_message_id] if self.original_message_id is not None else []) + self.followup_ids
        return [self.fake.messages[i] for i in dict.fromkeys(ids)]

    @property
    def ephemeral(self) -> bool:
        orig = self.original
        return orig is not None and orig.ephemeral

    # ---- waiting ----
    async def wait_acked(self, timeout: float = 5.0) -> int:
        """Until the first callback; returns its type."""
        await self.fake.wait_until(
            lambda: bool(self.callback_types), timeout, f"callback for {self.describe()}"
        )
        return self.callback_types[0]

    async def wait_deferred(self, timeout: float = 5.0) -> float:
        """Until a type 5/6 callback; returns seconds from creation to the defer."""
        await self.fake.wait_until(
            lambda: self.deferred_at is not None, timeout, f"defer of {self.describe()}"
        )
        assert self.deferred_at is not None
        return self.deferred_at - self.created_at

    async def wait_final(
        self, timeout: float = 10.0, predicate: Callable[[FakeMessage], bool] | None = None
    ) -> FakeMessage:
        """The original response once it has real content (type 4/7 callback, @original edit or the first
        followup after a thinking defer), and ``predicate(message)`` holds if given."""

        def check() -> FakeMessage | None:
            orig = self.original
            if orig is None or not self.responded or orig.loading:
                return None
            if predicate is not None and not predicate(orig):
                return None
            return orig

        return await self.fake.wait_until(check, timeout, f"final response of {self.describe()}")

    async def wait_followup(
        self, timeout: float = 10.0, predicate: Callable[[FakeMessage], bool] | None = None, count: int = 1
    ) -> FakeMessage:
        """The ``count``-th followup matching ``predicate``."""

        def check() -> FakeMessage | None:
            found = [m for m in self.followups if predicate is None or predicate(m)]
            return found[count - 1] if len(found) >= count else None

        return await self.fake.wait_until(check, timeout, f"followup #{count} of {self.describe()}")

    async def wait_modal(self, timeout: float = 5.0) -> dict[str, Any]:
        await self.fake.wait_until(lambda: self.modal is not None, timeout, f"modal from {self.describe()}")
        assert self.modal is not None
        return self.modal

    async def wait_autocomplete(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        await self.fake.wait_until(
            lambda: self.autocomplete_choices is not None, timeout, f"autocomplete of {self.describe()}"
        )
        assert self.autocomplete_choices is not None
        return self.autocomplete_choices

    def describe(self) -> str:
        what = self.name or self.custom_id or "?"
        return f"interaction {self.id} type {self.type} ({what})"


@dataclass
class _Injection:
    method: str
    pattern: re.Pattern[str]
    remaining: int
    status: int = 0  # 0: only delay, then handle normally
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        return self.remaining > 0 and method in (self.method, "*") and bool(self.pattern.search(path))


@dataclass
class _GatewaySession:
    session_id: str
    intents: int
    seq: int = 0
    frames: list[dict[str, Any]] = field(default_factory=list)


class _GatewayConnection:
    def __init__(self, ws: web.WebSocketResponse, compress: bool) -> None:
        self.ws = ws
        self.compressor = zlib.compressobj() if compress else None
        self.lock = asyncio.Lock()
        self.session: _GatewaySession | None = None
        self.live = False  # dispatches go out on this connection
        self.closed = False

    async def send_raw(self, frame: dict[str, Any]) -> None:
        if self.closed or self.ws.closed:
            return
        text = _dumps(frame)
        try:
            if self.compressor is not None:
                data = self.compressor.compress(text.encode()) + self.compressor.flush(zlib.Z_SYNC_FLUSH)
                await self.ws.send_bytes(data)
            else:
                await self.ws.send_str(text)
        except (ConnectionError, RuntimeError):
            self.closed = True

    async def send(self, frame: dict[str, Any]) -> None:
        async with self.lock:
            await self.send_raw(frame)


@dataclass
class _Req:
    method: str
    path: str
    query: dict[str, str]
    json: Any
    files: dict[int, RecordedFile]
    record: RecordedRequest


_Handler = Callable[..., Awaitable[tuple[int, Any]]]


# ----------------------------------------------------------------------------------------------------------
# The server
# ----------------------------------------------------------------------------------------------------------


class FakeDiscord:
    """A fake Discord: one guild with a text channel and an NSFW text channel, four users, one bot.

    Default users: ``alice_id`` and ``bob_id`` (member permissions), ``mod_id`` (Manage Messages + Manage
    Guild) and ``owner_id`` (guild owner, Administrator; also the application owner).
    """

    def __init__(
        self,
        *,
        token: str = "fake-token",
        guild_id: int = DEFAULT_GUILD_ID,
        channel_id: int = DEFAULT_CHANNEL_ID,
        nsfw_channel_id: int = DEFAULT_NSFW_CHANNEL_ID,
        app_id: int = DEFAULT_APP_ID,
        bot_user_id: int | None = None,
        bot_name: str = "imagine-bot",
        interaction_ttl: float = 900.0,
        heartbeat_interval_ms: int = 41250,
        attachment_size_limit: int = 10 * 1024 * 1024,
        callback_deadline: float | None = None,
        gateway_compression: bool = True,
        strict_commands: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        advertised_host: str | None = None,
    ) -> None:
        self.token = token
        self.guild_id = guild_id
        self.channel_id = channel_id
        self.nsfw_channel_id = nsfw_channel_id
        self.app_id = app_id
        self.bot_user_id = bot_user_id if bot_user_id is not None else app_id
        self.interaction_ttl = interaction_ttl
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.attachment_size_limit = attachment_size_limit
        #: seconds after creation after which a callback gets 404 10062 (None: only record, see ack_latency)
        self.callback_deadline = callback_deadline
        self.gateway_compression = gateway_compression
        #: send_slash refuses commands the bot has not synced
        self.strict_commands = strict_commands
        self.host = host
        #: the name clients use in URLs the fake hands out (gateway, attachments) when `host` is a bind-all
        #: address, e.g. a container's name on a Docker network
        self.advertised_host = advertised_host or host
        self.guild_name = "Fake Guild"
        self.ack_heartbeats = True
        self.bot_permissions = BOT_PERMISSIONS
        self.channel_bot_permissions: dict[int, int] = {}
        self.dm_closed_user_ids: set[int] = set()  # POST to their DM -> 403 50007
        #: seconds an enforced nonce de-duplicates channel posts (Discord: "the past few minutes")
        self.nonce_window = 300.0
        self._nonces: dict[tuple[int, str], tuple[int, float]] = {}  # (author, nonce) -> (message, time)

        self.snowflake = _Snowflakes()
        self._session: _GatewaySession | None = None
        self.bot_user = FakeUser(self.bot_user_id, bot_name, bot=True)
        self.users: dict[int, FakeUser] = {self.bot_user_id: self.bot_user}
        self.roles: dict[int, FakeRole] = {
            guild_id: FakeRole(guild_id, "@everyone", MEMBER_PERMISSIONS, position=0),
        }
        self.members: dict[int, FakeMember] = {}
        self.channels: dict[int, FakeChannel] = {}
        self.add_channel(channel_id, "general")
        self.add_channel(nsfw_channel_id, "nsfw", nsfw=True)
        bot_role = FakeRole(
            self.snowflake(), bot_name, BOT_PERMISSIONS, position=1, managed=True, bot_id=app_id
        )
        self.roles[bot_role.id] = bot_role
        self.members[self.bot_user_id] = FakeMember(
            self.bot_user, [bot_role.id], MEMBER_PERMISSIONS | BOT_PERMISSIONS
        )
        self.alice_id = DEFAULT_ALICE_ID
        self.bob_id = DEFAULT_BOB_ID
        self.mod_id = DEFAULT_MOD_ID
        self.owner_id = DEFAULT_OWNER_ID
        self.add_member(self.alice_id, "alice")
        self.add_member(self.bob_id, "bob")
        self.add_member(self.mod_id, "mod", MODERATOR_PERMISSIONS)
        self.add_member(self.owner_id, "owner", ALL_PERMISSIONS | ADMINISTRATOR)

        # recorded state
        self.messages: dict[int, FakeMessage] = {}
        self.attachments: dict[int, FakeAttachment] = {}
        self.requests: list[RecordedRequest] = []
        self.interactions: dict[int, FakeInteraction] = {}
        self._by_token: dict[str, FakeInteraction] = {}
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: dict[int, list[dict[str, Any]]] = {}
        self.sync_count = 0  # PUT bulk-overwrite calls (global + guild)
        self.heartbeats: list[float] = []
        self.identify_count = 0
        self.resume_count = 0
        self.replayed_count = 0  # dispatches re-sent on RESUME (they were sent while disconnected)
        self.ready_count = 0
        self.connection_count = 0
        self.intents: int | None = None
        self.identify_payloads: list[dict[str, Any]] = []
        self.gateway_connects: list[
            dict[str, str]
        ] = []  # query of each websocket connect (v, encoding, compress)
        self.presence_updates: list[dict[str, Any]] = []
        self.gateway_ops: list[tuple[float, int, Any]] = []  # every frame received: (time, op, d)
        self.dispatched: list[tuple[float, str, int]] = []  # (time, event, seq)

        self._injections: list[_Injection] = []
        self._conn: _GatewayConnection | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._runner: web.AppRunner | None = None
        self._routes_cache: list[tuple[str, re.Pattern[str], _Handler, bool, str]] | None = None
        self.port = port  # 0: a free port, chosen in start()
        self.oauth = FakeOAuth(self)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway_handler)
        app.router.add_get("/attachments/{aid}/{filename}", self._attachment_handler)
        self.oauth.routes(app)  # the web gallery's login (tests/fakeoauth.py)
        app.router.add_route("*", "/{tail:.*}", self._http_handler)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.live = False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.ws.close(code=1001), 2.0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.advertised_host}:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.advertised_host}:{self.port}/gateway"

    # ------------------------------------------------------------------ guild setup
    def add_member(
        self,
        user_id: int,
        name: str,
        permissions: int = MEMBER_PERMISSIONS,
        *,
        bot: bool = False,
        nick: str | None = None,
    ) -> FakeMember:
        """Add (or replace) a guild member. Permissions above @everyone's come from a role made for them."""
        user = self.users.get(user_id)
        if user is None or user.username != name:
            user = FakeUser(user_id, name, bot=bot)
            self.users[user_id] = user
        everyone = self.roles[self.guild_id].permissions
        roles: list[int] = []
        if permissions & ~everyone:
            role = next(
                (
                    r
                    for r in self.roles.values()
                    if not r.managed and r.id != self.guild_id and r.permissions == permissions
                ),
                None,
            )
            if role is None:
                role = FakeRole(
                    self.snowflake(), f"role-{permissions:x}", permissions, position=len(self.roles)
                )
                self.roles[role.id] = role
            roles.append(role.id)
        effective = everyone | permissions
        if effective & ADMINISTRATOR:
            effective = ALL_PERMISSIONS
        member = FakeMember(user, roles, effective, nick=nick)
        self.members[user_id] = member
        if self._session is not None and self._session.intents & INTENT_GUILD_MEMBERS:
            self._spawn(
                self.dispatch("GUILD_MEMBER_ADD", {**member.payload(), "guild_id": str(self.guild_id)})
            )
        return member

    def add_channel(self, channel_id: int, name: str, *, nsfw: bool = False) -> FakeChannel:
        channel = FakeChannel(channel_id, name, 0, self.guild_id, nsfw=nsfw, position=len(self.channels))
        self.channels[channel_id] = channel
        return channel

    async def set_channel_nsfw(self, channel_id: int, nsfw: bool) -> None:
        """A moderator switches a channel's age-restricted flag: CHANNEL_UPDATE goes out on the gateway."""
        channel = self.channels[channel_id]
        channel.nsfw = nsfw
        await self.dispatch("CHANNEL_UPDATE", channel.payload())

    def dm_channel(self, user_id: int) -> FakeChannel:
        """The DM channel between the bot and ``user_id`` (created on first use)."""
        for ch in self.channels.values():
            if ch.type == 1 and ch.recipient is not None and ch.recipient.id == user_id:
                return ch
        user = self.users[user_id]
        ch = FakeChannel(self.snowflake(), f"dm-{user.username}", 1, None, recipient=user)
        self.channels[ch.id] = ch
        return ch

    def bot_permissions_in(self, channel_id: int) -> int:
        perms = self.channel_bot_permissions.get(channel_id, self.bot_permissions)
        return ALL_PERMISSIONS if perms & ADMINISTRATOR else perms

    def guild_payload(self) -> dict[str, Any]:
        full_members = self._session is not None and bool(self._session.intents & INTENT_GUILD_PRESENCES)
        members = list(self.members.values()) if full_members else [self.members[self.bot_user_id]]
        return {
            "id": str(self.guild_id),
            "name": self.guild_name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 1,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "premium_progress_bar_enabled": False,
            "preferred_locale": "en-US",
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "vanity_url_code": None,
            "application_id": None,
            "features": [],
            "roles": [r.payload() for r in self.roles.values()],
            "emojis": [],
            "stickers": [],
            "joined_at": self.members[self.bot_user_id].joined_at,
            "large": False,
            "lazy": True,
            "unavailable": False,
            "member_count": len(self.members),
            "members": [m.payload() for m in members],
            "channels": [c.payload() for c in self.channels.values() if c.type != 1],
            "threads": [],
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    # ------------------------------------------------------------------ waiting helpers
    def _changed(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait_until(
        self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition"
    ) -> Any:
        """Await until ``predicate()`` is truthy (re-checked on every state change); returns its value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}; {self.debug_summary()}")
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(fut, min(remaining, 0.5))

    def debug_summary(self) -> str:
        tail = ", ".join(f"{r.method} {r.path} -> {r.status}" for r in self.requests[-8:])
        unknown = ", ".join(f"{r.method} {r.path}" for r in self.unknown_requests)
        return f"last requests: [{tail}]; unknown routes: [{unknown}]"

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Until the bot has IDENTIFYed and READY + GUILD_CREATE went out on a live connection."""
        await self.wait_until(
            lambda: self.ready_count > 0 and self._conn is not None and self._conn.live,
            timeout,
            "gateway READY",
        )

    async def wait_resumed(self, count: int = 1, timeout: float = 10.0) -> None:
        await self.wait_until(
            lambda: self.resume_count >= count and self._conn is not None and self._conn.live,
            timeout,
            f"RESUME #{count}",
        )

    async def wait_message(
        self, predicate: Callable[[FakeMessage], bool], timeout: float = 10.0
    ) -> FakeMessage:
        """The first stored message (any channel, any route) matching ``predicate``."""

        def check() -> FakeMessage | None:
            return next((m for m in self.messages.values() if predicate(m)), None)

        return await self.wait_until(check, timeout, "message")

    async def wait_request(
        self, method: str, path_regex: str, timeout: float = 10.0, count: int = 1
    ) -> RecordedRequest:
        pattern = re.compile(path_regex)

        def check() -> RecordedRequest | None:
            found = [r for r in self.requests if r.method == method and pattern.search(r.path) and r.status]
            return found[count - 1] if len(found) >= count else None

        return await self.wait_until(check, timeout, f"{method} {path_regex}")

    # ------------------------------------------------------------------ inspection helpers
    @property
    def commands(self) -> list[dict[str, Any]]:
        """All synced commands: global ones, then guild ones (which carry ``guild_id``)."""
        out = list(self.global_commands)
        for cmds in self.guild_commands.values():
            out.extend(cmds)
        return out

    @property
    def bulk_overwrite_count(self) -> int:
        return self.sync_count

    @property
    def unknown_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.route is None and not r.injected]

    def requests_to(self, method: str, path_regex: str) -> list[RecordedRequest]:
        pattern = re.compile(path_regex)
        return [r for r in self.requests if r.method == method and pattern.search(r.path)]

    def channel_messages(
        self, channel_id: int | None = None, *, include_ephemeral: bool = False
    ) -> list[FakeMessage]:
        cid = self.channel_id if channel_id is None else channel_id
        return [
            m
            for m in self.messages.values()
            if m.channel_id == cid and not m.deleted and (include_ephemeral or not m.ephemeral)
        ]

    async def post_user_message(
        self, content: str, *, user_id: int, channel_id: int | None = None
    ) -> FakeMessage:
        """A member writes in a channel (what makes a channel busy); MESSAGE_CREATE goes to the bot."""
        cid = self.channel_id if channel_id is None else channel_id
        channel = self.channels[cid]
        msg = FakeMessage(
            id=self.snowflake(), channel_id=cid, guild_id=channel.guild_id, author=self.users[user_id]
        )
        msg.content = content
        msg.sent_via = "user"
        self._store(msg)
        await self._message_event("MESSAGE_CREATE", msg)
        return msg

    def interaction_by_token(self, token: str) -> FakeInteraction:
        return self._by_token[token]

    # ------------------------------------------------------------------ fault injection
    def rate_limit_next(
        self,
        method: str,
        path_regex: str,
        count: int = 1,
        retry_after: float = 0.2,
        *,
        is_global: bool = False,
        via: bool = True,
    ) -> None:
        """Answer the next ``count`` matching requests with 429 (Via header + JSON retry_after, like Discord).

        ``path_regex`` is searched in the path relative to the API base (e.g. ``r"^/webhooks/"``);
        ``method`` may be ``"*"``. ``via=False`` mimics a Cloudflare ban (discord.py does not retry those).
        """
        headers = {
            "Retry-After": str(max(1, int(retry_after + 0.999))),
            "X-RateLimit-Scope": "global" if is_global else "user",
        }
        if via:
            headers["Via"] = "1.1 google"
        if is_global:
            headers["X-RateLimit-Global"] = "true"
        body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": is_global}
        self._injections.append(_Injection(method, re.compile(path_regex), count, 429, body, headers))

    def fail_next(
        self,
        method: str,
        path_regex: str,
        *,
        status: int = 500,
        code: int = 0,
        message: str = "Internal Server Error",
        count: int = 1,
    ) -> None:
        """Answer the next ``count`` matching requests with an error (discord.py retries 500/502/504 itself,
        sleeping 1 + 2*attempt seconds)."""
        body = {"message": message, "code": code}
        self._injections.append(_Injection(method, re.compile(path_regex), count, status, body))

    def delay_next(self, method: str, path_regex: str, seconds: float, count: int = 1) -> None:
        """Hold the next ``count`` matching requests for ``seconds`` before handling them normally."""
        self._injections.append(_Injection(method, re.compile(path_regex), count, 0, delay=seconds))

    def expire_token(self, interaction_token: str) -> None:
        """Webhook calls with this token now get 401 {"code": 50027, "message": "Invalid Webhook Token"}."""
        self._by_token[interaction_token].expired = True

    # ------------------------------------------------------------------ gateway
    def _spawn(self, coro: Awaitable[Any]) -> None:
        with contextlib.suppress(RuntimeError):
            task = asyncio.ensure_future(coro)
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def dispatch(self, event: str, data: Any) -> int:
        """Send a DISPATCH (op 0) in the current session; buffered for RESUME while disconnected."""
        sess = self._session
        if sess is None:
            raise RuntimeError("no gateway session: the bot has not IDENTIFYed")
        sess.seq += 1
        frame = {"op": 0, "t": event, "s": sess.seq, "d": data}
        sess.frames.append(frame)
        self.dispatched.append((time.monotonic(), event, sess.seq))
        conn = self._conn
        if conn is not None and conn.live and conn.session is sess:
            await conn.send(frame)
        return sess.seq

    async def drop_gateway(self, *, code: int = 4000) -> None:
        """Close the websocket from the server side; discord.py RESUMEs for any code but 1000 (own close),
        4004 and 4010-4014."""
        conn = self._conn
        if conn is None:
            raise RuntimeError("no gateway connection")
        conn.live = False
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.ws.close(code=code, message=b"fake drop"), 3.0)
        conn.closed = True
        self._changed()

    async def send_reconnect(self) -> None:
        """op 7 RECONNECT: the client closes and RESUMEs."""
        conn = self._conn
        if conn is None:
            raise RuntimeError("no gateway connection")
        conn.live = False
        await conn.send({"op": 7, "d": None})

    async def invalidate_session(self, *, resumable: bool = False) -> None:
        """op 9 INVALID_SESSION; ``resumable=False`` forgets the session (the bot re-IDENTIFYs)."""
        conn = self._conn
        if conn is None:
            raise RuntimeError("no gateway connection")
        conn.live = False
        if not resumable:
            self._session = None
        await conn.send({"op": 9, "d": resumable})

    async def _gateway_handler(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=False, timeout=2.0, max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        compress = self.gateway_compression and request.query.get("compress") == "zlib-stream"
        self.gateway_connects.append(dict(request.query))
        conn = _GatewayConnection(ws, compress)
        old, self._conn = self._conn, conn
        self.connection_count += 1
        if old is not None and not old.closed:
            old.live = False
            self._spawn(old.ws.close(code=4000))
        await conn.send({"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    frame = json.loads(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    frame = json.loads(msg.data.decode())
                else:
                    continue
                await self._gateway_op(conn, frame)
        finally:
            conn.closed = True
            conn.live = False
            if self._conn is conn:
                self._conn = None
            self._changed()
        return ws

    async def _gateway_op(self, conn: _GatewayConnection, frame: dict[str, Any]) -> None:
        op: Any = frame.get("op")
        d: Any = frame.get("d")
        now = time.monotonic()
        self.gateway_ops.append((now, op, d))
        if op == 1:  # heartbeat
            self.heartbeats.append(now)
            if self.ack_heartbeats:
                await conn.send({"op": 11})
        elif op == 2:
            await self._identify(conn, d)
        elif op == 6:
            await self._resume(conn, d)
        elif op == 3:
            self.presence_updates.append(d)
        elif op == 8:  # request guild members
            members = list(self.members.values())
            if d.get("user_ids"):
                wanted = {int(u) for u in d["user_ids"]}
                members = [m for m in members if m.id in wanted]
            elif d.get("query"):
                members = [m for m in members if m.user.username.startswith(d["query"])]
            limit = d.get("limit") or 0
            if limit:
                members = members[:limit]
            chunk = {
                "guild_id": str(self.guild_id),
                "members": [m.payload() for m in members],
                "chunk_index": 0,
                "chunk_count": 1,
                "not_found": [],
            }
            if d.get("nonce") is not None:
                chunk["nonce"] = d["nonce"]
            await self.dispatch("GUILD_MEMBERS_CHUNK", chunk)
        self._changed()

    async def _identify(self, conn: _GatewayConnection, d: dict[str, Any]) -> None:
        if d.get("token") != self.token and d.get("token") != f"Bot {self.token}":
            conn.live = False
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        self.identify_count += 1
        self.identify_payloads.append(d)
        self.intents = int(d.get("intents", 0))
        sess = _GatewaySession(secrets.token_hex(16), self.intents)
        self._session = sess
        conn.session = sess
        conn.live = True
        ready: dict[str, Any] = {
            "v": 10,
            "user": {**self.bot_user.payload(), "verified": True, "mfa_enabled": False, "email": None},
            "guilds": [{"id": str(self.guild_id), "unavailable": True}],
            "session_id": sess.session_id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.app_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "user_settings": {},
            "geo_ordered_rtc_regions": [],
            "guild_join_requests": [],
            "_trace": ["fake-discord"],
        }
        if "shard" in d:
            ready["shard"] = d["shard"]
        await self.dispatch("READY", ready)
        await self.dispatch("GUILD_CREATE", self.guild_payload())
        self.ready_count += 1

    async def _resume(self, conn: _GatewayConnection, d: dict[str, Any]) -> None:
        sess = self._session
        if sess is None or d.get("session_id") != sess.session_id or d.get("token") != self.token:
            await conn.send({"op": 9, "d": False})
            return
        self.resume_count += 1
        conn.session = sess
        since = d.get("seq") or 0
        async with conn.lock:
            i = 0
            while i < len(sess.frames):  # frames dispatched during the replay are appended and sent too
                frame = sess.frames[i]
                i += 1
                if frame["s"] > since:
                    self.replayed_count += 1
                    await conn.send_raw(frame)
            sess.seq += 1
            resumed = {"op": 0, "t": "RESUMED", "s": sess.seq, "d": {"_trace": ["fake-discord"]}}
            sess.frames.append(resumed)
            self.dispatched.append((time.monotonic(), "RESUMED", sess.seq))
            await conn.send_raw(resumed)
            conn.live = True

    # ------------------------------------------------------------------ interactions (fake -> bot)
    def _find_command(self, name: str, guild_id: int | None, cmd_type: int = 1) -> dict[str, Any] | None:
        if guild_id is not None:
            for cmd in self.guild_commands.get(guild_id, []):
                if cmd["name"] == name and cmd.get("type", 1) == cmd_type:
                    return cmd
        for cmd in self.global_commands:
            if cmd["name"] == name and cmd.get("type", 1) == cmd_type:
                return cmd
        return None

    def _new_interaction(
        self,
        itype: int,
        data: dict[str, Any],
        *,
        user_id: int,
        channel_id: int,
        guild_id: int | None,
        message: FakeMessage | None = None,
        locale: str = "en-US",
    ) -> FakeInteraction:
        channel = self.channels.get(channel_id)
        if channel is None:
            raise ValueError(f"unknown channel {channel_id}")
        if channel.type == 1:
            guild_id = None
        iid = self.snowflake()
        token = "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(48)
        payload: dict[str, Any] = {
            "id": str(iid),
            "application_id": str(self.app_id),
            "type": itype,
            "token": token,
            "version": 1,
            "data": data,
            "channel_id": str(channel_id),
            "locale": locale,
            "app_permissions": str(self.bot_permissions_in(channel_id)),
            "entitlements": [],
            "entitlement_sku_ids": [],
            "attachment_size_limit": self.attachment_size_limit,
        }
        if guild_id is not None:
            member = self.members.get(user_id)
            if member is None:
                raise ValueError(f"user {user_id} is not a guild member (add_member first)")
            payload["guild_id"] = str(guild_id)
            payload["guild"] = {"id": str(guild_id), "locale": "en-US", "features": []}
            payload["guild_locale"] = "en-US"
            payload["member"] = member.payload(with_permissions=True)
            payload["channel"] = channel.payload(permissions=member.permissions)
            payload["authorizing_integration_owners"] = {"0": str(guild_id)}
            payload["context"] = 0
        else:
            user = self.users.get(user_id)
            if user is None:
                raise ValueError(f"unknown user {user_id}")
            payload["user"] = user.payload()
            payload["channel"] = channel.payload()
            payload["authorizing_integration_owners"] = {"0": "0"}
            payload["context"] = 1
        if message is not None:
            payload["message"] = self.message_payload(message)
        inter = FakeInteraction(
            id=iid,
            token=token,
            type=itype,
            user_id=user_id,
            channel_id=channel_id,
            guild_id=guild_id,
            data=data,
            payload=payload,
            created_at=time.monotonic(),
            name=data.get("name"),
            custom_id=data.get("custom_id"),
            message_id=None if message is None else message.id,
            _fake=self,
        )
        self.interactions[iid] = inter
        self._by_token[token] = inter
        return inter

    async def _send_interaction(self, inter: FakeInteraction) -> FakeInteraction:
        # Needs a session, not a live connection: while the bot is disconnected the event is buffered and
        # replayed on RESUME, as Discord does.
        await self.wait_until(
            lambda: self._session is not None and self.ready_count > 0, 10, "a gateway session"
        )
        inter.created_at = time.monotonic()
        await self.dispatch("INTERACTION_CREATE", inter.payload)
        self._changed()
        return inter

    async def send_slash(
        self,
        name: str,
        options: dict[str, Any] | list[dict[str, Any]] | None = None,
        *,
        user_id: int,
        channel_id: int | None = None,
        guild_id: int | None = None,
        subcommand: str | None = None,
        locale: str = "en-US",
        validate: bool = True,
    ) -> FakeInteraction:
        """Dispatch a CHAT_INPUT interaction as a user would trigger it.

        ``options`` is a dict (types come from the synced command's schema, else inferred: bool 5, int 4,
        float 10, str 3, ``"<@id>"`` 6, ``"<#id>"`` 7, ``"<@&id>"`` 8, bytes/(filename, bytes) 11) or an
        explicit list of ``{"name", "type", "value"}``. ``subcommand`` is ``"sub"`` or ``"group sub"``.
        With a known schema and ``validate``, options Discord's client would refuse raise ValueError.
        """
        channel_id = self.channel_id if channel_id is None else channel_id
        guild_id = self.guild_id if guild_id is None else guild_id
        cmd = self._find_command(name, guild_id)
        if cmd is None and self.strict_commands:
            raise ValueError(f"/{name} has not been synced; synced: {[c['name'] for c in self.commands]}")
        schema_options: list[dict[str, Any]] | None = None if cmd is None else list(cmd.get("options") or [])
        path = subcommand.split() if subcommand else []
        for part in path:
            if schema_options is None:
                break
            parent = next((o for o in schema_options if o["name"] == part), None)
            if parent is None:
                raise ValueError(f"/{name} has no subcommand (group) {part!r}")
            schema_options = list(parent.get("options") or [])
        resolved: dict[str, dict[str, Any]] = {}
        built = self.build_options(options or {}, schema_options, resolved, validate=validate)
        built = _wrap_subcommand(path, built)
        data: dict[str, Any] = {
            "id": cmd["id"] if cmd is not None else str(self.snowflake()),
            "name": name,
            "type": 1,
            "options": built,
        }
        if cmd is not None and cmd.get("guild_id"):
            data["guild_id"] = cmd["guild_id"]  # only guild commands carry it (discord.py routes on it)
        if resolved:
            data["resolved"] = resolved
        inter = self._new_interaction(
            INTERACTION_APPLICATION_COMMAND,
            data,
            user_id=user_id,
            channel_id=channel_id,
            guild_id=guild_id,
            locale=locale,
        )
        return await self._send_interaction(inter)

    async def send_autocomplete(
        self,
        name: str,
        options: dict[str, Any],
        focused: str,
        *,
        user_id: int,
        channel_id: int | None = None,
        subcommand: str | None = None,
    ) -> FakeInteraction:
        """APPLICATION_COMMAND_AUTOCOMPLETE (type 4); ``await inter.wait_autocomplete()`` for the choices."""
        channel_id = self.channel_id if channel_id is None else channel_id
        cmd = self._find_command(name, self.guild_id)
        schema = None if cmd is None else list(cmd.get("options") or [])
        for part in subcommand.split() if subcommand else []:
            if schema is not None:
                schema = list(next(o for o in schema if o["name"] == part).get("options") or [])
        built = self.build_options(options, schema, {}, validate=False)
        for opt in built:
            if opt["name"] == focused:
                opt["focused"] = True
                opt["value"] = str(opt["value"])
        path = subcommand.split() if subcommand else []
        built = _wrap_subcommand(path, built)
        data: dict[str, Any] = {
            "id": cmd["id"] if cmd is not None else str(self.snowflake()),
            "name": name,
            "type": 1,
            "options": built,
        }
        if cmd is not None and cmd.get("guild_id"):
            data["guild_id"] = cmd["guild_id"]
        inter = self._new_interaction(
            INTERACTION_AUTOCOMPLETE, data, user_id=user_id, channel_id=channel_id, guild_id=self.guild_id
        )
        return await self._send_interaction(inter)

    def build_options(
        self,
        options: dict[str, Any] | list[dict[str, Any]],
        schema: list[dict[str, Any]] | None = None,
        resolved: dict[str, dict[str, Any]] | None = None,
        *,
        validate: bool = True,
    ) -> list[dict[str, Any]]:
        """Interaction ``data.options`` from a dict (see ``send_slash``) or an explicit list; fills
        ``resolved`` (users/members/channels/roles/attachments) in place."""
        resolved = {} if resolved is None else resolved
        by_name = {o["name"]: o for o in schema or []}
        items: list[tuple[str, Any, int | None]]
        if isinstance(options, dict):
            items = [(k, v, None) for k, v in options.items()]
        else:
            items = [(o["name"], o["value"], o.get("type")) for o in options]
        out: list[dict[str, Any]] = []
        for name, value, explicit_type in items:
            spec = by_name.get(name)
            if schema is not None and spec is None and validate:
                raise ValueError(f"unknown option {name!r}; declared: {sorted(by_name)}")
            opt_type = explicit_type or (spec["type"] if spec else self._infer_option_type(value))
            wire = self._option_value(opt_type, value, resolved)
            if spec is not None and validate:
                self._validate_option(spec, wire)
            out.append({"name": name, "type": opt_type, "value": wire})
        if schema is not None and validate:
            given = {o["name"] for o in out}
            missing = [o["name"] for o in schema if o.get("required") and o["name"] not in given]
            if missing:
                raise ValueError(f"missing required options {missing}")
        return out

    @staticmethod
    def _infer_option_type(value: Any) -> int:
        if isinstance(value, bool):
            return OPT_BOOLEAN
        if isinstance(value, int):
            return OPT_INTEGER
        if isinstance(value, float):
            return OPT_NUMBER
        if isinstance(value, (bytes, tuple)):
            return OPT_ATTACHMENT
        if isinstance(value, str):
            if _USER_MENTION.fullmatch(value):
                return OPT_USER
            if _CHANNEL_MENTION.fullmatch(value):
                return OPT_CHANNEL
            if _ROLE_MENTION.fullmatch(value):
                return OPT_ROLE
        return OPT_STRING

    def _option_value(self, opt_type: int, value: Any, resolved: dict[str, dict[str, Any]]) -> Any:
        def snowflake_of(v: Any, pattern: re.Pattern[str]) -> int:
            if isinstance(v, str):
                m = pattern.fullmatch(v)
                return int(m[1]) if m else int(v)
            return int(getattr(v, "id", v))

        if opt_type == OPT_STRING:
            return str(value)
        if opt_type == OPT_INTEGER:
            if isinstance(value, bool) or int(value) != value:
                raise ValueError(f"integer option got {value!r}")
            return int(value)
        if opt_type == OPT_NUMBER:
            return float(value) if not isinstance(value, int) else value
        if opt_type == OPT_BOOLEAN:
            return bool(value)
        if opt_type in (OPT_USER, OPT_MENTIONABLE) and not (
            isinstance(value, str) and _ROLE_MENTION.fullmatch(value)
        ):
            uid = snowflake_of(value, _USER_MENTION)
            user = self.users.get(uid)
            if user is None:
                raise ValueError(f"unknown user {uid}")
            resolved.setdefault("users", {})[str(uid)] = user.payload()
            member = self.members.get(uid)
            if member is not None:
                resolved.setdefault("members", {})[str(uid)] = member.payload(
                    with_user=False, with_permissions=True
                )
            return str(uid)
        if opt_type in (OPT_ROLE, OPT_MENTIONABLE):
            rid = snowflake_of(value, _ROLE_MENTION)
            resolved.setdefault("roles", {})[str(rid)] = self.roles[rid].payload()
            return str(rid)
        if opt_type == OPT_CHANNEL:
            cid = snowflake_of(value, _CHANNEL_MENTION)
            resolved.setdefault("channels", {})[str(cid)] = self.channels[cid].payload(
                permissions=ALL_PERMISSIONS
            )
            return str(cid)
        if opt_type == OPT_ATTACHMENT:
            filename, data = value if isinstance(value, tuple) else ("upload.bin", value)
            att = self._new_attachment(RecordedFile("option", filename, bytes(data)), filename, None)
            resolved.setdefault("attachments", {})[str(att.id)] = att.payload()
            return str(att.id)
        return value

    @staticmethod
    def _validate_option(spec: dict[str, Any], value: Any) -> None:
        name = spec["name"]
        choices = spec.get("choices")
        if choices and value not in [c["value"] for c in choices]:
            raise ValueError(f"option {name!r}: {value!r} is not one of the choices")
        if spec["type"] in (OPT_INTEGER, OPT_NUMBER):
            if spec.get("min_value") is not None and value < spec["min_value"]:
                raise ValueError(f"option {name!r}: {value} < min_value {spec['min_value']}")
            if spec.get("max_value") is not None and value > spec["max_value"]:
                raise ValueError(f"option {name!r}: {value} > max_value {spec['max_value']}")
        if spec["type"] == OPT_STRING:
            if spec.get("min_length") is not None and len(value) < spec["min_length"]:
                raise ValueError(f"option {name!r}: shorter than min_length {spec['min_length']}")
            if len(value) > (spec.get("max_length") or 6000):
                raise ValueError(f"option {name!r}: longer than max_length")

    def _component_message(self, message_id: int | FakeMessage) -> FakeMessage:
        msg = self.messages.get(message_id.id if isinstance(message_id, FakeMessage) else int(message_id))
        if msg is None or msg.deleted:
            raise ValueError(f"message {message_id} does not exist (or was deleted)")
        return msg

    async def click_button(
        self, message_id: int | FakeMessage, custom_id: str, *, user_id: int
    ) -> FakeInteraction:
        """A user clicks button ``custom_id`` on a stored message (MESSAGE_COMPONENT, component_type 2)."""
        msg = self._component_message(message_id)
        comp = msg.find_component(custom_id)
        if comp.get("type") != 2:
            raise ValueError(f"component {custom_id!r} is not a button: {comp}")
        if comp.get("disabled"):
            raise ValueError(f"button {custom_id!r} is disabled")
        if msg.ephemeral:
            inter_user = self._interaction_user_of(msg)
            if inter_user is not None and inter_user != user_id:
                raise ValueError("only the invoking user can see (and click) an ephemeral message")
        data = {"custom_id": custom_id, "component_type": 2}
        if "id" in comp:
            data["id"] = comp["id"]
        inter = self._new_interaction(
            INTERACTION_MESSAGE_COMPONENT,
            data,
            user_id=user_id,
            channel_id=msg.channel_id,
            guild_id=msg.guild_id,
            message=msg,
        )
        return await self._send_interaction(inter)

    async def select(
        self, message_id: int | FakeMessage, custom_id: str, values: list[str], *, user_id: int
    ) -> FakeInteraction:
        """A user picks ``values`` in select menu ``custom_id`` (MESSAGE_COMPONENT, component_type 3-8)."""
        msg = self._component_message(message_id)
        comp = msg.find_component(custom_id)
        ctype = comp.get("type")
        if ctype not in (3, 5, 6, 7, 8):
            raise ValueError(f"component {custom_id!r} is not a select menu: {comp}")
        if comp.get("disabled"):
            raise ValueError(f"select {custom_id!r} is disabled")
        lo, hi = comp.get("min_values", 1), comp.get("max_values", 1)
        if not lo <= len(values) <= hi:
            raise ValueError(f"select {custom_id!r} takes {lo}..{hi} values, got {len(values)}")
        resolved: dict[str, dict[str, Any]] = {}
        if ctype == 3:
            allowed = [o["value"] for o in comp.get("options", [])]
            bad = [v for v in values if v not in allowed]
            if bad:
                raise ValueError(f"values {bad} are not options of {custom_id!r} ({allowed})")
        else:
            kind = {5: OPT_USER, 6: OPT_ROLE, 7: OPT_MENTIONABLE, 8: OPT_CHANNEL}[ctype]
            values = [self._option_value(kind, v, resolved) for v in values]
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": ctype, "values": list(values)}
        if resolved:
            data["resolved"] = resolved
        inter = self._new_interaction(
            INTERACTION_MESSAGE_COMPONENT,
            data,
            user_id=user_id,
            channel_id=msg.channel_id,
            guild_id=msg.guild_id,
            message=msg,
        )
        return await self._send_interaction(inter)

    async def submit_modal(
        self, opened_by: FakeInteraction, values: dict[str, str], *, user_id: int | None = None
    ) -> FakeInteraction:
        """Submit the modal that ``opened_by`` answered with (callback 9); ``values`` maps text input
        custom_id -> text."""
        modal = opened_by.modal
        if modal is None:
            raise ValueError(f"{opened_by.describe()} did not open a modal")
        known = {
            c.get("custom_id") for c in _walk_components(modal.get("components", [])) if c.get("type") == 4
        }
        unknown = set(values) - known
        if unknown:
            raise ValueError(
                f"modal has no text inputs {sorted(unknown)}; it has {sorted(k for k in known if k)}"
            )
        rows = [
            {"type": 1, "components": [{"type": 4, "custom_id": cid, "value": text}]}
            for cid, text in values.items()
        ]
        data = {"custom_id": modal["custom_id"], "components": rows}
        msg = self.messages.get(opened_by.message_id) if opened_by.message_id else None
        inter = self._new_interaction(
            INTERACTION_MODAL_SUBMIT,
            data,
            user_id=opened_by.user_id if user_id is None else user_id,
            channel_id=opened_by.channel_id,
            guild_id=opened_by.guild_id,
            message=msg,
        )
        return await self._send_interaction(inter)

    def _interaction_user_of(self, msg: FakeMessage) -> int | None:
        if msg.interaction_id is None:
            return None
        inter = self.interactions.get(msg.interaction_id)
        return None if inter is None else inter.user_id

    # ------------------------------------------------------------------ messages
    def _new_attachment(self, f: RecordedFile, filename: str, description: str | None) -> FakeAttachment:
        aid = self.snowflake()
        content_type = mimetypes.guess_type(filename)[0]
        size = _image_size(f.data) if content_type and content_type.startswith("image/") else None
        att = FakeAttachment(
            id=aid,
            filename=filename,
            data=f.data,
            url=f"{self.base_url}/attachments/{aid}/{filename}",
            content_type=content_type,
            description=description,
            width=size[0] if size else None,
            height=size[1] if size else None,
        )
        self.attachments[aid] = att
        return att

    def _apply_message_payload(
        self, msg: FakeMessage, body: dict[str, Any], files: dict[int, RecordedFile], *, creating: bool
    ) -> None:
        for f in files.values():
            if len(f.data) > self.attachment_size_limit:
                raise ApiError(413, 40005, "Request entity too large")
        if "content" in body:
            msg.content = body["content"] or ""
        if "embeds" in body:
            msg.embeds = [dict(e) for e in body["embeds"] or []]
        if "components" in body:
            msg.components = list(body["components"] or [])
        if "allowed_mentions" in body:
            msg.allowed_mentions = body["allowed_mentions"]
        flags = body.get("flags")
        if flags is not None:
            if creating:
                keep = (
                    FLAG_EPHEMERAL
                    | FLAG_SUPPRESS_EMBEDS
                    | FLAG_SUPPRESS_NOTIFICATIONS
                    | FLAG_IS_COMPONENTS_V2
                )
                msg.flags = (msg.flags & ~keep) | (int(flags) & keep)
            else:
                msg.flags = (msg.flags & ~FLAG_SUPPRESS_EMBEDS) | (int(flags) & FLAG_SUPPRESS_EMBEDS)
                msg.flags |= int(flags) & FLAG_IS_COMPONENTS_V2
        if creating:
            msg.tts = bool(body.get("tts", False))
        listed = body.get("attachments")
        if listed is not None:
            existing = {a.id: a for a in msg.attachments}
            new: list[FakeAttachment] = []
            used: set[int] = set()
            for i, entry in enumerate(listed):
                aid = int(entry["id"])
                if not creating and aid in existing:
                    new.append(existing[aid])
                    continue
                upload = files.get(aid)
                if upload is None:
                    raise _form_error(f"attachments.{i}", "ATTACHMENT_NOT_FOUND", f"Unknown attachment {aid}")
                used.add(aid)
                new.append(
                    self._new_attachment(
                        upload, entry.get("filename") or upload.filename, entry.get("description")
                    )
                )
            for idx in sorted(set(files) - used):
                new.append(self._new_attachment(files[idx], files[idx].filename, None))
            msg.attachments = new
        elif files:
            msg.attachments = msg.attachments + [
                self._new_attachment(files[i], files[i].filename, None) for i in sorted(files)
            ]
        self._resolve_embed_attachments(msg)

    def _resolve_embed_attachments(self, msg: FakeMessage) -> None:
        by_name = {a.filename: a for a in msg.attachments}
        for embed in msg.embeds:
            for key in ("image", "thumbnail"):
                part = embed.get(key)
                if isinstance(part, dict) and str(part.get("url", "")).startswith("attachment://"):
                    att = by_name.get(part["url"][len("attachment://") :])
                    if att is not None:
                        part.update(url=att.url, proxy_url=att.url)
                        if att.width is not None:
                            part.update(width=att.width, height=att.height)

    def _validate_message(self, msg: FakeMessage, body: dict[str, Any]) -> None:
        if len(msg.content) > 2000:
            raise _form_error("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
        if len(msg.embeds) > 10:
            raise _form_error("embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        total = 0
        limits = {"title": 256, "description": 4096}
        for i, embed in enumerate(msg.embeds):
            for key, limit in limits.items():
                n = len(embed.get(key) or "")
                total += n
                if n > limit:
                    raise _form_error(
                        f"embeds.{i}.{key}", "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length."
                    )
            fields = embed.get("fields") or []
            if len(fields) > 25:
                raise _form_error(
                    f"embeds.{i}.fields", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
                )
            for j, fld in enumerate(fields):
                if not fld.get("name") or not fld.get("value"):
                    raise _form_error(
                        f"embeds.{i}.fields.{j}", "BASE_TYPE_REQUIRED", "This field is required"
                    )
                if len(fld["name"]) > 256 or len(fld["value"]) > 1024:
                    raise _form_error(f"embeds.{i}.fields.{j}", "BASE_TYPE_MAX_LENGTH", "Field too long.")
                total += len(fld["name"]) + len(fld["value"])
            total += len((embed.get("footer") or {}).get("text") or "")
            total += len((embed.get("author") or {}).get("name") or "")
        if total > 6000:
            raise _form_error("embeds", "MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds maximum size of 6000")
        if len(msg.attachments) > 10:
            raise _form_error("attachments", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        self._validate_components(msg)
        if not msg.has_body and not body.get("sticker_ids") and not body.get("poll"):
            raise ApiError(400, 50006, "Cannot send an empty message")

    def _validate_components(self, msg: FakeMessage) -> None:
        v2 = bool(msg.flags & FLAG_IS_COMPONENTS_V2)
        if v2 and (msg.content or msg.embeds):
            raise _form_error(
                "content", "MESSAGE_CANNOT_USE_LEGACY_FIELDS_WITH_COMPONENTS_V2", "Cannot use content"
            )
        if not v2:
            if len(msg.components) > 5:
                raise _form_error("components", "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length.")
            for i, row in enumerate(msg.components):
                if row.get("type") != 1:
                    raise _form_error(
                        f"components.{i}", "UNION_TYPE_CHOICES", "Top-level components must be rows"
                    )
                children = row.get("components") or []
                selects = [c for c in children if c.get("type") in (3, 5, 6, 7, 8)]
                if not children or len(children) > 5 or (selects and len(children) > 1):
                    raise _form_error(f"components.{i}.components", "BASE_TYPE_BAD_LENGTH", "Bad row width")
        seen: set[str] = set()
        for comp in _walk_components(msg.components):
            cid = comp.get("custom_id")
            if comp.get("type") == 2:
                if comp.get("style") == 5:
                    if not comp.get("url") or cid:
                        raise _form_error(
                            "components", "BUTTON_COMPONENT_URL_REQUIRED", "Link needs url only"
                        )
                elif comp.get("style") != 6 and not cid:
                    raise _form_error(
                        "components", "BUTTON_COMPONENT_CUSTOM_ID_REQUIRED", "custom_id required"
                    )
                if len(comp.get("label") or "") > 80:
                    raise _form_error(
                        "components", "BASE_TYPE_MAX_LENGTH", "Label must be 80 or fewer in length."
                    )
            if comp.get("type") == 3 and not 1 <= len(comp.get("options") or []) <= 25:
                raise _form_error("components", "BASE_TYPE_BAD_LENGTH", "Select needs 1..25 options")
            if cid is not None:
                if not 1 <= len(cid) <= 100:
                    raise _form_error("components", "BASE_TYPE_BAD_LENGTH", "custom_id must be 1..100 long")
                if cid in seen:
                    raise _form_error("components", "COMPONENT_CUSTOM_ID_DUPLICATED", "Duplicate custom_id")
                seen.add(cid)

    def _pinged(self, msg: FakeMessage) -> tuple[list[int], list[int], bool]:
        """(user ids, role ids, everyone) that this message actually pings, honouring allowed_mentions."""
        am = msg.allowed_mentions
        parse = set(am.get("parse", [])) if am is not None else {"users", "roles", "everyone"}
        allowed_users = {int(u) for u in (am or {}).get("users", [])}
        allowed_roles = {int(r) for r in (am or {}).get("roles", [])}
        users = [
            int(u)
            for u in dict.fromkeys(_USER_MENTION.findall(msg.content))
            if int(u) in self.users and ("users" in parse or int(u) in allowed_users)
        ]
        roles = [
            int(r)
            for r in dict.fromkeys(_ROLE_MENTION.findall(msg.content))
            if int(r) in self.roles and ("roles" in parse or int(r) in allowed_roles)
        ]
        everyone = "everyone" in parse and ("@everyone" in msg.content or "@here" in msg.content)
        return users, roles, everyone

    def pinged_user_ids(self, msg: FakeMessage) -> list[int]:
        return self._pinged(msg)[0]

    def pings_everyone(self, msg: FakeMessage) -> bool:
        return self._pinged(msg)[2]

    def message_payload(self, msg: FakeMessage, *, with_reference: bool = True) -> dict[str, Any]:
        users, roles, everyone = self._pinged(msg)
        data: dict[str, Any] = {
            "id": str(msg.id),
            "channel_id": str(msg.channel_id),
            "author": msg.author.payload(),
            "content": msg.content,
            "timestamp": msg.timestamp,
            "edited_timestamp": msg.edited_timestamp,
            "tts": msg.tts,
            "mention_everyone": everyone,
            "mentions": [self.users[u].payload() for u in users],
            "mention_roles": [str(r) for r in roles],
            "attachments": [a.payload() for a in msg.attachments],
            "embeds": [dict(e) for e in msg.embeds],
            "components": list(msg.components),
            "pinned": msg.pinned,
            "type": msg.type,
            "flags": msg.flags,
        }
        if msg.nonce is not None:
            data["nonce"] = msg.nonce
        if msg.guild_id is not None:
            data["guild_id"] = str(msg.guild_id)
        if msg.webhook_id is not None:
            data["webhook_id"] = str(msg.webhook_id)
        if msg.application_id is not None:
            data["application_id"] = str(msg.application_id)
        if msg.interaction_metadata is not None:
            meta = msg.interaction_metadata
            data["interaction_metadata"] = meta
            legacy = {
                "id": meta["id"],
                "type": meta["type"],
                "name": meta.get("name", ""),
                "user": meta["user"],
            }
            data["interaction"] = legacy
        if msg.message_reference is not None:
            data["message_reference"] = msg.message_reference
            if with_reference:
                ref = self.messages.get(int(msg.message_reference.get("message_id", 0) or 0))
                data["referenced_message"] = (
                    None if ref is None or ref.deleted else self.message_payload(ref, with_reference=False)
                )
        return data

    def _store(self, msg: FakeMessage) -> FakeMessage:
        self.messages[msg.id] = msg
        self._changed()
        return msg

    def _edit(self, msg: FakeMessage, body: dict[str, Any], files: dict[int, RecordedFile]) -> None:
        """Apply an edit atomically (validation failure leaves the message unchanged)."""
        before = msg.snapshot()
        saved = (msg.content, msg.embeds, msg.components, msg.attachments, msg.allowed_mentions, msg.flags)
        try:
            self._apply_message_payload(msg, body, files, creating=False)
            if msg.loading:
                msg.flags &= ~FLAG_LOADING
            self._validate_message(msg, body)
        except ApiError:
            (msg.content, msg.embeds, msg.components, msg.attachments, msg.allowed_mentions, msg.flags) = (
                saved
            )
            raise
        msg.history.append(before)
        msg.edited_at = time.monotonic()
        msg.edited_timestamp = _iso_now()
        self._changed()

    async def _message_event(self, event: str, msg: FakeMessage) -> None:
        """MESSAGE_CREATE/UPDATE/DELETE to the bot when its intents ask for them (never for ephemerals)."""
        sess = self._session
        if sess is None or msg.ephemeral or msg.loading:
            return
        channel = self.channels.get(msg.channel_id)
        bit = INTENT_DIRECT_MESSAGES if channel is not None and channel.type == 1 else INTENT_GUILD_MESSAGES
        if not sess.intents & bit:
            return
        if event == "MESSAGE_DELETE":
            data: dict[str, Any] = {"id": str(msg.id), "channel_id": str(msg.channel_id)}
            if msg.guild_id is not None:
                data["guild_id"] = str(msg.guild_id)
        else:
            data = self.message_payload(msg)
            if msg.guild_id is not None and msg.author.id in self.members:
                data["member"] = self.members[msg.author.id].payload(with_user=False)
        await self.dispatch(event, data)

    def _interaction_message(self, inter: FakeInteraction, *, original: bool) -> FakeMessage:
        user = self.users[inter.user_id]
        meta: dict[str, Any] = {
            "id": str(inter.id),
            "type": inter.type,
            "user": user.payload(),
            "authorizing_integration_owners": inter.payload.get("authorizing_integration_owners", {}),
        }
        if inter.type == INTERACTION_APPLICATION_COMMAND:
            meta["name"] = inter.name or ""
            meta["command_type"] = 1
        if inter.message_id is not None:
            meta["interacted_message_id"] = str(inter.message_id)
        if not original and inter.original_message_id is not None:
            meta["original_response_message_id"] = str(inter.original_message_id)
        mtype = 20 if original and inter.type == INTERACTION_APPLICATION_COMMAND else 0
        return FakeMessage(
            id=self.snowflake(),
            channel_id=inter.channel_id,
            guild_id=inter.guild_id,
            author=self.bot_user,
            type=mtype,
            webhook_id=self.app_id,
            application_id=self.app_id,
            interaction_id=inter.id,
            interaction_metadata=meta,
        )

    # ------------------------------------------------------------------ HTTP plumbing
    async def _attachment_handler(self, request: web.Request) -> web.StreamResponse:
        att = (
            self.attachments.get(int(request.match_info["aid"]))
            if request.match_info["aid"].isdigit()
            else None
        )
        if att is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=att.data, content_type=att.content_type or "application/octet-stream")

    @staticmethod
    def _json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
        if body is None and status == 204:
            return web.Response(status=204, headers=headers)
        # exactly "application/json": discord.py only parses JSON when the header equals that string
        return web.Response(
            status=status, body=_dumps(body).encode(), headers={**_JSON_HEADERS, **(headers or {})}
        )

    async def _read_body(self, request: web.Request) -> tuple[Any, dict[int, RecordedFile]]:
        files: dict[int, RecordedFile] = {}
        ctype = request.headers.get("Content-Type", "")
        if ctype.startswith("multipart/"):
            body: Any = None
            reader = await request.multipart()
            extra = 1000
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not isinstance(part, BodyPartReader):  # nested multipart: not something discord.py sends
                    continue
                raw = await part.read(decode=False)
                name = part.name or ""
                if name == "payload_json":
                    body = json.loads(bytes(raw).decode())
                    continue
                m = _FILES_FIELD.fullmatch(name)
                idx = int(m[1]) if m else extra
                extra += 0 if m else 1
                filename = part.filename or name
                files[idx] = RecordedFile(name, filename, bytes(raw), part.headers.get("Content-Type"))
            return body, files
        raw_text = await request.text()
        if not raw_text:
            return None, files
        try:
            return json.loads(raw_text), files
        except ValueError:
            return raw_text, files

    async def _http_handler(self, request: web.Request) -> web.StreamResponse:
        m = re.match(r"^/api(?:/v\d+)?(/.*)$", request.path)
        sub = m[1] if m else request.path
        bearer = self.oauth.bearer_user(request)
        if bearer is not None and request.method == "GET" and sub in ("/users/@me", "/users/@me/guilds"):
            return self.oauth.answer(sub, bearer)
        body, files = await self._read_body(request)
        rec = RecordedRequest(
            method=request.method,
            path=sub,
            query=dict(request.query),
            json=body,
            files=list(files.values()),
            time=time.monotonic(),
            authorization=request.headers.get("Authorization"),
        )
        self.requests.append(rec)
        try:
            status, out, headers = await self._route(request, sub, body, files, rec)
        except ApiError as e:
            status, out, headers = e.status, e.body(), {}
        rec.status, rec.response = status, out
        self._changed()
        return self._json_response(status, out, headers)

    async def _route(
        self, request: web.Request, sub: str, body: Any, files: dict[int, RecordedFile], rec: RecordedRequest
    ) -> tuple[int, Any, dict[str, str]]:
        method = request.method
        for inj in self._injections:
            if inj.matches(method, sub):
                inj.remaining -= 1
                if inj.delay:
                    await asyncio.sleep(inj.delay)
                if inj.status:
                    rec.injected = True
                    return inj.status, inj.body, inj.headers
                break
        self._injections = [i for i in self._injections if i.remaining > 0]
        for route_method, pattern, handler, needs_auth, route_name in self._route_table():
            if route_method != method:
                continue
            match = pattern.fullmatch(sub)
            if match is None:
                continue
            rec.route = route_name
            if needs_auth and request.headers.get("Authorization") != f"Bot {self.token}":
                return 401, {"message": "401: Unauthorized", "code": 0}, {}
            req = _Req(method, sub, dict(request.query), body, files, rec)
            status, out = await handler(req, **match.groupdict())
            return status, out, {}
        return 404, {"message": "404: Not Found", "code": 0}, {}

    def _route_table(self) -> list[tuple[str, re.Pattern[str], _Handler, bool, str]]:
        if self._routes_cache is not None:
            return self._routes_cache
        s = r"(?P<{}>\d+)"
        app, gid, cid, mid = s.format("app"), s.format("gid"), s.format("cid"), s.format("mid")
        tok = r"(?P<token>[^/]+)"
        raw: list[tuple[str, str, _Handler, bool]] = [
            ("GET", "/users/@me", self._r_me, True),
            ("GET", rf"/users/{s.format('uid')}", self._r_user, True),
            ("POST", "/users/@me/channels", self._r_create_dm, True),
            ("GET", "/oauth2/applications/@me", self._r_app_info, True),
            ("GET", "/applications/@me", self._r_app_info, True),
            ("GET", "/gateway", self._r_gateway, False),
            ("GET", "/gateway/bot", self._r_gateway_bot, True),
            ("GET", rf"/applications/{app}/commands", self._r_get_commands, True),
            ("PUT", rf"/applications/{app}/commands", self._r_put_commands, True),
            ("POST", rf"/applications/{app}/commands", self._r_post_command, True),
            ("GET", rf"/applications/{app}/commands/{cid}", self._r_get_command, True),
            ("DELETE", rf"/applications/{app}/commands/{cid}", self._r_delete_command, True),
            ("GET", rf"/applications/{app}/guilds/{gid}/commands", self._r_get_commands, True),
            ("PUT", rf"/applications/{app}/guilds/{gid}/commands", self._r_put_commands, True),
            ("POST", rf"/applications/{app}/guilds/{gid}/commands", self._r_post_command, True),
            ("GET", rf"/applications/{app}/guilds/{gid}/commands/{cid}", self._r_get_command, True),
            ("DELETE", rf"/applications/{app}/guilds/{gid}/commands/{cid}", self._r_delete_command, True),
            ("POST", rf"/interactions/{s.format('iid')}/{tok}/callback", self._r_callback, False),
            ("POST", rf"/webhooks/{app}/{tok}", self._r_followup, False),
            ("GET", rf"/webhooks/{app}/{tok}/messages/(?P<wmid>@original|\d+)", self._r_webhook_get, False),
            (
                "PATCH",
                rf"/webhooks/{app}/{tok}/messages/(?P<wmid>@original|\d+)",
                self._r_webhook_edit,
                False,
            ),
            (
                "DELETE",
                rf"/webhooks/{app}/{tok}/messages/(?P<wmid>@original|\d+)",
                self._r_webhook_delete,
                False,
            ),
            ("GET", rf"/channels/{cid}", self._r_get_channel, True),
            ("GET", rf"/channels/{cid}/messages", self._r_list_messages, True),
            ("POST", rf"/channels/{cid}/messages", self._r_create_message, True),
            ("GET", rf"/channels/{cid}/messages/{mid}", self._r_get_message, True),
            ("PATCH", rf"/channels/{cid}/messages/{mid}", self._r_edit_message, True),
            ("DELETE", rf"/channels/{cid}/messages/{mid}", self._r_delete_message, True),
            ("POST", rf"/channels/{cid}/typing", self._r_typing, True),
            ("PUT", rf"/channels/{cid}/messages/{mid}/reactions/(?P<emoji>[^/]+)/@me", self._r_react, True),
            (
                "DELETE",
                rf"/channels/{cid}/messages/{mid}/reactions/(?P<emoji>[^/]+)/@me",
                self._r_unreact,
                True,
            ),
            ("GET", rf"/guilds/{gid}", self._r_get_guild, True),
            ("GET", rf"/guilds/{gid}/channels", self._r_guild_channels, True),
            ("GET", rf"/guilds/{gid}/roles", self._r_guild_roles, True),
            ("GET", rf"/guilds/{gid}/members/{s.format('uid')}", self._r_get_member, True),
        ]
        table = [(mth, re.compile(pat), h, auth, f"{mth} {pat}") for mth, pat, h, auth in raw]
        self._routes_cache = table
        return table

    # ------------------------------------------------------------------ REST: users / app / gateway
    async def _r_me(self, req: _Req) -> tuple[int, Any]:
        return 200, {**self.bot_user.payload(), "verified": True, "mfa_enabled": False, "locale": "en-US"}

    async def _r_user(self, req: _Req, uid: str) -> tuple[int, Any]:
        user = self.users.get(int(uid))
        if user is None:
            raise ApiError(404, 10013, "Unknown User")
        return 200, user.payload()

    async def _r_create_dm(self, req: _Req) -> tuple[int, Any]:
        uid = int((req.json or {}).get("recipient_id", 0))
        if uid not in self.users:
            raise ApiError(400, 50035, "Invalid Form Body")
        return 200, self.dm_channel(uid).payload()

    async def _r_app_info(self, req: _Req) -> tuple[int, Any]:
        return 200, {
            "id": str(self.app_id),
            "name": self.bot_user.username,
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "rpc_origins": [],
            "bot_public": True,
            "bot_require_code_grant": False,
            "bot": self.bot_user.payload(),
            "owner": self.users[self.owner_id].payload(),
            "team": None,
            "verify_key": "0" * 64,
            "flags": 0,
            "tags": [],
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "approximate_guild_count": 1,
        }

    async def _r_gateway(self, req: _Req) -> tuple[int, Any]:
        return 200, {"url": self.gateway_url}

    async def _r_gateway_bot(self, req: _Req) -> tuple[int, Any]:
        limit = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
        return 200, {"url": self.gateway_url, "shards": 1, "session_start_limit": limit}

    # ------------------------------------------------------------------ REST: application commands
    def _command_scope(self, app: str, gid: str | None) -> list[dict[str, Any]]:
        if int(app) != self.app_id:
            raise ApiError(403, 50001, "Missing Access")
        if gid is None:
            return self.global_commands
        if int(gid) != self.guild_id:
            raise ApiError(403, 50001, "Missing Access")
        return self.guild_commands.setdefault(int(gid), [])

    def _validate_command(self, body: dict[str, Any], path: str) -> None:
        name = body.get("name") or ""
        ctype = body.get("type", 1)
        if ctype == 1:
            if not _COMMAND_NAME.fullmatch(name) or name != name.lower():
                raise _form_error(
                    f"{path}.name", "APPLICATION_COMMAND_INVALID_NAME", f"Invalid name {name!r}"
                )
            if not 1 <= len(body.get("description") or "") <= 100:
                raise _form_error(
                    f"{path}.description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
                )
        elif not 1 <= len(name) <= 32:
            raise _form_error(f"{path}.name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32 in length.")
        self._validate_command_options(body.get("options") or [], f"{path}.options")

    def _validate_command_options(self, options: list[dict[str, Any]], path: str) -> None:
        if len(options) > 25:
            raise _form_error(path, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
        seen_optional = False
        names: set[str] = set()
        for i, opt in enumerate(options):
            name = opt.get("name") or ""
            if not _COMMAND_NAME.fullmatch(name) or name != name.lower():
                raise _form_error(
                    f"{path}.{i}.name", "APPLICATION_COMMAND_INVALID_NAME", f"Invalid name {name!r}"
                )
            if name in names:
                raise _form_error(
                    f"{path}.{i}.name", "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS", "Dup"
                )
            names.add(name)
            if not 1 <= len(opt.get("description") or "") <= 100:
                raise _form_error(f"{path}.{i}.description", "BASE_TYPE_BAD_LENGTH", "Must be 1..100 long.")
            if opt.get("type") in (OPT_SUB_COMMAND, OPT_SUB_COMMAND_GROUP):
                self._validate_command_options(opt.get("options") or [], f"{path}.{i}.options")
                continue
            if opt.get("required"):
                if seen_optional:
                    raise _form_error(
                        f"{path}.{i}",
                        "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                        "Required options must be first",
                    )
            else:
                seen_optional = True
            if len(opt.get("choices") or []) > 25:
                raise _form_error(
                    f"{path}.{i}.choices", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
                )

    def _upsert_command(
        self, scope: list[dict[str, Any]], body: dict[str, Any], gid: str | None
    ) -> dict[str, Any]:
        ctype = body.get("type", 1)
        old = next((c for c in scope if c["name"] == body.get("name") and c.get("type", 1) == ctype), None)
        cmd: dict[str, Any] = {
            "type": 1,
            "description": "",
            "options": [],
            "default_member_permissions": None,
            "dm_permission": True,
            "nsfw": False,
            "contexts": None,
            "integration_types": [0],
            **body,
            "id": old["id"] if old else str(self.snowflake()),
            "application_id": str(self.app_id),
            "version": str(self.snowflake()),
        }
        if gid is not None:
            cmd["guild_id"] = gid
        return cmd

    async def _r_get_commands(self, req: _Req, app: str, gid: str | None = None) -> tuple[int, Any]:
        return 200, list(self._command_scope(app, gid))

    async def _r_put_commands(self, req: _Req, app: str, gid: str | None = None) -> tuple[int, Any]:
        scope = self._command_scope(app, gid)
        body = req.json or []
        if not isinstance(body, list):
            raise _form_error("_", "BASE_TYPE_ARRAY", "Must be an array.")
        if len(body) > 100:
            raise _form_error("_", "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length.")
        keys: set[tuple[str, int]] = set()
        for i, cmd in enumerate(body):
            self._validate_command(cmd, str(i))
            key = (cmd.get("name", ""), cmd.get("type", 1))
            if key in keys:
                raise _form_error(f"{i}.name", "APPLICATION_COMMANDS_DUPLICATE_NAME", f"Duplicate {key[0]!r}")
            keys.add(key)
        new = [self._upsert_command(scope, cmd, gid) for cmd in body]
        scope[:] = new
        self.sync_count += 1
        return 200, new

    async def _r_post_command(self, req: _Req, app: str, gid: str | None = None) -> tuple[int, Any]:
        scope = self._command_scope(app, gid)
        self._validate_command(req.json or {}, "_")
        cmd = self._upsert_command(scope, req.json, gid)
        existed = any(c["id"] == cmd["id"] for c in scope)
        scope[:] = [cmd if c["id"] == cmd["id"] else c for c in scope] + ([] if existed else [cmd])
        return (200 if existed else 201), cmd

    async def _r_get_command(self, req: _Req, app: str, cid: str, gid: str | None = None) -> tuple[int, Any]:
        for cmd in self._command_scope(app, gid):
            if cmd["id"] == cid:
                return 200, cmd
        raise ApiError(404, 10063, "Unknown application command")

    async def _r_delete_command(
        self, req: _Req, app: str, cid: str, gid: str | None = None
    ) -> tuple[int, Any]:
        scope = self._command_scope(app, gid)
        if not any(c["id"] == cid for c in scope):
            raise ApiError(404, 10063, "Unknown application command")
        scope[:] = [c for c in scope if c["id"] != cid]
        return 204, None

    # ------------------------------------------------------------------ REST: interactions / webhooks
    async def _r_callback(self, req: _Req, iid: str, token: str) -> tuple[int, Any]:
        inter = self.interactions.get(int(iid))
        if inter is None or inter.token != token:
            raise ApiError(404, 10062, "Unknown interaction")
        now = time.monotonic()
        if self.callback_deadline is not None and now - inter.created_at > self.callback_deadline:
            inter.late_callback = True
            raise ApiError(404, 10062, "Unknown interaction")
        if now - inter.created_at > self.interaction_ttl or inter.expired:
            raise ApiError(404, 10062, "Unknown interaction")
        if inter.callback_types:
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        body = req.json if isinstance(req.json, dict) else {}
        cbtype = body.get("type")
        data = body.get("data") or {}
        if cbtype not in _ALLOWED_CALLBACKS.get(inter.type, set()):
            raise _form_error(
                "type", "INTERACTION_RESPONSE_TYPE_INVALID", f"Response type {cbtype} invalid here"
            )
        message: FakeMessage | None = None
        if cbtype == CALLBACK_MESSAGE:
            message = self._interaction_message(inter, original=True)
            self._apply_message_payload(message, data, req.files, creating=True)
            self._validate_message(message, data)
        elif cbtype == CALLBACK_DEFERRED_MESSAGE:
            message = self._interaction_message(inter, original=True)
            message.flags = FLAG_LOADING | (int(data.get("flags") or 0) & FLAG_EPHEMERAL)
        elif cbtype == CALLBACK_UPDATE_MESSAGE:
            if inter.message_id is None:
                raise _form_error("type", "INTERACTION_RESPONSE_TYPE_INVALID", "No message to update")
            message = self.messages[inter.message_id]
            self._edit(message, data, req.files)
        elif cbtype == CALLBACK_DEFERRED_UPDATE and inter.message_id is None:
            raise _form_error("type", "INTERACTION_RESPONSE_TYPE_INVALID", "No message to update")
        elif cbtype == CALLBACK_MODAL:
            if not data.get("custom_id") or not data.get("title") or not data.get("components"):
                raise _form_error("data", "BASE_TYPE_REQUIRED", "Modal needs custom_id, title and components")
            if len(data["title"]) > 45 or len(data["components"]) > 5:
                raise _form_error("data", "BASE_TYPE_MAX_LENGTH", "Modal title <= 45, <= 5 components")
        # accepted: record
        inter.callback_types.append(cbtype)
        inter.callbacks.append(body)
        inter.acked_at = now
        if cbtype in (CALLBACK_DEFERRED_MESSAGE, CALLBACK_DEFERRED_UPDATE):
            inter.deferred_at = now
        if cbtype in (CALLBACK_MESSAGE, CALLBACK_DEFERRED_MESSAGE):
            assert message is not None
            message.sent_via = "callback"
            self._store(message)
            inter.original_message_id = message.id
            inter.responded = cbtype == CALLBACK_MESSAGE
            if cbtype == CALLBACK_MESSAGE:
                await self._message_event("MESSAGE_CREATE", message)
        elif cbtype in (CALLBACK_UPDATE_MESSAGE, CALLBACK_DEFERRED_UPDATE):
            inter.original_message_id = inter.message_id
            if cbtype == CALLBACK_UPDATE_MESSAGE:
                inter.responded = True
                assert message is not None
                await self._message_event("MESSAGE_UPDATE", message)
        elif cbtype == CALLBACK_MODAL:
            inter.modal = data
        elif cbtype == CALLBACK_AUTOCOMPLETE:
            inter.autocomplete_choices = list(data.get("choices") or [])
        self._changed()
        if req.query.get("with_response", "").lower() not in ("1", "true"):
            return 204, None
        info: dict[str, Any] = {"id": str(inter.id), "type": inter.type}
        resource: dict[str, Any] = {"type": cbtype}
        if message is not None:
            info["response_message_id"] = str(message.id)
            info["response_message_loading"] = message.loading
            info["response_message_ephemeral"] = message.ephemeral
            resource["message"] = self.message_payload(message)
        return 200, {"interaction": info, "resource": resource}

    def _webhook_interaction(self, app: str, token: str) -> FakeInteraction:
        if int(app) != self.app_id:
            raise ApiError(404, 10015, "Unknown Webhook")
        inter = self._by_token.get(token)
        if inter is None:
            raise ApiError(401, 50027, "Invalid Webhook Token")
        if inter.expired or time.monotonic() - inter.created_at > self.interaction_ttl:
            inter.expired = True
            raise ApiError(401, 50027, "Invalid Webhook Token")
        if not inter.callback_types:
            raise ApiError(404, 10015, "Unknown Webhook")
        return inter

    def _webhook_message(self, inter: FakeInteraction, wmid: str) -> FakeMessage:
        if wmid == "@original":
            msg = inter.original
        else:
            msg = self.messages.get(int(wmid))
            if msg is not None and msg.id != inter.original_message_id and msg.id not in inter.followup_ids:
                msg = None
        if msg is None or msg.deleted:
            raise ApiError(404, 10008, "Unknown Message")
        return msg

    async def _r_followup(self, req: _Req, app: str, token: str) -> tuple[int, Any]:
        inter = self._webhook_interaction(app, token)
        body = req.json if isinstance(req.json, dict) else {}
        orig = inter.original
        if (
            orig is not None
            and orig.loading
            and not orig.deleted
            and inter.callback_types[0] == CALLBACK_DEFERRED_MESSAGE
        ):
            # Discord: the first followup after a "thinking" defer fills the loading message instead of
            # creating a new one (its ephemeral-ness was fixed by the defer).
            self._edit(orig, {k: v for k, v in body.items() if k != "flags"}, req.files)
            msg = orig
            msg.sent_via = "followup"
            inter.responded = True
            await self._message_event("MESSAGE_CREATE", msg)
        else:
            msg = self._interaction_message(inter, original=False)
            self._apply_message_payload(msg, body, req.files, creating=True)
            self._validate_message(msg, body)
            msg.sent_via = "followup"
            self._store(msg)
            await self._message_event("MESSAGE_CREATE", msg)
        inter.followup_ids.append(msg.id)
        self._changed()
        if req.query.get("wait", "").lower() in ("1", "true"):
            return 200, self.message_payload(msg)
        return 204, None

    async def _r_webhook_get(self, req: _Req, app: str, token: str, wmid: str) -> tuple[int, Any]:
        inter = self._webhook_interaction(app, token)
        return 200, self.message_payload(self._webhook_message(inter, wmid))

    async def _r_webhook_edit(self, req: _Req, app: str, token: str, wmid: str) -> tuple[int, Any]:
        inter = self._webhook_interaction(app, token)
        msg = self._webhook_message(inter, wmid)
        was_loading = msg.loading
        self._edit(msg, req.json if isinstance(req.json, dict) else {}, req.files)
        if msg.id == inter.original_message_id:
            inter.responded = True
        await self._message_event("MESSAGE_CREATE" if was_loading else "MESSAGE_UPDATE", msg)
        return 200, self.message_payload(msg)

    async def _r_webhook_delete(self, req: _Req, app: str, token: str, wmid: str) -> tuple[int, Any]:
        inter = self._webhook_interaction(app, token)
        msg = self._webhook_message(inter, wmid)
        self._delete(msg)
        await self._message_event("MESSAGE_DELETE", msg)
        return 204, None

    def _delete(self, msg: FakeMessage) -> None:
        msg.deleted = True
        msg.deleted_at = time.monotonic()
        self._changed()

    # ------------------------------------------------------------------ REST: channels / messages
    def _channel(self, cid: str) -> FakeChannel:
        channel = self.channels.get(int(cid))
        if channel is None:
            raise ApiError(404, 10003, "Unknown Channel")
        if channel.type != 1 and not self.bot_permissions_in(channel.id) & VIEW_CHANNEL:
            raise ApiError(403, 50001, "Missing Access")
        return channel

    def _channel_message(self, channel: FakeChannel, mid: str) -> FakeMessage:
        msg = self.messages.get(int(mid))
        if msg is None or msg.deleted or msg.ephemeral or msg.loading or msg.channel_id != channel.id:
            raise ApiError(404, 10008, "Unknown Message")
        return msg

    async def _r_get_channel(self, req: _Req, cid: str) -> tuple[int, Any]:
        return 200, self._channel(cid).payload()

    async def _r_list_messages(self, req: _Req, cid: str) -> tuple[int, Any]:
        channel = self._channel(cid)
        if channel.type != 1 and not self.bot_permissions_in(channel.id) & READ_MESSAGE_HISTORY:
            return 200, []
        msgs = sorted(self.channel_messages(channel.id), key=lambda m: m.id, reverse=True)
        if "before" in req.query:
            msgs = [m for m in msgs if m.id < int(req.query["before"])]
        if "after" in req.query:
            msgs = [m for m in msgs if m.id > int(req.query["after"])]
        limit = int(req.query.get("limit", 50))
        return 200, [self.message_payload(m) for m in msgs[:limit]]

    async def _r_get_message(self, req: _Req, cid: str, mid: str) -> tuple[int, Any]:
        channel = self._channel(cid)
        return 200, self.message_payload(self._channel_message(channel, mid))

    async def _r_create_message(self, req: _Req, cid: str) -> tuple[int, Any]:
        channel = self._channel(cid)
        body = req.json if isinstance(req.json, dict) else {}
        if channel.type == 1:
            assert channel.recipient is not None
            if channel.recipient.id in self.dm_closed_user_ids:
                raise ApiError(403, 50007, "Cannot send messages to this user")
        else:
            perms = self.bot_permissions_in(channel.id)
            needed = VIEW_CHANNEL | SEND_MESSAGES
            if req.files:
                needed |= ATTACH_FILES
            if body.get("embeds"):
                needed |= EMBED_LINKS
            if perms & needed != needed:
                raise ApiError(403, 50013, "Missing Permissions")
        nonce = body.get("nonce")
        nonce_key = (self.bot_user_id, str(nonce)) if nonce is not None else None
        if nonce_key is not None and body.get("enforce_nonce"):
            # Discord: the same author's message with this nonce in the past few minutes is returned as is.
            seen = self._nonces.get(nonce_key)
            if seen is not None and time.monotonic() - seen[1] < self.nonce_window:
                earlier = self.messages.get(seen[0])
                if earlier is not None and not earlier.deleted:
                    req.record.nonce_reused = True
                    return 200, self.message_payload(earlier)
        msg = FakeMessage(
            id=self.snowflake(),
            channel_id=channel.id,
            guild_id=channel.guild_id,
            author=self.bot_user,
            nonce=None if nonce is None else str(nonce),
        )
        body = {k: v for k, v in body.items() if k != "flags" or not int(v or 0) & FLAG_EPHEMERAL}
        self._apply_message_payload(msg, body, req.files, creating=True)
        ref = body.get("message_reference")
        if ref:
            target = self.messages.get(int(ref.get("message_id") or 0))
            if target is None or target.deleted or target.ephemeral:
                if ref.get("fail_if_not_exists", True):
                    raise _form_error("message_reference", "REPLIES_UNKNOWN_MESSAGE", "Unknown message")
            else:
                msg.type = 19
                msg.message_reference = {
                    "type": 0,
                    "message_id": str(target.id),
                    "channel_id": str(target.channel_id),
                    **({"guild_id": str(target.guild_id)} if target.guild_id else {}),
                }
        self._validate_message(msg, body)
        msg.sent_via = "channel"
        self._store(msg)
        if nonce_key is not None:
            self._nonces[nonce_key] = (msg.id, time.monotonic())
        await self._message_event("MESSAGE_CREATE", msg)
        return 200, self.message_payload(msg)

    async def _r_edit_message(self, req: _Req, cid: str, mid: str) -> tuple[int, Any]:
        channel = self._channel(cid)
        msg = self._channel_message(channel, mid)
        if msg.author.id != self.bot_user_id:
            raise ApiError(403, 50005, "Cannot edit a message authored by another user")
        self._edit(msg, req.json if isinstance(req.json, dict) else {}, req.files)
        await self._message_event("MESSAGE_UPDATE", msg)
        return 200, self.message_payload(msg)

    async def _r_delete_message(self, req: _Req, cid: str, mid: str) -> tuple[int, Any]:
        channel = self._channel(cid)
        msg = self._channel_message(channel, mid)
        if msg.author.id != self.bot_user_id and not self.bot_permissions_in(channel.id) & MANAGE_MESSAGES:
            raise ApiError(403, 50013, "Missing Permissions")
        self._delete(msg)
        await self._message_event("MESSAGE_DELETE", msg)
        return 204, None

    async def _r_typing(self, req: _Req, cid: str) -> tuple[int, Any]:
        self._channel(cid)
        return 204, None

    async def _r_react(self, req: _Req, cid: str, mid: str, emoji: str) -> tuple[int, Any]:
        from urllib.parse import unquote

        msg = self._channel_message(self._channel(cid), mid)
        if (
            not self.bot_permissions_in(msg.channel_id) & ADD_REACTIONS
            and unquote(emoji) not in msg.reactions
        ):
            raise ApiError(403, 50013, "Missing Permissions")
        msg.reactions.setdefault(unquote(emoji), set()).add(self.bot_user_id)
        self._changed()
        return 204, None

    async def _r_unreact(self, req: _Req, cid: str, mid: str, emoji: str) -> tuple[int, Any]:
        from urllib.parse import unquote

        msg = self._channel_message(self._channel(cid), mid)
        msg.reactions.get(unquote(emoji), set()).discard(self.bot_user_id)
        self._changed()
        return 204, None

    # ------------------------------------------------------------------ REST: guild
    def _guild(self, gid: str) -> None:
        if int(gid) != self.guild_id:
            raise ApiError(404, 10004, "Unknown Guild")

    async def _r_get_guild(self, req: _Req, gid: str) -> tuple[int, Any]:
        self._guild(gid)
        data = self.guild_payload()
        for key in ("members", "channels", "threads", "voice_states", "presences", "joined_at", "large"):
            data.pop(key, None)
        return 200, data

    async def _r_guild_channels(self, req: _Req, gid: str) -> tuple[int, Any]:
        self._guild(gid)
        return 200, [c.payload() for c in self.channels.values() if c.type != 1]

    async def _r_guild_roles(self, req: _Req, gid: str) -> tuple[int, Any]:
        self._guild(gid)
        return 200, [r.payload() for r in self.roles.values()]

    async def _r_get_member(self, req: _Req, gid: str, uid: str) -> tuple[int, Any]:
        self._guild(gid)
        member = self.members.get(int(uid))
        if member is None:
            raise ApiError(404, 10007, "Unknown Member")
        return 200, member.payload()
