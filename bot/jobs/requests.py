"""A job's render request and its rerun, derived from the stored row (the one definition: JobParams)."""

from __future__ import annotations

import asyncio
from dataclasses import fields
from pathlib import Path

from bot.engine.types import GenerationRequest, InvalidRequest, params_of
from bot.flags import chaos_temperature
from bot.store import JobRecord, JobSpec


def request_from_job(
    job: JobRecord | JobSpec, *, init_image: bytes | None = None, mask_image: bytes | None = None
) -> GenerationRequest:
    """The engine request for a stored row or a new spec (used to validate, run, rerun and reproduce).

    The input images travel as bytes (workers may be remote); `load_request` reads them from the job's files.
    """
    return GenerationRequest(
        **params_of(job),
        prompts=job.given_prompts,
        image_seeds=job.given_seeds,
        init_image=init_image,
        strength=job.strength if job.strength is not None else 0.6,
        mask_image=mask_image,
        action=job.render_action or job.action,
        temperature=chaos_temperature(job.chaos) if job.chaos is not None else None,
        model=job.model or "",
    )


async def load_request(job: JobRecord) -> GenerationRequest:
    """`request_from_job` with the job's source image and mask read off the event loop."""

    def read(path: str | None, what: str) -> bytes | None:
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise InvalidRequest(f"the {what} of this job is gone from disk") from exc

    # No thread hop for a job without input images (most jobs): it would queue behind busy worker threads.
    init_image = await asyncio.to_thread(read, job.init_image, "source image") if job.init_image else None
    mask_image = await asyncio.to_thread(read, job.mask_image, "mask") if job.mask_image else None
    return request_from_job(job, init_image=init_image, mask_image=mask_image)


SPEC_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(JobSpec))


def rerun_spec(old: JobRecord, *, user_id: int | None = None, action: str = "rerun") -> JobSpec:
    """A new job that re-renders `old` exactly: its prompts, image seeds and parameters."""
    # Issue 22: a /describe job's "tiles" are its four prompts, not images: it describes its source again.
    described = (old.render_action or old.action) == "describe"
    spec = {name: getattr(old, name) for name in SPEC_FIELDS}
    spec.update(
        id=None,
        action=action,
        parent_id=old.id,
        given_prompts=None if described else old.prompts,
        given_seeds=None if described else tuple(tile.image_seed for tile in old.tiles),
        render_action=old.render_action or old.action,
        # A private job's children are private too (member /settings: delivered to the presser alone).
        user_id=user_id if user_id is not None else old.user_id,
        # A rerun is one job of its own: not a sibling of the original's batch, no defaults applied.
        group_id=None,
        from_defaults=(),
    )
    return JobSpec(**spec)
