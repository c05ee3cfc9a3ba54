"""A claimed job's life: its render attempts, what a lost worker or an outage does to it, its files, its end."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import logging
import os
import secrets
import shutil
import sqlite3
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from bot.engine.backend import BackendUnavailable, CancelToken, RenderBackend, RenderOutput, WorkerLost
from bot.engine.images import compose_grid, png_bytes
from bot.engine.safety import TileClassifier, screen_tiles
from bot.engine.types import EngineError, GenerationRequest, JobCancelled
from bot.jobs.requests import load_request
from bot.store import FINAL_STATES, HistoryStore, JobRecord, Tile

log = logging.getLogger(__name__)

INTERNAL_ERROR = "something went wrong on our side; the job was not completed"
SHUTDOWN = "shutdown"
# The cancel reason when another process took the job over (this one's lease had expired): hands off the row.
LEASE_LOST = "lease lost"
# Poll a row another process runs (the CLI whose job the bot picked up) this often.
ELSEWHERE_POLL_SECONDS = 0.5


class StoppedWaiting(Exception):
    """The CLI stopped waiting for a job another process (a bot on the same data folder) is rendering."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"stopped waiting for job {job_id}: another process is rendering it and goes on")
        self.job_id = job_id


@dataclass(frozen=True)
class JobOutcome:
    """A finished job (any final state) plus its grid PNG bytes when done."""

    job: JobRecord
    grid_png: bytes | None = None


ProgressHandler = Callable[[str, int, int, bytes | None], None]
FinishedHandler = Callable[[JobOutcome], Awaitable[None]]
StartedHandler = Callable[[JobRecord], Awaitable[None]]


@dataclass
class _InFlight:
    """A job this runner claimed: cancellable while `rendering`; after that only the save remains."""

    job: JobRecord
    cancel: CancelToken = field(default_factory=CancelToken)
    rendering: bool = True
    task: asyncio.Task[None] | None = None
    #: which attempt of the job this runner is on (the row's `attempts` once claimed)
    attempt: int = 0


