"""The CLI's image prompts and actions on a past job (issue 17, item 22), in subprocesses on the tiny models.

Before: `imagine --image` and `--strength` were unknown arguments, and `upscale`, `vary`, `zoom`, `pan`
and `remix` were unknown commands (argparse exit 2: "invalid choice").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import assert_one_line_error, cli_json, job_count, run_cli, tiny_cli_home
from tests.test_uploads import encoded, striped


@pytest.fixture(scope="module")
def home(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: tuple[Path, Path]
) -> tuple[Path, dict[str, str]]:
    return tiny_cli_home(tmp_path_factory, tiny_models, "cli-actions", IMAGINE_COUNT="2")


def _own_input(job: dict[str, Any], name: str = "source.png") -> Path:
    path = Path(job["init_image"] if name == "source.png" else job["mask_image"])
    assert path.name == name and path.parent.name == job["job_id"] and path.is_file()
    return path


def test_image_prompt_and_every_action_on_a_past_job_with_an_exact_rerun(
    home: tuple[Path, dict[str, str]],
) -> None:
    data_dir, env = home
    picture = data_dir / "photo.png"
    picture.write_bytes(encoded(striped(150, 50), "PNG"))
    made = cli_json(
        run_cli(
            ["imagine", "a painting", "--image", str(picture), "--strength", "0.5", "--json"], env, data_dir
        )
    )
    assert made["status"] == "done", made["reason"]
    assert (made["action"], made["strength"], made["render"]["mode"]) == ("image", 0.5, "img2img")
    _own_input(made)  # its own copy of the picture, fitted to 64x64

    cases = {
        ("upscale", "1"): ("upscale-subtle", 1, (128, 128), False),
        ("upscale", "2", "--creative"): ("upscale-creative", 1, (128, 128), False),
        ("vary", "2", "--strong"): ("vary-strong", 2, (64, 64), False),
        ("zoom", "1", "--factor", "1.5"): ("zoom-1.5", 2, (64, 64), True),
        ("pan", "2", "left"): ("pan-left", 2, (96, 64), True),
        ("remix", "1", "a watercolour"): ("remix", 2, (64, 64), False),
    }
    children: dict[str, dict[str, Any]] = {}
    for args, (action, count, size, masked) in cases.items():
        child = cli_json(run_cli([args[0], made["job_id"], *args[1:], "--json"], env, data_dir))
        assert child["status"] == "done", (args, child["reason"])
        assert (child["action"], child["count"], (child["width"], child["height"])) == (
            action,
            count,
            size,
        ), args
        assert child["parent_id"] == made["job_id"] and child["source_tile"] == int(args[1])
        _own_input(child)
        if masked:
            _own_input(child, "mask.png")
        else:
            assert child["mask_image"] is None
        tile = int(args[1]) - 1
        expected_prompt = "a watercolour" if action == "remix" else made["prompts"][tile]
        assert child["prompts"] == [expected_prompt] * count
        children[action] = child

    # The records are exact: `rerun` of an outpaint renders the same bytes from the child's own inputs.
    pan = children["pan-left"]
    again = cli_json(run_cli(["rerun", pan["job_id"], "--json"], env, data_dir))
    assert again["status"] == "done" and again["parent_id"] == pan["job_id"]
    for new, old in zip(again["images"], pan["images"], strict=True):
        assert Path(new).read_bytes() == Path(old).read_bytes()


def test_action_and_image_refusals_are_one_line_and_write_nothing(home: tuple[Path, dict[str, str]]) -> None:
    data_dir, env = home
    before = job_count(data_dir)
    staged = set((data_dir / "generated_images").glob("*/source.png"))
    result = run_cli(["imagine", "a cat", "--strength", "0.5"], env, data_dir)
    assert result.returncode == 2
    assert_one_line_error(result, "`--strength` only applies together with `--image`")
    result = run_cli(["imagine", "a cat", "--image", str(data_dir / "missing.png")], env, data_dir)
    assert result.returncode == 2
    assert_one_line_error(result, "cannot read --image")
    not_a_picture = data_dir / "notes.png"
    not_a_picture.write_text("hello")
    result = run_cli(["imagine", "a cat", "--image", str(not_a_picture)], env, data_dir)
    assert result.returncode == 2
    assert_one_line_error(result, "`--image` is not a PNG, JPEG or WebP picture")
    result = run_cli(["upscale", "ffffffffff", "1"], env, data_dir)
    assert_one_line_error(result, "no job with id")
    assert job_count(data_dir) == before
    assert set((data_dir / "generated_images").glob("*/source.png")) == staged  # nothing half-written
