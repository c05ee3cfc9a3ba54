"""Several models: swap cost, swaps saved by model-aware queueing on a mixed queue, Draft vs full grid time.

1. Swap cost: loading each tiny model (residency limit 1, so every change of model unloads the last one
   first), median over the swaps of the run.
2. A mixed queue: `--jobs` jobs from `--users` members, each on `tiny` or `tiny-b` (seeded), all queued at
   once. The runner's own decisions (bot.jobs.next_fair_job, then bot.models.queue.prefer_resident) are
   replayed one slot at a time, plain fair order vs model-aware; the swaps each order needs and the most
   positions any job moved back (the bound: 1). Both orders then run on the engine: wall time each.
3. Draft vs full: a grid of `--count` images on the draft model (`--draft-steps`, guidance 0, `--draft-size`)
   vs the main model (`--full-steps`, guidance 7.5, `--full-size`), interleaved, medians and their ratio.
   With `--arch sd21` the same on the real SD 2.1 architecture with random weights (bench/gpu_sd21.py's
   builder) at 512² 4 steps vs 768² 25 steps: meant for a GPU. `--per-step` (for a CPU, where one 768²
   25-step grid takes many minutes): the parts measured once each instead of whole grids, the text encoder
   (draft: the prompts only, guidance 0; full: prompts and negatives), one UNet step at the batch the
   pipeline runs (draft `count`, full `2 × count` for CFG) at 64² / 96² latents, and the VAE decode of
   `count` latents; each job's time is then *computed* as text encoder + steps × UNet step + VAE decode
   (the scheduler's own arithmetic, microseconds, is left out).

Tiny models by default (`.tiny-models/`, with their models.toml); CPU is fine.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import DEFAULT_TINY_DIR, machine_line, offline, print_table, setup_logging


def _registry_file(tiny_dir: Path) -> Path:
    from bot.engine.tiny_models import build_tiny_model_variants, build_tiny_models

    if not (tiny_dir / "sd" / "model_index.json").is_file():
        print(f"building tiny models into {tiny_dir} …", flush=True)
        build_tiny_models(tiny_dir)
    if not (tiny_dir / "models.toml").is_file() or not (tiny_dir / "draft").is_dir():
        build_tiny_model_variants(tiny_dir / "sd", tiny_dir)
    return tiny_dir / "models.toml"


def _record(job_id: str, user: int, model: str, at: float) -> Any:
    from bot.store import JobRecord

    return JobRecord(
        id=job_id, parent_id=None, action="imagine", status="queued", reason=None, seed_text="x", negative="",
        count=1, steps=1, guidance=0.0, width=64, height=64, job_seed=0, expand=False, safe_mode=True,
        source_tile=None, strength=None, given_prompts=None, given_seeds=None, init_image=None, user_id=user,
        guild_id=1, channel_id=1, created_at=at, started_at=None, finished_at=None, attempts=0, expander={},
        render={}, grid_path=None, delivery="pending", message_id=None, model=model,
    )  # fmt: skip


def dispatch_order(queue: list[Any], first_resident: str, *, model_aware: bool) -> list[Any]:
    """The runner's picks for a queue all submitted at once, one slot (capacity 1), nobody else busy."""
    from bot.jobs import fair_order, next_fair_job
    from bot.models.queue import prefer_resident, settle_pass

    pending, served, passed, order = list(queue), {}, {}, []
    resident = first_resident
    clock = 0.0
    while pending:
        job = next_fair_job(pending, served, set())
        assert job is not None
        if model_aware:
            job = prefer_resident(job, fair_order(pending, served), (resident,), passed)
        pending.remove(job)
        clock += 1.0
        served[job.user_id] = clock
        settle_pass(job, served, passed)
        resident = job.model
        order.append(job)
    return order


def swaps_of(order: list[Any], first_resident: str) -> int:
    models = [first_resident, *(job.model for job in order)]
    return sum(1 for a, b in itertools.pairwise(models) if a != b)


def moved_back(plain: list[Any], aware: list[Any]) -> int:
    """The most positions a job went back in the model-aware order compared with the plain fair one."""
    where = {job.id: index for index, job in enumerate(plain)}
    return max((index - where[job.id] for index, job in enumerate(aware)), default=0)


async def _run_order(engine: Any, order: list[Any], args: argparse.Namespace) -> float:
    from bot.engine.types import GenerationRequest

    started = time.perf_counter()
    for index, job in enumerate(order):
        request = GenerationRequest(
            seed_text="a lighthouse", count=1, steps=args.steps, guidance=7.5, width=64, height=64,
            job_seed=index, expand=False, model=job.model,
        )  # fmt: skip
        await engine.generate(request)
    return time.perf_counter() - started


