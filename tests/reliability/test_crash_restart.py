"""kill -9 while a job runs, restart on the same data, repeat: no job lost, no result posted twice.

The bot runs as a real subprocess (`python -m bot run`); the fake Discord runs in this process. The loop
itself lives in `tests/reliability/harness.py` and is shared with `scripts/crash_loop.py`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.fakediscord import FakeDiscord
from tests.reliability.harness import (
    TOKEN,
    BotProcess,
    bot_env,
    read_jobs,
    result_counts,
    run_crash_loop,
    wait_for_rows,
)


@pytest.mark.parametrize(
    "iterations",
    [
        pytest.param(2, id="2-kills"),
        pytest.param(20, id="20-kills", marks=[pytest.mark.heavy, pytest.mark.timeout(1800)]),
    ],
)
async def test_kill_9_loop_loses_nothing(
    tmp_path: Path, tiny_models: tuple[Path, Path], iterations: int
) -> None:
    tally = await run_crash_loop(iterations=iterations, models=tiny_models, work_dir=tmp_path)
    print(tally.summary())
    assert tally.kills == iterations
    assert tally.jobs == iterations
    assert tally.lost == []
    assert tally.posted_twice == {}
    assert tally.never_delivered == []
    assert tally.sent_but_missing == []
    assert tally.integrity == ["ok"] * (iterations + 1)
    assert tally.final_exit_code == 0
    assert tally.max_attempts_seen <= 2


CHANNEL_POST = re.compile(r"^/channels/\d+/messages$")


async def test_crash_mid_post_in_a_busy_channel_posts_once(
    tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    """kill -9 while Discord creates the channel post, 150 messages after it, restart: one result (item 15)."""
    data_dir = tmp_path / "data"
    db_path = data_dir / "history.sqlite3"
    heartbeat = data_dir / "heartbeat.json"
    async with FakeDiscord(token=TOKEN, heartbeat_interval_ms=5000) as fake:
        env = bot_env(fake=fake, data_dir=data_dir, models=tiny_models, token=TOKEN)
        first = await BotProcess(env, tmp_path, name="first").start()
        try:
            await first.wait_ready(heartbeat)
            interaction = await fake.send_slash("imagine", {"seed": "busy channel"}, user_id=fake.alice_id)
            await interaction.wait_deferred(timeout=30)
            fake.expire_token(interaction.token)  # the result goes to the channel
            # Discord takes its time creating the message; the bot dies before the answer arrives.
            fake.delay_next("POST", CHANNEL_POST.pattern, seconds=3)
            await fake.wait_until(
                lambda: any(r.method == "POST" and CHANNEL_POST.match(r.path) for r in fake.requests),
                timeout=120,
                what="the channel post",
            )
        finally:
            await first.kill()
        (row,) = read_jobs(db_path)
        assert row["status"] == "done" and row["delivery"] == "sending", row
        await fake.wait_until(
            lambda: result_counts(fake)[row["id"]] == 1, timeout=10, what="the post landing"
        )
        for index in range(150):  # a busy channel: the result is far beyond the last 100 messages
            await fake.post_user_message(f"chatter {index}", user_id=fake.bob_id)

        second = await BotProcess(env, tmp_path, name="second").start()
        try:
            await second.wait_ready(heartbeat)
            await wait_for_rows(
                db_path, lambda rows: rows[0]["delivery"] == "sent", timeout=60, what="the delivery recorded"
            )
            assert await second.terminate() == 0
        finally:
            await second.kill()
        # Before: the restart scanned the last 100 messages, missed the result and posted it again.
        assert result_counts(fake)[row["id"]] == 1
        assert any(r.nonce_reused for r in fake.requests)
