"""The job runner: a durable SQLite queue, fair across members, feeding a render backend's N slots.

One supervised dispatcher task fills free slots with the fair pick; each running job is its own task
(render → save → finish). The runner knows the GPU(s) only through `RenderBackend` (bot/engine/backend.py):
importing this module imports neither torch nor Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import logging
import math
import os
import secrets
import shutil
import sqlite3
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from PIL import Image

from bot.engine.backend import BackendUnavailable, CancelToken, RenderBackend, RenderOutput, WorkerLost
from bot.engine.images import compose_grid, png_bytes
from bot.engine.safety import TileClassifier, screen_tiles
from bot.engine.types import EngineError, GenerationRequest, InvalidRequest, JobCancelled, params_of
from bot.flags import chaos_temperature
from bot.models.queue import prefer_resident, settle_pass
from bot.store import FINAL_STATES, HistoryStore, JobRecord, JobSpec, QueueRefused, Tile

log = logging.getLogger(__name__)

INTERNAL_ERROR = "something went wrong on our side; the job was not completed"
SHUTDOWN = "shutdown"
# The cancel reason when another process took the job over (this one's lease had expired): hands off the row.
LEASE_LOST = "lease lost"
# The dispatcher's back-off after an unexpected error (a full disk, a locked database): doubles to the cap.
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
# The shutdown budget. `docker stop` / compose send SIGTERM, then SIGKILL after the stop grace
# (compose.yaml: stop_grace_period 2m = 120 s). JobRunner.stop waits at most STOP_BUDGET_SECONDS in all:
#   STOP_GRACE_SECONDS      60 s  running jobs may finish
#   INTERRUPT_WAIT_SECONDS  20 s  the rest stop at their next step and go back to `queued`, no attempt spent
#   CANCEL_WAIT_SECONDS      5 s  a job still not back is cancelled outright (its row is given back too)
#   DELIVERY_WAIT_SECONDS   10 s  results that finished meanwhile are delivered
#                           95 s  (the dispatcher stops at once, within the first phase)
# which leaves 25 s of the 120 for the bot to close delivery, the gateway and the database. Each phase also
# ends at the budget's deadline, so a caller's larger `grace` never stretches the total.
STOP_GRACE_SECONDS = 60.0
INTERRUPT_WAIT_SECONDS = 20.0
CANCEL_WAIT_SECONDS = 5.0
DELIVERY_WAIT_SECONDS = 10.0
STOP_BUDGET_SECONDS = (
    STOP_GRACE_SECONDS + INTERRUPT_WAIT_SECONDS + CANCEL_WAIT_SECONDS + DELIVERY_WAIT_SECONDS
)
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


def request_from_job(
    job: JobRecord | JobSpec, *, init_image: bytes | None = None, mask_image: bytes | None = None
) -> GenerationRequest:
    """The engine request for a stored row or a new spec (used to validate, run, rerun and reproduce).

    The input images travel as bytes (workers may be remote); `load_request` reads them from the job's files.
    """
    return GenerationRequest(
        **params_of(job),
        prompts=job.given_prompts,
        image_seeds=job.given_seeds,
        init_image=init_image,
        strength=job.strength if job.strength is not None else 0.6,
        mask_image=mask_image,
        action=job.render_action or job.action,
        temperature=chaos_temperature(job.chaos) if job.chaos is not None else None,
        model=job.model or "",
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

    # No thread hop for a job without input images (most jobs): it would queue behind busy worker threads.
    init_image = await asyncio.to_thread(read, job.init_image, "source image") if job.init_image else None
    mask_image = await asyncio.to_thread(read, job.mask_image, "mask") if job.mask_image else None
    return request_from_job(job, init_image=init_image, mask_image=mask_image)


SPEC_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(JobSpec))


def rerun_spec(old: JobRecord, *, user_id: int | None = None, action: str = "rerun") -> JobSpec:
    """A new job that re-renders `old` exactly: its prompts, image seeds and parameters."""
    # Issue 22: a /describe job's "tiles" are its four prompts, not images: it describes its source again.
    described = (old.render_action or old.action) == "describe"
    spec = {name: getattr(old, name) for name in SPEC_FIELDS}
    spec.update(
        id=None,
        action=action,
        parent_id=old.id,
        given_prompts=None if described else old.prompts,
        given_seeds=None if described else tuple(tile.image_seed for tile in old.tiles),
        render_action=old.render_action or old.action,
        # A private job's children are private too (member /settings: delivered to the presser alone).
        user_id=user_id if user_id is not None else old.user_id,
        # A rerun is one job of its own: not a sibling of the original's batch, no defaults applied.
        group_id=None,
        from_defaults=(),
    )
    return JobSpec(**spec)


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


def next_fair_job(
    queued: list[JobRecord], last_served: dict[int | None, float], busy_users: set[int | None]
) -> JobRecord | None:
    """The fair pick for a free slot; members in `busy_users` wait while anyone else's job waits."""
    order = fair_order(queued, last_served)
    for job in order:
        if job.user_id is None or job.user_id not in busy_users:
            return job
    return order[0] if order else None  # only busy members wait: don't leave the slot idle


