"""Shared plumbing for the benchmarks: arguments, tiny models, engine/runner construction, statistics."""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.engine.executor import Engine, EngineConfig
    from bot.store import JobSpec

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TINY_DIR = REPO_ROOT / ".tiny-models"
SEED_TEXT = "Northeastern University"


def offline() -> None:
    """Benchmarks never touch the network (models are local folders or already cached)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def add_common_args(
    parser: argparse.ArgumentParser,
    *,
    width: int = 64,
    height: int = 64,
    steps: int = 4,
    count: int = 4,
    reps: int = 7,
) -> None:
    """The options every benchmark takes."""
    parser.add_argument("--sd-model", help="SD 2.x model id or folder (default: tiny models)")
    parser.add_argument("--text-model", help="GPT-2-family model id or folder (default: tiny models)")
    parser.add_argument(
        "--tiny-dir", type=Path, default=DEFAULT_TINY_DIR, help="where tiny models are built if absent"
    )
    parser.add_argument("--width", type=int, default=width)
    parser.add_argument("--height", type=int, default=height)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--count", type=int, default=count, help="images per job")
    parser.add_argument("--reps", type=int, default=reps, help="measured repetitions")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"])
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads after loading (default: the engine's choice, every core); 1 is steadier on a "
        "shared machine",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s"
    )


def resolve_models(args: argparse.Namespace) -> tuple[str, str]:
    """--sd-model/--text-model, or the tiny models (built into --tiny-dir when missing)."""
    sd, text = args.sd_model, args.text_model
    if sd is None or text is None:
        tiny_dir: Path = args.tiny_dir
        tiny_sd, tiny_text = tiny_dir / "sd", tiny_dir / "text"
        if not (tiny_sd / "model_index.json").is_file() or not (tiny_text / "config.json").is_file():
            from bot.engine.tiny_models import build_tiny_models

            print(f"building tiny models into {tiny_dir} …", flush=True)
            tiny_sd, tiny_text = build_tiny_models(tiny_dir)
        sd = sd or str(tiny_sd)
        text = text or str(tiny_text)
    return sd, text


def engine_config(args: argparse.Namespace, *, preview_every: int = 5) -> EngineConfig:
    """An EngineConfig like the bot's wiring builds, with limits wide enough for the benchmark."""
    from bot.engine.executor import EngineConfig
    from bot.engine.validation import Limits

    sd, text = resolve_models(args)
    return EngineConfig(
        sd_model=sd,
        text_model=text,
        device=args.device,
        dtype=args.dtype,
        compile="off",
        preview_every=preview_every,
        limits=Limits(
            max_steps=max(50, args.steps),
            max_pixels=max(1024 * 1024, args.width * args.height),
            max_count=max(4, args.count),
        ),
    )


async def load_engine(engine: Engine, args: argparse.Namespace) -> float:
    """Load the models on the engine's GPU thread; apply --threads; return the seconds it took."""
    import time

    import torch

    started = time.perf_counter()
    await engine.load()
    if args.threads:
        engine.run_sync(lambda: torch.set_num_threads(args.threads))
    return time.perf_counter() - started


def job_spec(
    args: argparse.Namespace, *, job_seed: int, user_id: int | None = None, seed_text: str = SEED_TEXT
) -> JobSpec:
    """A JobSpec with the benchmark's size/steps/count."""
    from bot.store import JobSpec

    return JobSpec(
        seed_text=seed_text,
        count=args.count,
        steps=args.steps,
        guidance=args.guidance,
        width=args.width,
        height=args.height,
        job_seed=job_seed,
        user_id=user_id,
    )


def temp_data_dir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix=f"imagine-bench-{prefix}-")


# -- statistics ----------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank-with-interpolation percentile (q in 0..100), like numpy's default."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    mean: float
    stdev: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(
            n=len(values),
            median=statistics.median(values),
            mean=statistics.fmean(values),
            stdev=statistics.stdev(values) if len(values) > 1 else 0.0,
            minimum=min(values),
            maximum=max(values),
        )


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain fixed-width table (first column left-aligned, the rest right-aligned)."""
    cells = [[str(h) for h in headers], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        )

    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def machine_line() -> str:
    """One line describing where the numbers came from."""
    import torch

    accel = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    return (
        f"{platform.machine()} {os.cpu_count()} CPU(s), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {accel}, python {platform.python_version()}"
    )
