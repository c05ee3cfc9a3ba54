"""Cost of the NudeNet image classifier per 768×768 tile against rendering that tile (real SD 2.1 architecture).

1. The classifier exactly as the bot runs it (`bot.engine.safety.NudeNetClassifier`, one ONNX thread):
   `--tiles` random 768² RGB tiles plus a flat one, after one warm-up; median / min / max per tile.
2. One 768² tile rendered by the real SD 2.1 architecture with random weights (`bench.gpu_sd21.build_pipeline`),
   guidance 7.5, at `--render-steps` steps, with a timestamp at every step end (`callback_on_step_end`):
   the fixed part (text encoder + VAE decode + pipeline overhead) is the call's wall time minus the steps,
   the per-step cost is the median step; a 25-step tile is extrapolated as fixed + 25 × per-step.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.safety_cost --render-steps 2      # CPU, several minutes
    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.safety_cost --skip-render         # the classifier alone
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

from PIL import Image

from bench._common import DEFAULT_TINY_DIR, machine_line, offline, resolve_models

TARGET_STEPS = 25


def classifier_cost(tiles: int, side: int) -> list[float]:
    """Seconds per tile for the bot's classifier on random tiles (after one warm-up)."""
    import numpy as np

    from bot.engine.safety import NudeNetClassifier

    classifier = NudeNetClassifier()
    rng = np.random.default_rng(0)
    images = [Image.new("RGB", (side, side), (128, 128, 128))] + [
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(tiles)
    ]
    classifier.classify(images[:1])
    seconds = []
    for image in images:
        start = time.perf_counter()
        classifier.classify([image])
        seconds.append(time.perf_counter() - start)
    return seconds


def render_cost(sd_model: str, side: int, steps: int, threads: int | None) -> tuple[float, list[float]]:
    """(wall seconds of one 1-tile call, seconds of each step) for the real SD 2.1 architecture on the CPU."""
    import torch

    from bench.gpu_sd21 import build_pipeline

    if threads:
        torch.set_num_threads(threads)
    pipe = build_pipeline(sd_model, torch.device("cpu"), torch.float32)
    marks: list[float] = []

    def on_step_end(
        _pipe: object, _step: int, _timestep: object, kwargs: dict[str, object]
    ) -> dict[str, object]:
        marks.append(time.perf_counter())
        return kwargs

    start = time.perf_counter()
    with torch.inference_mode():
        pipe(
            prompt=["Northeastern University"],
            num_inference_steps=steps,
            guidance_scale=7.5,
            width=side,
            height=side,
            generator=[torch.Generator("cpu").manual_seed(0)],
            callback_on_step_end=on_step_end,
        )
    wall = time.perf_counter() - start
    # The first step's mark includes the text encoder; step costs are the gaps between marks.
    step_seconds = [b - a for a, b in itertools.pairwise(marks)]
    return wall, step_seconds


def main() -> int:
    offline()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiles", type=int, default=20, help="random tiles for the classifier")
    parser.add_argument("--side", type=int, default=768)
    parser.add_argument("--render-steps", type=int, default=2, help="steps actually rendered (>= 2)")
    parser.add_argument("--skip-render", action="store_true")
    parser.add_argument("--threads", type=int, help="torch CPU threads for the render")
    parser.add_argument("--sd-model", help="folder/id with a CLIP tokenizer (default: tiny models)")
    parser.add_argument("--text-model")
    parser.add_argument("--tiny-dir", default=DEFAULT_TINY_DIR)
    args = parser.parse_args()
    print(machine_line())

    per_tile = classifier_cost(args.tiles, args.side)
    med = statistics.median(per_tile)
    print(
        f"classifier per {args.side}² tile: median {med * 1000:.1f} ms, min {min(per_tile) * 1000:.1f} ms, "
        f"max {max(per_tile) * 1000:.1f} ms over {len(per_tile)} tiles"
    )
    if args.skip_render:
        return 0
    sd_model, _ = resolve_models(args)
    wall, steps = render_cost(sd_model, args.side, max(2, args.render_steps), args.threads)
    per_step = statistics.median(steps)
    fixed = wall - per_step * max(2, args.render_steps)
    extrapolated = fixed + TARGET_STEPS * per_step
    print(
        f"render of one {args.side}² tile, {max(2, args.render_steps)} steps: {wall:.1f} s "
        f"(steps {', '.join(f'{s:.1f}' for s in steps)} s after the first; fixed part {fixed:.1f} s)"
    )
    print(
        f"extrapolated to {TARGET_STEPS} steps: {fixed:.1f} + {TARGET_STEPS} × {per_step:.1f} = {extrapolated:.1f} s"
    )
    print(f"classifier / render per tile: {med / extrapolated * 100:.3f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
