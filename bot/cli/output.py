"""How the CLI prints jobs: the history table, `show`, the JSON shape, the rerun outlook."""

from __future__ import annotations

import json

from bot.engine.mitigation import describe_mitigation
from bot.engine.types import ModelLoadError
from bot.engine.validation import normalize_user_text
from bot.settings import Settings
from bot.store import JobRecord


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


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _status_phrase(status: str) -> str:
    return {
        "queued": "is still waiting",
        "running": "is still running",
        "failed": "failed",
        "cancelled": "was cancelled",
    }.get(status, f"is {status}")


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
