"""`python -m bot train lora NAME --images DIR` and `python -m bot train expander [--guild ID]`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bot.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class TrainCliError(Exception):
    """One line on stderr and an exit code (bot.cli prints it like its own errors)."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def add_train_parser(sub: Any) -> None:
    """The `train` command and its two subcommands."""
    train = sub.add_parser("train", help="fine-tune: a LoRA on your pictures, the expander on members' picks")
    kinds = train.add_subparsers(dest="train_kind", required=True)

    lora = kinds.add_parser(
        "lora", help="train a LoRA on a folder of pictures (IMAGINE_LORA_DIR/NAME.safetensors)"
    )
    lora.add_argument("name", metavar="NAME", help="the LoRA's name: letters, digits, - _ . (at most 64)")
    lora.add_argument(
        "--images", type=Path, required=True, help="folder of pictures; IMAGE.txt beside one is its caption"
    )
    lora.add_argument(
        "--caption", help="caption for pictures without an IMAGE.txt, e.g. 'a photo of sks mascot'"
    )
    lora.add_argument("--base", help="the diffusers model to train on (default: IMAGINE_SD_MODEL)")
    lora.add_argument("--steps", type=int, default=500, help="optimiser steps (default 500)")
    lora.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    lora.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    lora.add_argument("--batch", type=int, default=1, help="pictures per step (default 1)")
    lora.add_argument(
        "--resolution", type=int, default=512, help="square training size in pixels (default 512)"
    )
    lora.add_argument(
        "--seed", type=int, default=0, help="random seed: the same seed and data give the same LoRA"
    )
    lora.add_argument("--resume", action="store_true", help="go on from this NAME's last checkpoint")
    lora.add_argument(
        "--checkpoint-every", type=int, default=100, help="steps between checkpoints (default 100)"
    )
    lora.add_argument(
        "--validate-every",
        type=int,
        default=100,
        help="steps between validation contact-sheet rows (default 100)",
    )
    lora.add_argument("--validation-steps", type=int, default=20, help="denoising steps of validation images")
    lora.add_argument(
        "--allow-busy-gpu",
        action="store_true",
        help="train even while a running bot on this host uses the GPU",
    )

    expander = kinds.add_parser("expander", help="DPO-train the prompt expander on members' button presses")
    scope = expander.add_mutually_exclusive_group()
    scope.add_argument("--guild", type=int, help="only this server's presses")
    scope.add_argument("--all-servers", action="store_true", help="pool the presses of every server")
    expander.add_argument(
        "--name", help="folder name under IMAGINE_DATA_DIR/expanders (default: a timestamp)"
    )
    expander.add_argument("--base", help="the expander to start from (default: IMAGINE_TEXT_MODEL)")
    expander.add_argument(
        "--min-pairs", type=int, default=50, help="refuse with fewer pairs than this (default 50)"
    )
    expander.add_argument("--epochs", type=int, default=3)
    expander.add_argument("--lr", type=float, default=5e-5)
    expander.add_argument(
        "--beta", type=float, default=0.1, help="DPO's β: how far from the base model (0.1)"
    )
    expander.add_argument("--batch", type=int, default=8)
    expander.add_argument("--holdout", type=float, default=0.2, help="share of grids held out for the report")
    expander.add_argument("--seed", type=int, default=0)


def run_train(args: argparse.Namespace, settings: Settings) -> int:
    """Run `train lora` or `train expander`; TrainCliError for anything the operator must change."""
    if args.train_kind == "lora":
        return _train_lora(args, settings)
    return _train_expander(args, settings)


# -- lora -------------------------------------------------------------------------------------------


