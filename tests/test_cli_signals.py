"""Ctrl-C / SIGTERM stop a CLI render within its step, a second exits at once; a SIGKILLed CLI job is recovered."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import run_cli, tiny_cli_env

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

    def __init__(self, env: dict[str, str], cwd: Path, options: list[str] | None = None) -> None:
        job = [*LONG_JOB, *(options or [])]  # a later option wins in argparse
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bot", "imagine", "a lighthouse at night", *job],
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
    env = tiny_cli_env(tiny_models, tmp_path / "data")
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
    env = tiny_cli_env(tiny_models, tmp_path / "data", IMAGINE_LEASE_SECONDS="2")
    cli = RenderingCli(env, tmp_path)
    cli.wait_rendering()
    cli.process.kill()
    cli.finish(timeout=30)
    [(job_id, status, _)] = _rows(tmp_path / "data")
    assert status == "running"  # SIGKILL leaves no chance to clean up
    time.sleep(2.5)  # its lease runs out: nobody renews it
    history = run_cli(["history", "--json"], env, tmp_path)
    assert history.returncode == 0, history.stderr
    [row] = json.loads(history.stdout)
    assert (row["job_id"], row["status"], row["reason"]) == (job_id, "failed", "interrupted")


def test_a_second_ctrl_c_exits_at_once_leaving_the_row_interrupted(
    tiny_models: tuple[Path, Path], tmp_path: Path
) -> None:
    env = tiny_cli_env(tiny_models, tmp_path / "data")
    # One step of the tiny model at 384² takes seconds, and its decode longer: the old code sat through both.
    cli = RenderingCli(env, tmp_path, ["--width", "384", "--height", "384", "--steps", "3", "--count", "1"])
    cli.wait_rendering()
    cli.process.send_signal(signal.SIGINT)
    time.sleep(0.05)
    cli.process.send_signal(signal.SIGINT)
    sent = time.monotonic()
    code, stderr = cli.finish(timeout=120)
    took = time.monotonic() - sent
    assert code == 130, stderr
    assert took < 3, f"exit took {took:.1f} s"
    assert "Traceback" not in stderr
    [(_, status, reason)] = _rows(tmp_path / "data")
    assert (status, reason) == ("failed", "interrupted")


def test_the_progress_bar_is_closed_before_the_stopping_line(
    tiny_models: tuple[Path, Path], tmp_path: Path
) -> None:
    env = {**tiny_cli_env(tiny_models, tmp_path / "data"), "IMAGINE_LOG_LEVEL": "WARNING"}
    # stderr on a terminal, so the CLI draws its bar (a pipe gets no bar).
    leader, follower = pty.openpty()
    # A terminal 100 columns wide (a new pty has 0, and tqdm then draws an empty bar).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "imagine", "a lighthouse at night", *LONG_JOB],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    output = b""
    signalled = False
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the process closed its end
                break
            if not chunk:
                break
            output += chunk
        if not signalled and b"denoising" in output and b"step" in output.split(b"denoising")[-1]:
            process.send_signal(signal.SIGINT)
            signalled = True
    process.wait(30)
    os.close(leader)
    text = output.decode("utf-8", "replace")
    assert signalled, text
    assert process.returncode == 130, text
    before, found, _ = text.partition("stopping")
    assert found, text
    # The bar's line ended (tqdm's close writes the newline) before our line began.
    assert before.endswith("\n"), repr(before[-200:])
