"""`show` and `rerun` say when a rerun cannot repeat a job byte for byte (issue 17, item 19).

A job rendered on a Ray replica ran with one torch thread; a local rerun runs one per core, and ~0.01 %
of its pixels come out one level apart although device and dtype are the same. The render record keeps
what decides the CPU numerics, and both commands name what differs.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bot.engine.numerics import engine_threads
from tests.helpers import cli_json, run_cli, tiny_cli_home
from tests.test_cli import SEED

LOCAL_THREADS = engine_threads(None)  # what a CLI engine runs with: one torch thread per core
OTHER_THREADS = LOCAL_THREADS + 1  # surely not this machine's count (1 on a one-core runner too)


@pytest.fixture(scope="module")
def home(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: tuple[Path, Path]
) -> tuple[Path, dict[str, str]]:
    return tiny_cli_home(tmp_path_factory, tiny_models, "numerics-data", IMAGINE_COUNT="2")


@pytest.fixture(scope="module")
def job(home: tuple[Path, dict[str, str]]) -> dict[str, Any]:
    data_dir, env = home
    return cli_json(run_cli(["imagine", SEED, "--seed", "3", "--json"], env, data_dir))


def _as_if_rendered_with(data_dir: Path, job_id: str, **numerics: Any) -> None:
    """Rewrite the stored record as a replica elsewhere would have written it."""
    with sqlite3.connect(data_dir / "history.sqlite3") as conn:
        (render_json,) = conn.execute("SELECT render_json FROM jobs WHERE id = ?", (job_id,)).fetchone()
        render = json.loads(render_json)
        render["numerics"] = render["numerics"] | numerics
        conn.execute("UPDATE jobs SET render_json = ? WHERE id = ?", (json.dumps(render), job_id))


def test_the_render_record_keeps_what_decides_cpu_numerics(job: dict[str, Any]) -> None:
    numerics = job["render"]["numerics"]
    assert numerics["torch_threads"] == LOCAL_THREADS
    assert numerics["deterministic_algorithms"] is False
    assert isinstance(numerics["cpu_capability"], str) and numerics["cpu_capability"]
    assert numerics["float32_matmul_precision"] == "highest"


def test_a_local_job_reruns_without_a_warning(job: dict[str, Any], home: tuple[Path, dict[str, str]]) -> None:
    data_dir, env = home
    shown = run_cli(["show", job["job_id"]], env, data_dir)
    assert shown.returncode == 0, shown.stderr
    assert f"torch threads {LOCAL_THREADS}" in shown.stdout
    assert "byte-identical" not in shown.stdout + shown.stderr
    rerun = run_cli(["rerun", job["job_id"], "--json"], env, data_dir)
    assert cli_json(rerun)["status"] == "done"
    assert "byte-identical" not in rerun.stderr


def test_show_and_rerun_name_the_thread_count_that_differs(
    job: dict[str, Any], home: tuple[Path, dict[str, str]]
) -> None:
    data_dir, env = home
    _as_if_rendered_with(data_dir, job["job_id"], torch_threads=OTHER_THREADS)

    shown = run_cli(["show", job["job_id"]], env, data_dir)
    assert shown.returncode == 0, shown.stderr
    warning = [line for line in shown.stdout.splitlines() if "byte-identical" in line]
    assert warning == [
        f"  a rerun here cannot be byte-identical: torch threads {OTHER_THREADS} → {LOCAL_THREADS}"
    ], shown.stdout

    rerun = run_cli(["rerun", job["job_id"], "--json"], env, data_dir)
    again = cli_json(rerun)  # stdout stays one JSON object
    assert again["status"] == "done"
    notes = [line for line in rerun.stderr.splitlines() if "byte-identical" in line]
    assert notes == [
        f"note: job {again['job_id']} cannot be byte-identical to job {job['job_id']}: "
        f"torch threads {OTHER_THREADS} → {LOCAL_THREADS}"
    ], rerun.stderr
    assert "Traceback" not in rerun.stderr


def test_an_older_record_without_numerics_is_not_promised_identical(
    job: dict[str, Any], home: tuple[Path, dict[str, str]]
) -> None:
    data_dir, env = home
    with sqlite3.connect(data_dir / "history.sqlite3") as conn:
        (render_json,) = conn.execute(
            "SELECT render_json FROM jobs WHERE id = ?", (job["job_id"],)
        ).fetchone()
        render = json.loads(render_json)
        del render["numerics"]
        conn.execute("UPDATE jobs SET render_json = ? WHERE id = ?", (json.dumps(render), job["job_id"]))
    shown = run_cli(["show", job["job_id"]], env, data_dir)
    assert "a rerun here cannot be byte-identical: the job's record predates torch threads" in shown.stdout
