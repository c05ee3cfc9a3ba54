"""Checking and fitting images members upload (`/imagine image:`), and staging job input files.

Everything here is Pillow and file work: callers run it off the event loop (`asyncio.to_thread`).
"""

from __future__ import annotations

import io
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from bot.engine.images import png_bytes
from bot.engine.types import InvalidRequest
from bot.store import JobSpec, new_job_id

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
ACCEPTED_CONTENT_TYPES = ("image/png", "image/jpeg", "image/jpg", "image/webp")
SOURCE_FILE = "source.png"
MASK_FILE = "mask.png"


def check_declared(content_type: str | None, size: int, *, upload_limit: int) -> None:
    """Checks on what Discord tells about the attachment, before downloading a byte."""
    declared = (content_type or "").split(";")[0].strip().lower()
    if declared and declared not in ACCEPTED_CONTENT_TYPES:
        raise InvalidRequest(f"`image` must be a PNG, JPEG or WebP picture, not {declared[:60]}")
    if size > upload_limit:
        raise InvalidRequest(
            f"`image` is {size / 1_048_576:.1f} MiB; the limit here is {upload_limit / 1_048_576:.1f} MiB"
        )


def fit_upload(data: bytes, *, width: int, height: int, max_side: int) -> bytes:
    """The uploaded bytes as a PNG of exactly width×height (cover, centre crop); InvalidRequest if unfit.

    The real format comes from the bytes, not the file name. Dimensions are read from the header and
    checked before anything is decoded, so a decompression bomb costs nothing; animated images use
    their first frame.
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that: both are refusals here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidRequest("`image` has far too many pixels (a decompression bomb?)") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidRequest("`image` is not a PNG, JPEG or WebP picture") from exc
    with opened:
        if opened.format not in ACCEPTED_FORMATS:
            raise InvalidRequest(f"`image` must be a PNG, JPEG or WebP picture, not {opened.format}")
        source_w, source_h = opened.size
        if max(source_w, source_h) > max_side:
            raise InvalidRequest(
                f"`image` is {source_w}×{source_h} pixels; the limit is {max_side} on each side"
            )
        if min(source_w, source_h) < 1:
            raise InvalidRequest("`image` has no pixels")
        try:
            opened.seek(0)  # animated: the first frame only
            if opened.format == "JPEG":
                opened.draft("RGB", (width, height))  # decode a large JPEG at a reduced scale
            frame = ImageOps.exif_transpose(opened).convert("RGB")
        except (OSError, ValueError, SyntaxError) as exc:
            raise InvalidRequest("`image` is damaged and cannot be read") from exc
    fitted = ImageOps.fit(frame, (width, height), Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    return png_bytes(fitted)


def stage_inputs(
    images_dir: Path, spec: JobSpec, *, init_image: bytes | None, mask_image: bytes | None
) -> JobSpec:
    """Give `spec` its id and write its input images into its own folder (so /forget removes them).

    Inputs not given as bytes are copied from the paths the spec carries (a rerun's or variation's
    source in another job's folder), so every job reproduces from its own record.
    """
    if init_image is None and spec.init_image is not None:
        init_image = _read_input(spec.init_image, "source image")
    if mask_image is None and spec.mask_image is not None:
        mask_image = _read_input(spec.mask_image, "mask")
    if init_image is None and mask_image is None:
        return spec
    job_id = spec.id or new_job_id()
    folder = images_dir / job_id
    folder.mkdir(parents=True, exist_ok=True)
    return replace(
        spec,
        id=job_id,
        init_image=_write_input(folder / SOURCE_FILE, init_image),
        mask_image=_write_input(folder / MASK_FILE, mask_image),
    )


def _write_input(path: Path, data: bytes | None) -> str | None:
    if data is None:
        return None
    path.write_bytes(data)
    return str(path)


def discard_inputs(images_dir: Path, spec: JobSpec) -> None:
    """Remove the folder `stage_inputs` made for a job that was then refused."""
    if spec.id is not None:
        folder = (images_dir / spec.id).resolve()
        if images_dir.resolve() in folder.parents:
            shutil.rmtree(folder, ignore_errors=True)


def _read_input(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"the {what} of that job is gone from disk") from exc