async def run(args: argparse.Namespace) -> int:
    from bot.engine.executor import Engine
    from bot.settings import Settings
    from bot.wiring import engine_config_from

    models_file = _registry_file(args.tiny_dir)
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=args.tiny_dir,
        models_file=models_file,
        sd_model=str(args.tiny_dir / "sd"),
        text_model=str(args.tiny_dir / "text"),
        device=args.device,
        dtype="auto",
        width=64,
        height=64,
        steps=2,
        max_resident_models=1,
        max_pixels=max(1024 * 1024, args.full_size**2),
    )
    config = dataclasses.replace(engine_config_from(settings), warmup_size=None)
    engine = Engine(config)
    print(machine_line())
    await engine.load()
    if args.threads:
        import torch

        engine.run_sync(lambda: torch.set_num_threads(args.threads))

    # 2 (and 1): the mixed queue, plain fair order vs model-aware, on the engine.
    rng = random.Random(args.seed)
    queue = [
        _record(f"j{i:02d}", user=i % args.users, model=rng.choice(("tiny", "tiny-b")), at=float(i))
        for i in range(args.jobs)
    ]
    plain = dispatch_order(queue, "tiny", model_aware=False)
    aware = dispatch_order(queue, "tiny", model_aware=True)
    await engine.generate(dataclasses.replace(_warm_request(args), model="tiny"))
    walls = {}
    for name, order in (("plain fair", plain), ("model-aware", aware)):
        await engine.generate(
            dataclasses.replace(_warm_request(args), model="tiny")
        )  # same start: tiny loaded
        before = engine.models.swaps
        walls[name] = (await _run_order(engine, order, args), engine.models.swaps - before)
    swap_costs = list(engine.models.load_seconds)
    rows = [
        [name, swaps_of(order, "tiny"), walls[name][1], f"{walls[name][0]:.1f}"]
        for name, order in (("plain fair", plain), ("model-aware", aware))
    ]
    print(f"\nmixed queue: {args.jobs} jobs, {args.users} members, models tiny/tiny-b (seed {args.seed}), 64², "
          f"{args.steps} steps, 1 image each; residency 1")  # fmt: skip
    print_table(["order", "swaps (replayed)", "swaps (engine)", "wall s"], rows)
    saved = swaps_of(plain, "tiny") - swaps_of(aware, "tiny")
    print(
        f"swap cost (a tiny model's load, median of {len(swap_costs)}): {statistics.median(swap_costs):.2f} s"
    )
    print(f"swaps saved: {saved}; most positions any job moved back: {moved_back(plain, aware)} (bound 1)")
    print(f"wall ratio model-aware / plain: {walls['model-aware'][0] / walls['plain fair'][0]:.2f}")
    total_plain = total_aware = worst = 0
    for seed in range(args.replays):
        draw = random.Random(seed)
        mixed = [
            _record(f"j{i:02d}", user=i % args.users, model=draw.choice(("tiny", "tiny-b")), at=float(i))
            for i in range(args.jobs)
        ]
        fair, model_aware = (dispatch_order(mixed, "tiny", model_aware=flag) for flag in (False, True))
        total_plain += swaps_of(fair, "tiny")
        total_aware += swaps_of(model_aware, "tiny")
        worst = max(worst, moved_back(fair, model_aware))
    print(
        f"replayed on {args.replays} random queues of the same shape: {total_plain} swaps plain, {total_aware} "
        f"model-aware ({100 * (total_plain - total_aware) / total_plain:.0f} % saved); most positions any job "
        f"moved back: {worst}; at the swap cost above, {(total_plain - total_aware) / args.replays * statistics.median(swap_costs):.2f} s "
        "saved per queue"
    )

    # 3: Draft vs full grid, interleaved.
    draft_times, full_times = [], []
    draft = GenerationRequestFactory(args, "tiny-draft", args.draft_size, args.draft_steps, 0.0)
    full = GenerationRequestFactory(args, "tiny", args.full_size, args.full_steps, 7.5)
    engine.models.limit = 2  # both stay loaded: this measures rendering, not swapping
    for request in (draft(0), full(0)):
        await engine.generate(request)  # warm-up, loads
    for rep in range(args.reps):
        started = time.perf_counter()
        await engine.generate(draft(rep))
        draft_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        await engine.generate(full(rep))
        full_times.append(time.perf_counter() - started)
    draft_s, full_s = statistics.median(draft_times), statistics.median(full_times)
    print(f"\nDraft vs full grid (tiny, {args.count} images, {args.reps} interleaved reps, medians):")
    print_table(
        ["grid", "model", "size", "steps", "guidance", "s/grid"],
        [
            ["draft", "tiny-draft", f"{args.draft_size}²", args.draft_steps, 0.0, f"{draft_s:.2f}"],
            ["full", "tiny", f"{args.full_size}²", args.full_steps, 7.5, f"{full_s:.2f}"],
        ],
    )
    print(f"full / draft time ratio: {full_s / draft_s:.1f}x")
    await engine.close()
    if args.arch == "sd21":
        if args.per_step:
            _sd21_per_step(args)
        else:
            _sd21_arch(args)
    return 0