def _check_lora_args(args: argparse.Namespace) -> None:
    if not NAME_PATTERN.fullmatch(args.name):
        raise TrainCliError(
            f"NAME must be letters, digits, '-', '_' or '.' (at most 64), got {args.name!r}", EXIT_USAGE
        )
    rules = [
        ("--steps", args.steps, 1 <= args.steps <= 1_000_000, "1..1000000"),
        ("--rank", args.rank, 1 <= args.rank <= 256, "1..256"),
        ("--lr", args.lr, 0 < args.lr <= 1, "above 0 and at most 1"),
        ("--batch", args.batch, 1 <= args.batch <= 64, "1..64"),
        (
            "--resolution",
            args.resolution,
            32 <= args.resolution <= 2048 and args.resolution % 8 == 0,
            "a multiple of 8 in 32..2048",
        ),
        ("--checkpoint-every", args.checkpoint_every, args.checkpoint_every >= 1, "1 or more"),
        ("--validate-every", args.validate_every, args.validate_every >= 1, "1 or more"),
        ("--validation-steps", args.validation_steps, 1 <= args.validation_steps <= 200, "1..200"),
    ]
    for flag, value, ok, bound in rules:
        if not ok:
            raise TrainCliError(f"`{flag}` must be {bound}, got {value}", EXIT_USAGE)


def _train_lora(args: argparse.Namespace, settings: Settings) -> int:
    from bot.train.dataset import DatasetError, load_dataset

    _check_lora_args(args)
    try:
        dataset = load_dataset(args.images, caption=(args.caption or "").strip() or None)
    except DatasetError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_FAILED
    output = settings.loras_path / f"{args.name}.safetensors"
    if output.exists() and not args.resume:
        raise TrainCliError(f"{output} already exists; pick another NAME, or delete it to train again")

    from bot.engine.loading import resolve_device
    from bot.train.gpu_guard import busy_gpu_refusal
    from bot.train.lora import LoraHyperparameters, LoraJob, TrainingError, train_lora

    device = str(resolve_device(settings.device))
    if device == "cuda":
        device = "cuda:0"
    if not args.allow_busy_gpu:
        refusal = busy_gpu_refusal(settings.heartbeat_path, device)
        if refusal is not None:
            raise TrainCliError(refusal)
    job = LoraJob(
        name=args.name,
        base=args.base or settings.sd_model,
        dataset=dataset,
        hyper=LoraHyperparameters(
            steps=args.steps,
            rank=args.rank,
            lr=args.lr,
            batch=args.batch,
            resolution=args.resolution,
            seed=args.seed,
        ),
        output_dir=settings.loras_path,
        work_dir=settings.train_path / "lora" / args.name,
        device=device,
        checkpoint_every=args.checkpoint_every,
        validate_every=args.validate_every,
        validation_steps=args.validation_steps,
        resume=args.resume,
        show_progress=sys.stderr.isatty(),
    )
    print(
        f"training LoRA {args.name!r} on {len(dataset.images)} pictures from {args.images} "
        f"({job.base}, {device}, {args.steps} steps)",
        file=sys.stderr,
    )
    with _stop_on_signals() as stop:
        try:
            result = train_lora(
                job, stop=stop, on_step=_plain_progress(args.steps) if not job.show_progress else None
            )
        except TrainingError as exc:
            raise TrainCliError(str(exc)) from None
    print(f"loss curve: {result.loss_plot}", file=sys.stderr)
    print(f"validation contact sheet: {result.contact_sheet}", file=sys.stderr)
    if result.interrupted:
        print(
            f"interrupted at step {result.steps_done}/{args.steps}: checkpoint saved at {result.checkpoint}; "
            f"go on with the same command and --resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(
        f"done: {result.steps_done} steps in {result.seconds:.1f}s ({result.steps_per_second:.2f} steps/s), "
        f"final loss {result.final_loss:.4f}"
    )
    print(f"LoRA: {result.weights}")
    print(f"record: {result.sidecar}")
    return EXIT_OK


