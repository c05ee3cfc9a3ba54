"""Small WebP thumbnails, made once per tile and cached on disk (flagged tiles: a blurred one)."""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image, ImageFilter

THUMB_SIDE = 320
MAX_THUMB_BYTES = 15 * 1024


def thumbnail(source: Path, target: Path, *, blur: bool) -> Path:
    """Write `target` (WebP, longest side 320 px, at most 15 KB) from `source` unless it exists; return it."""
    if target.exists():
        return target
    with Image.open(source) as opened:
        image: Image.Image = opened.convert("RGB")
        image.thumbnail((THUMB_SIDE, THUMB_SIDE))
        if blur:
            # As Discord's spoiler: nothing recognizable until the member chooses to look.
            image = image.resize((max(1, image.width // 16), max(1, image.height // 16))).resize(
                image.size, Image.Resampling.BILINEAR
            )
            image = image.filter(ImageFilter.GaussianBlur(8))
        data = b""
        for quality in (70, 55, 40, 25, 10):
            buffer = io.BytesIO()
            image.save(buffer, "WEBP", quality=quality, method=4)
            data = buffer.getvalue()
            if len(data) <= MAX_THUMB_BYTES:
                break
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)  # atomic: a concurrent request sees the old state or the whole file
    return target
