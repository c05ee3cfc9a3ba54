"""The CLI's own output: history layout, user text normalised on the way in, argument and state errors,
model revisions in `show`, and the seed's CLIP length checked before any row is written."""

from __future__ import annotations

import asyncio
import functools
import re
import sqlite3
from pathlib import Path

from bot.store import HistoryStore, JobSpec, Tile
from tests.helpers import cli_env, job_spec, run_cli

CLI_TIMEOUT_S = 120
TRICKY_SEED = "\u202egnp.exe castle\nsecond line\tand a tab"


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    return cli_env(data_dir, **({"IMAGINE_DEVICE": "cpu"} | extra))


_cli = functools.partial(run_cli, timeout=CLI_TIMEOUT_S)


def _spec(seed: str, **extra: object) -> JobSpec:
    return job_spec(seed_text=seed, job_seed=5, **extra)


async def _fill(db_path: Path) -> dict[str, str]:
    """A failed job (no images), a finished one with model records, and one with tricky seed text."""
    async with HistoryStore(db_path) as store:
        failed = await store.create_job(_spec("a failed lighthouse"))
        await store.mark_running(failed.id)
        await store.mark_failed(failed.id, "the GPU ran out of memory")
        done = await store.create_job(_spec("a finished castle", negative="blurry\u202e\nugly"))
        await store.mark_running(done.id)
        await store.mark_done(
            done.id,
            tiles=[Tile(i, f"prompt {i}", 5 + i, f"/x/tile-{i}.png") for i in range(4)],
            grid_path="/x/grid.png",
            expander={"model": "tiny-gpt2", "revision": "text-rev-5678"},
            render={"sd_model": "tiny-sd", "sd_revision": "sd-rev-1234", "device": "cpu", "dtype": "float32"},
        )
        tricky = await store.create_job(_spec(TRICKY_SEED))
        return {"failed": failed.id, "done": done.id, "tricky": tricky.id}


def test_history_shows_what_is_true_on_one_line_per_job(tmp_path: Path) -> None:
    ids = asyncio.run(_fill(tmp_path / "history.sqlite3"))
    result = _cli(["history"], _env(tmp_path), tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout  # a newline in a seed no longer splits its job over two lines
    by_id = {line.split()[0]: line for line in lines}
    assert "image" not in by_id[ids["failed"]]  # a failed job made no images: no "4 tile(s)"
    assert "4 images" in by_id[ids["done"]]
    assert "\u202e" not in result.stdout
    assert "gnp.exe castle second line and a tab" in by_id[ids["tricky"]]


def test_stored_user_text_is_one_plain_line(tmp_path: Path) -> None:
    ids = asyncio.run(_fill(tmp_path / "history.sqlite3"))
    with sqlite3.connect(tmp_path / "history.sqlite3") as conn:
        seed, negative = conn.execute(
            "SELECT seed_text, negative FROM jobs WHERE id = ?", (ids["tricky"],)
        ).fetchone()
        _, done_negative = conn.execute(
            "SELECT seed_text, negative FROM jobs WHERE id = ?", (ids["done"],)
        ).fetchone()
    assert seed == "gnp.exe castle second line and a tab"
    assert negative == ""
    assert done_negative == "blurry ugly"


def test_history_limit_must_be_positive(tmp_path: Path) -> None:
    asyncio.run(_fill(tmp_path / "history.sqlite3"))
    for limit in ("0", "-5"):
        result = _cli(["history", "--limit", limit], _env(tmp_path), tmp_path)
        assert result.returncode == 2, (limit, result.stdout)
        assert "--limit" in result.stderr and "1 or more" in result.stderr
        assert result.stdout == ""


def test_rerun_of_a_failed_job_reads_as_a_sentence(tmp_path: Path) -> None:
    ids = asyncio.run(_fill(tmp_path / "history.sqlite3"))
    result = _cli(["rerun", ids["failed"]], _env(tmp_path), tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: job {ids['failed']} failed; only a job that finished with images can be re-rendered"
    )


def test_show_prints_the_model_revisions_without_json(tmp_path: Path) -> None:
    ids = asyncio.run(_fill(tmp_path / "history.sqlite3"))
    result = _cli(["show", ids["done"]], _env(tmp_path), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tiny-sd (revision sd-rev-1234)" in result.stdout
    assert "tiny-gpt2 (revision text-rev-5678)" in result.stdout


def test_a_seed_over_the_clip_window_exits_2_before_any_row_or_model_load(
    tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    sd_path, _ = tiny_models
    # The text model does not exist: had the CLI loaded the models, it would fail on that instead.
    env = _env(tmp_path, IMAGINE_SD_MODEL=str(sd_path), IMAGINE_TEXT_MODEL=str(tmp_path / "no-text-model"))
    seed = " ".join(["gold"] * 90)  # 449 characters: under the character limit, over CLIP's window
    result = _cli(["imagine", seed, "--steps", "2", "--width", "64", "--height", "64"], env, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    # The tiny tokenizer's small vocabulary splits "gold" in two: 180 tokens here, 90 with SD 2's.
    assert re.fullmatch(
        r"error: `seed` is \d+ tokens long; Stable Diffusion reads at most 75: shorten it", errors[0]
    )
    with sqlite3.connect(tmp_path / "history.sqlite3") as conn:
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone() == (0,)


async def _fill_actions(db_path: Path) -> dict[str, str]:
    """A finished grid and an upscale of its tile 2 (img2img from a staged source image)."""
    async with HistoryStore(db_path) as store:
        parent = await store.create_job(_spec("a finished castle"))
        child = await store.create_job(
            _spec(
                "a finished castle",
                action="upscale-subtle",
                parent_id=parent.id,
                source_tile=2,
                strength=0.25,
                init_image="/x/source.png",
                given_prompts=("prompt 2",),
                given_seeds=(7,),
            )
        )
        return {"parent": parent.id, "child": child.id}


def test_show_and_history_tell_a_jobs_action_parent_strength_and_source(tmp_path: Path) -> None:
    ids = asyncio.run(_fill_actions(tmp_path / "history.sqlite3"))
    shown = _cli(["show", ids["child"]], _env(tmp_path), tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "upscale-subtle" in shown.stdout, shown.stdout
    assert f"of job {ids['parent']} tile 2" in shown.stdout, shown.stdout
    assert "strength 0.25" in shown.stdout, shown.stdout
    assert "source image: /x/source.png" in shown.stdout, shown.stdout
    history = _cli(["history"], _env(tmp_path), tmp_path)
    assert history.returncode == 0, history.stderr
    by_id = {line.split()[0]: line for line in history.stdout.splitlines()}
    assert "upscale-subtle" in by_id[ids["child"]] and f"{ids['parent']}#2" in by_id[ids["child"]], (
        history.stdout
    )
    assert "imagine" in by_id[ids["parent"]], history.stdout


def test_an_over_long_seed_gives_only_the_error_line(tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    sd, text = tiny_models
    env = _env(
        tmp_path / "data", IMAGINE_SD_MODEL=str(sd), IMAGINE_TEXT_MODEL=str(text), IMAGINE_LOG_LEVEL="WARNING"
    )
    result = _cli(["imagine", " ".join(["castle"] * 70)], env, tmp_path)
    assert result.returncode == 2
    # Not beside it: transformers' "Token indices sequence length is longer than …" warning.
    assert result.stderr.splitlines() == [
        "error: `seed` is 210 tokens long; Stable Diffusion reads at most 75: shorten it"
    ]
