"""Member signals on tiles: ⭐ likes and the button presses the prompt expander learns from."""

from __future__ import annotations

import json
import time

from bot.store.db import Database
from bot.store.records import TilePress


class LikeQueries(Database):
    """Likes (Discord and the web gallery) and tile presses (bot.train.expander)."""

    # -- likes (⭐ on a tile, from Discord or the web gallery; a preference signal for training) ----------
    async def toggle_like(self, user_id: int, job_id: str, idx: int) -> bool:
        """Star or unstar one tile for this member; whether it is starred now (only existing tiles can be)."""
        async with self._write() as db:
            query = "DELETE FROM likes WHERE user_id = ? AND job_id = ? AND idx = ?"
            cursor = await db.execute(query, (user_id, job_id, idx))
            if cursor.rowcount:
                return False
            query = """
                INSERT INTO likes (user_id, job_id, idx, created_at)
                SELECT ?, job_id, idx, ? FROM tiles WHERE job_id = ? AND idx = ?
            """
            cursor = await db.execute(query, (user_id, time.time(), job_id, idx))
            return cursor.rowcount == 1

    # -- preference presses (bot.train.expander) --------------------------------------------------
    async def tile_presses(self, *, guild_id: int | None, all_guilds: bool) -> list[TilePress]:
        """Every job made by pressing a button on one tile of an expanded grid, with that grid's prompts.

        Only rows that exist: /forget deletes a member's jobs (their presses with them) and the grids they
        made, so a forgotten member's picks never reach training.
        """
        query = """
            SELECT press.id AS press_id, press.action, press.source_tile, press.guild_id AS press_guild,
                grid.id AS grid_id, grid.seed_text, grid.job_seed, grid.guild_id, grid.expander_json
            FROM jobs AS press JOIN jobs AS grid ON press.parent_id = grid.id
            WHERE press.source_tile IS NOT NULL AND grid.status = 'done' AND grid.expand = 1 AND grid.count > 1
                AND (? OR grid.guild_id IS ?)
            ORDER BY press.created_at, press.rowid
        """
        presses: list[TilePress] = []
        async with self._lock:
            for row in await self._fetch_locked(query, (int(all_guilds), guild_id)):
                tiles = await self._fetch_locked(
                    "SELECT prompt FROM tiles WHERE job_id = ? ORDER BY idx", (row["grid_id"],)
                )
                presses.append(
                    TilePress(
                        press_id=row["press_id"],
                        action=row["action"],
                        tile=row["source_tile"],
                        grid_id=row["grid_id"],
                        guild_id=row["guild_id"],
                        seed_text=row["seed_text"],
                        job_seed=row["job_seed"],
                        prompts=tuple(r["prompt"] for r in tiles),
                        expander=json.loads(row["expander_json"]) if row["expander_json"] else {},
                    )
                )
        return presses