def _plain_progress(total: int) -> Any:
    """Without a terminal: one line every tenth of the run (logs stay readable)."""
    every = max(1, total // 10)

    def report(step: int, loss: float) -> None:
        if step % every == 0 or step == total:
            print(f"step {step}/{total} loss {loss:.4f}", file=sys.stderr, flush=True)

    return report


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """Ctrl-C or SIGTERM: finish the current step, save a checkpoint, exit (a second Ctrl-C too)."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if not stop.is_set():
            print("\nstopping after this step; saving a checkpoint…", file=sys.stderr, flush=True)
        stop.set()

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


# -- expander ---------------------------------------------------------------------------------------


def _train_expander(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from bot.train.expander import (
        ExpanderHyperparameters,
        ExpanderTrainingError,
        describe_scores,
        pairs_from_presses,
        train_expander,
    )

    rules = [
        ("--min-pairs", args.min_pairs, args.min_pairs >= 1, "1 or more"),
        ("--epochs", args.epochs, 1 <= args.epochs <= 100, "1..100"),
        ("--lr", args.lr, 0 < args.lr <= 1, "above 0 and at most 1"),
        ("--beta", args.beta, 0 < args.beta <= 10, "above 0 and at most 10"),
        ("--batch", args.batch, 1 <= args.batch <= 256, "1..256"),
        ("--holdout", args.holdout, 0 < args.holdout < 1, "between 0 and 1"),
    ]
    for flag, value, ok, bound in rules:
        if not ok:
            raise TrainCliError(f"`{flag}` must be {bound}, got {value}", EXIT_USAGE)
    name = args.name or time.strftime("expander-%Y%m%d-%H%M%S", time.gmtime())
    if not NAME_PATTERN.fullmatch(name):
        raise TrainCliError(
            f"--name must be letters, digits, '-', '_' or '.' (at most 64), got {name!r}", EXIT_USAGE
        )
    presses, scope = asyncio.run(_collect(settings, guild=args.guild, all_servers=args.all_servers))
    pairs = pairs_from_presses(presses)
    print(
        f"{scope}: {len(presses)} press(es) on expanded grids, {len(pairs)} preference pair(s)",
        file=sys.stderr,
    )
    hyper = ExpanderHyperparameters(
        epochs=args.epochs, lr=args.lr, beta=args.beta, batch=args.batch, holdout=args.holdout, seed=args.seed
    )
    try:
        result = train_expander(
            pairs,
            base=args.base or settings.text_model,
            output=settings.data_dir / "expanders" / name,
            hyper=hyper,
            scope=scope,
            min_pairs=args.min_pairs,
        )
    except ExpanderTrainingError as exc:
        raise TrainCliError(str(exc)) from None
    print(
        f"trained on {result.train_pairs} pairs, scored on {result.heldout_pairs} held-out pairs in {result.seconds:.1f}s"
    )
    print(describe_scores("before", result.before))
    print(describe_scores("after ", result.after))
    print(f"expander: {result.folder} (version {result.record['version']})")
    print(f"switch the bot to it: IMAGINE_TEXT_MODEL={result.folder.resolve()}")
    return EXIT_OK


async def _learnable(store: Any, presses: list[Any]) -> list[Any]:
    """Only presses from servers that let the bot learn from their choices (/settings → server)."""
    from bot.preferences import PreferenceStore

    preferences = PreferenceStore(store)
    guilds = {p.guild_id for p in presses if p.guild_id is not None}
    off = {g for g in guilds if not (await preferences.guild(g)).learn_from_choices}
    if off:
        print(
            f"note: left out the presses of {len(off)} server(s) that turned learning from choices off",
            file=sys.stderr,
        )
    return [p for p in presses if p.guild_id not in off]


async def _collect(settings: Settings, *, guild: int | None, all_servers: bool) -> tuple[list[Any], str]:
    from bot.store import HistoryStore

    async with HistoryStore(settings.db_path) as store:
        if guild is not None or all_servers:
            presses = await _learnable(
                store, await store.tile_presses(guild_id=guild, all_guilds=all_servers)
            )
            return presses, ("every server" if all_servers else f"server {guild}")
        everywhere = await _learnable(store, await store.tile_presses(guild_id=None, all_guilds=True))
    servers = sorted({p.guild_id for p in everywhere}, key=lambda g: (g is not None, g or 0))
    if len(servers) > 1:
        named = ", ".join("the CLI" if g is None else str(g) for g in servers)
        raise TrainCliError(
            f"the history holds presses from {len(servers)} servers ({named}): pass --guild ID for one "
            "server's, or --all-servers to pool them",
            EXIT_USAGE,
        )
    only = servers[0] if servers else None
    return everywhere, ("the history" if not servers else "the CLI" if only is None else f"server {only}")
