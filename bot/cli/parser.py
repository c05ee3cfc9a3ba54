"""The argparse tree of `python -m bot` (also what `--help` prints)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bot.engine.mitigation import MITIGATION_HELP, MITIGATIONS

DESCRIPTION = """The command line: imagine, history, show, rerun, upscale, vary, zoom, pan, remix, enhance,
tiny-models, run, sync, health, workers, download-models, web, train, audit bias."""


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree (also documents the CLI in `--help`)."""
    parser = argparse.ArgumentParser(prog="imagine-bot", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)

    imagine = sub.add_parser("imagine", help="expand a seed text and render a grid")
    imagine.add_argument(
        "seed_text",
        metavar="SEED",
        help="the seed text, e.g. 'Northeastern University'; may end in inline flags like /imagine: "
        "'a cat --ar 16:9 --no text --seed 7 --steps 20 --count 2 --chaos 30 --raw'",
    )
    imagine.add_argument("--count", type=int, help="images (1..IMAGINE_MAX_COUNT)")
    imagine.add_argument("--steps", type=int, help="denoising steps")
    imagine.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    imagine.add_argument("--width", type=int, help="pixels, multiple of 8")
    imagine.add_argument("--height", type=int, help="pixels, multiple of 8")
    imagine.add_argument("--seed", type=int, dest="job_seed", help="job seed (random if omitted)")
    imagine.add_argument("--negative", default="", help="negative prompt")
    imagine.add_argument("--no-expand", action="store_true", help="use the seed text as every prompt")
    imagine.add_argument("--image", type=Path, help="a PNG, JPEG or WebP picture to start every image from")
    imagine.add_argument(
        "--strength", type=float, help="with --image: how far to move away from it, 0.05 (barely) to 1"
    )
    imagine.add_argument(
        "--mitigation",
        choices=MITIGATIONS,
        help="a bias mitigation for this job (default off): "
        + "; ".join(f"{name}: {text}" for name, text in MITIGATION_HELP.items() if name != "off"),
    )
    imagine.add_argument("--model", help="a model of the models file (default: its default model)")
    imagine.add_argument(
        "--lora", action="append", metavar="NAME[:WEIGHT]", help="a LoRA from IMAGINE_LORA_DIR (repeatable)"
    )
    imagine.add_argument("--draft", action="store_true", help="Draft mode: the models file's draft model")
    imagine.add_argument("--json", action="store_true", help="print one JSON object")

    history = sub.add_parser("history", help="list past jobs, newest first")
    history.add_argument("--limit", type=_positive_int, default=20, help="most jobs to list (1 or more)")
    history.add_argument("--json", action="store_true")

    show = sub.add_parser("show", help="one job in full")
    show.add_argument("job_id")
    show.add_argument("--json", action="store_true")

    rerun = sub.add_parser("rerun", help="re-render a past job exactly, as a new job")
    rerun.add_argument("job_id")
    rerun.add_argument("--json", action="store_true")

    _add_action_parsers(sub)

    tiny = sub.add_parser("tiny-models", help="build tiny random-weight models for offline tests")
    tiny.add_argument("directory", type=Path)

    sub.add_parser("run", help="run the Discord bot (needs DISCORD_TOKEN)")
    sub.add_parser("sync", help="sync slash commands to Discord now")
    sub.add_parser("health", help="exit 0 when the running bot is connected and the database opens")
    workers = sub.add_parser(
        "workers",
        help="deploy or update the GPU worker replicas through the Ray dashboard at RAY_DASHBOARD_ADDRESS",
    )
    workers.add_argument(
        "--replicas", type=int, help="worker replicas (default: one per GPU in the cluster, at least 1)"
    )
    workers.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for all replicas")
    sub.add_parser("download-models", help="pre-fetch the configured models into the Hugging Face cache")
    sub.add_parser("web", help="serve the web gallery and /metrics (README → Web gallery)")
    from bot.train.cli import add_train_parser  # argparse only: no torch on this path

    add_train_parser(sub)
    from bot.audit.bias import add_audit_parser

    add_audit_parser(sub)
    return parser


def _add_action_parsers(sub: Any) -> None:
    """The actions on one image of a past job, as the buttons under a posted image do them in Discord."""
    helps = {
        "upscale": "twice the width and height, img2img from image TILE of a past job",
        "vary": "a grid of variations of image TILE of a past job",
        "zoom": "image TILE of a past job shrunk into a canvas of its size, the border painted new",
        "pan": "the canvas of image TILE of a past job grows by half on one side, the new part painted",
        "remix": "Vary (Strong) of image TILE of a past job with a new prompt",
        "enhance": "image TILE of a Draft job at full quality on the main model",
    }
    for name, text in helps.items():
        action = sub.add_parser(name, help=text)
        action.add_argument("job_id")
        action.add_argument("tile", type=_positive_int, metavar="TILE", help="the image number, 1..count")
        if name == "upscale":
            action.add_argument("--creative", action="store_true", help="Upscale (Creative): more new detail")
        elif name == "vary":
            action.add_argument("--strong", action="store_true", help="Vary (Strong): further from the image")
        elif name == "zoom":
            action.add_argument("--factor", choices=("1.5", "2"), default="2", help="zoom out 1.5x or 2x")
        elif name == "pan":
            action.add_argument("direction", choices=("left", "right", "up", "down"))
        elif name == "remix":
            action.add_argument("prompt", help="the new prompt (empty keeps the image's own)")
        action.add_argument("--json", action="store_true", help="print one JSON object")


def _action_name(args: argparse.Namespace) -> str:
    """The action a CLI command records (the same names as the Discord buttons' jobs)."""
    if args.command in ("rerun", "enhance"):
        return str(args.command)
    if args.command == "upscale":
        return "upscale-creative" if args.creative else "upscale-subtle"
    if args.command == "vary":
        return "vary-strong" if args.strong else "vary-subtle"
    if args.command == "zoom":
        return f"zoom-{args.factor}"
    if args.command == "pan":
        return f"pan-{args.direction}"
    return "remix"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value
