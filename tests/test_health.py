"""The heartbeat file and `python -m bot health`: healthy and every unhealthy outcome."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from bot.health import check_health, main_health, write_heartbeat
from bot.settings import Settings

NOW = 1_800_000_000.0


def make_db(path: Path) -> None:
    """Create a small real SQLite database at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, prompt TEXT NOT NULL)")
        conn.executemany("INSERT INTO jobs (prompt) VALUES (?)", [("a cat",), ("a dog",)])
        conn.commit()
    finally:
        conn.close()


def settings_for(data_dir: Path, **overrides: object) -> Settings:
    """Settings rooted in `data_dir` (mypy without the pydantic plugin wants every aliased field)."""
    return Settings(data_dir=data_dir, **overrides)  # type: ignore[call-arg, arg-type]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings rooted in a temporary data dir."""
    return settings_for(tmp_path)


@pytest.fixture
def healthy(settings: Settings) -> Settings:
    """A data dir with a fresh connected heartbeat and a good database."""
    make_db(settings.db_path)
    write_heartbeat(settings.heartbeat_path, connected=True, latency=0.042, now=NOW - 10)
    return settings


def test_write_heartbeat_fields_and_atomicity(settings: Settings) -> None:
    path = settings.heartbeat_path
    write_heartbeat(path, connected=True, latency=0.05, now=NOW)
    write_heartbeat(path, connected=False, latency=float("inf"), now=NOW + 15)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data == {
        "ts": NOW + 15,
        "connected": False,
        "latency": None,
        "pid": os.getpid(),
        "runner_ok": True,
        "runner": "",
        "device": None,  # the torch device of an in-process renderer (`train lora` checks it)
    }
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left behind


def test_write_heartbeat_creates_parent_dir(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "hb.json"
    write_heartbeat(path, connected=True)
    assert json.loads(path.read_text(encoding="utf-8"))["connected"] is True


def test_unhealthy_when_the_job_runner_cannot_run_jobs(settings: Settings) -> None:
    # The bot writes the runner's state into the heartbeat: a dead dispatcher or unreachable GPU workers.
    reason_text = "render backend unreachable: cannot reach the Ray cluster at 127.0.0.1:1"
    write_heartbeat(
        settings.heartbeat_path, connected=True, now=NOW, runner_ok=False, runner_reason=reason_text
    )
    settings.db_path.parent.mkdir(parents=True, exist_ok=True)
    sqlite3.connect(settings.db_path).close()
    ok, reason = check_health(settings, now=NOW)
    assert not ok
    assert reason == f"unhealthy: jobs cannot run: {reason_text}"


def test_healthy(healthy: Settings) -> None:
    ok, reason = check_health(healthy, now=NOW)
    assert ok, reason
    assert reason.startswith("healthy")


def test_healthy_with_wal_database_in_use(healthy: Settings) -> None:
    writer = sqlite3.connect(healthy.db_path)
    try:
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("INSERT INTO jobs (prompt) VALUES ('a bird')")
        writer.commit()
        ok, reason = check_health(healthy, now=NOW)
        assert ok, reason
    finally:
        writer.close()


def test_custom_heartbeat_file(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, heartbeat_file=tmp_path / "elsewhere" / "hb.json")
    make_db(settings.db_path)
    write_heartbeat(tmp_path / "elsewhere" / "hb.json", connected=True, now=NOW)
    assert check_health(settings, now=NOW)[0]


def test_stale_heartbeat(healthy: Settings) -> None:
    ok, reason = check_health(healthy, now=NOW + 200, max_age=90)
    assert not ok
    assert "stale" in reason


def test_future_heartbeat(healthy: Settings) -> None:
    ok, reason = check_health(healthy, now=NOW - 1000)
    assert not ok
    assert "future" in reason


def test_disconnected(healthy: Settings) -> None:
    write_heartbeat(healthy.heartbeat_path, connected=False, now=NOW)
    ok, reason = check_health(healthy, now=NOW)
    assert not ok
    assert "not connected" in reason


def test_missing_heartbeat(settings: Settings) -> None:
    make_db(settings.db_path)
    ok, reason = check_health(settings, now=NOW)
    assert not ok
    assert "no heartbeat file" in reason


@pytest.mark.parametrize("content", ["", "not json", "[1, 2]", '{"connected": true}', '{"ts": "x"}'])
def test_malformed_heartbeat(healthy: Settings, content: str) -> None:
    healthy.heartbeat_path.write_text(content, encoding="utf-8")
    ok, reason = check_health(healthy, now=NOW)
    assert not ok
    assert "heartbeat" in reason


def test_missing_database(settings: Settings) -> None:
    write_heartbeat(settings.heartbeat_path, connected=True, now=NOW)
    ok, reason = check_health(settings, now=NOW)
    assert not ok
    assert "database missing" in reason
    assert not settings.db_path.exists()  # a read-only check must not create the database


def test_corrupt_database(healthy: Settings) -> None:
    healthy.db_path.write_bytes(b"this is not a database at all\x00" * 200)
    ok, reason = check_health(healthy, now=NOW)
    assert not ok
    assert "database" in reason


def test_damaged_database_pages(healthy: Settings) -> None:
    raw = bytearray(healthy.db_path.read_bytes())
    page_size = int.from_bytes(raw[16:18], "big")
    raw[page_size : page_size + 64] = b"\xff" * 64  # smash the second page (the jobs table's b-tree)
    healthy.db_path.write_bytes(bytes(raw))
    ok, reason = check_health(healthy, now=NOW)
    assert not ok
    assert "quick_check" in reason


def test_main_health_exit_codes(
    healthy: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_heartbeat(healthy.heartbeat_path, connected=True)
    assert main_health(healthy) == 0
    assert capsys.readouterr().out.startswith("healthy")
    assert main_health(settings_for(tmp_path / "empty")) == 1
    assert capsys.readouterr().out.startswith("unhealthy")
