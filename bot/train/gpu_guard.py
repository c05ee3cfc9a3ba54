"""Training and a running bot must not share a GPU: the bot's heartbeat file says which device it uses."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

#: A heartbeat older than this is a bot that stopped (the bot rewrites it every 30 s; `health` allows 90).
FRESH_SECONDS = 90.0
_RUNNER_DEVICE = re.compile(r"\bon (cuda(?::\d+)?|mps|cpu)\b")


def _same_gpu(bot_device: str, training_device: str) -> bool:
    def index(name: str) -> str:
        return name if ":" in name else f"{name}:0"

    return index(bot_device) == index(training_device)


def busy_gpu_refusal(heartbeat: Path, training_device: str, *, now: float | None = None) -> str | None:
    """The sentence refusing to train on `training_device` while a live bot uses it, or None if it is free.

    A heartbeat fresher than FRESH_SECONDS means a bot runs on this host (its pid may belong to another
    PID namespace, a container, so the age decides, not the pid). It names its device (`device`, or the
    runner's "… on cuda:0"); a heartbeat that names none (a bot of an older version) counts as using the
    GPU, since nothing says otherwise.
    """
    if not training_device.startswith("cuda"):
        return None
    try:
        data = json.loads(heartbeat.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    ts = data.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        return None
    age = (time.time() if now is None else now) - ts
    if age > FRESH_SECONDS:
        return None
    device = data.get("device")
    if not isinstance(device, str) or not device:
        found = _RUNNER_DEVICE.search(str(data.get("runner") or ""))
        device = found.group(1) if found else None
    who = f"a running bot (pid {data.get('pid', '?')}, heartbeat {max(age, 0.0):.0f}s old in {heartbeat})"
    if device is None:
        return (
            f"{who} may be using the GPU (its heartbeat does not say which device); stop it first, or pass "
            "--allow-busy-gpu to train anyway"
        )
    if not device.startswith("cuda") or not _same_gpu(device, training_device):
        return None
    return (
        f"{who} is using {device}, the GPU this training would use; stop the bot first, or pass "
        "--allow-busy-gpu to train anyway (both may run out of GPU memory)"
    )
