"""The command line: imagine, history, show, rerun, upscale, vary, zoom, pan, remix, tiny-models, run, sync,
health, workers, download-models, web, train, audit bias."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.engine.mitigation import MITIGATION_HELP, MITIGATIONS, describe_mitigation
from bot.engine.types import EngineError, InvalidRequest, ModelLoadError
from bot.engine.validation import normalize_user_text
from bot.settings import Settings, SettingsError, load_settings
from bot.store import HistoryStore, JobRecord, JobSpec, StoreError, describe_database_error

if TYPE_CHECKING:
    from bot.engine.backend import RenderBackend

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# A second Ctrl-C waits at most this long for the `interrupted` row before the process exits.
SECOND_SIGNAL_WRITE_S = 3.0
# How `imagine`'s options are named in errors about a clashing inline flag.
CLI_OPTION_LABELS = {
    "seed": "--seed",
    "steps": "--steps",
    "count": "--count",
    "negative": "--negative",
    "expand": "--no-expand",
    "mitigation": "--mitigation",
}


class CliError(Exception):
    """A user-facing error: printed as one line, exit code attached."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree (also documents the CLI in `--help`)."""
    parser = argparse.ArgumentParser(prog="imagine-bot", description=__doc__)
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


CLI_ACTIONS = ("upscale", "vary", "zoom", "pan", "remix", "enhance")


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


def _check_images_folder(settings: Settings) -> None:
    """Before any row is written: a job's images go to a folder, so a file in its place stops the command."""
    folder = settings.images_dir
    if folder.exists() and not folder.is_dir():
        raise CliError(
            f"the images folder {folder} is a file: move it away, or set IMAGINE_DATA_DIR to another folder"
        )


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


async def _run_store_command(args: argparse.Namespace, settings: Settings) -> int:
    async with HistoryStore(settings.db_path, lease_seconds=settings.lease_seconds) as store:
        # A CLI render killed outright (SIGKILL) stops renewing its lease: once that expired, any command
        # shows it interrupted. A render another container runs renews its lease and is left alone.
        await store.recover_dead_cli_jobs()
        if args.command == "history":
            jobs = await store.list_jobs(any_user=True, limit=args.limit)
            _print_jobs(jobs, as_json=args.json)
            return EXIT_OK
        if args.command == "show":
            job = await _require_job(store, args.job_id)
            _print_job(job, as_json=args.json, full=True)
            if not args.json:
                _print_rerun_outlook(job, settings)
            return EXIT_OK
        old: JobRecord | None = None
        if args.command == "imagine":
            specs = await _imagine_specs(args, settings, store)
            if len(specs) > 1:  # issue 22: permutations and --repeat, one job after another
                return await _generate_each(settings, store, specs, as_json=args.json)
            spec = specs[0]
        elif args.command in CLI_ACTIONS:
            spec = await _action_spec(args, settings, store)
        else:  # rerun
            old = await _require_job(store, args.job_id)
            if old.status != "done":
                raise CliError(
                    f"job {old.id} {_status_phrase(old.status)}; only a job that finished with images "
                    "can be re-rendered"
                )
            spec = await _action_spec(args, settings, store)
            if spec.id is None:  # its id now, so the note after the render finds the new job
                from dataclasses import replace

                from bot.store import new_job_id

                spec = replace(spec, id=new_job_id())
        try:
            code = await _generate(settings, store, spec, as_json=args.json)
        except BaseException:
            # Refused before its row was written (a bad argument, no backend): no staged inputs stay behind.
            if spec.id is not None and await store.get_job(spec.id) is None:
                from bot.uploads import discard_inputs

                await asyncio.to_thread(discard_inputs, settings.images_dir, spec)
            raise
        if old is not None:  # rerun: a note when the new record says it cannot match the old byte for byte
            await _note_rerun_blockers(store, old, spec.id)
        return code


