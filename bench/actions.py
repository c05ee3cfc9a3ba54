"""Cost of each Midjourney-style action relative to a plain grid of the same size.

Runs the renderer's own code paths (txt2img, img2img, img2img at 2x with VAE tiling, outpainting with
the inpainting pipeline built from the loaded components, plus the composite) on a source tile of
`--width`x`--height`:

  plain grid     --count images, txt2img (also what Remix on a grid costs: given prompts, same seeds)
  image / vary   --count images, img2img at each strength (image prompt, Vary Subtle/Strong, tile Remix)
  upscale        1 image at 2x width and height, img2img at the Subtle/Creative strength, tiled VAE
  zoom out       --count images, outpainting on a canvas of the tile's size
  pan            --count images, outpainting on a canvas 1.5x wider

    python -m bench.actions                                    # tiny models, 64 px, 4 steps
    python -m bench.actions --sd21 --width 128 --height 128 --steps 2 --count 2 --reps 1   # SD 2.1 on CPU
    python -m bench.gpu_sd21 --actions                          # on the GPU at 768 px, 25 steps

Strengths are the settings' defaults. img2img runs int(steps x strength) denoising steps, so its cost
falls with the strength; outpainting runs every step (the painted part starts from pure noise).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench._common import (
    SEED_TEXT,
    add_common_args,
    machine_line,
    offline,
    print_table,
    resolve_models,
    setup_logging,
)

# The settings' defaults (bot/settings.py).
STRENGTHS = {
    "image": 0.6,
    "vary-subtle": 0.35,
    "vary-strong": 0.75,
    "upscale-subtle": 0.25,
    "upscale-creative": 0.5,
}


def action_rows(
    renderer: Any,
    *,
    count: int,
    width: int,
    height: int,
    steps: int,
    reps: int,
    synchronize: Callable[[], None],
) -> list[list[object]]:
    """[action, images, output size, s/job, x plain grid] for every action, on `renderer`."""
    from bot.engine.outpaint import canvas_for, composite

    prompts = [SEED_TEXT] * count

    def timed(fn: Callable[[], Any]) -> float:
        fn()  # warm-up: builds the img2img/inpaint pipelines once, like the first press in a running bot
        walls = []
        for _ in range(reps):
            synchronize()
            started = time.perf_counter()
            fn()
            synchronize()
            walls.append(time.perf_counter() - started)
        return statistics.median(walls)

    def render(**kwargs: Any) -> list[Any]:
        n = kwargs.pop("n", count)
        return renderer.render(
            prompts[:n] if n <= count else [SEED_TEXT] * n,
            list(range(n)),
            negative="",
            steps=steps,
            guidance=7.5,
            **kwargs,
        )

    grid = render(width=width, height=height)
    source = grid[0]
    cases: list[tuple[str, int, tuple[int, int], Callable[[], Any]]] = [
        ("plain grid (= Remix on a grid)", count, (width, height), lambda: render(width=width, height=height))
    ]
    for action in ("image", "vary-subtle", "vary-strong"):
        strength = STRENGTHS[action]
        label = {
            "image": "image prompt / V",
            "vary-subtle": "Vary (Subtle)",
            "vary-strong": "Vary (Strong) / Remix 1",
        }[action]

        def img2img(s: float = strength) -> list[Any]:
            return render(width=width, height=height, init_image=source, strength=s)

        cases.append((f"{label} (strength {strength})", count, (width, height), img2img))
    for action, label in (("upscale-subtle", "Upscale (Subtle)"), ("upscale-creative", "Upscale (Creative)")):
        strength = STRENGTHS[action]

        def upscale(s: float = strength) -> list[Any]:
            return render(
                n=1, width=2 * width, height=2 * height, init_image=source, strength=s, tiled_vae=True
            )

        cases.append((f"{label} (strength {strength})", 1, (2 * width, 2 * height), upscale))
    for action, label in (("zoom-2", "Zoom Out 2x (1.5x same)"), ("pan-right", "Pan ➡️")):
        canvas = canvas_for(action, source, 4096 * 4096)

        def outpaint(canvas: Any = canvas) -> list[Any]:
            images = render(
                width=canvas.size[0], height=canvas.size[1], init_image=canvas.image, mask_image=canvas.mask
            )
            return [composite(image, canvas.image, canvas.mask) for image in images]

        cases.append((label, count, canvas.size, outpaint))
    rows: list[list[object]] = []
    baseline = None
    for label, images, size, fn in cases:
        seconds = timed(fn)
        baseline = baseline or seconds
        rows.append([label, images, f"{size[0]}x{size[1]}", seconds, seconds / baseline])
    return rows


HEADERS = ["action", "images", "output", "s/job", "x plain grid"]


def run(args: argparse.Namespace) -> int:
    import torch

    from bot.engine.loading import quiet_libraries, resolve_device

    quiet_libraries()
    print(machine_line())
    device = resolve_device(args.device)
    if args.sd21:
        import warnings

        from bench.gpu_sd21 import build_pipeline
        from bot.engine.renderer import Renderer

        warnings.filterwarnings("ignore", category=RuntimeWarning)  # random weights: NaN pixels in the cast
        sd_model, _ = resolve_models(args)
        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
        started = time.perf_counter()
        pipe = build_pipeline(sd_model, device, dtype)
        print(
            f"built the SD 2.1 architecture (random weights) on {device} in {time.perf_counter() - started:.1f} s"
        )
        if args.threads:
            torch.set_num_threads(args.threads)
        renderer = Renderer(pipe, device=device, dtype=dtype, preview_every=0)
        rows = action_rows(
            renderer,
            count=args.count,
            width=args.width,
            height=args.height,
            steps=args.steps,
            reps=args.reps,
            synchronize=(torch.cuda.synchronize if device.type == "cuda" else lambda: None),
        )
        model = "SD 2.1 architecture, random weights"
    else:
        from bench._common import engine_config
        from bot.engine.executor import Engine

        engine = Engine(engine_config(args, preview_every=0))
        engine.run_sync(engine._load_sync)
        if args.threads:
            engine.run_sync(lambda: torch.set_num_threads(args.threads))
        assert engine.renderer is not None
        rows = engine.run_sync(
            lambda: action_rows(
                engine.renderer,
                count=args.count,
                width=args.width,
                height=args.height,
                steps=args.steps,
                reps=args.reps,
                synchronize=lambda: None,
            )
        )
        model = "tiny models"
    print(
        f"{model}; source tile {args.width}x{args.height}, {args.steps} steps, guidance 7.5, "
        f"median of {args.reps} after a warm-up, torch threads {torch.get_num_threads()}"
    )
    print_table(HEADERS, rows)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, width=64, height=64, steps=4, count=4, reps=3)
    parser.add_argument(
        "--sd21", action="store_true", help="the real SD 2.1 architecture with random weights"
    )
    args = parser.parse_args()
    offline()
    setup_logging(args.verbose)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
