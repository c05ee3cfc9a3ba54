"""Job rows: creating them under the queue limits, reading, listing and deleting them."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import aiosqlite

from bot.engine.validation import normalize_user_text
from bot.store.db import Database
from bot.store.records import (
    _SPEC_COLUMNS,
    Cooldown,
    JobRecord,
    JobSpec,
    QueueFull,
    QueueRefused,
    Tile,
    UserLimit,
    _encode,
    _record,
    new_job_id,
)
from bot.store.schema import FINAL_STATES


class JobQueries(Database):
    """Creating, reading, listing and deleting job rows."""

    # -- creating and moving jobs -------------------------------------------------------------------
    async def create_job(
        self,
        spec: JobSpec,
        *,
        max_pending_per_user: int | None = None,
        max_queue: int | None = None,
        cooldown_seconds: float = 0.0,
        now: float | None = None,
    ) -> JobRecord:
        """Write a `queued` row, enforcing the queue limits in the same transaction."""
        now = time.time() if now is None else now
        job_id = spec.id or new_job_id()
        # Stored user text is one plain line: it is echoed in lists, embeds and the CLI's history.
        spec = replace(
            spec, seed_text=normalize_user_text(spec.seed_text), negative=normalize_user_text(spec.negative)
        )
        async with self._write() as db:
            refusal = await self._limit_refusal(
                db, spec.user_id, max_pending_per_user, max_queue, cooldown_seconds, now
            )
            if refusal is not None:
                raise refusal
            values = {name: _encode(name, getattr(spec, name)) for name in _SPEC_COLUMNS}
            values.update(id=job_id, status="queued", created_at=now)
            columns = ", ".join(values)
            marks = ", ".join("?" * len(values))
            await db.execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})", tuple(values.values()))
        job = await self.get_job(job_id)
        assert job is not None
        return job

    async def admission_refusal(
        self,
        user_id: int | None,
        *,
        max_pending_per_user: int | None,
        max_queue: int | None,
        cooldown_seconds: float,
    ) -> QueueRefused | None:
        """Read-only pre-check of the queue limits (create_job re-checks them atomically)."""
        async with self._lock:
            return await self._limit_refusal(
                self.db, user_id, max_pending_per_user, max_queue, cooldown_seconds, time.time()
            )

    @staticmethod
    async def _limit_refusal(
        db: aiosqlite.Connection,
        user_id: int | None,
        max_pending_per_user: int | None,
        max_queue: int | None,
        cooldown_seconds: float,
        now: float,
    ) -> QueueRefused | None:
        if max_queue is not None:
            query = "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')"
            ((pending,),) = await db.execute_fetchall(query)  # type: ignore[misc]
            if pending >= max_queue:
                return QueueFull(f"the queue is full ({pending} jobs); try again in a few minutes")
        if user_id is None:
            return None
        # The cooldown counts from the member's latest job that is still waiting or running: a member
        # whose jobs have all finished can always start the next one at once.
        query = """
            SELECT COUNT(*) FILTER (WHERE status IN ('queued', 'running')),
                MAX(created_at) FILTER (WHERE status IN ('queued', 'running'))
            FROM jobs WHERE user_id = ?
        """
        ((mine, last),) = await db.execute_fetchall(query, (user_id,))  # type: ignore[misc]
        if max_pending_per_user is not None and mine >= max_pending_per_user:
            return UserLimit(
                f"you already have {mine} jobs waiting (the limit is {max_pending_per_user}); "
                "wait for one to finish or `/cancel` one"
            )
        if cooldown_seconds and last is not None and now - last < cooldown_seconds:
            wait = max(1, round(cooldown_seconds - (now - last)))
            return Cooldown(f"you queued a job {now - last:.0f} s ago; please wait {wait} s more")
        return None

    # -- reading ---------------------------------------------------------------------------------
    async def get_job(self, job_id: str) -> JobRecord | None:
        query = "SELECT * FROM jobs WHERE id = ?"
        async with self._lock:
            rows = await self._fetch_locked(query, (job_id,))
            if not rows:
                return None
            return await self._with_tiles(rows[0])

    async def _with_tiles(self, row: aiosqlite.Row) -> JobRecord:
        """The row with its tiles (caller holds the lock, so row and tiles come from one state)."""
        query = "SELECT idx, prompt, image_seed, path, nsfw FROM tiles WHERE job_id = ? ORDER BY idx"
        tiles = tuple(
            Tile(r["idx"], r["prompt"], r["image_seed"], r["path"], bool(r["nsfw"]))
            for r in await self._fetch_locked(query, (row["id"],))
        )
        return _record(row, tiles)

    async def list_jobs(
        self,
        *,
        user_id: int | None = None,
        guild_id: int | None = None,
        any_user: bool = False,
        limit: int = 10,
        offset: int = 0,
    ) -> list[JobRecord]:
        """Newest first; scoped to one user (and guild) unless `any_user`."""
        clauses, params = self._scope(user_id, guild_id, any_user)
        query = f"SELECT * FROM jobs {clauses} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?"
        async with self._lock:
            rows = await self._fetch_locked(query, (*params, limit, offset))
            return [await self._with_tiles(row) for row in rows]

    async def count_jobs(
        self, *, user_id: int | None = None, guild_id: int | None = None, any_user: bool = False
    ) -> int:
        clauses, params = self._scope(user_id, guild_id, any_user)
        query = f"SELECT COUNT(*) FROM jobs {clauses}"
        rows = await self._fetch(query, params)
        return int(rows[0][0]) if rows else 0

    @staticmethod
    def _scope(user_id: int | None, guild_id: int | None, any_user: bool) -> tuple[str, tuple[Any, ...]]:
        conditions: list[str] = []
        params: list[Any] = []
        if not any_user:
            conditions.append("user_id IS ?")
            params.append(user_id)
        if guild_id is not None:
            conditions.append("guild_id = ?")
            params.append(guild_id)
        return ("WHERE " + " AND ".join(conditions)) if conditions else "", tuple(params)

    async def pending_jobs(self) -> list[JobRecord]:
        """queued and running rows, oldest first."""
        query = "SELECT * FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_at, rowid"
        # Tiles are written only when a job is done, so pending rows have none: one query, not 1 + N.
        return [_record(row, ()) for row in await self._fetch(query)]

    async def delete_user_jobs(self, user_id: int, guild_id: int | None) -> list[JobRecord]:
        """Delete a user's final jobs (in a guild, or everywhere); return them so files can go too."""
        jobs = [
            job
            for job in await self.list_jobs(user_id=user_id, guild_id=guild_id, limit=1_000_000)
            if job.status in FINAL_STATES
        ]
        async with self._write() as db:
            query = "DELETE FROM jobs WHERE id = ?"
            await db.executemany(query, [(job.id,) for job in jobs])
        return jobs

    async def jobs_derived_from(self, job_ids: Sequence[str], *, other_than: int) -> list[JobRecord]:
        """Jobs of users other than `other_than` descended (through parent_id, at any depth) from `job_ids`
        that carry input images: copies of those jobs' pictures (a moderator's Reproduce of an upload)."""
        query = """
            WITH RECURSIVE derived(id) AS (
                SELECT id FROM jobs WHERE parent_id IN (SELECT value FROM json_each(?))
                UNION SELECT jobs.id FROM jobs JOIN derived ON jobs.parent_id = derived.id
            )
            SELECT * FROM jobs WHERE id IN (SELECT id FROM derived) AND user_id IS NOT ?
                AND (init_image IS NOT NULL OR mask_image IS NOT NULL)
        """
        async with self._lock:
            rows = await self._fetch_locked(query, (json.dumps(list(job_ids)), other_than))
            return [await self._with_tiles(row) for row in rows]

    async def delete_jobs(self, job_ids: Sequence[str]) -> None:
        """Delete these rows (and their tiles)."""
        async with self._write() as db:
            query = "DELETE FROM jobs WHERE id = ?"
            await db.executemany(query, [(job_id,) for job_id in job_ids])

    async def sibling_jobs(self, group_id: str) -> list[JobRecord]:
        """The jobs one /imagine queued together (permutations, --repeat), in the order they were queued."""
        query = "SELECT * FROM jobs WHERE group_id = ? ORDER BY created_at, rowid"
        async with self._lock:
            rows = await self._fetch_locked(query, (group_id,))
            return [await self._with_tiles(row) for row in rows]
