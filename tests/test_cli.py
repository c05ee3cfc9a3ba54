"""`python -m bot ...` end to end, in subprocesses, on the tiny models (no network)."""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.engine.images import GUTTER
from tests.helpers import (
    REPO_ROOT,
    assert_one_line_error,
    cli_json,
    job_count,
    run_cli,
    tiny_cli_env,
    tiny_cli_home,
)

SEED = "Northeastern University"


@pytest.fixture(scope="module")
def cli_home(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: tuple[Path, Path]
) -> tuple[Path, dict[str, str]]:
    return tiny_cli_home(tmp_path_factory, tiny_models, "cli-data")


@pytest.fixture(scope="module")
def imagined(cli_home: tuple[Path, dict[str, str]]) -> dict[str, Any]:
    data_dir, env = cli_home
    return cli_json(run_cli(["imagine", SEED, "--seed", "7", "--json"], env, data_dir))


def test_imagine_json(imagined: dict[str, Any], cli_home: tuple[Path, dict[str, str]]) -> None:
    data_dir, _ = cli_home
    assert imagined["status"] == "done", imagined["reason"]
    assert imagined["seed"] == 7
    assert imagined["seed_text"] == SEED
    assert (imagined["width"], imagined["height"], imagined["steps"], imagined["count"]) == (64, 64, 2, 4)
    assert len(imagined["prompts"]) == 4
    assert all(prompt.startswith(SEED) for prompt in imagined["prompts"])
    assert imagined["image_seeds"] == [7, 8, 9, 10]
    assert len(imagined["images"]) == 4
    for path in imagined["images"]:
        assert Path(path).is_file()
        # generated_images/<job>/<attempt>/tile-N.png: each attempt publishes its own folder
        assert Path(path).parents[2] == data_dir / "generated_images"
        assert Path(path).parent.parent.name == imagined["job_id"]
        with Image.open(path) as tile:
            assert (tile.format, tile.size) == ("PNG", (64, 64))
    grid = Image.open(io.BytesIO(Path(imagined["grid"]).read_bytes()))
    grid.load()
    assert (grid.format, grid.size) == ("PNG", (2 * 64 + GUTTER, 2 * 64 + GUTTER))
    assert imagined["expander"]["seed"] == 7
    assert imagined["render"]["device"] == "cpu"


def test_history_and_show(imagined: dict[str, Any], cli_home: tuple[Path, dict[str, str]]) -> None:
    data_dir, env = cli_home
    history = cli_json(run_cli(["history", "--json"], env, data_dir))
    assert imagined["job_id"] in [job["job_id"] for job in history]
    shown = cli_json(run_cli(["show", imagined["job_id"], "--json"], env, data_dir))
    assert shown == imagined


def test_rerun_is_byte_identical(imagined: dict[str, Any], cli_home: tuple[Path, dict[str, str]]) -> None:
    data_dir, env = cli_home
    rerun = cli_json(run_cli(["rerun", imagined["job_id"], "--json"], env, data_dir))
    assert rerun["status"] == "done"
    assert rerun["job_id"] != imagined["job_id"]
    assert rerun["parent_id"] == imagined["job_id"]
    assert rerun["prompts"] == imagined["prompts"]
    assert rerun["image_seeds"] == imagined["image_seeds"]
    for new, old in zip(rerun["images"], imagined["images"], strict=True):
        assert new != old
        assert Path(new).read_bytes() == Path(old).read_bytes()