async def _generate_each(
    settings: Settings, store: HistoryStore, specs: list[JobSpec], *, as_json: bool
) -> int:
    """Issue 22: the sibling jobs of one `imagine` (permutations, --repeat), one after another; with --json
    one JSON object per job and line. 0 when every job is done; a signal stops the rest."""
    from bot.uploads import discard_inputs
    from bot.wiring import build_backend

    worst = EXIT_OK
    backend = build_backend(settings)  # loaded once for all the jobs
    try:
        for index, spec in enumerate(specs):
            if not as_json:
                print(f"job {index + 1} of {len(specs)}: {spec.seed_text}", file=sys.stderr)
            try:
                code = await _generate(
                    settings,
                    store,
                    spec,
                    as_json=as_json,
                    backend=backend,
                    json_line=True,
                    close_backend=False,
                )
            except BaseException:
                for later in specs[index:]:  # staged inputs of the jobs that will never have a row
                    if later.id is not None and await store.get_job(later.id) is None:
                        await asyncio.to_thread(discard_inputs, settings.images_dir, later)
                raise
            if code > 128:  # stopped by a signal: the rest stay unqueued
                return code
            worst = max(worst, code)
    finally:
        await backend.close()
    return worst


async def _generate(
    settings: Settings,
    store: HistoryStore,
    spec: JobSpec,
    *,
    as_json: bool,
    backend: RenderBackend | None = None,
    json_line: bool = False,
    close_backend: bool = True,
) -> int:
    """Render `spec` here and print the job; `backend` (tests) replaces the one IMAGINE_BACKEND names."""
    from bot.engine.backend import BackendUnavailable
    from bot.jobs import StoppedWaiting, request_from_job
    from bot.wiring import build_backend, build_runner

    backend = backend if backend is not None else build_backend(settings)
    # Nothing is re-queued: there is no dispatcher here to run it. What Ctrl-C or SIGTERM interrupts ends
    # `interrupted`; a job whose worker died runs again here, within IMAGINE_MAX_ATTEMPTS.
    runner = build_runner(settings, store, backend, requeue_on_shutdown=False, retry_inline=True)
    try:
        try:
            # Cheap checks first, so a bad argument never waits for a tokenizer; then (local backend) the
            # seed's CLIP length, which needs only the tokenizer: an over-long seed exits 2 and writes no row.
            backend.validate(request_from_job(spec))
            await backend.prepare_validation()
        except ModelLoadError:
            raise
        except EngineError as exc:
            raise CliError(exc.user_message, EXIT_USAGE) from None
        # Before any row exists: a job that can never start leaves nothing behind.
        online, reason = await backend.available()
        if not online:
            raise CliError(f"cannot render: {reason}")
        try:
            job = await runner.submit(spec)
        except EngineError as exc:
            raise CliError(exc.user_message, EXIT_USAGE) from None
        bar = _ProgressBar() if not as_json and sys.stderr.isatty() else None
        if bar is not None:
            runner.set_handlers(on_progress=bar.update)
        if not as_json:
            print(f"job {job.id}: rendering {spec.count} image(s)…", file=sys.stderr)
        stopped_by = _stop_on_signals(runner, store, job.id, bar=bar, quiet=as_json)
        try:
            outcome = await runner.run_now(job)
        except StoppedWaiting:
            # A bot on this data folder picked the job up: it renders it on; this process only waited.
            print(
                f"stopped waiting: job {job.id} is being rendered by another process (a bot on this data "
                f"folder) and goes on there; see `imagine-bot show {job.id}`",
                file=sys.stderr,
            )
            return 128 + (stopped_by[0] if stopped_by else signal.SIGINT)
        except BackendUnavailable as exc:  # the workers went away before taking it: the row is gone
            raise CliError(f"cannot render: {exc.user_message}") from None
        finally:
            if bar is not None:
                bar.close()
            await store.set_delivery_none(job.id)
    finally:
        if close_backend:
            await backend.close()
    _print_job(outcome.job, as_json=as_json, full=not (as_json and json_line))
    if stopped_by:
        return 128 + stopped_by[0]
    if outcome.job.status != "done":
        # The record is on stdout; stderr says in one line why there are no images.
        print(f"error: job {outcome.job.id} {outcome.job.status}: {outcome.job.reason}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


# The first Ctrl-C or SIGTERM of this process, once one came (the render thread may still be finishing).
_SIGNALLED: list[int] = []


def _exit_on_next_signal(first: int) -> None:
    """After the event loop closed (it takes its handlers with it): the interpreter may still wait for the
    render thread to leave its step, and a second Ctrl-C must then exit at once, as it does while the loop
    runs, not raise KeyboardInterrupt in the interpreter's shutdown."""

    def leave(signum: int, frame: Any) -> None:
        os._exit(128 + first)

    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, OSError):  # not the main thread (tests calling main in one)
            signal.signal(signum, leave)


