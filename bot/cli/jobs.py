"""The CLI's job commands: imagine, the actions on a past job, rerun, history and show, rendered here."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import TYPE_CHECKING, Any

from bot.cli.common import CLI_ACTIONS, CLI_OPTION_LABELS, EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError
from bot.cli.output import _print_job, _print_jobs, _print_rerun_outlook, _status_phrase
from bot.cli.parser import _action_name
from bot.cli.signals import _ProgressBar, _stop_on_signals
from bot.engine.types import EngineError, InvalidRequest, ModelLoadError
from bot.settings import Settings
from bot.store import HistoryStore, JobRecord, JobSpec

if TYPE_CHECKING:
    from bot.engine.backend import RenderBackend


def _check_images_folder(settings: Settings) -> None:
    """Before any row is written: a job's images go to a folder, so a file in its place stops the command."""
    folder = settings.images_dir
    if folder.exists() and not folder.is_dir():
        raise CliError(
            f"the images folder {folder} is a file: move it away, or set IMAGINE_DATA_DIR to another folder"
        )


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
