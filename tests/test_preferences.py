"""Stored /settings: precedence, bounds that name the bound, the change log, forgetting, surviving a reopen."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.preferences import (
    GuildSettings,
    JobDefaults,
    MemberSettings,
    PreferenceStore,
    SettingRefused,
    check_guild_value,
    check_job_value,
    effective_parameters,
    safe_mode_for_policy,
)
from bot.settings import Settings
from bot.store import HistoryStore
from tests.helpers import job_spec

GUILD, OTHER_GUILD, ALICE, BOB, MOD = 1, 2, 10, 11, 12


def _settings(**overrides: object) -> Settings:
    return Settings(_env_file=None, **overrides)  # type: ignore[call-arg]


def test_command_options_beat_member_beat_server_beat_operator() -> None:
    settings = _settings(count=4, steps=25)
    guild = GuildSettings(defaults=JobDefaults(count=3, steps=30, negative="text"))
    member = MemberSettings(count=2, private=True)
    # Nothing given: the member's count, the server's steps and negative, the operator's guidance.
    p = effective_parameters(settings, guild, member, {"count": None, "steps": None})
    assert (p.count, p.steps, p.guidance, p.negative, p.private) == (2, 30, 7.5, "text", True)
    assert p.from_member == ("count", "private")
    # One command's options override everything for that job; they are not "from your defaults".
    p = effective_parameters(settings, guild, member, {"count": 1, "steps": 5})
    assert (p.count, p.steps) == (1, 5)
    assert p.from_member == ("private",)
    # No settings at all: the operator's defaults.
    p = effective_parameters(settings, GuildSettings(), MemberSettings(), {})
    assert (p.count, p.aspect, p.steps, p.expand, p.private) == (4, "square", 25, True, False)


@pytest.mark.parametrize(
    ("key", "value", "bound"),
    [
        ("count", 9, "1..4 (the bot's limit IMAGINE_MAX_COUNT), got 9"),
        ("steps", 80, "1..50 (the bot's limit IMAGINE_MAX_STEPS), got 80"),
        ("steps", "many", "must be a number"),
        ("steps", 2.5, "must be a whole number"),
        ("guidance", 40, "0..20 (the bot's limit IMAGINE_MAX_GUIDANCE), got 40"),
        ("aspect", "wide", "must be one of square, portrait, landscape"),
        ("negative", "x" * 501, "at most 500 characters (IMAGINE_MAX_PROMPT_CHARS)"),
    ],
)
def test_member_value_outside_the_operator_bound_is_refused_naming_it(
    key: str, value: object, bound: str
) -> None:
    with pytest.raises(SettingRefused) as refused:
        check_job_value(_settings(), key, value)
    assert bound in str(refused.value)


def test_server_limits_must_stay_within_the_operator_limits() -> None:
    settings = _settings(max_pending_per_user=3, cooldown_seconds=5.0)
    with pytest.raises(
        SettingRefused, match=r"1\.\.3 \(the bot's limit IMAGINE_MAX_PENDING_PER_USER\), got 4"
    ):
        check_guild_value(settings, "max_pending", 4)
    with pytest.raises(SettingRefused, match=r"IMAGINE_COOLDOWN_SECONDS=5\), got 1"):
        check_guild_value(settings, "cooldown", 1)
    assert check_guild_value(settings, "max_pending", "2") == 2
    assert check_guild_value(settings, "cooldown", 30) == 30.0
    assert check_guild_value(settings, "default_steps", "40") == 40
    with pytest.raises(SettingRefused, match="IMAGINE_MAX_STEPS"):
        check_guild_value(settings, "default_steps", 51)


def test_content_policy_never_unfilters_without_the_operator() -> None:
    assert safe_mode_for_policy("channel", nsfw_channel=True, allow_nsfw=True) is False
    assert safe_mode_for_policy("channel", nsfw_channel=True, allow_nsfw=False) is True
    assert safe_mode_for_policy("filtered", nsfw_channel=True, allow_nsfw=True) is True
    assert safe_mode_for_policy("channel", nsfw_channel=False, allow_nsfw=True) is True


@pytest.mark.asyncio(loop_scope="session")
async def test_settings_are_stored_logged_forgotten_and_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    async with HistoryStore(path) as store:
        prefs = PreferenceStore(store)
        await prefs.set_member(GUILD, ALICE, MemberSettings(count=2, aspect="portrait", private=True))
        await prefs.set_member(GUILD, BOB, MemberSettings(steps=10))
        await prefs.set_member(OTHER_GUILD, ALICE, MemberSettings(count=1))
        first = await prefs.change_guild(GUILD, MOD, "channels", (7, 5))
        await prefs.change_guild(GUILD, MOD, "default_count", 3)
        second = await prefs.change_guild(GUILD, MOD, "channels", (5,))
        assert await prefs.change_guild(GUILD, MOD, "default_count", 3) is None  # no change, no log row
        await prefs.change_guild(OTHER_GUILD, MOD, "policy", "filtered")
        assert first is not None and (first.old, first.new) == ("unset", "<#7>, <#5>")
        assert second is not None and (second.old, second.new) == ("<#7>, <#5>", "<#5>")
        # A job records private delivery and the keys that came from the member's defaults.
        job = await store.create_job(
            job_spec(
                seed_text="cat",
                count=2,
                job_seed=1,
                user_id=ALICE,
                private=True,
                from_defaults=("count", "private"),
            )
        )
        assert (job.private, job.from_defaults) == (True, ("count", "private"))

    async with HistoryStore(path) as store:  # a restart
        prefs = PreferenceStore(store)
        assert await prefs.member(GUILD, ALICE) == MemberSettings(count=2, aspect="portrait", private=True)
        guild = await prefs.guild(GUILD)
        assert guild.channels == (5,) and guild.defaults.count == 3 and guild.policy == "channel"
        changes = await prefs.guild_changes(GUILD)
        assert [(c.actor_id, c.key, c.old, c.new) for c in changes] == [
            (MOD, "channels", "<#7>, <#5>", "<#5>"),
            (MOD, "default_count", "unset", "3"),
            (MOD, "channels", "unset", "<#7>, <#5>"),
        ]
        # /forget: one member's settings in one server.
        assert await prefs.delete_member(GUILD, ALICE) is True
        assert await prefs.delete_member(GUILD, ALICE) is False
        assert await prefs.member(GUILD, ALICE) == MemberSettings()
        assert await prefs.member(OTHER_GUILD, ALICE) == MemberSettings(count=1)
        # Leaving a server: its settings, log and members' settings go; other servers keep theirs.
        await prefs.forget_guild(GUILD)
        assert await prefs.guild(GUILD) == GuildSettings()
        assert await prefs.guild_changes(GUILD) == []
        assert await prefs.member(GUILD, BOB) == MemberSettings()
        assert (await prefs.guild(OTHER_GUILD)).policy == "filtered"
        assert await prefs.member(OTHER_GUILD, ALICE) == MemberSettings(count=1)
        # Resetting every value removes the row.
        await prefs.set_member(OTHER_GUILD, ALICE, MemberSettings())
        rows = await store._fetch("SELECT COUNT(*) FROM member_settings")
        assert rows[0][0] == 0
