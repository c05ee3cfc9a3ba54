"""Stored /settings: a member's job defaults and a server's settings, with the rules that bound them.

Precedence (README → /settings): the operator's limits (environment) ⊇ the server's settings ⊇ the member's
defaults ⊇ the options of one command. Every value is checked against the bound above it when it is set, and
the refusal names that bound. The tables are created by migration 4 in `bot.store`; this class shares the
history store's one connection and its `BEGIN IMMEDIATE` write pattern.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from bot.engine.mitigation import MITIGATIONS
from bot.models.allowed import MAX_ALLOWED
from bot.settings import Settings
from bot.store import HistoryStore

ASPECTS = ("square", "portrait", "landscape")
Policy = Literal["filtered", "channel"]
POLICIES: tuple[Policy, ...] = ("filtered", "channel")
POLICY_LABELS = {
    "filtered": "always filtered",
    "channel": "follow the channel's age-restricted flag",
}
JOB_KEYS = ("count", "aspect", "steps", "guidance", "expand", "negative")


class SettingRefused(ValueError):
    """A value outside its bound; the message is user-facing and names the bound."""


@dataclass(frozen=True)
class JobDefaults:
    """Job parameters a server or member prefers; None = not set (the level above decides)."""

    count: int | None = None
    aspect: str | None = None
    steps: int | None = None
    guidance: float | None = None
    expand: bool | None = None
    negative: str | None = None


@dataclass(frozen=True)
class MemberSettings(JobDefaults):
    """A member's defaults in one server."""

    private: bool | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))


@dataclass(frozen=True)
class GuildSettings:
    """A server's settings. Empty `channels` = /imagine may run in every channel."""

    channels: tuple[int, ...] = ()
    policy: Policy = "channel"
    max_pending: int | None = None
    cooldown: float | None = None
    defaults: JobDefaults = field(default_factory=JobDefaults)
    #: the bias mitigation of the server's jobs when a job names none (bot/engine/mitigation.py)
    mitigation: str = "off"
    #: the registry model jobs here use when they name none (None: the bot's default model)
    model: str | None = None
    #: whether `python -m bot train expander` may learn from this server's button presses (README → Fine-tuning)
    learn_from_choices: bool = True
    #: the LoRAs jobs here may use (empty: every LoRA of the bot); bot/models/allowed.py
    loras: tuple[str, ...] = ()


@dataclass(frozen=True)
class SettingChange:
    """One recorded change of a server setting."""

    actor_id: int
    at: float
    key: str
    old: str
    new: str


@dataclass(frozen=True)
class EffectiveParameters:
    """The values one job runs with, and which came from the member's own defaults."""

    count: int
    aspect: str
    steps: int
    guidance: float
    expand: bool
    negative: str
    private: bool
    from_member: tuple[str, ...]


# -- bounds ------------------------------------------------------------------------------------------------
def check_job_value(settings: Settings, key: str, value: Any) -> Any:
    """Validate one job parameter against the operator's limits; returns the normalised value."""
    if value is None:
        return None
    if key == "count":
        return _int_in(key, value, 1, settings.max_count, "IMAGINE_MAX_COUNT")
    if key == "steps":
        return _int_in(key, value, 1, settings.max_steps, "IMAGINE_MAX_STEPS")
    if key == "guidance":
        number = _number(key, value)
        if not 0.0 <= number <= settings.max_guidance:
            raise SettingRefused(
                f"`guidance` must be 0..{settings.max_guidance:g} (the bot's limit IMAGINE_MAX_GUIDANCE), "
                f"got {number:g}"
            )
        return number
    if key == "aspect":
        if value not in ASPECTS:
            raise SettingRefused(f"`aspect` must be one of {', '.join(ASPECTS)}, got {str(value)[:40]!r}")
        return value
    if key in ("expand", "private"):
        if not isinstance(value, bool):
            raise SettingRefused(f"`{key}` must be on or off")
        return value
    if key == "negative":
        text = " ".join(str(value).split())
        if len(text) > settings.max_prompt_chars:
            raise SettingRefused(
                f"`negative` may be at most {settings.max_prompt_chars} characters (IMAGINE_MAX_PROMPT_CHARS), "
                f"got {len(text)}"
            )
        return text or None
    raise SettingRefused(f"unknown setting `{key}`")


