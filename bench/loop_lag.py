"""Event-loop lag while the engine generates jobs back to back.

A probe task sleeps `--interval` (10 ms) in a loop and records how late each wake-up is (the overshoot).
First on an idle loop (baseline, `--idle-seconds`), then while a started JobRunner works through `--reps` rounds of
`--jobs` jobs submitted at once (worker + progress handler + saving files + SQLite writes, as in the bot).

    python -m bench.loop_lag                      # tiny models, 64x64, 4 steps, 4 images, 3 rounds x 10 jobs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import time
from pathlib import Path

from bench._common import (
    add_common_args,
    engine_config,
    job_spec,
    load_engine,
    machine_line,
    offline,
    percentile,
    print_table,
    setup_logging,
    temp_data_dir,
)

GOAL_P99_MS = 50.0
GOAL_MAX_MS = 250.0


class GcPauses:
    """Records the duration of every garbage collection (any thread) while installed."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._started = 0.0

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._started))

    def longest(self, generation: int) -> tuple[int, float]:
        durations = [d for g, d in self.pauses if g == generation]
        return len(durations), max(durations, default=0.0)


class LagProbe:
    """Sleeps `interval` seconds over and over; records the overshoot of every wake-up in seconds."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lag-probe")

    async def stop(self) -> list[float]:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.samples

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.samples.append(max(0.0, time.perf_counter() - started - self.interval))


def _row(name: str, samples: list[float], seconds: float) -> list[object]:
    ms = [s * 1000.0 for s in samples]
    return [
        name,
        len(ms),
        seconds,
        percentile(ms, 50),
        percentile(ms, 90),
        percentile(ms, 99),
        max(ms) if ms else float("nan"),
    ]


async def run(args: argparse.Namespace) -> int:
    from bot.engine.executor import Engine
    from bot.engine.local_backend import LocalBackend
    from bot.jobs import JobOutcome, JobRunner
    from bot.store import HistoryStore

    engine = Engine(engine_config(args))
    await load_engine(engine, args)
    if args.gc_freeze:
        # What a fix in the engine would do once the models are loaded: move every long-lived object
        # (modules, parameters, imported libraries) out of the collector's generations.
        gc.collect()
        gc.freeze()
        print(f"gc.freeze(): {gc.get_freeze_count()} objects frozen")

    # Baseline: the same probe on an idle loop.
    idle = LagProbe(args.interval)
    idle.start()
    await asyncio.sleep(args.idle_seconds)
    idle_samples = await idle.stop()

    with temp_data_dir("loop-lag") as tmp:
        store = HistoryStore(Path(tmp) / "history.sqlite3")
        await store.open()
        runner = JobRunner(
            store=store, backend=LocalBackend(engine), images_dir=Path(tmp) / "generated_images"
        )
        progress_calls = [0]

        def on_progress(job_id: str, step: int, total: int, preview: object) -> None:
            progress_calls[0] += 1

        runner.set_handlers(on_progress=on_progress)
        await runner.start()
        # Warm-up job outside the measurement.
        warm = await runner.submit(job_spec(args, job_seed=1))
        await runner.wait_for(warm.id)

        rounds: list[tuple[list[float], float]] = []
        outcomes: list[JobOutcome] = []
        gc_pauses = GcPauses()
        gc_pauses.__enter__()
        for round_index in range(args.reps):
            probe = LagProbe(args.interval)
            probe.start()
            started = time.perf_counter()
            waits: list[asyncio.Future[JobOutcome]] = []
            for index in range(args.jobs):
                seed = 100 + round_index * args.jobs + index
                job = await runner.submit(job_spec(args, job_seed=seed, user_id=index % 4))
                waits.append(runner.wait_for(job.id))
            outcomes.extend(await asyncio.gather(*waits))
            elapsed = time.perf_counter() - started
            rounds.append((await probe.stop(), elapsed))
        gc_pauses.__exit__()
        await runner.stop()
        await store.close()
    await engine.close()

    failed = [o.job.id for o in outcomes if o.job.status != "done"]
    busy_samples = [sample for samples, _ in rounds for sample in samples]
    busy_seconds = sum(seconds for _, seconds in rounds)
    p99 = percentile([s * 1000.0 for s in busy_samples], 99)
    worst = max(busy_samples, default=float("nan")) * 1000.0
    print()
    print(machine_line())
    print(
        f"{args.reps} round(s) of {args.jobs} jobs submitted at once; each job {args.count} image(s) "
        f"{args.width}x{args.height}, {args.steps} steps; probe sleeps {args.interval * 1000:.0f} ms; "
        f"{progress_calls[0]} progress callbacks; {len(failed)} failed"
    )
    print()
    table = [_row("idle (baseline)", idle_samples, args.idle_seconds)]
    table += [_row(f"busy round {i + 1}", samples, seconds) for i, (samples, seconds) in enumerate(rounds)]
    table.append(_row("busy (all rounds)", busy_samples, busy_seconds))
    print_table(["loop", "samples", "seconds", "p50 ms", "p90 ms", "p99 ms", "max ms"], table)
    print()
    gc_rows = []
    for generation in (0, 1, 2):
        count, longest = gc_pauses.longest(generation)
        gc_rows.append([f"gen {generation}", count, longest * 1000.0])
    print(
        "garbage collections during the busy rounds (any thread; they hold the GIL, so they stall the loop):"
    )
    print_table(["gc", "count", "longest ms"], gc_rows)
    print()
    ok = p99 <= GOAL_P99_MS and worst <= GOAL_MAX_MS and not failed
    print(f"goal: p99 <= {GOAL_P99_MS:.0f} ms, max <= {GOAL_MAX_MS:.0f} ms -> {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, reps=3)
    parser.add_argument(
        "--jobs", type=int, default=10, help="jobs submitted at once per round (--reps rounds)"
    )
    parser.add_argument("--interval", type=float, default=0.010, help="probe sleep in seconds")
    parser.add_argument("--idle-seconds", type=float, default=3.0, help="idle-loop baseline duration")
    parser.add_argument(
        "--gc-freeze", action="store_true", help="gc.collect() + gc.freeze() after the models are loaded"
    )
    parser.add_argument(
        "--slow-callback-ms",
        type=float,
        default=0.0,
        help="asyncio debug mode: log every callback that blocks the loop longer than this (adds overhead)",
    )
    args = parser.parse_args()
    offline()
    setup_logging(args.verbose or args.slow_callback_ms > 0)
    return asyncio.run(_with_debug(args), debug=args.slow_callback_ms > 0)


async def _with_debug(args: argparse.Namespace) -> int:
    if args.slow_callback_ms > 0:
        asyncio.get_running_loop().slow_callback_duration = args.slow_callback_ms / 1000.0
    return await run(args)


if __name__ == "__main__":
    raise SystemExit(main())
