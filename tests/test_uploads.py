"""Uploaded images: real format from the bytes, size and dimension limits, bombs, animation, fitting, staging."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.engine.types import InvalidRequest
from bot.uploads import SOURCE_FILE, check_declared, discard_inputs, fit_upload, stage_inputs
from tests.helpers import job_spec


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def striped(width: int, height: int) -> Image.Image:
    """Left third red, middle green, right blue: a crop shows which part survived."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 3] = (255, 0, 0)
    pixels[:, width // 3 : 2 * width // 3] = (0, 255, 0)
    pixels[:, 2 * width // 3 :] = (0, 0, 255)
    return Image.fromarray(pixels, "RGB")


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width×height pixels (decoding it would need gigabytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + chunk(b"IEND", b"")
    )


def test_png_is_fitted_by_cover_and_centre_crop() -> None:
    data = fit_upload(encoded(striped(300, 100), "PNG"), width=64, height=64, max_side=4096)
    fitted = Image.open(io.BytesIO(data))
    assert fitted.format == "PNG" and fitted.size == (64, 64)
    # Cover + centre crop of a 3:1 image into a square keeps the middle (green) third.
    assert fitted.getpixel((32, 32)) == (0, 255, 0)
    assert fitted.getpixel((2, 32))[1] > 200 and fitted.getpixel((61, 32))[1] > 200


def test_jpeg_bytes_are_accepted_whatever_the_name() -> None:
    data = fit_upload(encoded(striped(90, 120), "JPEG", quality=95), width=64, height=96, max_side=4096)
    assert Image.open(io.BytesIO(data)).size == (64, 96)


def test_animated_webp_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (80, 80), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:], lossless=True)
    fitted = Image.open(io.BytesIO(fit_upload(buffer.getvalue(), width=64, height=64, max_side=4096)))
    red, _, blue = fitted.getpixel((32, 32))
    assert red > 200 and blue < 50


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"just some text, not a picture\n", "not a PNG, JPEG or WebP"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "not a PNG, JPEG or WebP"),
        (encoded(Image.new("RGB", (8, 8)), "GIF"), "must be a PNG, JPEG or WebP picture, not GIF"),
        (encoded(Image.new("RGB", (8, 8)), "BMP"), "must be a PNG, JPEG or WebP picture, not BMP"),
        (encoded(Image.new("RGB", (5000, 10)), "PNG"), "5000×10 pixels; the limit is 4096"),
    ],
)
def test_unfit_uploads_are_refused_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        fit_upload(data, width=64, height=64, max_side=4096)
    assert message in caught.value.user_message


@pytest.mark.parametrize("side", [20_000, 100_000])
def test_decompression_bomb_is_refused_from_its_header(side: int) -> None:
    bomb = png_bomb(side, side)
    assert len(bomb) < 200
    started = time.perf_counter()
    with pytest.raises(InvalidRequest, match="pixels"):
        fit_upload(bomb, width=64, height=64, max_side=4096)
    assert time.perf_counter() - started < 0.5  # nothing was decoded


def test_declared_type_and_size_are_checked_before_download() -> None:
    check_declared("image/png", 1000, upload_limit=10_000)
    check_declared(None, 1000, upload_limit=10_000)  # unknown type: the bytes decide later
    with pytest.raises(InvalidRequest, match="not text/plain"):
        check_declared("text/plain; charset=utf-8", 10, upload_limit=10_000)
    with pytest.raises(InvalidRequest, match="MiB"):
        check_declared("image/png", 20_000_000, upload_limit=10 * 1024 * 1024)


def test_inputs_are_staged_in_the_new_jobs_folder_and_copied_from_a_parent(tmp_path: Path) -> None:
    spec = job_spec(seed_text="x", count=1, job_seed=1)
    assert stage_inputs(tmp_path, spec, init_image=None, mask_image=None) == spec
    first = stage_inputs(tmp_path, spec, init_image=b"source", mask_image=b"mask")
    assert first.id is not None and first.init_image == str(tmp_path / first.id / SOURCE_FILE)
    assert Path(first.mask_image or "").read_bytes() == b"mask"
    # A rerun's spec points at the parent's files: the child gets its own copies.
    child = stage_inputs(
        tmp_path, first.__class__(**{**first.__dict__, "id": None}), init_image=None, mask_image=None
    )
    assert child.id != first.id and Path(child.init_image or "").read_bytes() == b"source"
    discard_inputs(tmp_path, first)
    assert not (tmp_path / first.id).exists() and Path(child.init_image or "").exists()
    Path(child.init_image or "").unlink()
    with pytest.raises(InvalidRequest, match="gone from disk"):
        stage_inputs(tmp_path, child, init_image=None, mask_image=None)