class JobRunner:
    """Owns the dispatcher; the bot and the CLI submit jobs and listen for their outcomes."""

    def __init__(
        self,
        *,
        store: HistoryStore,
        backend: RenderBackend,
        images_dir: Path,
        max_pending_per_user: int | None = None,
        max_queue: int | None = None,
        cooldown_seconds: float = 0.0,
        max_attempts: int = 2,
        one_running_per_member: bool = True,
        requeue_on_shutdown: bool = True,
        poll_seconds: float = 5.0,
        classifier: TileClassifier | None = None,
        retry_inline: bool = False,
    ) -> None:
        self.store = store
        self.backend = backend
        #: the image classifier for filtered (safe-mode) jobs; runs in the save stage, off the GPU thread
        self.classifier = classifier
        self.images_dir = images_dir
        self.max_pending_per_user = max_pending_per_user
        self.max_queue = max_queue
        self.cooldown_seconds = cooldown_seconds
        self.max_attempts = max_attempts
        self.one_running_per_member = one_running_per_member
        # The bot requeues what shutdown interrupts (its restart runs it); the CLI marks it interrupted.
        self.requeue_on_shutdown = requeue_on_shutdown
        # The CLI has no dispatcher: a job whose worker died runs again in place (never re-queued).
        self.retry_inline = retry_inline
        self.poll_seconds = poll_seconds
        self.on_progress: ProgressHandler | None = None
        self.on_started: StartedHandler | None = None
        self.on_finished: FinishedHandler | None = None
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._lease_keeper: asyncio.Task[None] | None = None
        self._inflight: dict[str, _InFlight] = {}
        self._post_tasks: set[asyncio.Task[Any]] = set()
        self._waiters: dict[str, list[asyncio.Future[JobOutcome]]] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._last_served: dict[int | None, float] = {}
        #: jobs passed over for one whose model was loaded (bot/models/queue.py), by job id
        self._passed_over: dict[str, int | None] = {}
        self._stopping = False
        self.recovered_at: float | None = None
        self.recent_durations: deque[float] = deque(maxlen=20)
        self.backend_online = True
        self.backend_reason = "not checked yet"
        self.dispatcher_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self, *, requeue_interrupted: bool = True) -> None:
        """Recover rows a crash left `running`, start the backend, then the dispatcher."""
        await self.store.recover_interrupted(requeue=requeue_interrupted, max_attempts=self.max_attempts)
        # Jobs final before this instant (including those recovery just failed) belong to no live delivery.
        self.recovered_at = time.time()
        await self.backend.start()
        self._dispatcher = asyncio.create_task(self._dispatch(), name="job-dispatcher")
        self._dispatcher.add_done_callback(_log_task_death)
        self._start_lease_keeper(sweep=True)
        self._wake.set()

    async def stop(self, *, grace: float = STOP_GRACE_SECONDS) -> None:
        """No new jobs; let running jobs finish within `grace` s, then interrupt them at their next step.

        Interrupted rows go back to `queued` with their attempt handed back (the restart runs them) or, for
        the CLI, end `interrupted`. Waits STOP_BUDGET_SECONDS at most in all (see the budget above).
        Never raises: the bot must go on to close delivery and the gateway.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_BUDGET_SECONDS

        def until(seconds: float) -> float:
            return max(0.0, min(seconds, deadline - loop.time()))

        self._stopping = True
        self._wake.set()
        if self._dispatcher is not None:
            self._dispatcher.cancel()  # it starts nothing more; waited for below
        tasks = [flight.task for flight in self._inflight.values() if flight.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=until(min(max(grace, 0.0), STOP_GRACE_SECONDS)))
        for flight in list(self._inflight.values()):
            flight.cancel.set(SHUTDOWN)
        tasks = [flight.task for flight in self._inflight.values() if flight.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=until(INTERRUPT_WAIT_SECONDS))
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=until(CANCEL_WAIT_SECONDS))
        if self._dispatcher is not None and not self._dispatcher.done():
            await asyncio.wait([self._dispatcher], timeout=until(CANCEL_WAIT_SECONDS))
        if self._post_tasks:
            await asyncio.wait(self._post_tasks, timeout=until(DELIVERY_WAIT_SECONDS))
        # Last: the leases of jobs still winding down were renewed all along.
        if self._lease_keeper is not None:
            self._lease_keeper.cancel()
            await asyncio.wait([self._lease_keeper], timeout=1.0)

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

    def health(self) -> tuple[bool, str]:
        """Whether the dispatcher is alive and the backend reachable, with a one-line reason."""
        if self._dispatcher is None or self._dispatcher.done():
            return False, "the job dispatcher is not running"
        if self.dispatcher_error is not None:
            return False, f"the job dispatcher keeps failing ({self.dispatcher_error})"
        if not self.backend_online:
            return False, f"render backend unreachable: {self.backend_reason}"
        return True, f"dispatcher running, {self.backend.name} backend: {self.backend_reason}"

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
        self.backend.validate(request_from_job(spec))

    def _limits_for(self, spec: JobSpec) -> dict[str, Any]:
        """Queue limits for `spec`: per-user ones apply only to Discord users (the CLI has none)."""
        per_user = spec.user_id is not None
        # Issue 22: the later siblings of one /imagine (permutations, --repeat) are part of one request, so
        # the cooldown started by the first one does not refuse them.
        sibling = spec.group_id is not None and spec.id != spec.group_id
        return {
            "max_pending_per_user": self.max_pending_per_user if per_user else None,
            "max_queue": self.max_queue,
            "cooldown_seconds": self.cooldown_seconds if per_user and not sibling else 0.0,
        }

    async def submit(
        self, spec: JobSpec, *, max_pending_per_user: int | None = None, cooldown_seconds: float | None = None
    ) -> JobRecord:
        """Validate, write the `queued` row (limits enforced atomically) and wake the dispatcher.

        A server's own pending cap and cooldown (the intake passes them) only ever tighten the bot's.
        """
        self._check_acceptable(spec)
        limits = self._limits_for(spec)
        if spec.user_id is not None and max_pending_per_user is not None:
            bot_cap = limits["max_pending_per_user"]
            limits["max_pending_per_user"] = min(max_pending_per_user, bot_cap or max_pending_per_user)
        if spec.user_id is not None and cooldown_seconds is not None:
            limits["cooldown_seconds"] = max(cooldown_seconds, limits["cooldown_seconds"])
        job = await self.store.create_job(spec, **limits)
        self._wake.set()
        return job

    async def run_now(self, job: JobRecord) -> JobOutcome:
        """Run one queued job right away, outside the dispatcher (the CLI), and wait for its outcome.

        Nothing is re-queued for a dispatcher that does not exist: with `retry_inline`, a lost worker is
        retried here within the job's attempts. If another process (a bot on the same data folder) claimed
        the row first, wait for its final state — and claim it again should that process give it back;
        `stop()` ends that wait with StoppedWaiting.
        """
        future = self.wait_for(job.id)
        try:
            return await self._run_here_or_wait(job, future)
        finally:
            if self._dispatcher is None and not self._inflight and self._lease_keeper is not None:
                self._lease_keeper.cancel()  # nothing left to renew: the CLI closes its store next

    async def _run_here_or_wait(self, job: JobRecord, future: asyncio.Future[JobOutcome]) -> JobOutcome:
        while True:
            if await self._claim(job):
                flight = self._inflight.get(job.id)
                if flight is not None and flight.task is not None:
                    await asyncio.wait([flight.task])
                if future.done():
                    return future.result()
                # Not finished here: given back to the queue, or taken over by another process.
            outcome = await self._outcome_elsewhere(job.id, future)
            if outcome is not None:
                return outcome

    def wait_for(self, job_id: str) -> asyncio.Future[JobOutcome]:
        """A future resolved when the job reaches a final state."""
        future: asyncio.Future[JobOutcome] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(future)
        return future

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued job at once, or interrupt a rendering one at its next step.

        False once its render has ended (the images are being saved), or when it is final.
        """
        flight = self._inflight.get(job_id)
        if flight is not None:
            if not flight.rendering:
                return False
            flight.cancel.set("cancelled")
            return True
        if await self.store.cancel_queued(job_id):
            await self._finish_from_store(job_id)
            return True
        return False

    async def queue_positions(self) -> list[JobRecord]:
        """Pending jobs in the order they will run (running first)."""
        pending = await self.store.pending_jobs()
        running = [job for job in pending if job.status == "running"]
        queued = [job for job in pending if job.status == "queued"]
        return running + fair_order(queued, self._last_served)

    def eta_seconds(self, position: int) -> float | None:
        """Rough wait for the queued job at 1-based `position`, from recent durations and the slots."""
        if not self.recent_durations:
            return None
        average = sum(self.recent_durations) / len(self.recent_durations)
        return math.ceil(position / max(1, self.backend.capacity)) * average

    # -- the dispatcher -------------------------------------------------------------------------------
    async def _dispatch(self) -> None:
        """Fill free slots with the fair pick; never dies on an error (log, back off, carry on)."""
        backoff = BACKOFF_FIRST_SECONDS
        while not self._stopping:
            self._wake.clear()  # before looking, so a submit during the query is not missed
            try:
                started = await self._fill_one_slot()
            except Exception as exc:
                log.exception("the job dispatcher failed; retrying in %.1f s", backoff)
                self.dispatcher_error = f"{type(exc).__name__}: {exc}"[:200]
                await self._wait_for_wake(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
                continue
            self.dispatcher_error = None
            backoff = BACKOFF_FIRST_SECONDS
            if not started:
                # Also polls: rows queued by another process, a backend coming back.
                await self._wait_for_wake(self.poll_seconds)

    async def _wait_for_wake(self, seconds: float) -> None:
        waiter = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait([waiter], timeout=seconds)
        finally:
            waiter.cancel()

    async def _fill_one_slot(self) -> bool:
        """Start the next fair job if a slot is free; True when one was started (look again at once)."""
        online, reason = await self.backend.available()
        if online != self.backend_online:
            log.log(logging.INFO if online else logging.WARNING, "render backend: %s", reason)
        self.backend_online, self.backend_reason = online, reason
        if not online or self._stopping:
            return False
        rendering = [flight for flight in self._inflight.values() if flight.rendering]
        if len(rendering) >= self.backend.capacity:
            return False
        pending = await self.store.pending_jobs()
        queued = [job for job in pending if job.status == "queued"]
        busy = {flight.job.user_id for flight in rendering} if self.one_running_per_member else set()
        job = next_fair_job(queued, self._last_served, busy)
        if job is None:
            return False
        resident_models = getattr(self.backend, "resident_models", None)
        if resident_models is not None:
            # Several models: a job for a loaded model may go first, within the bound (bot/models/queue.py).
            order = fair_order(queued, self._last_served)
            job = prefer_resident(job, order, resident_models(), self._passed_over, busy)
        await self._claim(job)
        return True

    async def _claim(self, job: JobRecord) -> bool:
        """queued → running for this runner, and start its task. False if someone else has it."""
        # Registered before the claim's await: a /cancel landing meanwhile finds the job and its token.
        flight = _InFlight(job)
        self._inflight[job.id] = flight
        try:
            claimed = await self.store.mark_running(job.id)
        except BaseException:
            self._inflight.pop(job.id, None)
            raise
        if not claimed:
            self._inflight.pop(job.id, None)
            return False
        self._last_served[job.user_id] = time.monotonic()
        settle_pass(job, self._last_served, self._passed_over)
        flight.task = asyncio.create_task(self._run_job(flight), name=f"job-{job.id}")
        self._start_lease_keeper(sweep=False)
        return True

    # -- leases ----------------------------------------------------------------------------------------
    def _start_lease_keeper(self, *, sweep: bool) -> None:
        """Renew this runner's leases; with `sweep` (the bot) also take over jobs whose owner died."""
        if self._lease_keeper is None or self._lease_keeper.done():
            self._lease_keeper = asyncio.create_task(self._keep_leases(sweep=sweep), name="job-leases")
            self._lease_keeper.add_done_callback(_log_task_death)

    async def _keep_leases(self, *, sweep: bool) -> None:
        """Every third of the lease: renew ours, and stop any job another process has taken over."""
        interval = self.store.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                claimed = [job_id for job_id, flight in self._inflight.items() if flight.task is not None]
                for job_id in await self.store.renew_leases(claimed):
                    flight = self._inflight.get(job_id)
                    if flight is not None and flight.rendering:
                        log.warning("job %s: another process took it over; stopping this render", job_id)
                        flight.cancel.set(LEASE_LOST)
                if sweep and not self._stopping:
                    requeued, failed = await self.store.recover_interrupted(
                        requeue=True, max_attempts=self.max_attempts
                    )
                    if requeued:
                        self._wake.set()
                    for job_id in failed:
                        self._spawn(self._finish_from_store(job_id))
            except Exception:
                # A locked or full database: the lease lasts three intervals, so the next try may still hold it.
                log.exception("renewing job leases failed; retrying in %.0f s", interval)

    # -- one job ---------------------------------------------------------------------------------------
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
