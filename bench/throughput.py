"""Throughput of a started JobRunner: 16 jobs from 4 users submitted at once, fairness, GPU idle gaps.

On a fresh temporary data dir: start the worker, run one warm-up job, then submit `--users` x `--jobs-per-user`
jobs at once in user-major order (user 0's jobs first: the worst case for a FIFO queue) and wait for all.
Prints images/minute, total wall time, the GPU thread's idle gaps between consecutive jobs
(`engine.stats.idle_gaps`) and the order users were served. Every gap is broken down into the time the worker
spent in each store call while the GPU thread waited (the store methods are wrapped with timers).

The bench runs without the queue limits (the bot's defaults, 3 pending per user and a 5 s cooldown,
would refuse the 4th job of each user).

    python -m bench.throughput                    # tiny models, 64x64, 4 steps, 4 images, 4 users x 4 jobs
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import statistics
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._common import (
    Summary,
    add_common_args,
    engine_config,
    job_spec,
    load_engine,
    machine_line,
    offline,
    print_table,
    setup_logging,
    temp_data_dir,
)

GOAL_GAP_MS = 50.0
TRACED_STORE_METHODS = (
    "pending_jobs",
    "mark_running",
    "get_job",
    "mark_done",
    "mark_failed",
    "create_job",
)


class Tracer:
    """(name, start, end) intervals of wrapped calls, on one perf_counter clock."""

    def __init__(self) -> None:
        self.intervals: list[tuple[str, float, float]] = []
        self.enabled = False

    def wrap_async(self, owner: Any, name: str, label: str | None = None) -> None:
        original: Callable[..., Awaitable[Any]] = getattr(owner, name)
        tag = label or name

        @functools.wraps(original)
        async def traced(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                if self.enabled:
                    self.intervals.append((tag, started, time.perf_counter()))

        setattr(owner, name, traced)

    def wrap_sync(self, owner: Any, name: str, label: str | None = None) -> None:
        original: Callable[..., Any] = getattr(owner, name)
        tag = label or name

        @functools.wraps(original)
        def traced(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if self.enabled:
                    self.intervals.append((tag, started, time.perf_counter()))

        setattr(owner, name, traced)

    def within(self, start: float, end: float) -> dict[str, float]:
        """Seconds each traced name overlapped the window [start, end]."""
        overlap: dict[str, float] = defaultdict(float)
        for name, a, b in self.intervals:
            lo, hi = max(a, start), min(b, end)
            if hi > lo:
                overlap[name] += hi - lo
        return overlap


async def run(args: argparse.Namespace) -> int:
    from bot.engine.executor import Engine, GpuStats
    from bot.engine.local_backend import LocalBackend
    from bot.jobs import JobOutcome, JobRunner
    from bot.store import HistoryStore

    engine = Engine(engine_config(args))
    await load_engine(engine, args)
    tracer = Tracer()
    tracer.wrap_sync(engine, "generate_sync", "GPU job")
    with temp_data_dir("throughput") as tmp:
        store = HistoryStore(Path(tmp) / "history.sqlite3")
        await store.open()
        for name in TRACED_STORE_METHODS:
            tracer.wrap_async(store, name)
        runner = JobRunner(
            store=store, backend=LocalBackend(engine), images_dir=Path(tmp) / "generated_images"
        )
        tracer.wrap_sync(runner, "_write_files", "write files (thread)")
        progress_calls = [0]

        def on_progress(job_id: str, step: int, total: int, preview: object) -> None:
            progress_calls[0] += 1

        runner.set_handlers(on_progress=on_progress)
        await runner.start()
        warm = await runner.submit(job_spec(args, job_seed=1))
        await runner.wait_for(warm.id)
        await asyncio.sleep(0.2)  # let the warm-up's save task finish
        batches: list[Batch] = []
        for rep in range(args.reps):
            engine.stats = GpuStats()  # no gap from the previous batch to this batch's first job
            tracer.intervals.clear()
            tracer.enabled = True

            async def submit_and_wait(user: int, index: int, rep: int = rep) -> asyncio.Future[JobOutcome]:
                spec = job_spec(args, job_seed=1000 * (rep + 1) + user * 100 + index, user_id=user)
                job = await runner.submit(spec)
                return runner.wait_for(job.id)  # registered before the worker can finish it

            started = time.perf_counter()
            futures = await asyncio.gather(
                *(
                    submit_and_wait(user, index)
                    for user in range(args.users)
                    for index in range(args.jobs_per_user)
                )
            )
            submitted = time.perf_counter() - started
            outcomes = await asyncio.gather(*futures)
            wall = time.perf_counter() - started
            tracer.enabled = False
            batches.append(Batch(outcomes, wall, submitted, engine.stats, list(tracer.intervals)))
            await asyncio.sleep(0.2)  # let the last save task finish before the next batch
        await runner.stop()
        await store.close()
    await engine.close()

    print()
    print(machine_line())
    print(
        f"{args.reps} batch(es) of {args.users} users x {args.jobs_per_user} jobs submitted at once "
        f"(user-major order); each job {args.count} image(s) {args.width}x{args.height}, {args.steps} steps; "
        f"{progress_calls[0]} progress callbacks"
    )
    ok = True
    for index, batch in enumerate(batches, start=1):
        print()
        print(f"== batch {index}/{len(batches)}")
        ok = _report(batch, args) and ok
    if len(batches) > 1:
        rates = [b.images(args.count) / b.wall * 60.0 for b in batches]
        worst_gap = max(max(b.stats.idle_gaps, default=0.0) for b in batches) * 1000.0
        print()
        print(
            f"over {len(batches)} batches: images/minute median {statistics.median(rates):.1f} "
            f"(min {min(rates):.1f}, max {max(rates):.1f}); worst idle gap {worst_gap:.1f} ms"
        )
    print(f"goal: idle gap <= {GOAL_GAP_MS:.0f} ms (max) -> {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


@dataclass
class Batch:
    outcomes: list[Any]
    wall: float
    submitted: float
    stats: Any
    intervals: list[tuple[str, float, float]]

    def images(self, count: int) -> int:
        return len(self.outcomes) * count


def _report(batch: Batch, args: argparse.Namespace) -> bool:
    outcomes, wall, stats = batch.outcomes, batch.wall, batch.stats
    jobs = len(outcomes)
    failed = [o.job for o in outcomes if o.job.status != "done"]
    served = sorted((o.job for o in outcomes), key=lambda job: job.started_at or 0.0)
    order = [job.user_id for job in served]
    gaps_ms = [g * 1000.0 for g in stats.idle_gaps]
    gap = Summary.of(gaps_ms)
    images = batch.images(args.count)
    print_table(
        ["metric", "value"],
        [
            ["jobs (failed)", f"{jobs} ({len(failed)})"],
            ["images", images],
            ["total wall s (submit -> last outcome)", wall],
            ["submitting all jobs took s", batch.submitted],
            ["images / minute", images / wall * 60.0],
            ["jobs / minute", jobs / wall * 60.0],
            ["GPU thread busy s", stats.busy_seconds],
            ["GPU thread utilisation", stats.busy_seconds / wall],
            ["mean GPU job s", stats.busy_seconds / max(1, stats.jobs)],
            ["idle gaps (n)", gap.n],
            ["idle gap median ms", gap.median],
            ["idle gap mean ms", gap.mean],
            ["idle gap max ms", gap.maximum],
        ],
    )
    print("idle gaps ms:", " ".join(f"{g:.1f}" for g in gaps_ms))
    print()

    # Where the worker was while the GPU thread sat idle.
    tracer = Tracer()
    tracer.intervals = batch.intervals
    jobs_on_gpu = sorted((a, b) for name, a, b in batch.intervals if name == "GPU job")
    per_gap: dict[str, list[float]] = defaultdict(list)
    for (_, end), (next_start, _) in itertools.pairwise(jobs_on_gpu):
        window = tracer.within(end, next_start)
        per_gap["(gap)"].append((next_start - end) * 1000.0)
        for name in (*TRACED_STORE_METHODS, "write files (thread)"):
            per_gap[name].append(window.get(name, 0.0) * 1000.0)
    if per_gap:
        print("what overlapped the idle gaps (ms per gap; calls overlap each other, so rows do not sum):")
        rows = [
            [name, statistics.median(values), statistics.fmean(values), max(values)]
            for name, values in per_gap.items()
            if max(values) > 0.0
        ]
        print_table(["during gap", "median", "mean", "max"], rows)
        # The worker re-reads every pending row (and its tiles) before each job: the gap grows with the queue.
        queued = [len(jobs_on_gpu) - 1 - i for i in range(len(per_gap["(gap)"]))]
        listing = per_gap["pending_jobs"]
        slope = _slope(queued, listing)
        if args.detail:
            print_table(
                ["gap", "queued", "gap ms", "pending_jobs ms", "write files ms"],
                [
                    [i + 1, q, g, p, w]
                    for i, (q, g, p, w) in enumerate(
                        zip(
                            queued,
                            per_gap["(gap)"],
                            listing,
                            per_gap["write files (thread)"],
                            strict=True,
                        )
                    )
                ],
            )
        print(f"pending_jobs: ~{slope:.3f} ms more per job still queued (least squares over the gaps)")
        print()

    print("served order (user ids):", " ".join(str(u) for u in order))
    round_robin = all(
        len(set(order[i : i + args.users])) == min(args.users, len(order) - i)
        for i in range(0, len(order), args.users)
    )
    print(
        f"round-robin across users: {'yes' if round_robin else 'no'} "
        f"(first {args.users} served: {order[: args.users]})"
    )
    return gap.maximum <= GOAL_GAP_MS and not failed


def _slope(xs: list[int], ys: list[float]) -> float:
    if len(xs) < 2:
        return float("nan")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, reps=1)  # --reps: batches of users x jobs-per-user
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--jobs-per-user", type=int, default=4)
    parser.add_argument("--detail", action="store_true", help="print every gap with what overlapped it")
    args = parser.parse_args()
    offline()
    setup_logging(args.verbose)
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
