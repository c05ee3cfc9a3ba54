"""Grid layout and the byte-budget encoder (Pillow only, no models)."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from bot.engine.images import (
    GUTTER,
    GUTTER_COLOR,
    compose_grid,
    encode_within_budget,
    grid_shape,
    png_bytes,
)

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def _noise(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB")


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize(("count", "shape"), [(1, (1, 1)), (2, (1, 2)), (3, (2, 2)), (4, (2, 2))])
def test_grid_shape(count: int, shape: tuple[int, int]) -> None:
    assert grid_shape(count) == shape


def test_grid_shape_rejects_zero() -> None:
    with pytest.raises(ValueError, match="count"):
        grid_shape(0)


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_compose_grid_layout(count: int) -> None:
    size = 10
    tiles = [Image.new("RGB", (size, size), COLORS[i]) for i in range(count)]
    grid = compose_grid(tiles)
    rows, cols = grid_shape(count)
    assert grid.size == (cols * size + (cols - 1) * GUTTER, rows * size + (rows - 1) * GUTTER)
    pixels = np.asarray(grid)
    for index in range(rows * cols):
        row, col = divmod(index, cols)
        top, left = row * (size + GUTTER), col * (size + GUTTER)
        block = pixels[top : top + size, left : left + size]
        # Tiles in prompt order, row-major; an empty cell (3 tiles) stays gutter-coloured.
        expected = COLORS[index] if index < count else GUTTER_COLOR
        assert (block == expected).all(), f"cell {index}"
    if cols > 1:
        assert (pixels[:, size : size + GUTTER] == GUTTER_COLOR).all()
    if rows > 1:
        assert (pixels[size : size + GUTTER, :] == GUTTER_COLOR).all()


def test_compose_grid_converts_modes() -> None:
    tiles = [Image.new("RGBA", (8, 8), (1, 2, 3, 4)), Image.new("L", (8, 8), 200)]
    grid = compose_grid(tiles, gutter=0)
    assert grid.mode == "RGB"
    assert grid.getpixel((0, 0)) == (1, 2, 3)
    assert grid.getpixel((8, 0)) == (200, 200, 200)


def test_png_bytes_roundtrip_is_lossless() -> None:
    image = _noise(40, 30, seed=1)
    decoded = _decode(png_bytes(image))
    assert decoded.format == "PNG"
    assert np.array_equal(np.asarray(decoded), np.asarray(image))


def test_encode_returns_png_when_it_fits() -> None:
    image = _noise(64, 64, seed=2)
    data = png_bytes(image)
    encoded = encode_within_budget(image, len(data))
    assert encoded.format == "PNG"
    assert encoded.extension == "png"
    assert encoded.data == data
    assert np.array_equal(np.asarray(_decode(encoded.data)), np.asarray(image))


def test_encode_falls_back_to_jpeg_at_full_size() -> None:
    image = _noise(64, 64, seed=3)
    budget = len(png_bytes(image)) - 1
    encoded = encode_within_budget(image, budget)
    assert encoded.format == "JPEG"
    assert encoded.extension == "jpg"
    assert encoded.size == (64, 64)
    assert len(encoded.data) <= budget
    decoded = _decode(encoded.data)
    assert decoded.format == "JPEG"
    assert decoded.size == (64, 64)


def test_encode_downscales_when_jpeg_does_not_fit() -> None:
    image = _noise(256, 256, seed=4)
    encoded = encode_within_budget(image, 8 * 1024)
    assert encoded.format == "JPEG"
    assert encoded.size[0] < 256 and encoded.size[1] < 256
    assert len(encoded.data) <= 8 * 1024
    assert _decode(encoded.data).size == encoded.size


def test_encode_never_exceeds_the_budget() -> None:
    rng = random.Random(0)
    for trial in range(25):
        width, height = rng.choice([(64, 64), (128, 96), (200, 200), (300, 120)])
        image = _noise(width, height, seed=trial)
        budget = rng.randint(2 * 1024, 200 * 1024)
        encoded = encode_within_budget(image, budget)
        assert len(encoded.data) <= budget, (trial, budget, encoded.format, encoded.size)
        decoded = _decode(encoded.data)
        assert decoded.format == encoded.format
        assert decoded.size == encoded.size


def test_encode_uses_given_png_bytes() -> None:
    image = _noise(32, 32, seed=5)
    data = png_bytes(image, compress_level=9)
    assert encode_within_budget(image, 10**7, png=data).data == data


@pytest.mark.parametrize("budget", [0, 100, 1023])
def test_encode_rejects_absurd_budgets(budget: int) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        encode_within_budget(_noise(16, 16, seed=6), budget)
