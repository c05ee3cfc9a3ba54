"""Scale-out on Ray Serve over HTTP: 1 vs 2 replicas, the HTTP hop's overhead, the cost of streaming previews.

Starts `ray start --head` (3 CPUs) as a child process on 127.0.0.1 and deploys CPU replicas of the tiny models
(torch threads 1 per replica) through the dashboard's REST API, as `python -m bot workers` does; this process
reaches them only over HTTP (`HttpBackend`) and never imports Ray. Must run inside the network fence:

    scripts/fence.sh .venv/bin/python -m bench.scaleout                 # tiny models, 64x64, 4 steps, 4 images

1. throughput: `--jobs` jobs from `--users` members submitted at once to a started JobRunner on the
   HttpBackend, with 1 replica, then with 2 (redeployed); jobs/min each and the ratio (goal >= 1.7x, 2 cores).
2. hop overhead: the same job, in turn on a LocalBackend (an in-process Engine, torch threads 1) and on the
   HttpBackend with 1 replica, `--reps` times each after a warm-up: median of the paired differences
   (goal <= 10 ms on a quiet box; Serve's proxy alone costs 5-7 ms per request).
3. preview streaming: the same pairs with a preview every step on both sides: the extra hop cost per job
   and per preview (a 256 px PNG, base64 in one NDJSON line).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench._common import (
    REPO_ROOT,
    add_common_args,
    engine_config,
    job_spec,
    offline,
    print_table,
    resolve_models,
    setup_logging,
    temp_data_dir,
)

GOAL_RATIO = 1.7
GOAL_HOP_MS = 10.0
DASHBOARD = "http://127.0.0.1:8265"
URL = "http://127.0.0.1:8000"
# Ray's own token auth, explicit: a token file left in ~/.ray would otherwise turn it on behind our back.
RAY_TOKEN = secrets.token_hex(32)


def _fenced() -> bool:
    import socket

    return [name for _, name in socket.if_nameindex()] == ["lo"]


def _start_head(env: dict[str, str], temp: Path) -> subprocess.Popen[bytes]:
    # In its own PID namespace: killing the namespace's init at the end stops every Ray process at once.
    head = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port=6379",
         "--num-cpus=3", "--dashboard-host=127.0.0.1", f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(
                DASHBOARD + "/api/version", headers={"Authorization": f"Bearer {RAY_TOKEN}"}
            )
            with opener.open(request, timeout=2):
                return head
        except OSError:
            time.sleep(0.5)
    raise SystemExit("the Ray dashboard never answered")


def _stop_head(head: subprocess.Popen[bytes]) -> None:
    """SIGKILL the PID namespace's init: the kernel ends every process of the cluster."""
    children = Path(f"/proc/{head.pid}/task/{head.pid}/children")
    for pid in children.read_text().split() if children.exists() else []:
        with contextlib.suppress(OSError):
            os.kill(int(pid), signal.SIGKILL)
    head.wait(60)


def _deploy(replicas: int, preview_every: int) -> None:
    from bot.engine.workers.deploy import DeployTarget, deploy_workers

    target = DeployTarget(
        dashboard=DASHBOARD,
        replicas=replicas,
        gpus_per_replica=0,
        port=8000,
        ray_token=RAY_TOKEN,
        engine_args={"preview_every": preview_every},
    )
    deploy_workers(target, say=lambda line: logging.getLogger("bench.scaleout").info("%s", line))


async def _remote(config: Any, token: str, replicas: int) -> Any:
    from bot.engine.workers.http_backend import HttpBackend

    backend = HttpBackend(URL, token, limits=config.limits)
    while not ((await backend.available())[0] and backend.capacity >= replicas):
        backend._checked_at = float("-inf")  # ask again now: we just deployed
        await asyncio.sleep(0.2)
    return backend


async def _throughput(config: Any, token: str, replicas: int, args: argparse.Namespace) -> float:
    """Jobs per minute with `replicas` replicas, after one warm-up job per replica."""
    from bot.jobs import JobRunner
    from bot.store import HistoryStore

    await asyncio.to_thread(_deploy, replicas, 0)
    backend = await _remote(config, token, replicas)
    with temp_data_dir("scaleout") as tmp:
        async with HistoryStore(Path(tmp) / "history.sqlite3") as store:
            runner = JobRunner(
                store=store, backend=backend, images_dir=Path(tmp) / "images", poll_seconds=0.2
            )
            await runner.start()
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
    await backend.close()
    assert all(o.job.status == "done" for o in outcomes), [o.job.reason for o in outcomes]
    per_minute = len(jobs) / wall * 60.0
    print(f"{replicas} replica(s): {len(jobs)} jobs in {wall:.2f} s = {per_minute:.1f} jobs/min")
    return per_minute


