"""A job's life in its row: claimed with a lease, renewed, finished, given back, recovered when its owner died."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from bot.store.jobs import JobQueries
from bot.store.records import Tile, _dumps

log = logging.getLogger(__name__)


class LifecycleQueries(JobQueries):
    """Moving a job between states; only the instance that owns a running row (its lease) may move it."""

    async def mark_running(self, job_id: str) -> bool:
        """queued → running (attempts + 1) under this instance's lease; False if no longer queued."""
        now = time.time()
        async with self._write() as db:
            # owner_pid is kept for the record only (which process, in its own PID namespace).
            query = """
                UPDATE jobs SET status = 'running', started_at = ?, attempts = attempts + 1, owner_pid = ?,
                    owner_instance = ?, lease_expires_at = ?
                WHERE id = ? AND status = 'queued'
            """
            cursor = await db.execute(
                query, (now, os.getpid(), self.instance_id, now + self.lease_seconds, job_id)
            )
            return cursor.rowcount == 1

    async def renew_leases(self, job_ids: Sequence[str]) -> list[str]:
        """Extend the leases of this instance's running jobs; returns the ids it no longer owns."""
        if not job_ids:
            return []
        lost: list[str] = []
        async with self._write() as db:
            query = """
                UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND status = 'running' AND owner_instance = ?
            """
            until = time.time() + self.lease_seconds
            for job_id in job_ids:
                cursor = await db.execute(query, (until, job_id, self.instance_id))
                if cursor.rowcount != 1:
                    lost.append(job_id)
        return lost

    async def next_attempt(self, job_id: str, *, max_attempts: int) -> bool:
        """A running job of this instance starts another attempt in place (attempts + 1, lease renewed).

        The CLI retries inline this way: it has no dispatcher to run a re-queued row. False once the
        attempts are spent, or when the row is no longer this instance's.
        """
        async with self._write() as db:
            query = """
                UPDATE jobs SET attempts = attempts + 1, started_at = ?, lease_expires_at = ?
                WHERE id = ? AND status = 'running' AND owner_instance = ? AND attempts < ?
            """
            now = time.time()
            cursor = await db.execute(
                query, (now, now + self.lease_seconds, job_id, self.instance_id, max_attempts)
            )
            return cursor.rowcount == 1

    async def mark_done(
        self,
        job_id: str,
        *,
        tiles: Sequence[Tile],
        grid_path: str,
        expander: dict[str, Any],
        render: dict[str, Any],
    ) -> bool:
        """running → done with its tiles, in one transaction; only by the row's owner instance."""
        async with self._write() as db:
            query = """
                UPDATE jobs SET status = 'done', reason = NULL, finished_at = ?, grid_path = ?,
                    expander_json = ?, render_json = ?
                WHERE id = ? AND status = 'running' AND owner_instance = ?
            """
            cursor = await db.execute(
                query, (time.time(), grid_path, _dumps(expander), _dumps(render), job_id, self.instance_id)
            )
            if cursor.rowcount != 1:
                return False
            query = "DELETE FROM tiles WHERE job_id = ?"
            await db.execute(query, (job_id,))
            query = (
                "INSERT INTO tiles (job_id, idx, prompt, image_seed, path, nsfw) VALUES (?, ?, ?, ?, ?, ?)"
            )
            await db.executemany(
                query, [(job_id, t.index, t.prompt, t.image_seed, t.path, int(t.nsfw)) for t in tiles]
            )
            return True

    async def mark_failed(self, job_id: str, reason: str, *, status: str = "failed") -> bool:
        """queued, or running here → failed/cancelled with a user-safe reason; False if final or not ours.

        A `running` row another instance owns is left alone: only its owner (or recovery, once the lease
        expired) ends it.
        """
        if status not in ("failed", "cancelled"):
            raise ValueError(f"`status` must be failed or cancelled, got {status!r}")
        async with self._write() as db:
            query = """
                UPDATE jobs SET status = ?, reason = ?, finished_at = ?
                WHERE id = ? AND (status = 'queued' OR (status = 'running' AND owner_instance = ?))
            """
            cursor = await db.execute(query, (status, reason[:500], time.time(), job_id, self.instance_id))
            return cursor.rowcount == 1

    async def release_running(
        self,
        job_id: str,
        *,
        requeue: bool,
        max_attempts: int,
        reason: str = "interrupted",
        spend_attempt: bool = True,
    ) -> str | None:
        """A `running` job this instance gives up (shutdown, a lost worker): back to `queued` while attempts
        remain and `requeue`, else `failed` with `reason`. Returns the new status, None if not its running row.

        With `spend_attempt=False` (a planned shutdown interrupted it) the attempt is handed back, so
        restarts never use up a job's attempts.
        """
        async with self._write() as db:
            query = """
                UPDATE jobs SET status = 'queued', owner_pid = NULL, owner_instance = NULL,
                    lease_expires_at = NULL, attempts = MAX(attempts - ?, 0)
                WHERE id = ? AND status = 'running' AND owner_instance = ? AND ? AND (attempts < ? OR ?)
            """
            refund = int(not spend_attempt)
            cursor = await db.execute(
                query, (refund, job_id, self.instance_id, int(requeue), max_attempts, refund)
            )
            if cursor.rowcount == 1:
                return "queued"
            query = """
                UPDATE jobs SET status = 'failed', reason = ?, finished_at = ?
                WHERE id = ? AND status = 'running' AND owner_instance = ?
            """
            cursor = await db.execute(query, (reason[:500], time.time(), job_id, self.instance_id))
            return "failed" if cursor.rowcount == 1 else None

    async def discard_unstarted(self, job_id: str) -> bool:
        """Delete a job that never reached a worker (the CLI could not connect): no row is left behind."""
        async with self._write() as db:
            query = "DELETE FROM jobs WHERE id = ? AND status IN ('queued', 'running')"
            cursor = await db.execute(query, (job_id,))
            return cursor.rowcount == 1

    async def requeue_unstarted(self, job_id: str) -> bool:
        """A `running` job no worker took (the workers were unreachable): back to `queued`, its attempt refunded."""
        async with self._write() as db:
            query = """
                UPDATE jobs SET status = 'queued', owner_pid = NULL, attempts = MAX(attempts - 1, 0)
                WHERE id = ? AND status = 'running'
            """
            cursor = await db.execute(query, (job_id,))
            return cursor.rowcount == 1

    async def cancel_queued(self, job_id: str) -> bool:
        """queued → cancelled; False when the job already runs somewhere or is final."""
        async with self._write() as db:
            query = """
                UPDATE jobs SET status = 'cancelled', reason = 'cancelled by its owner', finished_at = ?
                WHERE id = ? AND status = 'queued'
            """
            cursor = await db.execute(query, (time.time(), job_id))
            return cursor.rowcount == 1

    async def recover_dead_cli_jobs(self) -> list[str]:
        """CLI jobs (no Discord user) whose owner stopped renewing their lease (SIGKILL): `failed: interrupted`.

        Any CLI command runs this first; nobody would collect a re-queued CLI job. Discord jobs are left to
        the bot's own recovery, which requeues them.
        """
        _, failed = await self._recover_expired(requeue=False, max_attempts=0, cli_only=True)
        if failed:
            log.warning("%d CLI job(s) of a process that died marked interrupted", len(failed))
        return failed

    async def recover_interrupted(self, *, requeue: bool, max_attempts: int) -> tuple[list[str], list[str]]:
        """Rows whose owner's lease expired (it died): requeue (bounded attempts) or fail as `interrupted`.

        A row whose owner still renews its lease — another container's CLI, a bot — is left alone.
        """
        requeued, failed = await self._recover_expired(requeue=requeue, max_attempts=max_attempts)
        if requeued or failed:
            log.warning("recovered interrupted jobs: %d requeued, %d failed", len(requeued), len(failed))
        return requeued, failed

    async def take_over_expired(self, job_id: str, *, max_attempts: int) -> str | None:
        """One job whose owner's lease expired (the bot running a CLI's job died): back to `queued` within
        its attempts, else `failed: interrupted`. Returns the new status; None while its owner is alive."""
        requeued, failed = await self._recover_expired(requeue=True, max_attempts=max_attempts, job_id=job_id)
        return "queued" if requeued else "failed" if failed else None

    async def _recover_expired(
        self, *, requeue: bool, max_attempts: int, cli_only: bool = False, job_id: str | None = None
    ) -> tuple[list[str], list[str]]:
        requeued: list[str] = []
        failed: list[str] = []
        now = time.time()
        async with self._write() as db:
            # This instance's own rows are never "expired" to itself: it is alive, and renews them.
            query = """
                SELECT id, attempts, owner_instance, lease_expires_at FROM jobs
                WHERE status = 'running' AND (lease_expires_at IS NULL OR lease_expires_at < ?)
                    AND owner_instance IS NOT ?
            """
            params: tuple[Any, ...] = (now, self.instance_id)
            if cli_only:
                query += " AND user_id IS NULL AND channel_id IS NULL"
            if job_id is not None:
                query += " AND id = ?"
                params = (*params, job_id)
            for row in await db.execute_fetchall(query, params):
                if requeue and row["attempts"] < max_attempts:
                    query = """
                        UPDATE jobs SET status = 'queued', owner_pid = NULL, owner_instance = NULL,
                            lease_expires_at = NULL
                        WHERE id = ? AND status = 'running' AND owner_instance IS ?
                    """
                    target = requeued
                    params = (row["id"], row["owner_instance"])
                else:
                    query = """
                        UPDATE jobs SET status = 'failed', reason = 'interrupted', finished_at = ?
                        WHERE id = ? AND status = 'running' AND owner_instance IS ?
                    """
                    target = failed
                    params = (now, row["id"], row["owner_instance"])
                cursor = await db.execute(query, params)
                if cursor.rowcount == 1:
                    target.append(row["id"])
                    log.info(
                        "job %s: lease of %s expired %.0f s ago; taken over",
                        row["id"],
                        row["owner_instance"],
                        now - (row["lease_expires_at"] or now),
                    )
        return requeued, failed
