"""The job queue: fair across users, persisted in SQLite, feeding the engine one job at a time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from bot.engine.executor import Engine
from bot.engine.images import compose_grid, png_bytes
from bot.engine.safety import TileClassifier, screen_tiles
from bot.engine.types import EngineError, GenerationRequest, GenerationResult, InvalidRequest, JobCancelled
from bot.flags import chaos_temperature
from bot.store import HistoryStore, JobRecord, JobSpec, QueueRefused, Tile

log = logging.getLogger(__name__)

INTERNAL_ERROR = "something went wrong on our side; the job was not completed"


@dataclass(frozen=True)
class JobOutcome:
    """A finished job (any final state) plus its grid PNG bytes when done."""

    job: JobRecord
    grid_png: bytes | None = None


ProgressHandler = Callable[[str, int, int, Image.Image | None], None]
FinishedHandler = Callable[[JobOutcome], Awaitable[None]]
StartedHandler = Callable[[JobRecord], Awaitable[None]]


def request_from_job(
    job: JobRecord | JobSpec, *, init_image: bytes | None = None, mask_image: bytes | None = None
) -> GenerationRequest:
    """The engine request for a stored row or a new spec (used to validate, run, rerun and reproduce).

    The input images travel as bytes (workers may be remote); `load_request` reads them from the job's files.
    """
    return GenerationRequest(
        seed_text=job.seed_text,
        count=job.count,
        steps=job.steps,
        guidance=job.guidance,
        width=job.width,
        height=job.height,
        job_seed=job.job_seed,
        negative=job.negative,
        expand=job.expand,
        prompts=job.given_prompts,
        image_seeds=job.given_seeds,
        init_image=init_image,
        strength=job.strength if job.strength is not None else 0.6,
        safe_mode=job.safe_mode,
        mask_image=mask_image,
        action=job.render_action or job.action,
        temperature=chaos_temperature(job.chaos) if job.chaos is not None else None,
    )


async def load_request(job: JobRecord) -> GenerationRequest:
    """`request_from_job` with the job's source image and mask read off the event loop."""

    def read(path: str | None, what: str) -> bytes | None:
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise InvalidRequest(f"the {what} of this job is gone from disk") from exc

    init_image = await asyncio.to_thread(read, job.init_image, "source image")
    mask_image = await asyncio.to_thread(read, job.mask_image, "mask")
    return request_from_job(job, init_image=init_image, mask_image=mask_image)


def rerun_spec(old: JobRecord, *, user_id: int | None = None, action: str = "rerun") -> JobSpec:
    """A new job that re-renders `old` exactly: its prompts, image seeds and parameters."""
    return JobSpec(
        seed_text=old.seed_text,
        count=old.count,
        steps=old.steps,
        guidance=old.guidance,
        width=old.width,
        height=old.height,
        job_seed=old.job_seed,
        negative=old.negative,
        expand=old.expand,
        safe_mode=old.safe_mode,
        action=action,
        parent_id=old.id,
        source_tile=old.source_tile,
        strength=old.strength,
        given_prompts=old.prompts,
        given_seeds=tuple(tile.image_seed for tile in old.tiles),
        init_image=old.init_image,
        mask_image=old.mask_image,
        chaos=old.chaos,
        render_action=old.render_action or old.action,
        user_id=user_id if user_id is not None else old.user_id,
        guild_id=old.guild_id,
        channel_id=old.channel_id,
    )


def fair_order(pending: list[JobRecord], last_served: dict[int | None, float]) -> list[JobRecord]:
    """Round-robin across users (least recently served first), FIFO within a user."""
    per_user: dict[int | None, list[JobRecord]] = {}
    for job in sorted(pending, key=lambda j: j.created_at):
        per_user.setdefault(job.user_id, []).append(job)
    served = dict(last_served)
    order: list[JobRecord] = []
    while per_user:
        user = min(per_user, key=lambda u: (served.get(u, float("-inf")), per_user[u][0].created_at))
        job = per_user[user].pop(0)
        order.append(job)
        served[user] = time.monotonic() + len(order)  # later than anything real
        if not per_user[user]:
            del per_user[user]
    return order


