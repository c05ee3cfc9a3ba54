"""Reliability harness shared by the tests and `scripts/crash_loop.py`: the bot as a real subprocess.

`python -m bot run` runs in its own process against an in-process `FakeDiscord`; the test side only reads the
SQLite file (read-only), the heartbeat file and what the fake recorded. `run_crash_loop` is the one
implementation of the kill -9 loop; the heavy test and the script both call it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fakediscord import FakeDiscord, FakeMessage

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "crash-loop-token-0123456789"

_FIELD_JOB = re.compile(r"`([0-9a-f]{10})`")
# A final text result: `failure_text()` ("Job `id` (seed) failed: reason." / "... was cancelled.").
_FAILURE_TEXT = re.compile(r"Job `([0-9a-f]{10})` \(.*\) (?:failed: |was cancelled\.)", re.DOTALL)
# What must never reach a Discord user: tracebacks and exception class names.
TRACEBACK_MARKERS = re.compile(r"Traceback|File \"|\b\w+(?:Error|Exception)\b|Error:")


# -- what the fake saw --------------------------------------------------------------------------------
def final_job_ids(message: FakeMessage) -> list[str]:
    """The job ids whose *final* result (grid embed or failure text) this message currently shows."""
    if message.deleted:
        return []
    ids = []
    for embed in message.embeds:
        for item in embed.get("fields") or []:
            if item.get("name") == "Job":
                match = _FIELD_JOB.search(str(item.get("value", "")))
                if match and embed.get("image"):  # a result grid, not a /history detail card
                    ids.append(match[1])
    match = _FAILURE_TEXT.search(message.content or "")
    if match:
        ids.append(match[1])
    return ids


def result_counts(fake: FakeDiscord) -> Counter[str]:
    """How many messages (interaction responses, followups and channel posts) show each job's result."""
    counts: Counter[str] = Counter()
    for message in list(fake.messages.values()):
        counts.update(final_job_ids(message))
    return counts


def message_text(message: FakeMessage) -> str:
    """Everything a user can read in a message: content, embeds and component labels."""
    return "\n".join(
        [message.content or "", json.dumps(message.embeds, ensure_ascii=False)]
        + [str(c.get("label") or "") for c in message.all_components()]
    )


def traceback_leaks(messages: Iterable[FakeMessage]) -> list[str]:
    """Messages whose text shows a traceback or an exception class name."""
    leaks = []
    for message in messages:
        text = message_text(message)
        match = TRACEBACK_MARKERS.search(text)
        if match:
            leaks.append(f"message {message.id}: {match[0]!r} in {text[:300]!r}")
    return leaks


# -- the SQLite file, read from outside ---------------------------------------------------------------
def read_jobs(db_path: Path) -> list[dict[str, Any]]:
    """Every job row, read through a read-only connection (the bot may be writing)."""
    if not db_path.is_file():
        return []
    conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        try:
            rows = conn.execute(
                "SELECT id, status, reason, attempts, delivery, seed_text, user_id, created_at, started_at "
                "FROM jobs ORDER BY created_at"
            ).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        return [dict(row) for row in rows]
    finally:
        conn.close()


def integrity_of_copy(db_path: Path) -> str:
    """`PRAGMA integrity_check` on a copy of the file and its WAL, leaving the original untouched.

    After kill -9 the WAL still holds committed frames; recovering them is the restarted bot's job, so the
    check opens a copy (which replays the WAL the same way) instead of the live file.
    """
    with tempfile.TemporaryDirectory(prefix="integrity-") as tmp:
        copy = Path(tmp) / db_path.name
        shutil.copy2(db_path, copy)
        wal = db_path.with_name(db_path.name + "-wal")
        if wal.exists():
            shutil.copy2(wal, copy.with_name(copy.name + "-wal"))
        conn = sqlite3.connect(copy)
        try:
            return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
        finally:
            conn.close()


