"""/shorten's stored answers (issue 22, bot/shortened.py): saved, read, pruned after KEEP_DAYS, forgotten."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot import shortened
from bot.store import HistoryStore


async def test_answers_are_kept_for_their_days_then_pruned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with HistoryStore(tmp_path / "history.sqlite3") as store:
        clock = [1_000_000.0]
        monkeypatch.setattr(shortened.time, "time", lambda: clock[0])
        old = await shortened.save_shortened(store, ("a fox", "fox"), user_id=7, guild_id=1)
        assert await shortened.load_shortened(store, old) == (7, ("a fox", "fox"))
        clock[0] += shortened.KEEP_DAYS * 86400 - 1
        kept = await shortened.save_shortened(store, ("red",), user_id=8, guild_id=1)
        assert await shortened.load_shortened(store, old) is not None
        clock[0] += 2
        await shortened.save_shortened(store, ("blue",), user_id=8, guild_id=1)
        assert await shortened.load_shortened(store, old) is None
        assert await shortened.load_shortened(store, kept) == (8, ("red",))
        assert await shortened.forget_shortened(store, user_id=8, guild_id=1) == 2
        assert await shortened.load_shortened(store, kept) is None
