"""Liveness: the bot writes a heartbeat file; `python -m bot health` checks it and the database."""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import time
from pathlib import Path

from bot.settings import Settings

log = logging.getLogger(__name__)

DB_TIMEOUT_SECONDS = 5.0


def write_heartbeat(
    path: Path,
    *,
    connected: bool,
    latency: float | None = None,
    now: float | None = None,
    runner_ok: bool = True,
    runner_reason: str = "",
    device: str | None = None,
) -> None:
    """Atomically write `{"ts", "connected", "latency", "pid", "runner_ok", "runner", "device"}` as JSON.

    `runner_ok` is false when the job dispatcher died or the render backend (GPU workers) is unreachable.
    `device` is the torch device the bot renders on in this process (None: remote workers), so that
    `python -m bot train` can refuse to share that GPU.
    """
    if latency is not None and not math.isfinite(latency):
        latency = None  # discord.py reports inf before the first heartbeat ACK; JSON has no inf.
    payload = {
        "ts": time.time() if now is None else now,
        "connected": bool(connected),
        "latency": latency,
        "pid": os.getpid(),
        "runner_ok": bool(runner_ok),
        "runner": runner_reason,
        "device": device,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(payload), encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_heartbeat(path: Path, *, max_age: float, now: float) -> tuple[bool, str]:
    """Whether the heartbeat file is present, fresh and says connected."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False, f"no heartbeat file at {path}"
    except (OSError, ValueError) as exc:
        return False, f"unreadable heartbeat file {path}: {exc}"
    if not isinstance(data, dict):
        return False, f"malformed heartbeat file {path}"
    ts = data.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        return False, f"heartbeat file {path} has no valid timestamp"
    age = now - ts
    if age > max_age:
        return False, f"heartbeat is stale ({age:.0f}s old, limit {max_age:.0f}s)"
    if age < -max_age:
        return False, f"heartbeat timestamp is {-age:.0f}s in the future"
    if data.get("connected") is not True:
        return False, f"not connected to Discord (heartbeat {max(age, 0.0):.0f}s old)"
    if data.get("runner_ok") is False:
        return False, f"jobs cannot run: {data.get('runner') or 'job runner unhealthy'}"
    return True, f"connected (heartbeat {max(age, 0.0):.0f}s old)"


def _check_database(db_path: Path) -> tuple[bool, str]:
    """Whether the SQLite database opens read-only and passes `PRAGMA quick_check`."""
    if not db_path.is_file():
        return False, f"database missing at {db_path}"
    uri = db_path.resolve().as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=DB_TIMEOUT_SECONDS)
    except sqlite3.Error as exc:
        return False, f"database {db_path} does not open: {exc}"
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.Error as exc:
        return False, f"database {db_path} failed quick_check: {exc}"
    finally:
        conn.close()
    if rows != [("ok",)]:
        first = rows[0][0] if rows else "no result"
        return False, f"database {db_path} failed quick_check: {first}"
    return True, "database ok"


def check_health(settings: Settings, *, max_age: float = 90.0, now: float | None = None) -> tuple[bool, str]:
    """Healthy iff a fresh heartbeat says connected and the database passes a read-only quick_check."""
    ok, reason = _check_heartbeat(
        settings.heartbeat_path, max_age=max_age, now=time.time() if now is None else now
    )
    if not ok:
        return False, f"unhealthy: {reason}"
    db_ok, db_reason = _check_database(settings.db_path)
    if not db_ok:
        return False, f"unhealthy: {db_reason}"
    return True, f"healthy: {reason}, {db_reason}"


def main_health(settings: Settings) -> int:
    """Print the health verdict and return the exit status (0 healthy, 1 not)."""
    ok, reason = check_health(settings)
    print(reason)
    return 0 if ok else 1
