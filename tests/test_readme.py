"""README statements a new user acts on, checked against what the code does."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from bot.engine.images import GUTTER, GUTTER_COLOR, compose_grid

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
QUICK_START = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]


def test_quick_start_sets_the_cpu_torch_index_before_the_first_command() -> None:
    index = QUICK_START.find("TORCH_INDEX=https://download.pytorch.org/whl/cpu")
    first_command = QUICK_START.find('scripts/imagine.sh "Northeastern University"')
    assert 0 <= index < first_command
    # The pinned default is the CUDA build too, not only an unpinned `torch`.
    assert "pinned or not" in QUICK_START


def test_quick_start_does_not_promise_seconds_for_tiny() -> None:
    assert "(seconds, no download)" not in README
    assert "minute" in QUICK_START


def test_a_three_image_grid_is_two_by_two_with_an_empty_gutter_coloured_cell() -> None:
    assert "with 3, the bottom-right cell stays empty" in QUICK_START
    tiles = [Image.new("RGB", (16, 16), colour) for colour in ("red", "green", "blue")]
    grid = compose_grid(tiles)
    assert grid.size == (2 * 16 + GUTTER, 2 * 16 + GUTTER)
    empty = grid.crop((16 + GUTTER, 16 + GUTTER, 32 + GUTTER, 32 + GUTTER))
    assert empty.getcolors() == [(16 * 16, GUTTER_COLOR)]


def test_readme_states_the_one_line_errors_the_cli_gives() -> None:
    for claim in ("history.sqlite3", "IMAGINE_DEVICE=cuda", "`run`/`sync` without a network", "75-token"):
        assert claim in README
    assert "`--limit` must be 1 or" in README