def test_bad_input_fails_with_one_line_and_no_row(tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    env = tiny_cli_env(tiny_models, tmp_path)
    cases = [
        (["imagine", SEED, "--steps", "0"], env, "`steps`"),
        (["imagine", "   "], env, "`seed`"),
        (["imagine", SEED, "--width", "65"], env, "`width`"),
        (["imagine", SEED], {**env, "IMAGINE_STEPS": "abc"}, "IMAGINE_STEPS"),
        (["show", "no-such-job"], env, "no-such-job"),
    ]
    # Independent processes: run them side by side (each one pays the torch import).
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        results = list(pool.map(lambda case: run_cli(case[0], case[1], tmp_path), cases))
    for (args, _, needle), result in zip(cases, results, strict=True):
        line = assert_one_line_error(result, needle)
        assert result.returncode in (1, 2), (args, result.returncode)
        print(f"{' '.join(args)!r} -> exit {result.returncode}: {line}")
    assert job_count(tmp_path) == 0


def test_blocked_seed_or_negative_fails_with_one_line_exit_2_and_no_row(
    tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    # The CLI runs with the content filter on (like a normal channel). Before: the blocked seed fell back
    # to itself after every expansion was blocked and was rendered as typed (exit 0).
    env = tiny_cli_env(tiny_models, tmp_path)
    cases = [
        ["imagine", "nude portrait of a woman", "--count", "1"],
        ["imagine", "nude portrait of a woman", "--count", "1", "--no-expand"],
        ["imagine", SEED, "--count", "1", "--negative", "blurry, naked"],
    ]
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        results = list(pool.map(lambda args: run_cli(args, env, tmp_path), cases))
    for args, result in zip(cases, results, strict=True):
        assert_one_line_error(result, "content filter")
        assert result.returncode == 2, (args, result.returncode, result.stderr)
    assert job_count(tmp_path) == 0


def test_unknown_model_offline(tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    model = "no-such-org/no-such-model-xyz"
    env = tiny_cli_env(tiny_models, tmp_path, IMAGINE_SD_MODEL=model)
    result = run_cli(["imagine", SEED, "--seed", "1"], env, tmp_path)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert model in output
    assert "tiny-models" in output
    assert "IMAGINE_SD_MODEL" in output


def test_tiny_models_command(tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    result = run_cli(
        ["tiny-models", str(tmp_path / "built")], os.environ | {"PYTHONPATH": str(REPO_ROOT)}, tmp_path
    )
    assert result.returncode == 0, result.stderr
    sd_dir, text_dir = tmp_path / "built" / "sd", tmp_path / "built" / "text"
    assert f"IMAGINE_SD_MODEL={sd_dir}" in result.stdout
    assert f"IMAGINE_TEXT_MODEL={text_dir}" in result.stdout
    # Issue 22: a tiny SD 2.1 unCLIP for /blend.
    assert f"IMAGINE_BLEND_MODEL={tmp_path / 'built' / 'unclip'}" in result.stdout
    assert "StableUnCLIPImg2ImgPipeline" in (tmp_path / "built" / "unclip" / "model_index.json").read_text()
    # The build is deterministic, so the folders are byte-identical to the session's tiny models,
    # which every engine test loads and renders with.
    for built, reference in ((sd_dir, tiny_models[0]), (text_dir, tiny_models[1])):
        files = sorted(p.relative_to(built) for p in built.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
        for rel in files:
            assert (built / rel).read_bytes() == (reference / rel).read_bytes(), rel


def test_imagine_takes_the_same_inline_flags(tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    env = tiny_cli_env(tiny_models, tmp_path, IMAGINE_WIDTH="128", IMAGINE_HEIGHT="128")
    job = cli_json(
        run_cli(
            ["imagine", "a cat --ar 2:1 --seed 5 --count 1 --no dogs --raw --chaos 10", "--json"],
            env,
            tmp_path,
        )
    )
    assert job["status"] == "done", job["reason"]
    # 2:1 kept exactly at the 128×128 default (it used to collapse to 192×64, which is 3:1)
    assert (job["seed_text"], job["width"], job["height"], job["seed"]) == ("a cat", 176, 88, 5)
    assert (job["count"], job["negative"], job["expand"], job["chaos"]) == (1, "dogs", False, 10)
    clash = run_cli(["imagine", "a cat --seed 5", "--seed", "6"], env, tmp_path)
    assert_one_line_error(
        clash, "`--seed 5` in the text and the `--seed` option (6) disagree", "Accepted flags"
    )
    unknown = run_cli(["imagine", "a cat --weird 1"], env, tmp_path)
    assert_one_line_error(unknown, "unknown flag `--weird`")
    assert job_count(tmp_path) == 1
