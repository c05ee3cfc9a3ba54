"""`python -m bot`: parse argv, load settings, dispatch, and turn every error the environment causes into one line."""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

from bot.cli.common import EXIT_FAILED, EXIT_USAGE, CliError
from bot.cli.jobs import _check_images_folder, _run_store_command
from bot.cli.parser import build_parser
from bot.cli.signals import _SIGNALLED, _exit_on_next_signal
from bot.cli.tools import _deploy_workers, _download_models, _tiny_models
from bot.engine.types import ModelLoadError
from bot.settings import Settings, SettingsError, load_settings
from bot.store import StoreError, describe_database_error


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (`imagine-bot` and `python -m bot`)."""
    args = build_parser().parse_args(argv)
    settings: Settings | None = None
    try:
        if args.command == "tiny-models":
            return _tiny_models(args.directory)
        settings = load_settings()
        if args.command == "health":
            # The Docker HEALTHCHECK runs this every 30 s: no torch/diffusers imports on this path.
            from bot.health import main_health

            return main_health(settings)
        from bot.wiring import configure_logging

        configure_logging(settings)
        try:
            return _dispatch(args, settings)
        finally:
            if _SIGNALLED:
                _exit_on_next_signal(_SIGNALLED[0])
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except (StoreError, ModelLoadError) as exc:  # the environment, not a bug: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (
        sqlite3.DatabaseError
    ) as exc:  # after a clean open: a full disk, a lock, a bad page deep in the file
        where = settings.db_path if settings is not None else Path("history.sqlite3")
        print(f"error: {describe_database_error(where, exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command in ("run", "imagine", "rerun"):
        _check_images_folder(settings)
    if args.command == "run":
        from bot.app import run_bot

        return asyncio.run(run_bot(settings))
    if args.command == "sync":
        from bot.app import sync_commands_now

        return asyncio.run(sync_commands_now(settings))
    if args.command == "download-models":
        return _download_models(settings)
    if args.command == "web":
        try:
            from bot.web.app import serve
        except ImportError as exc:
            raise CliError(
                f"`bot web` needs the web extra ({exc.name} is missing): pip install -e '.[web]'"
            ) from None
        asyncio.run(serve(settings))
        return 0
    if args.command == "train":
        from bot.train.cli import TrainCliError, run_train

        try:
            return run_train(args, settings)
        except TrainCliError as exc:
            raise CliError(str(exc), exc.code) from None
    if args.command == "workers":
        return _deploy_workers(settings, replicas=args.replicas, timeout=args.timeout)
    if args.command == "audit":
        from bot.audit.bias import AuditError, main_audit

        try:
            return main_audit(args, settings)
        except AuditError as exc:
            raise CliError(str(exc), exc.code) from None
    return asyncio.run(_run_store_command(args, settings))
