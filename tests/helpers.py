"""Helpers the test files share: a job spec for the tiny settings, a poller, the CLI as a subprocess."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.store import JobRecord, JobSpec
from tests.conftest import tiny_job

REPO_ROOT = Path(__file__).resolve().parents[1]
CLI_TIMEOUT_S = 180


# -- jobs ---------------------------------------------------------------------------------------------
def job_spec(**overrides: Any) -> JobSpec:
    """A JobSpec the tiny settings render (four 64x64 tiles, 2 steps); keywords override fields.

    A file with other defaults binds them once: `_spec = functools.partial(job_spec, count=2)`.
    """
    return tiny_job(JobSpec, **overrides)


def queued_record(job_id: str, user_id: int | None, created_at: float) -> JobRecord:
    """The record of a `job_spec()` job still waiting in the queue (for code that takes records, no store)."""
    spec = job_spec(id=job_id, user_id=user_id)
    return JobRecord(
        **{field.name: getattr(spec, field.name) for field in dataclasses.fields(spec)},
        status="queued",
        reason=None,
        created_at=created_at,
        started_at=None,
        finished_at=None,
        attempts=0,
        expander={},
        render={},
        grid_path=None,
        delivery="pending",
        message_id=None,
    )


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll `predicate` every 20 ms until it is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# -- the CLI in a subprocess ----------------------------------------------------------------------------
def cli_env(data_dir: Path, **variables: str) -> dict[str, str]:
    """The environment of `python -m bot` in a subprocess; keywords add (or replace) variables.

    This process's environment without its IMAGINE_* and DISCORD_* settings, offline, the repository
    importable, and IMAGINE_DATA_DIR=`data_dir`.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGINE_", "DISCORD_"))}
    env.update(
        {
            "PYTHONPATH": str(REPO_ROOT),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "IMAGINE_DATA_DIR": str(data_dir),
        }
    )
    env.update(variables)
    return env


def tiny_cli_env(tiny_models: tuple[Path, Path], data_dir: Path, **variables: str) -> dict[str, str]:
    """`cli_env` for renders on the tiny models: the CPU, 64x64, 2 steps; keywords add variables."""
    sd_path, text_path = tiny_models
    tiny = {
        "IMAGINE_SD_MODEL": str(sd_path),
        "IMAGINE_TEXT_MODEL": str(text_path),
        "IMAGINE_WIDTH": "64",
        "IMAGINE_HEIGHT": "64",
        "IMAGINE_STEPS": "2",
        "IMAGINE_DEVICE": "cpu",
    }
    return cli_env(data_dir, **(tiny | variables))


def tiny_cli_home(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: tuple[Path, Path], name: str, **variables: str
) -> tuple[Path, dict[str, str]]:
    """A fresh data folder named after `name` and its `tiny_cli_env` (for module-scoped CLI fixtures)."""
    data_dir = tmp_path_factory.mktemp(name)
    return data_dir, tiny_cli_env(tiny_models, data_dir, **variables)


def run_cli(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """`python -m bot ARGS` run to its end, its output captured as text.

    `cwd` should be a temporary folder: a developer's `.env` in the repository must not leak in.
    """
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cli_json(result: subprocess.CompletedProcess[str]) -> Any:
    """The JSON a successful CLI run printed."""
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def job_count(data_dir: Path) -> int:
    """How many job rows the history database in `data_dir` holds (0 where there is none)."""
    db = data_dir / "history.sqlite3"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The one `error:` line a failed CLI run printed on stderr, with each of `needles` in it; no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]