def leave_if_signalled(code: int) -> None:
    """`python -m bot`: once Ctrl-C or SIGTERM stopped this process and its command is done, leave now.

    The interpreter's own shutdown (torch's threads, module teardown) can take a while, and late in it the
    signal handlers are reset to the default: a second Ctrl-C there would kill the process by signal
    instead of exiting with the code the first one set. Nothing is left to do here: the store is closed.
    """
    if _SIGNALLED:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _stop_on_signals(
    runner: Any, store: HistoryStore, job_id: str, *, bar: _ProgressBar | None, quiet: bool
) -> list[int]:
    """Ctrl-C and SIGTERM stop the render within its step; a second one exits at once.

    Returns the list the first signal's number lands in. The second signal does not wait for the
    render thread (it may be inside one long op): it records the row `failed: interrupted`, the same end
    the first would have given it, and leaves with `os._exit`.
    """
    loop = asyncio.get_running_loop()
    received: list[int] = []
    tasks: list[asyncio.Task[None]] = []  # holds the tasks: the loop keeps only a weak reference

    def stop(signum: int) -> None:
        if bar is not None:
            bar.close()  # before any line of ours, or it lands on the bar's line
        received.append(signum)
        if not _SIGNALLED:
            _SIGNALLED.append(signum)
        if len(received) == 1:
            tasks.append(asyncio.ensure_future(runner.stop(grace=0)))
            if not quiet:
                _say("stopping… (press Ctrl-C again to quit at once)")
        elif len(received) == 2:
            tasks.append(asyncio.ensure_future(exit_now(received[0])))

    async def exit_now(first: int) -> None:
        try:
            await asyncio.wait_for(store.mark_failed(job_id, "interrupted"), SECOND_SIGNAL_WRITE_S)
        except Exception as exc:  # the next command's recovery marks the row instead
            log.debug("could not mark job %s interrupted: %s", job_id, exc)
        finally:
            if not quiet:
                _say(f"job {job_id}: interrupted")
            os._exit(128 + first)

    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop, signum)
    return received


def _say(line: str) -> None:
    """A line on stderr that never raises: the terminal or pipe may be gone (a closed ssh session)."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


class _ProgressBar:
    """A tqdm bar on stderr, created at the first step; closed once, before any other line is printed."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._closed = False

    def update(self, job_id: str, step: int, total: int, preview: Any) -> None:
        if self._closed:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="denoising", unit="step", file=sys.stderr)
        self._bar.update(step - self._bar.n)
        if step >= total:
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._bar is not None:
                self._bar.close()


