"""The shorter prompts of /shorten answers (issue 22), kept so their **Imagine N** buttons survive a restart.

One row per answer (migration 10: `shortened`): its id (in the buttons' custom ids), the member and server,
the prompts (JSON). Rows older than KEEP_DAYS go when a new one is written; /forget deletes a member's.
"""

from __future__ import annotations

import json
import time

from bot.store import HistoryStore, new_job_id

KEEP_DAYS = 30.0


async def save_shortened(
    store: HistoryStore, prompts: tuple[str, ...], *, user_id: int | None, guild_id: int | None
) -> str:
    """Store `prompts`; returns the id the buttons carry."""
    answer_id = new_job_id()
    now = time.time()
    async with store.transaction() as db:
        await db.execute("DELETE FROM shortened WHERE created_at < ?", (now - KEEP_DAYS * 86400,))
        await db.execute(
            "INSERT INTO shortened (id, user_id, guild_id, prompts, created_at) VALUES (?, ?, ?, ?, ?)",
            (answer_id, user_id, guild_id, json.dumps(list(prompts)), now),
        )
    return answer_id


async def load_shortened(store: HistoryStore, answer_id: str) -> tuple[int | None, tuple[str, ...]] | None:
    """(the member who asked, the prompts) of an answer; None when it is gone."""
    rows = await store.read("SELECT user_id, prompts FROM shortened WHERE id = ?", (answer_id,))
    if not rows:
        return None
    user_id, prompts = rows[0]
    return user_id, tuple(str(p) for p in json.loads(prompts))


async def forget_shortened(store: HistoryStore, *, user_id: int, guild_id: int) -> int:
    """/forget: delete the member's stored answers; returns how many."""
    async with store.transaction() as db:
        cursor = await db.execute(
            "DELETE FROM shortened WHERE user_id = ? AND guild_id = ?", (user_id, guild_id)
        )
        return int(cursor.rowcount or 0)
