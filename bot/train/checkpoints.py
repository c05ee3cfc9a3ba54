"""LoRA training checkpoints: adapter weights, optimiser, RNG and loss history, each written atomically."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_PREFIX = "step-"
KEEP_CHECKPOINTS = 2


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint with the highest step in `folder` (half-written ones never carry the name)."""
    if not folder.is_dir():
        return None
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
    return max(found, key=checkpoint_step, default=None)


def checkpoint_step(path: Path) -> int:
    return int(path.name.removeprefix(CHECKPOINT_PREFIX))


def lora_state(unet: Any) -> dict[str, torch.Tensor]:
    """The UNet's LoRA weights (peft naming), float32 on the CPU."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(unet).items()}


def save_checkpoint(
    folder: Path,
    step: int,
    *,
    unet: Any,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    losses: list[float],
    elapsed: float,
    fingerprint: dict[str, Any],
) -> Path:
    """Write the checkpoint into a temporary folder, then rename it into place (atomic on one disk);
    keep the newest KEEP_CHECKPOINTS."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{CHECKPOINT_PREFIX}{step:07d}"
    tmp = folder / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(lora_state(unet), str(tmp / "adapter.safetensors"))
    state = {
        "step": step,
        "losses": losses,
        "elapsed": elapsed,
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "fingerprint": fingerprint,
    }
    torch.save(state, tmp / "state.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(
        (p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)),
        key=checkpoint_step,
    )[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_fingerprint(path: Path) -> dict[str, Any]:
    """The settings a checkpoint was trained with."""
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    return dict(state["fingerprint"])


def load_checkpoint(
    path: Path, *, unet: Any, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> tuple[int, list[float], float]:
    """Restore adapter, optimiser and RNG; returns (step, losses so far, training seconds so far)."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    # Our own file (optimizer state holds plain tensors and ints; the RNG state a byte tensor).
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    set_peft_model_state_dict(unet, load_file(str(path / "adapter.safetensors")))
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    return int(state["step"]), list(state["losses"]), float(state["elapsed"])