async def _imagine_specs(args: argparse.Namespace, settings: Settings, store: HistoryStore) -> list[JobSpec]:
    """The jobs `imagine` asks for, through the intake: options, plus the same inline `--flags` in SEED as
    /imagine takes, `{a, b}` permutations and `--repeat N` (one job each; no confirmation at the command
    line), and an optional picture to start from (`--image`, `--strength`)."""
    from bot.batches import imagine_requests
    from bot.intake import Intake, Refusal, Requester
    from bot.uploads import fit_upload, stage_inputs

    try:
        options = {
            "count": args.count,
            "steps": args.steps,
            "seed": args.job_seed,
            "negative": args.negative or None,
            "expand": False if args.no_expand else None,
            "mitigation": args.mitigation,
        }
        requests = imagine_requests(
            args.seed_text,
            options,
            CLI_OPTION_LABELS,
            max_jobs=settings.max_permutations,
            guidance=args.guidance,
            width=args.width,
            height=args.height,
            with_image=args.image is not None,
            strength=args.strength,
            model=args.model,
            loras=tuple(args.lora or ()),
            draft=args.draft,
        )
    except InvalidRequest as exc:
        raise CliError(exc.user_message, EXIT_USAGE) from None
    batch = await Intake(settings, store).imagine_many(Requester(user_id=None), requests)
    if isinstance(batch, Refusal):
        raise CliError(batch.message, EXIT_USAGE if batch.usage else EXIT_FAILED)
    specs = [admitted.spec for admitted in batch.jobs]
    if args.image is None:
        return specs
    try:
        data = await asyncio.to_thread(args.image.read_bytes)
    except OSError as exc:
        raise CliError(f"cannot read --image {args.image}: {exc.strerror or exc}", EXIT_USAGE) from None
    staged = []
    try:
        for spec in specs:
            fitted = await asyncio.to_thread(
                fit_upload, data, width=spec.width, height=spec.height, max_side=settings.max_image_side
            )
            # Its own copy of the picture in its own folder: `rerun` stays exact if the file goes.
            staged.append(
                await asyncio.to_thread(
                    stage_inputs, settings.images_dir, spec, init_image=fitted, mask_image=None
                )
            )
    except InvalidRequest as exc:
        raise CliError(exc.user_message.replace("`image`", "`--image`"), EXIT_USAGE) from None
    return staged


async def _action_spec(args: argparse.Namespace, settings: Settings, store: HistoryStore) -> JobSpec:
    """The job `rerun` or an action on one image of a past job asks for, through the intake (the checks and
    records of the Discord buttons); its source image and mask are staged in its own folder (copies, for a
    rerun), so a rerun stays exact even when the old job goes."""
    from bot.child_jobs import tile_inputs
    from bot.intake import ActionRequest, Intake, Refusal, Requester
    from bot.uploads import stage_inputs

    old = await _require_job(store, args.job_id)
    prompt = args.prompt.strip() or None if args.command == "remix" else None
    request = ActionRequest(old.id, _action_name(args), getattr(args, "tile", None), prompt=prompt)
    admitted = await Intake(settings, store).action(Requester(user_id=None), request)
    if isinstance(admitted, Refusal):
        raise CliError(admitted.message, EXIT_USAGE if admitted.usage else EXIT_FAILED)
    try:
        init_image, mask_image = (None, None)
        if admitted.source is not None:
            init_image, mask_image = await asyncio.to_thread(tile_inputs, admitted.source)
        return await asyncio.to_thread(
            stage_inputs, settings.images_dir, admitted.spec, init_image=init_image, mask_image=mask_image
        )
    except InvalidRequest as exc:
        raise CliError(exc.user_message) from None


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


async def _require_job(store: HistoryStore, job_id: str) -> JobRecord:
    job = await store.get_job(job_id.strip())
    if job is None:
        raise CliError(f"no job with id {job_id!r}; see `imagine-bot history`")
    return job


def _print_jobs(jobs: list[JobRecord], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps([job.to_json() for job in jobs], indent=2, ensure_ascii=False))
        return
    if not jobs:
        print("no jobs yet")
    for job in jobs:
        # Only a finished job has images; the others show none rather than the count they asked for.
        images = _plural(len(job.tiles), "image") if job.status == "done" else "-"
        print(
            f"{job.id}  {job.status:<9}  {_action_summary(job):<24}  {images:<9}  seed={job.job_seed:<10}  "
            f"{normalize_user_text(job.seed_text)[:60]}"
        )


def _action_summary(job: JobRecord) -> str:
    """`imagine`, or what a job made from another: `upscale-subtle ← 1a2b3c4d5e#2`."""
    if job.parent_id is None:
        return job.action
    return f"{job.action} ← {job.parent_id}" + (f"#{job.source_tile}" if job.source_tile is not None else "")