class JobLifecycle:
    """One claimed job's life: render (attempts, retries, outages), save its files, finish its row.

    `JobRunner` (runner.py) owns the attributes below and the dispatcher that starts `_run_job`.
    """

    store: HistoryStore
    backend: RenderBackend
    classifier: TileClassifier | None
    images_dir: Path
    max_attempts: int
    retry_inline: bool
    requeue_on_shutdown: bool
    on_progress: ProgressHandler | None
    on_started: StartedHandler | None
    on_finished: FinishedHandler | None
    recent_durations: deque[float]
    backend_online: bool
    backend_reason: str
    _inflight: dict[str, _InFlight]
    _post_tasks: set[asyncio.Task[Any]]
    _waiters: dict[str, list[asyncio.Future[JobOutcome]]]
    _finished: OrderedDict[str, None]
    _stopping: bool
    _wake: asyncio.Event

    async def _run_job(self, flight: _InFlight) -> None:
        """Render, save and finish one claimed job; whatever happens, the row ends final or requeued."""
        job = flight.job
        try:
            await self._render_and_save(flight)
        except asyncio.CancelledError:
            # Shutdown gave up waiting: the row must not stay `running`.
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self._give_back(
                        job, "interrupted", requeue=self.requeue_on_shutdown, spend_attempt=not self._stopping
                    )
                )
            raise
        except Exception:
            log.exception("job %s failed", job.id)
            await self._end(job.id, INTERNAL_ERROR)
        finally:
            self._inflight.pop(job.id, None)
            self._wake.set()

    async def _render_and_save(self, flight: _InFlight) -> None:
        job = flight.job
        running = await self.store.get_job(job.id)
        if running is not None:
            flight.attempt = running.attempts
        if self.on_started is not None and running is not None:
            self._spawn(self.on_started(running))
        started = time.perf_counter()
        try:
            output = await self._render_attempts(flight)
        finally:
            flight.rendering = False
        if output is None:
            return
        self.recent_durations.append(time.perf_counter() - started)
        await self._save_and_finish(flight, output)

    async def _render_attempts(self, flight: _InFlight) -> RenderOutput | None:
        """Render the job; None when it ended (or left this runner) without images."""
        job = flight.job
        request: GenerationRequest | None = None
        while True:
            try:
                if request is None:
                    request = await load_request(job)  # a source image gone from disk: InvalidRequest
                return await self.backend.render(
                    request,
                    on_progress=self._progress_for(job.id),
                    on_rendered=lambda: self._rendered(flight),
                    cancel=flight.cancel,
                )
            except JobCancelled:
                if flight.cancel.reason == SHUTDOWN:
                    # A planned stop is no fault of the job: it keeps its attempts.
                    await self._give_back(
                        job, "interrupted", requeue=self.requeue_on_shutdown, spend_attempt=False
                    )
                elif flight.cancel.reason != LEASE_LOST:  # a taken-over row is no longer ours to touch
                    await self._end(job.id, "cancelled by its owner", status="cancelled")
                return None
            except WorkerLost as exc:
                if not self.retry_inline:
                    log.warning("job %s: %s; re-queueing within its attempts", job.id, exc.user_message)
                    await self._give_back(job, exc.user_message, requeue=True)
                    return None
                if not await self.store.next_attempt(job.id, max_attempts=self.max_attempts):
                    await self._end(
                        job.id, f"{exc.user_message}; {_attempts_phrase(flight.attempt)} spent, none left"
                    )
                    return None
                flight.attempt += 1
                log.warning("job %s: %s; attempt %d starts now", job.id, exc.user_message, flight.attempt)
            except BackendUnavailable as exc:
                if self.retry_inline:  # nobody would run a re-queued CLI job: say so now, spend nothing
                    await self._abandon_unreachable(flight, exc)
                else:
                    await self._wait_for_workers(flight, exc)
                return None
            except EngineError as exc:
                await self._end(job.id, exc.user_message)
                return None

    async def _wait_for_workers(self, flight: _InFlight, exc: BackendUnavailable) -> None:
        """The workers are gone (none took the job, or the whole cluster went under it): no attempt is
        spent. The job goes back to the queue and runs when the workers are back; health says why
        meanwhile. (The CLI, with no dispatcher, ends the job instead: see `_render_attempts`.)"""
        job = flight.job
        self.backend_online, self.backend_reason = False, exc.user_message
        log.warning("job %s waits for the render workers: %s", job.id, exc.user_message)
        if await self.store.requeue_unstarted(job.id):
            self._wake.set()

    async def _abandon_unreachable(self, flight: _InFlight, exc: BackendUnavailable) -> None:
        """The CLI's job found no workers. A first attempt never started anywhere: its row goes (nothing is
        written for a job that never could start) and the waiter gets the error. A later attempt ends the
        job with the reason."""
        job = flight.job
        if flight.attempt <= 1 and await self.store.discard_unstarted(job.id):
            for future in self._waiters.pop(job.id, []):
                if not future.done():
                    future.set_exception(BackendUnavailable(exc.user_message))
            return
        await self._end(job.id, f"{exc.user_message}; nothing was rendered")

    def _rendered(self, flight: _InFlight) -> None:
        """The model work is over: no longer cancellable, and its slot is free for the next job."""
        flight.rendering = False
        self._wake.set()

    def _progress_for(self, job_id: str) -> Callable[[int, int, bytes | None], None] | None:
        if self.on_progress is None:
            return None
        handler = self.on_progress

        def progress(step: int, total: int, preview: bytes | None) -> None:
            handler(job_id, step, total, preview)

        return progress

    async def _give_back(
        self, job: JobRecord, reason: str, *, requeue: bool, spend_attempt: bool = True
    ) -> None:
        """A claimed job this runner cannot finish: requeue within its attempts, else fail with `reason`."""
        status = await self.store.release_running(
            job.id,
            requeue=requeue,
            max_attempts=self.max_attempts,
            reason=reason,
            spend_attempt=spend_attempt,
        )
        if status == "queued":
            self._wake.set()
        elif status == "failed":
            self._spawn(self._finish_from_store(job.id))

    async def _end(self, job_id: str, reason: str, *, status: str = "failed") -> None:
        """Mark a claimed job final and finish it; a failing store is logged (recovery handles the row)."""
        try:
            await self.store.mark_failed(job_id, reason, status=status)
        except Exception as exc:
            # Mostly the environment (a full disk): one line, no traceback; whoever waits gets the error.
            log.error("could not record job %s as %s (%s); restart recovery will", job_id, status, exc)
            for future in self._waiters.pop(job_id, []):
                if not future.done():
                    future.set_exception(exc)
            return
        self._spawn(self._finish_from_store(job_id))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._post_tasks.add(task)
        task.add_done_callback(self._post_tasks.discard)
        task.add_done_callback(_log_task_death)

    async def _save_and_finish(self, flight: _InFlight, output: RenderOutput) -> None:
        """Write files and the `done` row; a save cannot be overtaken by /cancel (the render has ended).

        The files go into this attempt's own folder, published by one rename, and only this runner ever
        removes that folder: a process that lost the job (or a retry) can never delete the files of the
        attempt the row records.
        """
        job = flight.job
        attempt_dir = self.images_dir / job.id / f"attempt-{flight.attempt}-{secrets.token_hex(4)}"
        grid_png: bytes | None = None
        try:
            tiles, grid_path, grid_png = await asyncio.to_thread(self._write_files, job, output, attempt_dir)
            saved = await self.store.mark_done(
                job.id, tiles=tiles, grid_path=str(grid_path), expander=output.expander, render=output.render
            )
        except Exception as exc:
            if isinstance(exc, OSError | sqlite3.Error):  # the environment (a full disk): no traceback
                log.error("saving job %s failed: %s", job.id, exc)
            else:
                log.exception("saving job %s failed", job.id)
            with contextlib.suppress(OSError):  # nothing half-written: no tiles, no grid, no empty folder
                await asyncio.to_thread(_drop_attempt, attempt_dir, remove_empty_job_folder=True)
            await self._end(job.id, _save_failure(exc))
            return
        if not saved:
            # Another process took the row over (this one's lease had expired): its files are its own.
            log.warning(
                "job %s is no longer this process's to finish; dropping this attempt's images", job.id
            )
            await asyncio.to_thread(_drop_attempt, attempt_dir)
            if self.retry_inline:
                return  # run_now goes on waiting for the row's final state
            grid_png = None
        done = await self.store.get_job(job.id)
        if done is not None:
            await self._finish(JobOutcome(done, grid_png if done.status == "done" else None))

    def _write_files(
        self, job: JobRecord, output: RenderOutput, attempt_dir: Path
    ) -> tuple[list[Tile], Path, bytes]:
        """Write the tiles and grid into a staging folder, then publish it as `attempt_dir` by one rename."""
        # Beside the job's inputs (source image, mask), which stay where they were staged before it queued.
        staging = attempt_dir.with_name(f".{attempt_dir.name}.partial")
        staging.mkdir(parents=True)
        if (
            job.render_action or job.action
        ) == "describe":  # issue 22: prompts, no images; the grid is the source
            return _describe_files(job, output, staging, attempt_dir)
        try:
            tiles: list[Tile] = []
            decoded: list[Image.Image] = []
            for data in output.tiles_png:
                with Image.open(io.BytesIO(data)) as opened:
                    decoded.append(opened.convert("RGB"))
            # The optional image classifier runs here: on this file-writing thread, while the next job renders.
            images, flags = screen_tiles(
                self.classifier if job.safe_mode else None, decoded, output.nsfw_flags
            )
            for index, (data, image, prompt, seed, nsfw) in enumerate(
                zip(output.tiles_png, images, output.prompts, output.image_seeds, flags, strict=True), start=1
            ):
                # The worker's PNG as it came, unless the classifier replaced the tile with a blurred one.
                (staging / f"tile-{index}.png").write_bytes(
                    data if image is decoded[index - 1] else png_bytes(image)
                )
                tiles.append(Tile(index, prompt, seed, str(attempt_dir / f"tile-{index}.png"), nsfw))
            grid_png = png_bytes(compose_grid(images))
            (staging / "grid.png").write_bytes(grid_png)
            os.rename(staging, attempt_dir)  # atomic: the folder appears whole, or not at all
        except BaseException:
            _drop_attempt(staging)
            raise
        return tiles, attempt_dir / "grid.png", grid_png

    async def _outcome_elsewhere(self, job_id: str, future: asyncio.Future[JobOutcome]) -> JobOutcome | None:
        """Wait for a job another process runs: poll its row until it is final (None: it is queued again).

        Should that process die (its lease runs out), the job is taken over here rather than waited on forever.
        """
        next_look = time.monotonic() + self.store.lease_seconds / 3
        while not future.done():
            row = await self.store.get_job(job_id)
            if row is None:
                raise RuntimeError(f"job {job_id} vanished from the database")
            if row.status in FINAL_STATES:
                grid = None
                if row.status == "done" and row.grid_path:
                    with contextlib.suppress(OSError):
                        grid = await asyncio.to_thread(Path(row.grid_path).read_bytes)
                self._waiters.pop(job_id, None)
                return JobOutcome(row, grid)
            if self._stopping:
                self._waiters.pop(job_id, None)
                raise StoppedWaiting(job_id)
            if row.status == "queued":
                return None  # given back (that process stopped): ours to claim again
            if time.monotonic() >= next_look:
                next_look = time.monotonic() + self.store.lease_seconds / 3
                if await self.store.take_over_expired(job_id, max_attempts=self.max_attempts) is not None:
                    continue  # queued for us to claim, or failed: the next look says which
            await asyncio.sleep(ELSEWHERE_POLL_SECONDS)
        return future.result()

    async def _finish_from_store(self, job_id: str) -> None:
        job = await self.store.get_job(job_id)
        if job is not None:
            await self._finish(JobOutcome(job))

    async def _finish(self, outcome: JobOutcome) -> None:
        """Resolve waiters and run the finished handler, once per job."""
        if outcome.job.id in self._finished:
            return
        self._finished[outcome.job.id] = None
        while len(self._finished) > 1000:
            self._finished.popitem(last=False)
        for future in self._waiters.pop(outcome.job.id, []):
            if not future.done():
                future.set_result(outcome)
        if self.on_finished is not None:
            try:
                await self.on_finished(outcome)
            except Exception:
                log.exception("delivering job %s failed", outcome.job.id)


