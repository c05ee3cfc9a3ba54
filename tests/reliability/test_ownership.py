"""Ownership by lease across containers: the bot and each CLI run in their own PID and mount namespaces.

Each process below is started as `unshare --pid --fork --mount-proc` on the same data folder, the way
`docker compose run --rm cli` and the bot's container share one volume: PIDs mean nothing from one to the
other (each process is PID 1 in its own namespace). The fake Discord runs in this process; the namespaces
share its loopback network. A CLI is paused with SIGSTOP (like `docker pause`) while the other process
looks at the data folder, so what is tested does not hang on how fast this machine renders.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.fakediscord import FakeDiscord
from tests.helpers import cli_env
from tests.reliability.harness import TOKEN, bot_env, read_jobs, read_log, start_logged, wait_for_rows

NAMESPACE = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child")


def _namespaces_work() -> bool:
    try:
        probe = subprocess.run([*NAMESPACE, "true"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not _namespaces_work(), reason="needs `unshare --pid --mount-proc` (root, as in CI)"
)


def _cli_env(tiny_models: tuple[Path, Path], data_dir: Path, **settings: str) -> dict[str, str]:
    sd_path, text_path = tiny_models
    tiny = {
        "PYTHONUNBUFFERED": "1",
        "IMAGINE_SD_MODEL": str(sd_path.resolve()),
        "IMAGINE_TEXT_MODEL": str(text_path.resolve()),
        "IMAGINE_WIDTH": "64",
        "IMAGINE_HEIGHT": "64",
        "IMAGINE_DEVICE": "cpu",
        "IMAGINE_LOG_LEVEL": "INFO",
    }
    tiny.update({f"IMAGINE_{key.upper()}": value for key, value in settings.items()})
    return cli_env(data_dir.resolve(), **tiny)


class Container:
    """`python -m bot ARGS` as PID 1 of its own PID and mount namespace; output goes to a log file."""

    def __init__(self, args: list[str], env: dict[str, str], workdir: Path, name: str) -> None:
        self.args = args
        self.env = env
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Container:
        self.proc = await start_logged(self.args, self.env, self.workdir, self.log_path, prefix=NAMESPACE)
        return self

    @property
    def output(self) -> str:
        return read_log(self.log_path)

    def init_pid(self) -> int:
        """The host PID of the namespace's PID 1 (the Python process; `unshare` is its parent)."""
        assert self.proc is not None
        deadline = time.monotonic() + 30
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        while time.monotonic() < deadline:
            pids = children.read_text().split() if children.exists() else []
            if pids:
                return int(pids[0])
            time.sleep(0.01)
        raise AssertionError("the namespace's first process never started")

    def signal(self, signum: int) -> None:
        os.kill(self.init_pid(), signum)

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"{self.args[0]} still running after {timeout} s:\n{self.output[-3000:]}"
            ) from None

    async def kill(self) -> None:
        """SIGKILL to PID 1 takes the whole namespace down, like a container killed outright."""
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.signal(signal.SIGCONT)
                self.signal(signal.SIGKILL)
            except (ProcessLookupError, AssertionError):
                pass
            await self.proc.wait()


async def _running_row(db_path: Path, timeout: float = 120.0) -> dict[str, object]:
    rows = await wait_for_rows(
        db_path,
        lambda rows: any(r["status"] == "running" for r in rows),
        timeout=timeout,
        what="a running job",
    )
    return next(r for r in rows if r["status"] == "running")


def _imagine(seed: str, steps: int = 2) -> list[str]:
    return ["imagine", seed, "--steps", str(steps), "--count", "1", "--no-expand", "--seed", "3", "--json"]


def _connected(heartbeat: Path) -> bool:
    try:
        return json.loads(heartbeat.read_text(encoding="utf-8")).get("connected") is True
    except (OSError, ValueError):
        return False


async def _ready(bot: Container, heartbeat: Path, timeout: float = 120.0) -> None:
    """Until the bot in its namespace wrote a `connected` heartbeat (it is PID 1 there, so no PID check)."""
    deadline = time.monotonic() + timeout
    while True:
        assert bot.proc is not None
        if bot.proc.returncode is not None:
            raise AssertionError(f"bot exited with {bot.proc.returncode}:\n{bot.output[-3000:]}")
        if _connected(heartbeat):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"bot not ready after {timeout} s:\n{bot.output[-3000:]}")
        await asyncio.sleep(0.1)


