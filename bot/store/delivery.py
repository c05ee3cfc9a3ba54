"""Whether a finished job's result reached Discord: claimed, delivered, undeliverable, retried."""

from __future__ import annotations

import time

from bot.store.jobs import JobQueries
from bot.store.records import JobRecord


class DeliveryQueries(JobQueries):
    """A result's delivery state (one process delivers it: `claim_delivery` is the lock)."""

    async def claim_delivery(self, job_id: str, *, message_id: int | None = None) -> bool:
        """pending → sending; False if someone already delivered it (at most once).

        `message_id` is the interaction response the result is about to be edited into: recorded before
        the edit, so a restart can look at that one message instead of scanning the channel.
        """
        async with self._write() as db:
            query = """
                UPDATE jobs SET delivery = 'sending', delivery_claimed_at = ?, message_id = ?
                WHERE id = ? AND delivery = 'pending'
            """
            cursor = await db.execute(query, (time.time(), message_id, job_id))
            return cursor.rowcount == 1

    async def mark_delivered(
        self, job_id: str, *, message_id: int | None, channel_id: int | None = None
    ) -> None:
        async with self._write() as db:
            query = """
                UPDATE jobs SET delivery = 'sent', message_id = COALESCE(?, message_id),
                    channel_id = COALESCE(channel_id, ?)
                WHERE id = ?
            """
            await db.execute(query, (message_id, channel_id, job_id))

    async def mark_undelivered(self, job_id: str, reason: str) -> None:
        """Discord refused every way to post the result: final, with the reason, kept in /history."""
        async with self._write() as db:
            query = (
                "UPDATE jobs SET delivery = 'none', message_id = NULL, undelivered_reason = ? WHERE id = ?"
            )
            await db.execute(query, (reason[:500], job_id))

    async def set_delivery_none(self, job_id: str) -> None:
        """Jobs nobody waits for in Discord (the CLI)."""
        async with self._write() as db:
            query = "UPDATE jobs SET delivery = 'none' WHERE id = ?"
            await db.execute(query, (job_id,))

    async def undelivered_jobs(self, *, finished_before: float | None = None) -> list[JobRecord]:
        """Final Discord jobs whose result was never confirmed posted (`pending`, or `sending` at a crash)."""
        query = """
            SELECT * FROM jobs WHERE status IN ('done', 'failed', 'cancelled') AND delivery IN ('pending', 'sending')
                AND channel_id IS NOT NULL AND finished_at < ? ORDER BY created_at
        """
        cutoff = finished_before if finished_before is not None else time.time()
        async with self._lock:
            rows = await self._fetch_locked(query, (cutoff,))
            return [await self._with_tiles(row) for row in rows]

    async def reset_delivery(self, job_id: str) -> None:
        """sending → pending: a crash interrupted the post and the channel shows no result."""
        async with self._write() as db:
            query = "UPDATE jobs SET delivery = 'pending' WHERE id = ? AND delivery = 'sending'"
            await db.execute(query, (job_id,))
