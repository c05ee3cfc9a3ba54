"""The CLI's `imagine` with `{a, b}` permutations, `--repeat` and `--tile` (issue 22)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import run_cli as _cli
from tests.helpers import tiny_cli_env as _env


@pytest.mark.heavy  # 10 s on a quiet 2-core box, ~50 s on a busy one (one model load, four renders)
def test_imagine_runs_each_permutation_and_prints_a_json_line_per_job(
    tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    env = _env(tiny_models, tmp_path / "data")
    seed = "a {red, blue} cat --repeat 2 --tile"
    result = _cli(["imagine", seed, "--count", "1", "--seed", "9", "--no-expand", "--json"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    jobs = [json.loads(line) for line in lines]
    assert [j["seed_text"] for j in jobs] == ["a red cat", "a red cat", "a blue cat", "a blue cat"]
    assert [j["seed"] for j in jobs] == [9, 10, 9, 10]
    assert all(j["status"] == "done" and j["tile"] and j["render"]["tile"] for j in jobs)
    assert {j["group_id"] for j in jobs} == {jobs[0]["job_id"]}
    assert len({j["job_id"] for j in jobs}) == 4


def test_too_many_permutations_exit_2_and_no_row(tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    env = _env(tiny_models, tmp_path / "data")
    result = _cli(["imagine", "{a, b, c} cat --repeat 2"], env, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1:] == [
        "error: That asks for 6 jobs; the limit is 4 (IMAGINE_MAX_PERMUTATIONS)."
    ]
    history = _cli(["history", "--json"], env, tmp_path)
    assert json.loads(history.stdout) == []