def _files_of(db_path: Path, job_id: str) -> list[Path]:
    import sqlite3

    with sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True) as conn:
        grid = conn.execute("SELECT grid_path FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        tiles = [row[0] for row in conn.execute("SELECT path FROM tiles WHERE job_id = ?", (job_id,))]
    return [Path(p) for p in [grid, *tiles] if p]


async def test_history_in_one_cli_container_leaves_another_containers_render_alone(
    tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    data_dir = tmp_path / "data"
    db_path = data_dir / "history.sqlite3"
    env = _cli_env(tiny_models, data_dir)
    render = await Container(_imagine("a render in container A"), env, tmp_path / "a", "render").start()
    try:
        row = await _running_row(db_path)
        render.signal(signal.SIGSTOP)  # paused mid-job: it cannot renew its lease meanwhile
        history = await Container(["history", "--json"], env, tmp_path / "b", "history").start()
        assert await history.wait(120) == 0, history.output
        # Before: `history` saw PID 1 (itself) as the owner, marked the job `failed: interrupted`, and the
        # render's images were deleted when it finished.
        [after] = [r for r in read_jobs(db_path) if r["id"] == row["id"]]
        assert after["status"] == "running", after
        render.signal(signal.SIGCONT)
        assert await render.wait(300) == 0, render.output
    finally:
        await render.kill()
    [done] = read_jobs(db_path)
    assert (done["status"], done["attempts"]) == ("done", 1), done
    files = _files_of(db_path, str(done["id"]))
    assert files and all(path.is_file() for path in files), files


async def test_a_bot_restart_while_a_cli_container_renders_does_not_run_the_job_twice(
    tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    data_dir = tmp_path / "data"
    db_path = data_dir / "history.sqlite3"
    heartbeat = data_dir / "heartbeat.json"
    # The CLI's lease outlasts the pause below; the bot sweeps for expired leases every second.
    cli_env = _cli_env(tiny_models, data_dir, lease_seconds="60")
    render = await Container(
        _imagine("a render while the bot restarts"), cli_env, tmp_path / "cli", "cli"
    ).start()
    async with FakeDiscord(token=TOKEN, heartbeat_interval_ms=5000) as fake:
        env = bot_env(fake=fake, data_dir=data_dir, models=tiny_models, token=TOKEN, lease_seconds=3)
        bot = Container(["run"], env, tmp_path / "bot", "bot")
        try:
            row = await _running_row(db_path)
            render.signal(signal.SIGSTOP)
            await bot.start()
            await _ready(bot, heartbeat)
            await asyncio.sleep(3)  # a few of the bot's sweeps, and its dispatcher looking for work
            [during] = read_jobs(db_path)
            # Before: the bot took PID 1 (itself) for the owner, re-queued the job and rendered it again.
            assert (during["status"], during["attempts"]) == ("running", 1), (during, bot.output[-2000:])
            render.signal(signal.SIGCONT)
            assert await render.wait(300) == 0, render.output
            await asyncio.sleep(2)  # what the bot would do with the row next
        finally:
            await render.kill()
            await bot.kill()
    [done] = read_jobs(db_path)
    assert (done["id"], done["status"], done["attempts"]) == (row["id"], "done", 1), done
    assert f"job {row['id']}" not in bot.output  # the bot never claimed it
    files = _files_of(db_path, str(done["id"]))
    assert files and all(path.is_file() for path in files), files


async def test_a_killed_cli_containers_job_leaves_running_within_a_minute(
    tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    data_dir = tmp_path / "data"
    db_path = data_dir / "history.sqlite3"
    heartbeat = data_dir / "heartbeat.json"
    async with FakeDiscord(token=TOKEN, heartbeat_interval_ms=5000) as fake:
        env = bot_env(fake=fake, data_dir=data_dir, models=tiny_models, token=TOKEN, lease_seconds=3)
        bot = await Container(["run"], env, tmp_path / "bot", "bot").start()
        render = Container(
            _imagine("a render killed outright", steps=50),
            _cli_env(tiny_models, data_dir, lease_seconds="3"),
            tmp_path / "cli",
            "cli",
        )
        try:
            await _ready(bot, heartbeat)
            await render.start()
            row = await _running_row(db_path)
            await render.kill()
            killed = time.monotonic()
            # Before: a running bot looked for dead owners only when it started, so the row stayed `running`.
            await wait_for_rows(
                db_path,
                lambda rows: rows[0]["status"] != "running" or rows[0]["attempts"] > 1,
                timeout=60,
                what="the dead CLI's job to leave `running`",
            )
            took = time.monotonic() - killed
            print(f"a killed CLI's job left `running` {took:.1f} s after the kill (lease 3 s)")
        finally:
            await render.kill()
            await bot.kill()
    [after] = read_jobs(db_path)
    assert after["id"] == row["id"]