# -- the bot as a subprocess --------------------------------------------------------------------------
def bot_env(
    *, fake: FakeDiscord, data_dir: Path, models: tuple[Path, Path], token: str | None, **settings: object
) -> dict[str, str]:
    """Environment for `python -m bot run` on the tiny models against `fake`; keywords set IMAGINE_*."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("IMAGINE_", "DISCORD_")) and key != "PYTHONPATH"
    }
    sd_path, text_path = models
    values: dict[str, object] = {
        # Absolute: the child runs in its own working directory.
        "data_dir": data_dir.resolve(),
        "sd_model": sd_path.resolve(),
        "text_model": text_path.resolve(),
        "device": "cpu",
        "dtype": "float32",
        "width": 64,
        "height": 64,
        "count": 1,
        "steps": 2,
        "cooldown_seconds": 0,
        "progress_interval": 0.5,
        "log_level": "INFO",
        # A killed bot's running job is taken over once its lease runs out: seconds here, not 45.
        "lease_seconds": 5,
    }
    values.update(settings)
    env.update({f"IMAGINE_{key.upper()}": str(value) for key, value in values.items()})
    env.update(
        {
            "DISCORD_TOKEN": token or "",
            "DISCORD_API_BASE": fake.api_base,
            "DISCORD_GATEWAY_URL": fake.gateway_url,
            "PYTHONPATH": str(REPO_ROOT),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _read_heartbeat(path: Path) -> dict[str, Any]:
    try:
        beat = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return beat if isinstance(beat, dict) else {}


async def start_logged(
    args: list[str], env: dict[str, str], workdir: Path, log_path: Path, *, prefix: tuple[str, ...] = ()
) -> asyncio.subprocess.Process:
    """`python -m bot ARGS` (behind `prefix`, a command that runs it) in `workdir`; output appends to `log_path`."""
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240  (a local folder, once, before the spawn)
    with log_path.open("ab") as log:
        return await asyncio.create_subprocess_exec(
            *prefix,
            sys.executable,
            "-m",
            "bot",
            *args,
            cwd=workdir,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )


def read_log(log_path: Path) -> str:
    """What a child wrote to its log file so far ("" before it wrote any)."""
    return log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""


class BotProcess:
    """`python -m bot <command>` in a child process; stdout and stderr go to one log file."""

    def __init__(
        self, env: dict[str, str], workdir: Path, *, command: str = "run", name: str = "bot"
    ) -> None:
        self.env = env
        # A scratch working directory: the child must not read a developer's `.env` from the repo.
        self.workdir = workdir
        self.command = command
        self.log_path = workdir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> BotProcess:
        self.proc = await start_logged([self.command], self.env, self.workdir, self.log_path)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def output(self) -> str:
        return read_log(self.log_path)

    async def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def wait_ready(self, heartbeat: Path, timeout: float = 120.0) -> float:
        """Until this process wrote a `connected` heartbeat (its on_ready); returns the seconds it took."""
        started = time.monotonic()
        while True:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise RuntimeError(
                    f"bot exited with {self.proc.returncode} before ready:\n{self.output[-3000:]}"
                )
            beat = _read_heartbeat(heartbeat)
            if beat.get("pid") == self.pid and beat.get("connected") is True:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"bot not ready after {timeout}s:\n{self.output[-3000:]}")
            await asyncio.sleep(0.05)

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a power cut of the process (not of the disk)."""
        assert self.proc is not None
        if self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()

    async def terminate(self, timeout: float = 120.0) -> int:
        """SIGTERM and wait for the exit status (the bot finishes its running job first)."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await self.wait_exit(timeout)
        except TimeoutError:
            await self.kill()
            raise


async def wait_for_rows(
    db_path: Path, predicate: Callable[[list[dict[str, Any]]], bool], *, timeout: float, what: str
) -> list[dict[str, Any]]:
    """Poll the SQLite file (read-only) until `predicate(rows)` holds."""
    deadline = time.monotonic() + timeout
    while True:
        rows = read_jobs(db_path)
        if predicate(rows):
            return rows
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}; rows: {rows}")
        await asyncio.sleep(0.03)


# -- the crash loop -----------------------------------------------------------------------------------
@dataclass
class CrashLoopTally:
    """What the kill -9 loop observed."""

    iterations: int = 0
    kills: int = 0
    jobs: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)  # rows not final, or final in an unexpected way
    posted_twice: dict[str, int] = field(default_factory=dict)
    delivered_once: int = 0
    never_delivered: list[str] = field(default_factory=list)  # must stay empty: restarts resolve `sending`
    sent_but_missing: list[str] = field(default_factory=list)  # delivery='sent' but no message
    max_attempts_seen: int = 0
    integrity: list[str] = field(default_factory=list)
    final_exit_code: int | None = None
    ready_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            not self.lost
            and not self.posted_twice
            and not self.sent_but_missing
            and not self.never_delivered
            and all(result == "ok" for result in self.integrity)
            and self.final_exit_code == 0
        )

    def summary(self) -> str:
        ready = sorted(self.ready_seconds)
        return (
            f"crash loop: {self.iterations} iterations, {self.kills} kill -9 while a job ran, {self.jobs} jobs; "
            f"final states {dict(self.statuses)}; lost {len(self.lost)}; posted twice {len(self.posted_twice)}; "
            f"delivered exactly once {self.delivered_once}; never delivered (killed mid-delivery) "
            f"{len(self.never_delivered)}; max attempts {self.max_attempts_seen}; integrity_check "
            f"{Counter(self.integrity)}; final SIGTERM exit {self.final_exit_code}; ready after restart "
            f"median {ready[len(ready) // 2] if ready else 0:.1f}s; total {self.seconds:.0f}s"
        )


Rows = list[dict[str, Any]]


def _has_seed(seed: str) -> Callable[[Rows], bool]:
    return lambda rows: any(r["seed_text"] == seed for r in rows)


def _kill_point(newest: str, *, any_job: bool) -> Callable[[Rows], bool]:
    """Kill when the newest job (or, with `any_job`, any job) runs; stop waiting if the newest one ended."""

    def ready(rows: Rows) -> bool:
        running = any(r["status"] == "running" and (any_job or r["id"] == newest) for r in rows)
        ended = any(r["id"] == newest and r["status"] in ("done", "failed", "cancelled") for r in rows)
        return running or ended

    return ready


def _all_settled(rows: Rows) -> bool:
    # After the last restart every result is confirmed posted: `sending` left by a kill is resolved too.
    return all(r["status"] in ("done", "failed", "cancelled") and r["delivery"] == "sent" for r in rows)


def _final_ok(row: dict[str, Any]) -> bool:
    return row["status"] == "done" or (row["status"] == "failed" and row["reason"] == "interrupted")


async def run_crash_loop(
    *,
    iterations: int,
    models: tuple[Path, Path],
    work_dir: Path,
    steps: int = 20,
    max_attempts: int = 2,
    echo: Callable[[str], None] = print,
) -> CrashLoopTally:
    """Start the bot, /imagine, kill -9 while a job is `running`, restart on the same data; tally at the end.

    Two kill points alternate: usually when the newest job runs (the previous, requeued one finished, so
    jobs end `done` after a retry); every third iteration as soon as any job runs (often the requeued one
    again, so it exhausts IMAGINE_MAX_ATTEMPTS and ends `failed: interrupted`).
    """
    tally = CrashLoopTally()
    started = time.monotonic()
    data_dir = work_dir / "data"
    db_path = data_dir / "history.sqlite3"
    heartbeat = data_dir / "heartbeat.json"
    async with FakeDiscord(token=TOKEN, heartbeat_interval_ms=5000) as fake:
        env = bot_env(
            fake=fake,
            data_dir=data_dir,
            models=models,
            token=TOKEN,
            steps=steps,
            max_attempts=max_attempts,
            max_pending_per_user=iterations + 5,
            max_queue=iterations + 10,
        )
        bot: BotProcess | None = None
        try:
            for iteration in range(iterations):
                bot = await BotProcess(env, work_dir, name="bot").start()
                tally.ready_seconds.append(await bot.wait_ready(heartbeat))
                seed = f"crash loop {iteration}"
                await fake.send_slash("imagine", {"seed": seed}, user_id=fake.alice_id)
                rows = await wait_for_rows(db_path, _has_seed(seed), timeout=60, what=f"row {seed}")
                newest = next(r["id"] for r in rows if r["seed_text"] == seed)
                rows = await wait_for_rows(
                    db_path,
                    _kill_point(newest, any_job=iteration % 3 == 2),
                    timeout=180,
                    what="a running job",
                )
                running = [r["id"] for r in rows if r["status"] == "running"]
                if not running:
                    raise RuntimeError(
                        f"job {newest} ended before it could be killed: {rows}\n{bot.output[-3000:]}"
                    )
                await bot.kill()
                tally.kills += 1
                result = integrity_of_copy(db_path)
                tally.integrity.append(result)
                echo(
                    f"iteration {iteration + 1}/{iterations}: killed pid {bot.pid} while {running} ran; "
                    f"integrity {result}"
                )
            tally.iterations = iterations

            # One last start: recover, finish the requeued jobs, deliver, then stop cleanly.
            bot = await BotProcess(env, work_dir, name="bot").start()
            tally.ready_seconds.append(await bot.wait_ready(heartbeat))
            await wait_for_rows(
                db_path, _all_settled, timeout=120 + 30 * iterations, what="every job final and delivered"
            )
            tally.final_exit_code = await bot.terminate()
            tally.integrity.append(integrity_of_copy(db_path))
        finally:
            if bot is not None:
                await bot.kill()

        rows = read_jobs(db_path)
        counts = result_counts(fake)
        tally.jobs = len(rows)
        tally.statuses = Counter(
            r["status"] + (f":{r['reason']}" if r["status"] != "done" else "") for r in rows
        )
        tally.max_attempts_seen = max((r["attempts"] for r in rows), default=0)
        for row in rows:
            if not _final_ok(row):
                tally.lost.append(f"{row['id']} {row['status']} {row['reason']}")
            posted = counts.get(row["id"], 0)
            if posted > 1:
                tally.posted_twice[row["id"]] = posted
            elif posted == 1:
                tally.delivered_once += 1
            elif row["delivery"] == "sent":
                tally.sent_but_missing.append(row["id"])
            else:
                tally.never_delivered.append(f"{row['id']} ({row['status']}, delivery {row['delivery']})")
        if tally.jobs != iterations:
            tally.lost.append(f"{iterations} /imagine sent but {tally.jobs} rows")
    tally.seconds = time.monotonic() - started
    return tally
