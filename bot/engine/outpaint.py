"""Canvas geometry for Zoom Out, Pan and Upscale (Pillow only: safe to run off the GPU thread).

A canvas is the source image placed on a larger (pan) or equal (zoom out) frame, plus a mask that is
white where the model paints. The band of `OVERLAP` pixels along the seam is painted too, and the new
part fades in across it; after rendering, `composite` puts the untouched source pixels back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageFilter, ImageOps

from bot.engine.types import InvalidRequest

# Pixels of the source repainted along each seam (a multiple of 8: one latent cell).
OVERLAP = 8
ZOOM_FACTORS = {"zoom-1.5": 1.5, "zoom-2": 2.0}
PAN_DIRECTIONS = ("left", "right", "up", "down")
PAN_GROWTH = 1.5
MIN_SIDE = 64


Box = tuple[int, int, int, int]  # left, top, right, bottom


@dataclass(frozen=True)
class Canvas:
    """The init image and mask of an outpaint job, and where the source sits on it."""

    image: Image.Image
    mask: Image.Image
    box: Box  # where the source sits on the canvas

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def _round8(value: float) -> int:
    return max(MIN_SIDE, int(value) // 8 * 8)


def fit_within(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) scaled down (aspect kept) to at most `max_pixels`, multiples of 8."""
    if width * height <= max_pixels:
        return _round8(width), _round8(height)
    scale = math.sqrt(max_pixels / (width * height))
    return _round8(width * scale), _round8(height * scale)


def upscale_size(width: int, height: int, max_pixels: int, *, factor: int = 2) -> tuple[int, int]:
    """The upscaled size; InvalidRequest naming the limit when it is over `max_pixels`."""
    new_width, new_height = width * factor, height * factor
    if new_width * new_height > max_pixels:
        raise InvalidRequest(
            f"an upscale of this {width}×{height} image would be {new_width}×{new_height} = "
            f"{new_width * new_height} pixels, over the limit of {max_pixels} (IMAGINE_MAX_OUTPUT_PIXELS)"
        )
    return new_width, new_height


def _backdrop(source: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The source stretched over the whole canvas and blurred: colours for the part to be painted."""
    small = source.resize((max(1, size[0] // 16), max(1, size[1] // 16)), Image.Resampling.BILINEAR)
    return small.resize(size, Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(4))


def build_canvas(source: Image.Image, size: tuple[int, int], box: Box) -> Canvas:
    """`source` resized into `box` on a canvas of `size` over a blurred backdrop, and the paint mask."""
    left, top, right, bottom = box
    source = source.convert("RGB").resize((right - left, bottom - top), Image.Resampling.LANCZOS)
    image = _backdrop(source, size)
    image.paste(source, (left, top))
    # Keep the source except an OVERLAP band along the seams; sides on the canvas border stay kept.
    keep = (
        left + (OVERLAP if left > 0 else 0),
        top + (OVERLAP if top > 0 else 0),
        right - (OVERLAP if right < size[0] else 0),
        bottom - (OVERLAP if bottom < size[1] else 0),
    )
    mask = Image.new("L", size, 255)
    mask.paste(0, keep)
    return Canvas(image, mask, box)


def zoom_geometry(width: int, height: int, factor: float) -> tuple[tuple[int, int], Box]:
    """Zoom out: a canvas of the source's own size with the source shrunk by `factor` in its centre."""
    if not 1.0 < factor <= 4.0:
        raise InvalidRequest(f"`zoom` must be in (1, 4], got {factor}")
    inner_w, inner_h = max(8, round(width / factor)), max(8, round(height / factor))
    left, top = (width - inner_w) // 2, (height - inner_h) // 2
    return (width, height), (left, top, left + inner_w, top + inner_h)


def pan_geometry(width: int, height: int, direction: str, max_pixels: int) -> tuple[tuple[int, int], Box]:
    """Pan: the canvas extended by half its size on one side, scaled down to stay within `max_pixels`."""
    if direction not in PAN_DIRECTIONS:
        raise InvalidRequest(f"`direction` must be one of {', '.join(PAN_DIRECTIONS)}, got {direction!r}")
    horizontal = direction in ("left", "right")
    grown = (width * PAN_GROWTH, height) if horizontal else (width, height * PAN_GROWTH)
    canvas_w, canvas_h = fit_within(int(grown[0]), int(grown[1]), max_pixels)
    # The source keeps its aspect and fills the side it is on.
    if horizontal:
        inner_w, inner_h = min(canvas_w - 8, round(width * canvas_h / height)), canvas_h
    else:
        inner_w, inner_h = canvas_w, min(canvas_h - 8, round(height * canvas_w / width))
    left = canvas_w - inner_w if direction == "left" else 0
    top = canvas_h - inner_h if direction == "up" else 0
    return (canvas_w, canvas_h), (left, top, left + inner_w, top + inner_h)


def outpaint_geometry(action: str, width: int, height: int, max_pixels: int) -> tuple[tuple[int, int], Box]:
    """(canvas size, source box) of a zoom-* or pan-* action on a width×height image."""
    if action in ZOOM_FACTORS:
        return zoom_geometry(width, height, ZOOM_FACTORS[action])
    if action.startswith("pan-"):
        return pan_geometry(width, height, action.removeprefix("pan-"), max_pixels)
    raise InvalidRequest(f"`action` {action!r} is not an outpaint action")


def canvas_for(action: str, source: Image.Image, max_pixels: int) -> Canvas:
    """The canvas (init image and mask) of a zoom-* or pan-* action on `source`."""
    size, box = outpaint_geometry(action, source.width, source.height, max_pixels)
    return build_canvas(source, size, box)


def composite(painted: Image.Image, canvas: Image.Image, mask: Image.Image) -> Image.Image:
    """The painted image where the mask is white, the canvas (the source) elsewhere, with a soft seam."""
    painted = painted.convert("RGB")
    if painted.size != canvas.size:
        painted = painted.resize(canvas.size, Image.Resampling.LANCZOS)
    hard = mask.convert("L")
    # The soft edge lies inside the painted OVERLAP band: the painted share rises from 1/(OVERLAP+1) at the
    # band's first pixel to full at its far side, so the seam is soft and every pixel outside the mask is
    # the source's own (a blur reaching into the kept side changed ~7 px more: 15, where the README says 8).
    half = OVERLAP // 2
    padded = ImageOps.expand(hard, border=OVERLAP, fill=255)  # the canvas border never darkens the ramp
    ramp = padded.filter(ImageFilter.MinFilter(2 * half + 1)).filter(ImageFilter.BoxBlur(half))
    alpha = ImageChops.darker(ImageOps.crop(ramp, OVERLAP), hard)
    return Image.composite(painted, canvas.convert("RGB"), alpha)