def check_guild_value(settings: Settings, key: str, value: Any) -> Any:
    """Validate one server setting against the operator's limits; returns the normalised value."""
    if key == "channels":
        return tuple(sorted({int(v) for v in value}))
    if key == "policy":
        if value not in POLICIES:
            raise SettingRefused(f"`policy` must be one of {', '.join(POLICIES)}, got {str(value)[:40]!r}")
        # "channel" is stored even when IMAGINE_ALLOW_NSFW=false: it then filters everywhere (see
        # safe_mode_for_policy), and the panel says so.
        return value
    if key == "max_pending":
        if value is None:
            return None
        return _int_in("max_pending", value, 1, settings.max_pending_per_user, "IMAGINE_MAX_PENDING_PER_USER")
    if key == "cooldown":
        if value is None:
            return None
        number = _number("cooldown", value)
        if number < settings.cooldown_seconds or number > 3600:
            raise SettingRefused(
                f"`cooldown` must be {settings.cooldown_seconds:g}..3600 seconds (the bot's minimum is "
                f"IMAGINE_COOLDOWN_SECONDS={settings.cooldown_seconds:g}), got {number:g}"
            )
        return number
    if key == "mitigation":
        if value not in MITIGATIONS:
            raise SettingRefused(
                f"`mitigation` must be one of {', '.join(MITIGATIONS)}, got {str(value)[:40]!r}"
            )
        return value
    if key.startswith("default_") and key.removeprefix("default_") in JOB_KEYS:
        return check_job_value(settings, key.removeprefix("default_"), value)
    if key == "learn_from_choices":
        if not isinstance(value, bool):
            raise SettingRefused(f"`learn_from_choices` must be on or off, got {str(value)[:40]!r}")
        return value
    if key == "loras":
        # Chosen from the LoRA folder by the panel; a name whose file goes away later allows nothing.
        names = sorted({str(v).strip()[:40] for v in value or () if str(v).strip()}, key=str.lower)
        if len(names) > MAX_ALLOWED:
            raise SettingRefused(f"at most {MAX_ALLOWED} allowed LoRAs, got {len(names)}")
        return tuple(names)
    if key == "model":
        # Checked against the registry by the panel; a name that leaves the registry later is ignored.
        return str(value).strip()[:40] or None if value is not None else None
    raise SettingRefused(f"unknown server setting `{key}`")


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise SettingRefused(f"`{key}` must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SettingRefused(f"`{key}` must be a number, got {str(value)[:40]!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise SettingRefused(f"`{key}` must be a finite number")
    return number


def _int_in(key: str, value: Any, low: int, high: int, bound: str) -> int:
    number = _number(key, value)
    if number != int(number):
        raise SettingRefused(f"`{key}` must be a whole number, got {number:g}")
    if not low <= number <= high:
        raise SettingRefused(f"`{key}` must be {low}..{high} (the bot's limit {bound}), got {int(number)}")
    return int(number)


# -- resolving ---------------------------------------------------------------------------------------------
def safe_mode_for_policy(policy: Policy, *, nsfw_channel: bool, allow_nsfw: bool) -> bool:
    """The content filter is off only in an age-restricted channel, when the operator and the server allow it."""
    return not (allow_nsfw and policy == "channel" and nsfw_channel)


def effective_parameters(
    settings: Settings, guild: GuildSettings, member: MemberSettings, options: dict[str, Any]
) -> EffectiveParameters:
    """Command options, else the member's defaults, else the server's, else the operator's."""
    operator = {
        "count": settings.count,
        "aspect": "square",
        "steps": settings.steps,
        "guidance": settings.guidance,
        "expand": True,
        "negative": "",
        "private": False,
    }
    values: dict[str, Any] = {}
    from_member: list[str] = []
    for key, fallback in operator.items():
        given = options.get(key)
        mine = getattr(member, key)
        server = getattr(guild.defaults, key, None)
        if given is not None:
            values[key] = given
        elif mine is not None:
            values[key] = mine
            from_member.append(key)
        elif server is not None:
            values[key] = server
        else:
            values[key] = fallback
    return EffectiveParameters(**values, from_member=tuple(from_member))


# -- storing -----------------------------------------------------------------------------------------------
def _member_from_json(text: str | None) -> MemberSettings:
    data = json.loads(text) if text else {}
    known = {f.name for f in fields(MemberSettings)}
    return MemberSettings(**{k: v for k, v in data.items() if k in known})


def _guild_from_json(text: str | None) -> GuildSettings:
    data = json.loads(text) if text else {}
    defaults = data.pop("defaults", None) or {}
    known = {f.name for f in fields(JobDefaults)}
    guild_known = {f.name for f in fields(GuildSettings)} - {"defaults"}
    values = {k: v for k, v in data.items() if k in guild_known}
    if "channels" in values:
        values["channels"] = tuple(values["channels"])
    if "loras" in values:
        values["loras"] = tuple(values["loras"])
    return GuildSettings(**values, defaults=JobDefaults(**{k: v for k, v in defaults.items() if k in known}))


def describe(value: Any) -> str:
    """A setting's value as the change log and the panels show it."""
    if value is None or value == ():
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple | list):
        return ", ".join(f"<#{v}>" if isinstance(v, int) else f"`{v}`" for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def guild_value(guild: GuildSettings, key: str) -> Any:
    """The current value of a server setting key (`default_count` for a default parameter)."""
    if key.startswith("default_"):
        return getattr(guild.defaults, key.removeprefix("default_"))
    return getattr(guild, key)


def with_guild_value(guild: GuildSettings, key: str, value: Any) -> GuildSettings:
    if key.startswith("default_"):
        return replace(guild, defaults=replace(guild.defaults, **{key.removeprefix("default_"): value}))
    return replace(guild, **{key: value})


class PreferenceStore:
    """Member and server settings in the history database (one connection, one writer at a time)."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store

    # -- members ---------------------------------------------------------------------------------------
    async def member(self, guild_id: int, user_id: int) -> MemberSettings:
        query = "SELECT settings_json FROM member_settings WHERE guild_id = ? AND user_id = ?"
        rows = await self.store._fetch(query, (guild_id, user_id))
        return _member_from_json(rows[0][0] if rows else None)

    async def set_member(self, guild_id: int, user_id: int, settings: MemberSettings) -> None:
        """Store a member's defaults; all-unset removes the row."""
        async with self.store._write() as db:
            if settings.is_empty():
                query = "DELETE FROM member_settings WHERE guild_id = ? AND user_id = ?"
                await db.execute(query, (guild_id, user_id))
                return
            query = """
                INSERT INTO member_settings (guild_id, user_id, settings_json, updated_at) VALUES (?, ?, ?, ?)
                ON CONFLICT (guild_id, user_id) DO UPDATE
                SET settings_json = excluded.settings_json, updated_at = excluded.updated_at
            """
            payload = json.dumps({k: v for k, v in asdict(settings).items() if v is not None})
            await db.execute(query, (guild_id, user_id, payload, time.time()))

    async def delete_member(self, guild_id: int, user_id: int) -> bool:
        """/forget: True when the member had settings here."""
        async with self.store._write() as db:
            query = "DELETE FROM member_settings WHERE guild_id = ? AND user_id = ?"
            cursor = await db.execute(query, (guild_id, user_id))
            return cursor.rowcount > 0

    async def forget_member(self, guild_id: int, user_id: int) -> tuple[bool, int]:
        """/forget: the member's settings here and their rows in the server's change log.

        Returns (had settings, change-log rows removed).
        """
        async with self.store._write() as db:
            query = "DELETE FROM member_settings WHERE guild_id = ? AND user_id = ?"
            cursor = await db.execute(query, (guild_id, user_id))
            had_settings = cursor.rowcount > 0
            query = "DELETE FROM guild_settings_log WHERE guild_id = ? AND actor_id = ?"
            cursor = await db.execute(query, (guild_id, user_id))
            return had_settings, cursor.rowcount

    # -- servers ---------------------------------------------------------------------------------------
    async def guild(self, guild_id: int) -> GuildSettings:
        query = "SELECT settings_json FROM guild_settings WHERE guild_id = ?"
        rows = await self.store._fetch(query, (guild_id,))
        return _guild_from_json(rows[0][0] if rows else None)

    async def change_guild(self, guild_id: int, actor_id: int, key: str, value: Any) -> SettingChange | None:
        """Set one server setting and log who changed it, old → new, in one transaction (None: no change)."""
        async with self.store._write() as db:
            query = "SELECT settings_json FROM guild_settings WHERE guild_id = ?"
            rows = list(await db.execute_fetchall(query, (guild_id,)))
            current = _guild_from_json(rows[0][0] if rows else None)
            old = guild_value(current, key)
            if old == value:
                return None
            updated = with_guild_value(current, key, value)
            payload = asdict(updated)
            payload["defaults"] = {k: v for k, v in payload["defaults"].items() if v is not None}
            now = time.time()
            query = """
                INSERT INTO guild_settings (guild_id, settings_json, updated_at) VALUES (?, ?, ?)
                ON CONFLICT (guild_id) DO UPDATE
                SET settings_json = excluded.settings_json, updated_at = excluded.updated_at
            """
            await db.execute(query, (guild_id, json.dumps(payload), now))
            change = SettingChange(actor_id, now, key, describe(old), describe(value))
            query = """
                INSERT INTO guild_settings_log (guild_id, actor_id, at, key, old_value, new_value)
                VALUES (?, ?, ?, ?, ?, ?)
            """
            await db.execute(query, (guild_id, actor_id, now, key, change.old, change.new))
            return change

    async def guild_changes(self, guild_id: int, *, limit: int = 5) -> list[SettingChange]:
        """The latest changes of a server's settings, newest first."""
        query = """
            SELECT actor_id, at, key, old_value, new_value FROM guild_settings_log
            WHERE guild_id = ? ORDER BY at DESC, id DESC LIMIT ?
        """
        rows = await self.store._fetch(query, (guild_id, limit))
        return [SettingChange(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def forget_guild(self, guild_id: int) -> None:
        """The bot left the server: its settings, its change log and its members' settings go."""
        async with self.store._write() as db:
            for query in (
                "DELETE FROM guild_settings WHERE guild_id = ?",
                "DELETE FROM guild_settings_log WHERE guild_id = ?",
                "DELETE FROM member_settings WHERE guild_id = ?",
            ):
                await db.execute(query, (guild_id,))
