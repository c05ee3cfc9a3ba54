"""`train lora` refuses a GPU that a running bot's heartbeat says it uses."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bot.health import write_heartbeat
from bot.train.gpu_guard import busy_gpu_refusal


def test_a_fresh_heartbeat_on_the_same_gpu_refuses(tmp_path: Path) -> None:
    beat = tmp_path / "heartbeat.json"
    write_heartbeat(beat, connected=True, device="cuda:0")
    assert json.loads(beat.read_text())["device"] == "cuda:0"
    refusal = busy_gpu_refusal(beat, "cuda:0")
    assert refusal is not None
    assert "is using cuda:0, the GPU this training would use" in refusal
    assert refusal.endswith("pass --allow-busy-gpu to train anyway (both may run out of GPU memory)")
    assert busy_gpu_refusal(beat, "cuda") is not None  # `cuda` is cuda:0
    assert busy_gpu_refusal(beat, "cuda:1") is None  # another GPU
    assert busy_gpu_refusal(beat, "cpu") is None  # CPU training never competes for the GPU


def test_a_stale_or_missing_heartbeat_is_no_bot(tmp_path: Path) -> None:
    beat = tmp_path / "heartbeat.json"
    assert busy_gpu_refusal(beat, "cuda:0") is None
    write_heartbeat(beat, connected=True, device="cuda:0", now=time.time() - 600)
    assert busy_gpu_refusal(beat, "cuda:0") is None
    beat.write_text("{not json", encoding="utf-8")
    assert busy_gpu_refusal(beat, "cuda:0") is None


def test_a_bot_on_the_cpu_or_remote_workers_leaves_the_gpu_free(tmp_path: Path) -> None:
    beat = tmp_path / "heartbeat.json"
    write_heartbeat(beat, connected=True, device="cpu")
    assert busy_gpu_refusal(beat, "cuda:0") is None


def test_an_older_heartbeat_without_a_device_field(tmp_path: Path) -> None:
    beat = tmp_path / "heartbeat.json"
    write_heartbeat(
        beat, connected=True, runner_reason="dispatcher running, local backend: local GPU thread on cuda:0"
    )
    data = json.loads(beat.read_text())
    del data["device"]
    beat.write_text(json.dumps(data), encoding="utf-8")
    assert "is using cuda:0" in (busy_gpu_refusal(beat, "cuda:0") or "")
    data["runner"] = "starting"
    beat.write_text(json.dumps(data), encoding="utf-8")
    assert "may be using the GPU (its heartbeat does not say which device)" in (
        busy_gpu_refusal(beat, "cuda:0") or ""
    )