def _warm_request(args: argparse.Namespace) -> Any:
    from bot.engine.types import GenerationRequest

    return GenerationRequest(
        seed_text="warm up", count=1, steps=1, guidance=7.5, width=64, height=64, job_seed=0, expand=False
    )


class GenerationRequestFactory:
    """Requests for one grid configuration, a new job seed per rep."""

    def __init__(self, args: argparse.Namespace, model: str, size: int, steps: int, guidance: float) -> None:
        self.args, self.model, self.size, self.steps, self.guidance = args, model, size, steps, guidance

    def __call__(self, rep: int) -> Any:
        from bot.engine.types import GenerationRequest

        return GenerationRequest(
            seed_text="a lighthouse", count=self.args.count, steps=self.steps, guidance=self.guidance,
            width=self.size, height=self.size, job_seed=rep, expand=False, model=self.model,
        )  # fmt: skip


def _sd21_arch(args: argparse.Namespace) -> None:
    """The real SD 2.1 architecture, random weights: 512² 4 steps guidance 0 (Euler-a trailing) vs 768² 25
    steps guidance 7.5 (DPM-Solver++), `--count` images, interleaved medians."""
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    from bench.gpu_sd21 import build_pipeline
    from bot.engine.loading import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    pipe = build_pipeline(str(args.tiny_dir / "sd"), device, resolve_dtype("auto", device))
    turbo = StableDiffusionPipeline.from_pipe(pipe)
    turbo.scheduler = EulerAncestralDiscreteScheduler.from_config(
        pipe.scheduler.config, timestep_spacing="trailing"
    )
    turbo.set_progress_bar_config(disable=True)

    def grid(p: Any, size: int, steps: int, guidance: float) -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            p(
                ["a lighthouse"] * args.count,
                width=size,
                height=size,
                num_inference_steps=steps,
                guidance_scale=guidance,
            )
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    grid(turbo, 512, 1, 0.0), grid(pipe, 768, 1, 7.5)  # warm-up
    drafts, fulls = [], []
    for _ in range(args.reps):
        drafts.append(grid(turbo, 512, 4, 0.0))
        fulls.append(grid(pipe, 768, 25, 7.5))
    d, f = statistics.median(drafts), statistics.median(fulls)
    print(f"\nSD 2.1 architecture (random weights) on {device}: draft 512² 4 steps {d:.2f} s, "
          f"full 768² 25 steps {f:.2f} s, ratio {f / d:.1f}x")  # fmt: skip