class JobRunner:
    """Owns the worker task; the bot and the CLI submit jobs and listen for their outcomes."""

    def __init__(
        self,
        *,
        store: HistoryStore,
        engine: Engine,
        images_dir: Path,
        max_pending_per_user: int | None = None,
        max_queue: int | None = None,
        cooldown_seconds: float = 0.0,
        max_attempts: int = 2,
        classifier: TileClassifier | None = None,
    ) -> None:
        self.store = store
        #: the image classifier for filtered (safe-mode) jobs; runs in the save stage, off the GPU thread
        self.classifier = classifier
        self.engine = engine
        self.images_dir = images_dir
        self.max_pending_per_user = max_pending_per_user
        self.max_queue = max_queue
        self.cooldown_seconds = cooldown_seconds
        self.max_attempts = max_attempts
        self.on_progress: ProgressHandler | None = None
        self.on_started: StartedHandler | None = None
        self.on_finished: FinishedHandler | None = None
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._post_tasks: set[asyncio.Task[None]] = set()
        self._waiters: dict[str, list[asyncio.Future[JobOutcome]]] = {}
        self._cancels: dict[str, threading.Event] = {}
        self._last_served: dict[int | None, float] = {}
        self._stopping = False
        self.running_job_id: str | None = None
        self.recovered_at: float | None = None
        self.recent_durations: list[float] = []

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self, *, requeue_interrupted: bool = True) -> None:
        """Recover rows a crash left `running`, then start the worker."""
        await self.store.recover_interrupted(requeue=requeue_interrupted, max_attempts=self.max_attempts)
        # Jobs final before this instant (including those recovery just failed) belong to no live delivery.
        self.recovered_at = time.time()
        self._worker = asyncio.create_task(self._work(), name="job-worker")
        self._wake.set()

    async def stop(self, *, grace: float = 90.0) -> None:
        """No new jobs; let the running job finish within `grace` seconds (else mark it), then stop."""
        self._stopping = True
        self._wake.set()
        if self._worker is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), grace)
            except TimeoutError:
                self._worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._worker
        if self._post_tasks:
            await asyncio.wait(self._post_tasks, timeout=grace)

    def set_handlers(
        self,
        *,
        on_progress: ProgressHandler | None = None,
        on_started: StartedHandler | None = None,
        on_finished: FinishedHandler | None = None,
    ) -> None:
        """Called once by the bot's wiring before `start`."""
        self.on_progress = on_progress
        self.on_started = on_started
        self.on_finished = on_finished

    # -- submitting ------------------------------------------------------------------------------------
    async def admission_refusal(self, spec: JobSpec) -> Exception | None:
        """Why `spec` would be refused now (bad input or a queue limit), without writing anything."""
        try:
            self._check_acceptable(spec)
        except (QueueRefused, EngineError) as exc:
            return exc
        return await self.store.admission_refusal(spec.user_id, **self._limits_for(spec))

    def _check_acceptable(self, spec: JobSpec) -> None:
        """Refuse while shutting down; validate the request (no model needed)."""
        if self._stopping:
            raise QueueRefused("the bot is shutting down; try again in a minute")
        self.engine.validate(request_from_job(spec))

    def _limits_for(self, spec: JobSpec) -> dict[str, Any]:
        """Queue limits for `spec`: per-user ones apply only to Discord users (the CLI has none)."""
        per_user = spec.user_id is not None
        return {
            "max_pending_per_user": self.max_pending_per_user if per_user else None,
            "max_queue": self.max_queue,
            "cooldown_seconds": self.cooldown_seconds if per_user else 0.0,
        }

    async def submit(self, spec: JobSpec) -> JobRecord:
        """Validate, write the `queued` row (limits enforced atomically) and wake the worker."""
        self._check_acceptable(spec)
        job = await self.store.create_job(spec, **self._limits_for(spec))
        self._wake.set()
        return job

    async def run_now(self, job: JobRecord) -> JobOutcome:
        """Run one job right away without the worker loop (the CLI) and wait for its outcome."""
        future = self.wait_for(job.id)
        await self._run(job)
        return await future

    def wait_for(self, job_id: str) -> asyncio.Future[JobOutcome]:
        """A future resolved when the job reaches a final state."""
        future: asyncio.Future[JobOutcome] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(future)
        return future

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued job at once, or interrupt a running one at its next step."""
        if job_id == self.running_job_id and job_id in self._cancels:
            self._cancels[job_id].set()
            return True
        if await self.store.mark_failed(job_id, "cancelled by its owner", status="cancelled"):
            job = await self.store.get_job(job_id)
            if job is not None:
                await self._finish(JobOutcome(job))
            return True
        return False

    async def queue_positions(self) -> list[JobRecord]:
        """Pending jobs in the order they will run (running first)."""
        pending = await self.store.pending_jobs()
        running = [job for job in pending if job.status == "running"]
        queued = [job for job in pending if job.status == "queued"]
        return running + fair_order(queued, self._last_served)

    def eta_seconds(self, position: int) -> float | None:
        """Rough wait for the job at 1-based `position` in the queue, from recent job durations."""
        if not self.recent_durations:
            return None
        recent = self.recent_durations[-10:]
        return position * sum(recent) / len(recent)

    # -- the worker --------------------------------------------------------------------------------------
    async def _work(self) -> None:
        while not self._stopping:
            # Clear before looking, so a submit that lands during the query is not missed.
            self._wake.clear()
            job = await self._next_job()
            if job is None:
                await self._wake.wait()
                continue
            await self._run(job)

    async def _next_job(self) -> JobRecord | None:
        order = await self.queue_positions()
        queued = [job for job in order if job.status == "queued"]
        return queued[0] if queued else None

    async def _run(self, job: JobRecord) -> None:
        if not await self.store.mark_running(job.id):
            return
        self._last_served[job.user_id] = time.monotonic()
        cancel = threading.Event()
        self._cancels[job.id] = cancel
        self.running_job_id = job.id
        started = time.perf_counter()
        running = await self.store.get_job(job.id)
        if self.on_started is not None and running is not None:
            self._spawn(self.on_started(running))
        progress = None
        if self.on_progress is not None:
            handler = self.on_progress

            def progress(step: int, total: int, preview: Image.Image | None) -> None:
                handler(job.id, step, total, preview)

        try:
            request = await load_request(job)
            result = await self.engine.generate(request, on_progress=progress, cancel=cancel)
        except asyncio.CancelledError:
            # Shutdown while running: the GPU thread finishes the batch; the row must not stay `running`.
            await asyncio.shield(self.store.mark_failed(job.id, "interrupted"))
            raise
        except JobCancelled:
            await self.store.mark_failed(job.id, "cancelled by its owner", status="cancelled")
            self._spawn(self._finish_from_store(job.id))
        except EngineError as exc:
            await self.store.mark_failed(job.id, exc.user_message)
            self._spawn(self._finish_from_store(job.id))
        except Exception:
            log.exception("job %s failed", job.id)
            await self.store.mark_failed(job.id, INTERNAL_ERROR)
            self._spawn(self._finish_from_store(job.id))
        else:
            self.recent_durations.append(time.perf_counter() - started)
            # Saving files and the grid happens while the next job already runs on the GPU thread.
            self._spawn(self._save_and_finish(job, result))
        finally:
            self._cancels.pop(job.id, None)
            self.running_job_id = None

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._post_tasks.add(task)
        task.add_done_callback(self._post_tasks.discard)

    async def _save_and_finish(self, job: JobRecord, result: GenerationResult) -> None:
        try:
            tiles, grid_path, grid_png = await asyncio.to_thread(self._write_files, job, result)
            await self.store.mark_done(
                job.id, tiles=tiles, grid_path=str(grid_path), expander=result.expander, render=result.render
            )
        except Exception:
            log.exception("saving job %s failed", job.id)
            await self.store.mark_failed(job.id, "the images could not be saved")
            grid_png = None
        done = await self.store.get_job(job.id)
        if done is not None:
            await self._finish(JobOutcome(done, grid_png if done.status == "done" else None))

    def _write_files(self, job: JobRecord, result: GenerationResult) -> tuple[list[Tile], Path, bytes]:
        folder = self.images_dir / job.id
        # A retried job starts clean, but keeps its inputs (source image, mask) staged before it queued.
        for old in (*folder.glob("tile-*.png"), folder / "grid.png"):
            old.unlink(missing_ok=True)
        folder.mkdir(parents=True, exist_ok=True)
        images, flags = screen_tiles(
            self.classifier if job.safe_mode else None, result.images, result.nsfw_flags
        )
        tiles: list[Tile] = []
        for index, (image, prompt, seed, nsfw) in enumerate(
            zip(images, result.prompts, result.image_seeds, flags, strict=True), start=1
        ):
            path = folder / f"tile-{index}.png"
            path.write_bytes(png_bytes(image))
            tiles.append(Tile(index, prompt, seed, str(path), nsfw))
        grid_png = png_bytes(compose_grid(images))
        grid_path = folder / "grid.png"
        grid_path.write_bytes(grid_png)
        return tiles, grid_path, grid_png

    async def _finish_from_store(self, job_id: str) -> None:
        job = await self.store.get_job(job_id)
        if job is not None:
            await self._finish(JobOutcome(job))

    async def _finish(self, outcome: JobOutcome) -> None:
        for future in self._waiters.pop(outcome.job.id, []):
            if not future.done():
                future.set_result(outcome)
        if self.on_finished is not None:
            try:
                await self.on_finished(outcome)
            except Exception:
                log.exception("delivering job %s failed", outcome.job.id)
