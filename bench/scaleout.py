"""Scale-out on Ray Serve: throughput with 1 vs 2 replicas, the Ray hop's overhead, recovery after a replica dies.

Runs a local Ray cluster in this process on 127.0.0.1 with CPU replicas of the tiny models (torch threads 1 per
replica) and must run inside the loopback-only network fence:

    scripts/fence.sh .venv/bin/python -m bench.scaleout                 # tiny models, 64x64, 4 steps, 4 images

1. throughput: `--jobs` jobs from `--users` members submitted at once to a started JobRunner on a RayBackend,
   with 1 replica, then with 2 (redeployed); jobs/min each and the ratio (goal >= 1.7x on a 2-core box).
2. hop overhead: the same job, in turn on a LocalBackend (an in-process Engine, torch threads 1) and on the
   RayBackend with 1 replica, `--reps` times each after a warm-up: median per-job difference (goal <= 15 ms).
3. recovery: with 2 replicas, a long job's replica is killed (SIGKILL); the time from the kill until the job
   runs again on a replica (its next `started` event), and until it is done.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import (
    REPO_ROOT,
    add_common_args,
    engine_config,
    job_spec,
    offline,
    print_table,
    setup_logging,
    temp_data_dir,
)

GOAL_RATIO = 1.7
GOAL_HOP_MS = 15.0


def _fenced() -> bool:
    import socket

    return [name for _, name in socket.if_nameindex()] == ["lo"]


async def _throughput(config: Any, address: str, replicas: int, args: argparse.Namespace) -> float:
    """Jobs per minute with `replicas` replicas (deployed here), after one warm-up job per replica."""
    from bot.engine.ray_backend import RayBackend, deploy_workers

    from bot.jobs import JobRunner
    from bot.store import HistoryStore

    await asyncio.to_thread(
        deploy_workers, config, address=address, replicas=replicas, gpus_per_replica="auto", say=_quiet
    )
    with temp_data_dir("scaleout") as tmp:
        async with HistoryStore(Path(tmp) / "history.sqlite3") as store:
            backend = RayBackend(address, limits=config.limits)
            runner = JobRunner(
                store=store, backend=backend, images_dir=Path(tmp) / "images", poll_seconds=0.2
            )
            await runner.start()
            while True:
                if (await backend.available())[0] and backend.capacity >= replicas:
                    break
                await asyncio.sleep(0.2)
            warm = [await runner.submit(job_spec(args, job_seed=i, user_id=100 + i)) for i in range(replicas)]
            await asyncio.gather(*(runner.wait_for(job.id) for job in warm))
            jobs = [
                await runner.submit(job_spec(args, job_seed=1000 + i, user_id=i % args.users))
                for i in range(args.jobs)
            ]
            started = time.perf_counter()
            outcomes = await asyncio.gather(*(runner.wait_for(job.id) for job in jobs))
            wall = time.perf_counter() - started
            await runner.stop(grace=30)
    assert all(o.job.status == "done" for o in outcomes), [o.job.reason for o in outcomes]
    per_minute = len(jobs) / wall * 60.0
    print(f"{replicas} replica(s): {len(jobs)} jobs in {wall:.2f} s = {per_minute:.1f} jobs/min")
    return per_minute


async def _hop_overhead(config: Any, address: str, args: argparse.Namespace) -> tuple[float, float, float]:
    """Median seconds per job: local backend, Ray backend (1 replica), and the median of the paired differences."""
    import dataclasses

    from bot.engine.ray_backend import RayBackend, deploy_workers

    from bot.engine.backend import CancelToken
    from bot.engine.executor import Engine
    from bot.engine.local_backend import LocalBackend
    from bot.jobs import request_from_job

    await asyncio.to_thread(
        deploy_workers, config, address=address, replicas=1, gpus_per_replica="auto", say=_quiet
    )
    local = LocalBackend(Engine(dataclasses.replace(config, device="cpu", torch_threads=1)))
    await local.engine.load()
    remote = RayBackend(address, limits=config.limits)
    while True:
        if (await remote.available())[0]:
            break
        await asyncio.sleep(0.2)

    async def one(backend: Any, seed: int) -> float:
        request = request_from_job(job_spec(args, job_seed=seed))
        began = time.perf_counter()
        await backend.render(request, on_progress=None, on_rendered=lambda: None, cancel=CancelToken())
        return time.perf_counter() - began

    await one(local, 1)
    await one(remote, 1)
    local_times, remote_times = [], []
    for rep in range(args.reps):
        local_times.append(await one(local, 10 + rep))
        remote_times.append(await one(remote, 10 + rep))
    await local.close()
    diffs = [r - loc for r, loc in zip(remote_times, local_times, strict=True)]
    return statistics.median(local_times), statistics.median(remote_times), statistics.median(diffs)


async def _recovery(config: Any, address: str, args: argparse.Namespace) -> tuple[float, float]:
    """(seconds from a replica's SIGKILL to its job running again, seconds to that job's done)."""
    import dataclasses

    from bot.engine.ray_backend import RayBackend, deploy_workers

    from bot.jobs import JobRunner
    from bot.store import HistoryStore

    await asyncio.to_thread(
        deploy_workers, config, address=address, replicas=2, gpus_per_replica="auto", say=_quiet
    )
    with temp_data_dir("scaleout-kill") as tmp:
        async with HistoryStore(Path(tmp) / "history.sqlite3") as store:
            backend = RayBackend(address, limits=config.limits)
            runner = JobRunner(
                store=store, backend=backend, images_dir=Path(tmp) / "images", poll_seconds=0.2
            )
            await runner.start()
            spec = dataclasses.replace(job_spec(args, job_seed=5), steps=40, width=128, height=128)
            long_job = await runner.submit(spec)
            await _poll(lambda: bool(backend.running_workers), 0.01)
            await asyncio.sleep(0.3)
            victim = backend.running_workers[0]["pid"]
            killed = time.perf_counter()
            os.kill(victim, signal.SIGKILL)
            await _poll(lambda: any(w["pid"] != victim for w in backend.running_workers), 0.005)
            running_again = time.perf_counter() - killed
            outcome = await runner.wait_for(long_job.id)
            done = time.perf_counter() - killed
            await runner.stop(grace=30)
    assert outcome.job.status == "done" and outcome.job.attempts == 2, outcome.job
    return running_again, done


async def _poll(predicate: Any, interval: float) -> None:
    while True:
        if predicate():
            return
        await asyncio.sleep(interval)


def _quiet(line: str) -> None:
    logging.getLogger("bench.scaleout").info("%s", line)


async def _main(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    config = engine_config(args, preview_every=0)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    # "local": always a new cluster, never one a `ray start` left on this machine (/tmp/ray/ray_current_cluster).
    ray.init(
        address="local",
        num_cpus=3,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    address = ray.get_runtime_context().gcs_address
    print(
        f"local Ray {ray.__version__} cluster at {address}; {os.cpu_count()} CPU(s); {args.width}x{args.height}, "
        f"{args.steps} steps, {args.count} images per job"
    )
    try:
        one = await _throughput(config, address, 1, args)
        two = await _throughput(config, address, 2, args)
        local_s, remote_s, hop_s = await _hop_overhead(config, address, args)
        running_again, done = await _recovery(config, address, args)
    finally:
        serve.shutdown()
        ray.shutdown()
    ratio = two / one
    print()
    print_table(
        ["measure", "value", "goal"],
        [
            ["throughput 1 replica (jobs/min)", one, ""],
            ["throughput 2 replicas (jobs/min)", two, ""],
            ["ratio 2/1", ratio, f">= {GOAL_RATIO}"],
            ["local backend per job (ms, median)", local_s * 1000, ""],
            ["Ray backend per job (ms, median)", remote_s * 1000, ""],
            ["Ray hop overhead per job (ms, median of pairs)", hop_s * 1000, f"<= {GOAL_HOP_MS}"],
            ["replica killed -> job running again (s)", running_again, ""],
            ["replica killed -> job done (s)", done, ""],
        ],
    )
    met = ratio >= GOAL_RATIO and hop_s * 1000 <= GOAL_HOP_MS
    print("PASS" if met else "FAIL (see the goals above)")
    return 0 if met else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__.splitlines()[0])
    add_common_args(parser, reps=15)
    parser.add_argument("--jobs", type=int, default=12, help="jobs per throughput run")
    parser.add_argument("--users", type=int, default=4)
    args = parser.parse_args()
    if not _fenced():
        print(
            "error: run this inside the network fence: scripts/fence.sh .venv/bin/python -m bench.scaleout",
            file=sys.stderr,
        )
        return 2
    offline()
    setup_logging(args.verbose)
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
