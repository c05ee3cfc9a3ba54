"""The intake and the policy on plain data: a real SQLite store, no Discord, no models."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bot import policy
from bot.intake import BOT_ACTOR, ActionRequest, Admitted, ImagineRequest, Intake, Refusal, Requester
from bot.preferences import MemberSettings, PreferenceStore
from bot.settings import Settings
from bot.store import HistoryStore, JobRecord, Tile
from tests.helpers import job_spec

GUILD, CHANNEL, NSFW_CHANNEL, ALICE, MOD = 1, 2, 3, 10, 12
ALICE_HERE = Requester(ALICE, GUILD, CHANNEL)


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"data_dir": tmp_path, "width": 64, "height": 64, "steps": 2, "count": 2}
    return Settings(_env_file=None, **{**values, **overrides})  # type: ignore[call-arg]


async def _done_job(store: HistoryStore, tmp_path: Path, **fields: object) -> JobRecord:
    spec = job_spec(seed_text="a garden", count=2, job_seed=1, **fields)
    job = await store.create_job(spec)
    assert await store.mark_running(job.id)
    tiles = [Tile(i, f"prompt {i}", i, str(tmp_path / f"tile-{i}.png"), False) for i in (1, 2)]
    assert await store.mark_done(
        job.id, tiles=tiles, grid_path=str(tmp_path / "grid.png"), expander={}, render={}
    )
    done = await store.get_job(job.id)
    assert done is not None
    return done


async def test_a_stale_server_default_is_clamped_logged_as_the_bot_and_told(tmp_path: Path) -> None:
    async with HistoryStore(tmp_path / "h.sqlite3") as store:
        prefs = PreferenceStore(store)
        intake = Intake(_settings(tmp_path, max_steps=3), store, preferences=prefs)
        await prefs.change_guild(GUILD, MOD, "default_steps", 40)  # saved under a higher limit
        await prefs.set_member(GUILD, ALICE, MemberSettings(count=9))  # IMAGINE_MAX_COUNT is 4
        admitted = await intake.imagine(ALICE_HERE, ImagineRequest("a garden"))
        assert isinstance(admitted, Admitted)
        assert (admitted.spec.steps, admitted.spec.count) == (3, 4)
        assert len(admitted.notices) == 2 and all("/settings" in n for n in admitted.notices)
        (latest, *_) = await prefs.guild_changes(GUILD)
        assert (latest.actor_id, latest.key, latest.new) == (BOT_ACTOR, "default_steps", "3")
        again = await intake.imagine(ALICE_HERE, ImagineRequest("a garden"))
        assert isinstance(again, Admitted) and again.notices == ()  # told once


async def test_the_command_line_owns_its_jobs_and_keeps_the_filter(tmp_path: Path) -> None:
    async with HistoryStore(tmp_path / "h.sqlite3") as store:
        intake = Intake(_settings(tmp_path), store)
        operator = Requester(user_id=None)
        made = await intake.imagine(operator, ImagineRequest("a garden", width=128))
        assert isinstance(made, Admitted)
        spec = made.spec
        assert (spec.user_id, spec.guild_id, spec.channel_id, spec.safe_mode) == (None, None, None, True)
        assert (spec.width, spec.height) == (128, 64)
        members = await _done_job(store, tmp_path, user_id=ALICE, guild_id=GUILD, channel_id=CHANNEL)
        child = await intake.action(operator, ActionRequest(members.id, "pan-left", 2))
        assert isinstance(child, Admitted) and child.source is not None and child.source.geometry is not None
        assert (child.spec.user_id, child.spec.channel_id, child.spec.parent_id) == (None, None, members.id)
        refused = await intake.action(operator, ActionRequest(members.id, "upscale-subtle", 3))
        assert isinstance(refused, Refusal) and refused.usage and "has no image 3" in refused.message


async def test_one_source_image_rule_for_every_action_that_starts_from_pictures(tmp_path: Path) -> None:
    async with HistoryStore(tmp_path / "h.sqlite3") as store:
        intake = Intake(_settings(tmp_path, allow_nsfw=True), store)
        unfiltered = await _done_job(
            store,
            tmp_path,
            user_id=ALICE,
            guild_id=GUILD,
            channel_id=NSFW_CHANNEL,
            safe_mode=False,
            init_image=str(tmp_path / "upload.png"),
            action="image",
        )
        filtered_here = ALICE_HERE
        for action, tile in [
            ("variation", 1),
            ("vary-subtle", 1),
            ("zoom-2", 1),
            ("reproduce", None),
            ("rerender", None),
            ("remix", 1),
        ]:
            answer = await intake.action(filtered_here, ActionRequest(unfiltered.id, action, tile))
            assert isinstance(answer, Refusal) and "can't be used in this channel" in answer.message, action
        # The grid Remix of an image job starts from the upload too; of a text job, from text and the same
        # seeds only: that may run here, filtered.
        remix = await intake.action(filtered_here, ActionRequest(unfiltered.id, "remix"))
        assert isinstance(remix, Refusal)
        text_job = await _done_job(
            store, tmp_path, user_id=ALICE, guild_id=GUILD, channel_id=NSFW_CHANNEL, safe_mode=False
        )
        remix = await intake.action(filtered_here, ActionRequest(text_job.id, "remix"))
        assert isinstance(remix, Admitted) and remix.spec.safe_mode
        # In an age-restricted channel every action may use them.
        there = replace(ALICE_HERE, channel_id=NSFW_CHANNEL, age_restricted=True)
        varied = await intake.action(there, ActionRequest(unfiltered.id, "variation", 1))
        assert isinstance(varied, Admitted) and not varied.spec.safe_mode


@pytest.mark.parametrize(
    ("private", "presser", "filtered_here", "allowed"),
    [
        (True, ALICE, False, True),
        (True, MOD, False, False),
        (False, MOD, False, True),
        (False, MOD, True, False),
    ],
)
async def test_who_may_post_a_result_where(
    tmp_path: Path, private: bool, presser: int, filtered_here: bool, allowed: bool
) -> None:
    async with HistoryStore(tmp_path / "h.sqlite3") as store:
        job = await _done_job(store, tmp_path, user_id=ALICE, guild_id=GUILD, channel_id=CHANNEL)
    job = replace(job, private=private, safe_mode=not filtered_here)
    assert (policy.repost_refusal(job, presser_id=presser, filtered_here=filtered_here) is None) == allowed
    withheld = policy.withheld_text(job, filtered_now=filtered_here)
    assert (withheld is not None) == filtered_here
    assert policy.preview_allowed(safe_mode=True, screened_clean=None) is False
    assert policy.preview_allowed(safe_mode=True, screened_clean=True) is True
    assert policy.buttons_allowed(direct_message=True) is False