async def _hop(config: Any, token: str, args: argparse.Namespace, preview_every: int) -> dict[str, float]:
    """Median seconds per job on the local backend and over HTTP (1 replica), and of the paired differences."""
    from bot.engine.backend import CancelToken
    from bot.engine.executor import Engine
    from bot.engine.local_backend import LocalBackend
    from bot.jobs import request_from_job

    await asyncio.to_thread(_deploy, 1, preview_every)
    local_config = dataclasses.replace(config, device="cpu", torch_threads=1, preview_every=preview_every)
    local = LocalBackend(Engine(local_config))
    await local.engine.load()
    remote = await _remote(config, token, 1)
    previews: list[int] = []

    async def one(backend: Any, seed: int) -> float:
        request = request_from_job(job_spec(args, job_seed=seed))
        seen = [0]

        def progress(step: int, total: int, preview: bytes | None) -> None:
            seen[0] += preview is not None

        began = time.perf_counter()
        await backend.render(request, on_progress=progress, on_rendered=lambda: None, cancel=CancelToken())
        took = time.perf_counter() - began
        previews.append(seen[0])
        return took

    await one(local, 1)
    await one(remote, 1)
    local_times, remote_times = [], []
    for rep in range(args.reps):
        local_times.append(await one(local, 10 + rep))
        remote_times.append(await one(remote, 10 + rep))
    await local.close()
    await remote.close()
    diffs = [r - loc for r, loc in zip(remote_times, local_times, strict=True)]
    return {
        "local": statistics.median(local_times),
        "remote": statistics.median(remote_times),
        "hop": statistics.median(diffs),
        "previews": statistics.median(previews),
    }


async def _main(args: argparse.Namespace) -> int:
    config = engine_config(args, preview_every=0)
    sd, text = resolve_models(args)
    token = secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p),
        "IMAGINE_SD_MODEL": sd,
        "IMAGINE_TEXT_MODEL": text,
        "IMAGINE_DEVICE": "cpu",
        "IMAGINE_DTYPE": args.dtype if args.dtype != "auto" else "float32",
        "IMAGINE_WORKERS_TOKEN": token,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": RAY_TOKEN,
        "IMAGINE_MAX_STEPS": str(config.limits.max_steps),
        "IMAGINE_MAX_PIXELS": str(config.limits.max_pixels),
        "IMAGINE_MAX_COUNT": str(config.limits.max_count),
    }
    temp = Path(tempfile.mkdtemp(prefix="rayb-", dir="/tmp"))
    head = _start_head(env, temp)
    print(
        f"Ray head on 127.0.0.1 (3 CPUs), workers over HTTP at {URL}; {os.cpu_count()} CPU(s); "
        f"{args.width}x{args.height}, {args.steps} steps, {args.count} images per job; "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )
    try:
        one = await _throughput(config, token, 1, args)
        two = await _throughput(config, token, 2, args)
        plain = await _hop(config, token, args, preview_every=0)
        with_previews = await _hop(config, token, args, preview_every=1)
    finally:
        _stop_head(head)
        shutil.rmtree(temp, ignore_errors=True)
    ratio = two / one
    preview_cost = with_previews["hop"] - plain["hop"]
    per_preview = preview_cost / max(1.0, with_previews["previews"])
    print()
    print_table(
        ["measure", "value", "goal"],
        [
            ["throughput 1 replica (jobs/min)", one, ""],
            ["throughput 2 replicas (jobs/min)", two, ""],
            ["ratio 2/1", ratio, f">= {GOAL_RATIO}"],
            ["local backend per job (ms, median)", plain["local"] * 1000, ""],
            ["HTTP backend per job (ms, median)", plain["remote"] * 1000, ""],
            ["HTTP hop overhead per job (ms, median of pairs)", plain["hop"] * 1000, f"<= {GOAL_HOP_MS}"],
            ["hop with a preview every step (ms, median of pairs)", with_previews["hop"] * 1000, ""],
            ["previews per job", with_previews["previews"], ""],
            ["preview streaming cost per job (ms)", preview_cost * 1000, ""],
            ["preview streaming cost per preview (ms)", per_preview * 1000, ""],
        ],
    )
    met = ratio >= GOAL_RATIO and plain["hop"] * 1000 <= GOAL_HOP_MS
    print("PASS" if met else "FAIL (see the goals above)")
    return 0 if met else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__.splitlines()[0])
    add_common_args(parser, reps=10)
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
