"""The job runner: a durable SQLite queue, fair across members, feeding a render backend's N slots.

One supervised dispatcher task fills free slots with the fair pick; each running job is its own task
(render → save → finish, in lifecycle.py). The runner knows the GPU(s) only through `RenderBackend`
(bot/engine/backend.py): importing this package imports neither torch nor Ray.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

from bot.engine.backend import RenderBackend
from bot.engine.safety import TileClassifier
from bot.engine.types import EngineError
from bot.jobs.lifecycle import (
    LEASE_LOST,
    SHUTDOWN,
    FinishedHandler,
    JobLifecycle,
    JobOutcome,
    ProgressHandler,
    StartedHandler,
    _InFlight,
    _log_task_death,
)
from bot.jobs.requests import request_from_job
from bot.models.queue import prefer_resident, settle_pass
from bot.store import HistoryStore, JobRecord, JobSpec, QueueRefused

log = logging.getLogger(__name__)

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


class JobRunner(JobLifecycle):
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