def _lineage_lines(job: JobRecord) -> list[str]:
    """What a job was made from: its action, parent job and tile, strength, and source image/mask files."""
    action = f"action: {job.action}"
    if job.parent_id is not None:
        action += f" of job {job.parent_id}"
        if job.source_tile is not None:
            action += f" tile {job.source_tile}"
    if job.strength is not None:
        action += f", strength {job.strength:g}"
    lines = [action]
    if job.init_image:
        lines.append(f"source image: {job.init_image}")
    if job.mask_image:
        lines.append(f"mask: {job.mask_image}")
    return lines


def _model_lines(job: JobRecord) -> list[str]:
    """The models and revisions a finished job used, as recorded (what `rerun` needs to match)."""
    lines: list[str] = []
    render, expander = job.render, job.expander
    if render.get("sd_model"):
        lines.append(f"image model: {render['sd_model']} (revision {render.get('sd_revision', 'unknown')})")
    if render.get("model_name"):
        pinned = render.get("model_revision") or "unpinned"
        lines.append(f"registry model: {render['model_name']} ({render.get('model_kind')}, {pinned})")
    for lora in render.get("loras", ()):
        lines.append(
            f"LoRA: {lora.get('name')} weight {lora.get('weight')} (sha256 {str(lora.get('sha256'))[:16]}…)"
        )
    if expander.get("model"):
        lines.append(
            f"text model: {expander['model']} (revision {expander.get('revision', 'unknown')}), "
            f"expander version {expander.get('version', 'base')}"
        )
    if render.get("device"):
        lines.append(
            f"ran on: {render['device']} {render.get('dtype', '')}, scheduler {render.get('scheduler', '?')}"
        )
    if render.get("numerics"):
        from bot.engine.numerics import describe_numerics

        lines.append(f"numerics: {describe_numerics(render['numerics'])}")
    return lines


def _print_rerun_outlook(job: JobRecord, settings: Settings) -> None:
    """`show`: name what keeps a local rerun from repeating the job byte for byte, if anything does."""
    if job.status != "done" or not job.render or settings.ray_address:
        return  # nothing to repeat, or a rerun would render on a Ray replica, not here
    from bot.engine.numerics import local_render_plan, rerun_blockers

    try:
        plan = local_render_plan(settings.device, settings.dtype)
    except ModelLoadError:
        return  # no such device here: `rerun` itself says so
    blockers = rerun_blockers(job.render, plan)
    if blockers:
        print(f"  a rerun here cannot be byte-identical: {'; '.join(blockers)}")


