"""Runtime cost of each bias mitigation as a ratio to the plain render.

1. The bot's engine on the tiny models (`Engine.generate_sync`, as a job runs): plain, diverse prompts and
   fair guidance, `--reps` times each, interleaved, after one warm-up of each; median seconds and the ratio.
2. The real SD 2.1 architecture with random weights (`bench.gpu_sd21.build_pipeline`) at `--real-size`
   pixels: one pipeline call of `--real-count` images at `--real-steps` steps with and without the fair
   guidance hook (the edit concepts are one more UNet call per step on half the CFG batch); diverse prompts
   costs no model time, so its figure there is the text step itself.

The numbers are about time only: on random or tiny weights the pictures (and any bias figure) mean nothing.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.bias --threads 1                 # tiny engine + real arch, CPU
    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.bias --skip-real                 # the tiny engine only
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bench._common import add_common_args, engine_config, machine_line, offline, print_table, resolve_models

MODES = ("off", "diverse-prompts", "fair-guidance")
PROMPT = "a photo of the face of a doctor"


def tiny_engine(args: argparse.Namespace) -> dict[str, list[float]]:
    """Seconds per job for each mode on the bot's engine (tiny models unless --sd-model is given)."""
    import torch

    from bot.engine.executor import Engine
    from bot.engine.mitigation import FairGuidance, mitigation_record
    from bot.engine.types import GenerationRequest

    engine = Engine(engine_config(args))
    engine.load_sync()
    if args.threads:
        engine.run_sync(lambda: torch.set_num_threads(args.threads))
    requests = {
        mode: GenerationRequest(
            seed_text=PROMPT,
            count=args.count,
            steps=args.steps,
            guidance=args.guidance,
            width=args.width,
            height=args.height,
            job_seed=7,
            expand=False,
            mitigation=mitigation_record(mode, FairGuidance()),
        )
        for mode in MODES
    }
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    for rep in range(args.reps + 1):
        for mode, request in requests.items():
            started = time.perf_counter()
            engine.run_sync(lambda request=request: engine.generate_sync(request))
            if rep:  # the first round warms up
                seconds[mode].append(time.perf_counter() - started)
    return seconds


def real_architecture(args: argparse.Namespace, sd_model: str) -> dict[str, float]:
    """Seconds of one pipeline call with the SD 2.1 architecture, plain and with the fair guidance hook."""
    import torch

    from bench.gpu_sd21 import build_pipeline
    from bot.engine.diverse_prompts import diversify
    from bot.engine.fair_guidance import FairGuidancePlan, guided
    from bot.engine.mitigation import FairGuidance, directions

    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = build_pipeline(sd_model, torch.device("cpu"), torch.float32)
    count = args.real_count

    def call(plan: FairGuidancePlan | None) -> float:
        generators = [torch.Generator("cpu").manual_seed(i) for i in range(count)]
        started = time.perf_counter()
        with torch.inference_mode(), guided(pipe, plan):
            pipe(
                prompt=[PROMPT] * count,
                num_inference_steps=args.real_steps,
                guidance_scale=args.guidance,
                generator=generators,
                width=args.real_size,
                height=args.real_size,
                output_type="latent",  # the VAE decode is the same for every mode
            )
        return time.perf_counter() - started

    def plan() -> FairGuidancePlan:
        return FairGuidancePlan(FairGuidance(warmup_steps=0), directions(7, count), args.guidance)

    call(None)  # warm-up
    plain, fair = [], []
    for _ in range(args.real_reps):
        plain.append(call(None))
        fair.append(call(plan()))
    started = time.perf_counter()
    for seed in range(100):
        diversify((PROMPT,) * count, seed)
    text_step = (time.perf_counter() - started) / 100
    return {
        "off": statistics.median(plain),
        "fair-guidance": statistics.median(fair),
        "diverse-prompts": statistics.median(plain) + text_step,
        "diverse_text_step_s": text_step,
    }


def main() -> int:
    offline()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, width=64, height=64, steps=10, count=4, reps=5)
    parser.add_argument("--skip-real", action="store_true", help="only the tiny engine")
    parser.add_argument(
        "--real-size", type=int, default=256, help="pixels a side for the SD 2.1 architecture"
    )
    parser.add_argument("--real-steps", type=int, default=3)
    parser.add_argument("--real-count", type=int, default=1)
    parser.add_argument("--real-reps", type=int, default=2)
    args = parser.parse_args()
    sd_model, _ = resolve_models(args)
    print(machine_line())
    seconds = tiny_engine(args)
    plain = statistics.median(seconds["off"])
    rows: list[list[Any]] = []
    for mode in MODES:
        median = statistics.median(seconds[mode])
        rows.append([mode, f"{median:.3f}", f"{min(seconds[mode]):.3f}", f"{median / plain:.2f}x"])
    print(
        f"\ntiny engine, {args.count} x {args.width}x{args.height}, {args.steps} steps, guidance {args.guidance}, "
        f"{args.reps} reps (median, min s; ratio to off):"
    )
    print_table(["mode", "median s", "min s", "ratio"], rows)
    if not args.skip_real:
        real = real_architecture(args, sd_model)
        print(
            f"\nSD 2.1 architecture (random weights), {args.real_count} x {args.real_size}², {args.real_steps} steps, "
            f"CPU fp32, {args.real_reps} reps (median s; ratio to off):"
        )
        print_table(
            ["mode", "median s", "ratio"],
            [[mode, f"{real[mode]:.2f}", f"{real[mode] / real['off']:.2f}x"] for mode in MODES],
        )
        print(f"diverse prompts' text step: {real['diverse_text_step_s'] * 1000:.2f} ms per job")
    print("\nOn tiny or random weights the images, and any bias figure from them, mean nothing: time only.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