def _sd21_per_step(args: argparse.Namespace) -> None:
    """The real SD 2.1 architecture, random weights: draft (512², `--draft-steps`… at the real sizes) vs full
    from the parts measured one by one; each part's median over `--step-reps` calls after a warm-up call."""
    import os

    import torch

    from bench.gpu_sd21 import build_pipeline
    from bot.engine.loading import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype("auto", device)
    started = time.perf_counter()
    pipe = build_pipeline(str(args.tiny_dir / "sd"), device, dtype)
    print(f"\nSD 2.1 architecture (random weights) built in {time.perf_counter() - started:.0f} s on {device} "
          f"({dtype}); load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)  # fmt: skip
    if args.threads:
        torch.set_num_threads(args.threads)
    count = args.sd21_count or args.count
    prompts = ["a lighthouse"] * count

    def timed(fn: Any) -> float:
        begun = time.perf_counter()
        with torch.inference_mode():
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - begun

    def measure(fn: Any) -> tuple[float, float]:
        first = timed(fn)  # warm-up (oneDNN/cuDNN picks its kernels for this shape)
        return statistics.median(timed(fn) for _ in range(args.step_reps)), first

    def text(cfg: bool) -> Any:
        return lambda: pipe.encode_prompt(prompts, device, 1, cfg, negative_prompt=None)

    def unet(size: int, batch: int) -> Any:
        latents = torch.randn(batch, 4, size // 8, size // 8, device=device, dtype=dtype)
        context = torch.randn(batch, 77, 1024, device=device, dtype=dtype)
        step = torch.tensor(500, device=device)
        return lambda: pipe.unet(latents, step, encoder_hidden_states=context)

    def vae(size: int) -> Any:
        latents = torch.randn(count, 4, size // 8, size // 8, device=device, dtype=dtype)
        return lambda: pipe.vae.decode(latents / pipe.vae.config.scaling_factor)

    parts = {
        ("draft", "text encoder"): text(False),
        ("draft", "UNet step"): unet(args.sd21_draft_size, count),
        ("draft", "VAE decode"): vae(args.sd21_draft_size),
        ("full", "text encoder"): text(True),
        ("full", "UNet step"): unet(args.sd21_full_size, 2 * count),
        ("full", "VAE decode"): vae(args.sd21_full_size),
    }
    measured = {}
    for key, fn in parts.items():
        measured[key] = measure(fn)
        print(f"  {key[0]} {key[1]}: {measured[key][0]:.2f} s (first call {measured[key][1]:.2f} s); "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    shapes = {
        "draft": (args.sd21_draft_size, args.sd21_draft_steps, count, "0 (no CFG)"),
        "full": (args.sd21_full_size, args.sd21_full_steps, 2 * count, "7.5 (CFG)"),
    }
    rows, totals = [], {}
    for grid, (size, steps, batch, guidance) in shapes.items():
        t, u, v = (measured[(grid, part)][0] for part in ("text encoder", "UNet step", "VAE decode"))
        totals[grid] = t + steps * u + v
        rows.append([grid, f"{size}²", steps, guidance, batch, f"{t:.2f}", f"{u:.2f}", f"{v:.2f}",
                     f"{totals[grid]:.1f}"])  # fmt: skip
    print(f"\nSD 2.1 architecture (random weights, {dtype}) on {device}, {count} image(s) per grid; parts measured "
          f"(median of {args.step_reps} after a warm-up), job time COMPUTED = text + steps × UNet step + VAE:")  # fmt: skip
    print_table(
        [
            "grid",
            "size",
            "steps",
            "guidance",
            "UNet batch",
            "text s",
            "UNet step s",
            "VAE s",
            "computed s/grid",
        ],
        rows,
    )
    print(f"full / draft (computed from measured per-step times): {totals['full'] / totals['draft']:.1f}x; "
          f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny-dir", type=Path, default=DEFAULT_TINY_DIR)
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    parser.add_argument("--threads", type=int, help="torch CPU threads after loading")
    parser.add_argument("--jobs", type=int, default=12, help="jobs in the mixed queue")
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument(
        "--seed", type=int, default=7, help="which model each job of the mixed queue asks for"
    )
    parser.add_argument("--steps", type=int, default=2, help="steps of the mixed queue's jobs")
    parser.add_argument("--replays", type=int, default=200, help="random queues replayed (no rendering)")
    parser.add_argument("--count", type=int, default=4, help="images per Draft/full grid")
    parser.add_argument("--draft-size", type=int, default=64)
    parser.add_argument("--draft-steps", type=int, default=4)
    parser.add_argument("--full-size", type=int, default=96)
    parser.add_argument("--full-steps", type=int, default=25)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--arch", choices=["tiny", "sd21"], default="tiny", help="sd21: also the real architecture"
    )
    parser.add_argument(
        "--per-step",
        action="store_true",
        help="with --arch sd21: measure text encoder, one UNet step and VAE decode at each size and compute "
        "the grids from them (a CPU cannot run 768² × 25 steps in minutes)",
    )
    parser.add_argument("--step-reps", type=int, default=1, help="measured calls per part with --per-step")
    parser.add_argument("--sd21-count", type=int, help="images per SD 2.1 grid (default: --count)")
    parser.add_argument("--sd21-draft-size", type=int, default=512)
    parser.add_argument("--sd21-draft-steps", type=int, default=4)
    parser.add_argument("--sd21-full-size", type=int, default=768)
    parser.add_argument("--sd21-full-steps", type=int, default=25)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    offline()
    setup_logging(args.verbose)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
