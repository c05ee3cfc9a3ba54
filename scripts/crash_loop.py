#!/usr/bin/env python
"""Run the kill -9 crash loop by hand and print the tally (the heavy test runs the same code).

    .venv/bin/python scripts/crash_loop.py --iterations 20

Starts an in-process fake Discord, runs `python -m bot run` as a subprocess on tiny random-weight models,
sends /imagine, kills the bot with SIGKILL while a job is `running`, restarts it on the same data folder,
and at the end checks that every job ended `done` or `failed: interrupted`, that no result was posted
twice and that `PRAGMA integrity_check` said ok after every kill. Exit status 0 when all of that holds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=20, help="kill -9 / restart cycles (default 20)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per job (default 20)")
    parser.add_argument("--max-attempts", type=int, default=2, help="IMAGINE_MAX_ATTEMPTS (default 2)")
    parser.add_argument(
        "--models",
        type=Path,
        help="folder with tiny models (sd/, text/); built into a temp folder if omitted",
    )
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (data, logs) afterwards")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO_ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from tests.reliability.harness import run_crash_loop

    with tempfile.TemporaryDirectory(prefix="crash-loop-") as scratch:
        work_dir = args.keep or Path(scratch)
        if args.models is not None:
            models = (args.models.resolve() / "sd", args.models.resolve() / "text")
        else:
            from bot.engine.tiny_models import build_tiny_models

            print("building tiny models…", flush=True)
            models = build_tiny_models(Path(scratch) / "models")
        tally = asyncio.run(
            run_crash_loop(
                iterations=args.iterations,
                models=models,
                work_dir=work_dir,
                steps=args.steps,
                max_attempts=args.max_attempts,
                echo=lambda line: print(line, flush=True),
            )
        )
    print(tally.summary())
    for label, items in (
        ("lost", tally.lost),
        ("posted twice", tally.posted_twice),
        ("sent but no message", tally.sent_but_missing),
        ("never delivered", tally.never_delivered),
    ):
        if items:
            print(f"{label}: {items}")
    print("OK" if tally.ok else "FAILED")
    return 0 if tally.ok else 1


if __name__ == "__main__":
    sys.exit(main())