async def _note_rerun_blockers(store: HistoryStore, old: JobRecord, new_id: str | None) -> None:
    """`rerun`: a note on stderr when the new render's record says it cannot match the old byte for byte."""
    from bot.engine.numerics import rerun_blockers

    new = await store.get_job(new_id) if new_id else None
    if new is None or new.status != "done":
        return
    blockers = rerun_blockers(old.render, new.render)
    if blockers:
        print(
            f"note: job {new.id} cannot be byte-identical to job {old.id}: {'; '.join(blockers)}",
            file=sys.stderr,
        )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _status_phrase(status: str) -> str:
    return {
        "queued": "is still waiting",
        "running": "is still running",
        "failed": "failed",
        "cancelled": "was cancelled",
    }.get(status, f"is {status}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _print_job(job: JobRecord, *, as_json: bool, full: bool) -> None:
    if as_json:
        print(json.dumps(job.to_json(), indent=2 if full else None, ensure_ascii=False))
        return
    print(f"job {job.id}: {job.status}" + (f" ({job.reason})" if job.reason else ""))
    print(f"  seed text: {normalize_user_text(job.seed_text)}")
    print(
        f"  seed={job.job_seed} steps={job.steps} guidance={job.guidance} size={job.width}x{job.height} "
        f"count={job.count} expand={job.expand}" + (f" negative={job.negative!r}" if job.negative else "")
    )
    if job.mitigation:
        print(f"  mitigation: {describe_mitigation(job.mitigation)}")
    for line in _lineage_lines(job):
        print(f"  {line}")
    if full:
        for line in _model_lines(job):
            print(f"  {line}")
    for tile in job.tiles:
        print(f"  [{tile.index}] seed {tile.image_seed}: {tile.prompt}")
        print(f"      {tile.path}")
    if job.grid_path:
        print(f"  grid: {job.grid_path}")


def _tiny_models(directory: Path) -> int:
    from bot.engine.tiny_models import build_tiny_models

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if directory.exists() and not directory.is_dir():
        raise CliError(f"{directory} is a file: give a folder for the tiny models", EXIT_USAGE)
    from bot.engine.tiny_blend import build_tiny_blend_model
    from bot.engine.tiny_describe import build_tiny_describe_models

    try:
        sd, text = build_tiny_models(directory)
        caption, clip = build_tiny_describe_models(directory, sd / "tokenizer")  # issue 22: /describe
        unclip = build_tiny_blend_model(directory, sd)  # issue 22: /blend
    except OSError as exc:
        raise CliError(f"cannot write the tiny models to {directory} ({exc.strerror or exc})") from None
    from bot.engine.tiny_models import tiny_clip_path

    print(f"IMAGINE_SD_MODEL={sd}\nIMAGINE_TEXT_MODEL={text}")
    print(f"IMAGINE_AUDIT_CLIP_MODEL={tiny_clip_path(directory)}")
    print(f"IMAGINE_MODELS_FILE={directory / 'models.toml'}")
    print(f"IMAGINE_CAPTION_MODEL={caption}\nIMAGINE_DESCRIBE_CLIP_MODEL={clip}")
    print(f"IMAGINE_BLEND_MODEL={unclip}")
    return EXIT_OK


def _download_models(settings: Settings) -> int:
    from huggingface_hub import snapshot_download

    targets = [("IMAGINE_SD_MODEL", settings.sd_model), ("IMAGINE_TEXT_MODEL", settings.text_model)]
    if settings.safety_checker:
        targets.append(("IMAGINE_SAFETY_CHECKER_MODEL", settings.safety_checker_model))
    for name, model_id in targets:
        if Path(model_id).expanduser().is_dir():
            print(f"{name}={model_id}: local folder, nothing to download")
            continue
        print(f"{name}={model_id}: downloading…", flush=True)
        try:
            # tqdm progress bars come from huggingface_hub itself.
            path = snapshot_download(
                model_id, ignore_patterns=["*.bin", "*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data"]
            )
        except Exception as exc:
            raise CliError(
                f"could not download {name}={model_id!r} ({type(exc).__name__}); check the id and the network"
            ) from None
        print(f"{name}={model_id}: cached at {path}")
    print("done: the bot can now run with HF_HUB_OFFLINE=1")
    return EXIT_OK


def workers_models_line(settings: Settings) -> str:
    """The registry the workers serve (read here: the nodes read the same file from their own settings)."""
    from bot.models.registry import load_registry

    registry = load_registry(settings)  # a broken models file stops the deploy in one line
    names = ", ".join(
        entry.name
        + (" (default)" if entry.name == registry.default else "")
        + (" (draft)" if entry.name == registry.draft else "")
        for entry in registry.enabled
    )
    source = str(registry.path) if registry.path is not None else "IMAGINE_SD_MODEL"
    return (
        f"models: {names} from {source}; each replica keeps at most {settings.max_resident_models} loaded, "
        "and each job goes to a replica holding its model"
    )


def _deploy_workers(settings: Settings, *, replicas: int | None, timeout: float) -> int:
    from bot.engine.workers.deploy import DeployError, DeployTarget, deploy_workers, ray_token

    if replicas is not None and replicas < 1:
        raise CliError(f"`--replicas` must be >= 1, got {replicas}", EXIT_USAGE)
    print(workers_models_line(settings), flush=True)
    try:
        token = ray_token(
            settings.ray_auth_mode,
            settings.ray_auth_token.get_secret_value() if settings.ray_auth_token else None,
            settings.ray_auth_token_path,
        )
        deploy_workers(
            DeployTarget(
                dashboard=settings.ray_dashboard_address,
                replicas=replicas,
                gpus_per_replica=settings.ray_gpus_per_replica,
                port=settings.workers_port,
                ray_token=token,
            ),
            timeout=timeout,
            say=lambda line: print(line, flush=True),
        )
    except DeployError as exc:
        raise CliError(str(exc)) from None
    return EXIT_OK
