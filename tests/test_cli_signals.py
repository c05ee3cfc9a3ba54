"""Ctrl-C / SIGTERM stop a CLI render at its next step; a SIGKILLed CLI job is recovered by any next command."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.test_cli import _cli, _env

LONG_JOB = [
    "--steps",
    "50",
    "--width",
    "128",
    "--height",
    "128",
    "--count",
    "4",
    "--no-expand",
    "--seed",
    "5",
]


class RenderingCli:
    """`python -m bot imagine` in the background, watched until its models are loaded and it renders."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bot", "imagine", "a lighthouse at night", *LONG_JOB],
            env={**env, "IMAGINE_LOG_LEVEL": "INFO"},
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr: list[str] = []
        self.loaded = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)
            if "models loaded" in line:
                self.loaded.set()

    def wait_rendering(self) -> None:
        if not self.loaded.wait(120):
            self.process.kill()
            raise AssertionError("the CLI never loaded its models:\n" + "".join(self.stderr))
        time.sleep(0.5)  # a step or two into the render

    def finish(self, timeout: float) -> tuple[int, str]:
        self.process.wait(timeout)
        self._reader.join(5)
        return self.process.returncode, "".join(self.stderr)


def _rows(data_dir: Path) -> list[tuple[str, str, str | None]]:
    with sqlite3.connect(data_dir / "history.sqlite3") as conn:
        return conn.execute("SELECT id, status, reason FROM jobs").fetchall()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_render_at_its_next_step_and_marks_the_row_interrupted(
    tiny_models: tuple[Path, Path], tmp_path: Path, signum: signal.Signals
) -> None:
    env = _env(tiny_models, tmp_path / "data")
    cli = RenderingCli(env, tmp_path)
    cli.wait_rendering()
    sent = time.monotonic()
    cli.process.send_signal(signum)
    code, stderr = cli.finish(timeout=60)
    took = time.monotonic() - sent
    assert code == 128 + signum, stderr
    # On the old code the whole batch ran on (over a minute here: 50 steps of 4 images at 128 px); a step is seconds.
    assert took < 25, f"exit took {took:.1f} s"
    assert "Traceback" not in stderr
    [(_, status, reason)] = _rows(tmp_path / "data")
    assert (status, reason) == ("failed", "interrupted")


def test_a_killed_cli_job_is_shown_interrupted_by_the_next_history(
    tiny_models: tuple[Path, Path], tmp_path: Path
) -> None:
    # A short lease: the dead CLI's job is taken over once it expires (45 s by default, at most 60).
    env = _env(tiny_models, tmp_path / "data", IMAGINE_LEASE_SECONDS="2")
    cli = RenderingCli(env, tmp_path)
    cli.wait_rendering()
    cli.process.kill()
    cli.finish(timeout=30)
    [(job_id, status, _)] = _rows(tmp_path / "data")
    assert status == "running"  # SIGKILL leaves no chance to clean up
    time.sleep(2.5)  # its lease runs out: nobody renews it
    history = _cli(["history", "--json"], env, tmp_path)
    assert history.returncode == 0, history.stderr
    [row] = json.loads(history.stdout)
    assert (row["job_id"], row["status"], row["reason"]) == (job_id, "failed", "interrupted")
