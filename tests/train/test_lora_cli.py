"""`python -m bot train lora` as an operator runs it: Ctrl-C saves a checkpoint and exits 130, `--resume`
finishes the run and writes IMAGINE_LORA_DIR/NAME.safetensors (a subprocess: heavy)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.train.test_lora import CAPTION, make_square_pictures

REPO_ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("peft", reason="the `train` extra (scripts/test.sh installs it)")


def _env(tmp_path: Path, sd: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGINE_", "DISCORD_"))}
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        IMAGINE_DATA_DIR=str(tmp_path / "data"),
        IMAGINE_LORA_DIR=str(tmp_path / "loras"),
        IMAGINE_SD_MODEL=str(sd),
        IMAGINE_DEVICE="cpu",
    )
    return env


@pytest.mark.heavy
def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(
    tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    pictures = tmp_path / "pictures"
    make_square_pictures(pictures)
    args = [
        sys.executable,
        "-m",
        "bot",
        "train",
        "lora",
        "square",
        "--images",
        str(pictures),
        "--caption",
        CAPTION,
        "--rank",
        "4",
        "--lr",
        "1e-2",
        "--batch",
        "2",
        "--resolution",
        "32",
        "--validation-steps",
        "2",
        "--checkpoint-every",
        "1000",
        "--validate-every",
        "1000",
    ]
    env = _env(tmp_path, tiny_models[0])
    proc = subprocess.Popen(
        [*args, "--steps", "100000"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()
    assert first.startswith("training LoRA 'square' on 16 pictures"), first
    deadline = time.monotonic() + 120
    while not (tmp_path / "data" / "train" / "lora" / "square" / "validation").exists():  # the step-0 row
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    found = re.search(
        r"interrupted at step (\d+)/100000: checkpoint saved at (\S+); go on with the same command "
        r"and --resume",
        err,
    )
    assert found, err
    assert "Traceback" not in err
    step = int(found.group(1))
    assert Path(found.group(2)).name == f"step-{step:07d}"
    assert not (tmp_path / "loras").exists()

    done = subprocess.run(
        [*args, "--steps", str(step + 3), "--resume"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"done: {step + 3} steps" in done.stdout
    assert sorted(p.name for p in (tmp_path / "loras").iterdir()) == ["square.json", "square.safetensors"]
