"""/forget: a member's jobs, files, copies others made of their pictures, settings and change-log rows.

Pending jobs are cancelled first and waited for, so a running job cannot recreate a row or a folder after
its deletion.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bot.preferences import PreferenceStore
from bot.shortened import forget_shortened
from bot.store import FINAL_STATES, HistoryStore, JobRecord

log = logging.getLogger(__name__)

# How long /forget waits for cancelled jobs to reach a final state (a running one stops within a step;
# one already saving its images finishes first).
CANCEL_WAIT_SECONDS = 120.0


class Canceller(Protocol):
    """What forgetting needs of the job runner."""

    async def queue_positions(self) -> list[JobRecord]: ...

    def wait_for(self, job_id: str) -> asyncio.Future[Any]: ...

    async def cancel(self, job_id: str) -> bool: ...


@dataclass(frozen=True)
class Forgotten:
    """What /forget removed."""

    jobs: int
    cancelled: int
    copies: int
    had_settings: bool
    log_rows: int


async def forget_member(
    *,
    runner: Canceller,
    store: HistoryStore,
    preferences: PreferenceStore,
    images_dir: Path,
    user_id: int,
    guild_id: int,
) -> Forgotten:
    """Cancel the member's pending jobs, then delete their jobs, files and derived copies, settings and log rows."""
    pending = [
        job for job in await runner.queue_positions() if job.user_id == user_id and job.guild_id == guild_id
    ]
    cancelled = await _cancel_and_wait(runner, store, pending)
    # Copies others made of the member's pictures (a moderator's Reproduce of an upload) go too; they may be
    # pending themselves. Found before the member's rows go: deleting a parent clears its children's link.
    mine = await store.list_jobs(user_id=user_id, guild_id=guild_id, limit=1_000_000)
    copies = await store.jobs_derived_from([job.id for job in mine], other_than=user_id)
    pending_ids = {job.id for job in await runner.queue_positions()}
    await _cancel_and_wait(runner, store, [job for job in copies if job.id in pending_ids])
    await store.delete_jobs([job.id for job in copies])
    jobs = await store.delete_user_jobs(user_id, guild_id)
    # A job's folder holds its grid and tiles (one level down, in the attempt's own folder) and, for image
    # jobs, its source image and mask (even when it failed and has no grid). Only a folder named after the
    # job itself: older variation rows point at their parent's tile.
    folders = sorted(
        {
            folder
            for job in (*jobs, *copies)
            for path in {job.grid_path, job.init_image, job.mask_image}
            if path
            for folder in Path(path).parents[:2]
            if folder.name == job.id
        }
    )
    await asyncio.to_thread(_remove_folders, folders, images_dir)
    await forget_shortened(store, user_id=user_id, guild_id=guild_id)  # issue 22: /shorten's answers
    had_settings, log_rows = await preferences.forget_member(guild_id, user_id)
    return Forgotten(len(jobs), cancelled, len(copies), had_settings, log_rows)


async def _cancel_and_wait(runner: Canceller, store: HistoryStore, jobs: list[JobRecord]) -> int:
    if not jobs:
        return 0
    waiters = [runner.wait_for(job.id) for job in jobs]
    for job, waiter in zip(jobs, waiters, strict=True):
        if await runner.cancel(job.id):
            continue
        # Not cancellable: finished meanwhile (nothing to wait for) or saving its images (wait for that).
        row = await store.get_job(job.id)
        if row is None or row.status in FINAL_STATES:
            waiter.cancel()
    _, late = await asyncio.wait(waiters, timeout=CANCEL_WAIT_SECONDS)
    if late:
        log.warning("/forget: %d job(s) did not end within %.0f s", len(late), CANCEL_WAIT_SECONDS)
    return len(jobs)


def _remove_folders(folders: list[Path], root: Path) -> None:
    resolved_root = root.resolve()
    for folder in folders:
        resolved = folder.resolve()
        if resolved_root in resolved.parents:  # never delete outside the images dir
            shutil.rmtree(resolved, ignore_errors=True)


class StillRendering(Exception):
    """The job, or a copy made of its pictures, is queued or running; the message is user-facing."""


async def forget_job(*, store: HistoryStore, images_dir: Path, job: JobRecord) -> int:
    """What /forget does, for one final job (the web gallery's delete): the row, its folder and the copies
    other members made of its pictures. Returns how many copies went too.

    The web process has no job runner to cancel with, so a job or copy still queued or running is refused
    (StillRendering) rather than deleted under a render that would recreate its folder.
    """
    if job.status not in FINAL_STATES:
        raise StillRendering(f"job {job.id} is still {job.status}: cancel it in Discord or wait for it")
    copies = await store.jobs_derived_from([job.id], other_than=job.user_id) if job.user_id else []
    pending = [copy.id for copy in copies if copy.status not in FINAL_STATES]
    if pending:
        raise StillRendering(f"a copy of job {job.id} ({pending[0]}) is still rendering: try again later")
    await store.delete_jobs([copy.id for copy in copies] + [job.id])
    folders = [
        Path(path).parent
        for gone in (job, *copies)
        for path in {gone.grid_path, gone.init_image, gone.mask_image}
        if path and Path(path).parent.name == gone.id
    ]
    await asyncio.to_thread(_remove_folders, folders, images_dir)
    return len(copies)
