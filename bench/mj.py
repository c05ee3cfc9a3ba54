"""Issue 22: the cost of /describe, /shorten, `--tile` and /blend relative to a plain grid, on one loaded engine.

Interleaved reps on one GPU thread (`Engine.generate`): a plain grid (`--count` images, `--steps` steps);
a /describe job (caption with the BLIP model, CLIP ranking of the modifier lists, four prompts) on a picture
the size of one tile; /shorten of a 12-word prompt (one text-encoder batch of 13); the same grid with
`--tile`; a /blend of two pictures (`--iw 1,0.5`) into the same grid (unCLIP: CLIP image embeddings, the
same count, size and steps). The first /describe and /blend load their models: those one-off costs are
printed on their own. Default models:
the tiny random ones (built into --tiny-dir when absent), so the figures are about the code around the
models and the architectures' shapes at tiny scale, not about real checkpoints. Reports; exits 0.

`--arch real`: grid, /describe and /blend on the real architectures with random weights, built from their
published configs (bench/mj_real.py; SD 2.1, SD 2.1 unCLIP-H, BLIP-large, CLIP ViT-H/14) through the
product's Renderer, Blender and Describer; defaults 1 × 256², 2 steps, 3 reps (about 5 minutes on 2 cores).

    python -m bench.mj --threads 1 --reps 9        # tiny models
    python -m bench.mj --arch real --device cpu    # the real architectures, random weights
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time
from dataclasses import replace
from pathlib import Path

from bench._common import (
    Summary,
    add_common_args,
    engine_config,
    load_engine,
    offline,
    print_table,
    resolve_models,
    setup_logging,
)

#: --arch real's defaults (what a 2-core CPU box runs in minutes); flags given on the command line win
REAL_DEFAULTS = {"width": 256, "height": 256, "steps": 2, "count": 1, "reps": 3}

SHORTEN_PROMPT = "a red fox sitting in deep snow at golden hour, oil painting, highly detailed"


def describe_models(args: argparse.Namespace, sd_model: str) -> tuple[str, str]:
    if args.caption_model and args.clip_model:
        return args.caption_model, args.clip_model
    tiny: Path = args.tiny_dir
    if not (tiny / "caption" / "config.json").is_file() or not (tiny / "clip" / "config.json").is_file():
        from bot.engine.tiny_describe import build_tiny_describe_models

        print(f"building tiny /describe models into {tiny} …", flush=True)
        build_tiny_describe_models(tiny, Path(sd_model) / "tokenizer")
    return str(tiny / "caption"), str(tiny / "clip")


def picture(width: int, height: int) -> bytes:
    from PIL import Image

    image = Image.new("RGB", (width, height))
    image.putdata([((x * 4) % 256, (y * 4) % 256, 128) for y in range(height) for x in range(width)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def blend_model(args: argparse.Namespace, sd_model: str) -> str:
    if args.blend_model:
        return str(args.blend_model)
    tiny: Path = args.tiny_dir
    if not (tiny / "unclip" / "model_index.json").is_file():
        from bot.engine.tiny_blend import build_tiny_blend_model

        print(f"building the tiny unCLIP model into {tiny} …", flush=True)
        build_tiny_blend_model(tiny, Path(sd_model))
    return str(tiny / "unclip")


def blend_sheet() -> bytes:
    from bot.engine.blend import SOURCE_SIDE, pack_sheet

    return pack_sheet(
        [picture(SOURCE_SIDE, SOURCE_SIDE), picture(SOURCE_SIDE // 2, SOURCE_SIDE // 2)], [1.0, 0.5], "", 0
    )


async def run(args: argparse.Namespace) -> int:
    from bot.engine.executor import Engine
    from bot.engine.types import GenerationRequest

    sd, _ = resolve_models(args)
    caption, clip = describe_models(args, sd)
    config = replace(
        engine_config(args),
        caption_model=caption,
        describe_clip_model=clip,
        blend_model=blend_model(args, sd),
    )
    engine = Engine(config)
    loaded = await load_engine(engine, args)
    print(
        f"models loaded in {loaded:.1f} s; device {engine.device}; {args.count} × {args.width}×{args.height}, "
        f"{args.steps} steps, {args.reps} interleaved reps"
    )
    grid = GenerationRequest(
        seed_text="Northeastern University",
        count=args.count,
        steps=args.steps,
        guidance=args.guidance,
        width=args.width,
        height=args.height,
        job_seed=1,
    )
    tiled = replace(grid, tiling=True)
    describe = replace(
        grid, action="describe", count=1, init_image=picture(args.width, args.height), expand=False
    )

    blend = replace(grid, action="blend", init_image=blend_sheet(), expand=False)

    started = time.perf_counter()
    await engine.generate(describe)
    first_describe = time.perf_counter() - started
    started = time.perf_counter()
    await engine.generate(blend)
    first_blend = time.perf_counter() - started
    await engine.generate(grid)  # warm-up
    await engine.generate(tiled)
    await engine.shorten(SHORTEN_PROMPT)

    times: dict[str, list[float]] = {
        "grid": [],
        "describe": [],
        "shorten": [],
        "grid --tile": [],
        "blend (2 pictures)": [],
    }
    for rep in range(args.reps):
        for name, call in (
            ("grid", lambda r=rep: engine.generate(replace(grid, job_seed=100 + r))),
            ("describe", lambda: engine.generate(describe)),
            ("shorten", lambda: engine.shorten(SHORTEN_PROMPT)),
            ("grid --tile", lambda r=rep: engine.generate(replace(tiled, job_seed=100 + r))),
            ("blend (2 pictures)", lambda r=rep: engine.generate(replace(blend, job_seed=100 + r))),
        ):
            begun = time.perf_counter()
            await call()
            times[name].append(time.perf_counter() - begun)
    await engine.close()
    base = Summary.of(times["grid"]).median
    rows = []
    for name, values in times.items():
        s = Summary.of(values)
        rows.append((name, s.median * 1000, s.minimum * 1000, s.maximum * 1000, s.median / base))
    print_table(("call", "median ms", "min ms", "max ms", "× plain grid"), rows)
    print(f"first /describe (loads BLIP + CLIP): {first_describe * 1000:.0f} ms")
    print(f"first /blend (loads the unCLIP pipeline): {first_blend * 1000:.0f} ms")
    return 0


def main() -> int:
    offline()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, reps=7)
    parser.add_argument("--caption-model", help="BLIP captioner id or folder (default: tiny)")
    parser.add_argument("--clip-model", help="CLIP model id or folder (default: tiny)")
    parser.add_argument("--blend-model", help="SD 2.1 unCLIP id or folder for /blend (default: tiny)")
    parser.add_argument(
        "--arch",
        choices=["tiny", "real"],
        default="tiny",
        help="real: grid, /describe and /blend on the real architectures with random weights (bench/mj_real.py)",
    )
    first, _ = parser.parse_known_args()
    if first.arch == "real":
        parser.set_defaults(**REAL_DEFAULTS)
    args = parser.parse_args()
    setup_logging(args.verbose)
    if args.arch == "real":
        from bench.mj_real import run_real

        sd, _ = resolve_models(args)
        caption, _ = describe_models(args, sd)
        return run_real(args, sd, Path(caption))
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