def _describe_files(
    job: JobRecord, output: RenderOutput, staging: Path, attempt_dir: Path
) -> tuple[list[Tile], Path, bytes]:
    """A /describe job's record: one tile row per prompt (no image file), its source image as the grid."""
    try:
        assert job.init_image is not None
        grid_png = Path(job.init_image).read_bytes()
        (staging / "grid.png").write_bytes(grid_png)
        os.rename(staging, attempt_dir)
    except BaseException:
        _drop_attempt(staging)
        raise
    tiles = [Tile(index, prompt, 0, None) for index, prompt in enumerate(output.prompts, start=1)]
    return tiles, attempt_dir / "grid.png", grid_png


def _drop_attempt(folder: Path, *, remove_empty_job_folder: bool = False) -> None:
    """Remove one attempt's own folder of rendered files (never the job's inputs, never another attempt's);
    and the job's folder too when nothing else is left in it (a failed save keeps no empty folder)."""
    shutil.rmtree(folder, ignore_errors=True)
    job_folder = folder.parent
    if remove_empty_job_folder and job_folder.is_dir() and not any(job_folder.iterdir()):
        job_folder.rmdir()


def _attempts_phrase(count: int) -> str:
    return f"{count} attempt" + ("" if count == 1 else "s")


def _save_failure(exc: BaseException) -> str:
    """The reason a member reads when a job's images could not be saved."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the images could not be saved: the disk is full"
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
        return "the images could not be saved: the disk is full"
    return "the images could not be saved"


def _log_task_death(task: asyncio.Task[Any] | asyncio.Future[Any]) -> None:
    """Done-callback of supervised tasks: an exception never vanishes silently."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("background task %s died", getattr(task, "get_name", lambda: "?")(), exc_info=exc)
