"""What decides a render's exact numbers beyond its inputs, and why a rerun cannot repeat them byte for byte.

The same request, weights, device and dtype still round differently when the process differs: on a CPU
the number of torch threads changes how matrix products are split (a Ray replica runs 1 thread, a local
engine one per core: ~0.01 % of pixels end one level apart), and so does the instruction set torch
dispatches to (AVX2, AVX-512); on a GPU the TF32 and cuDNN switches do. Each job's render record keeps
these under `numerics`; `rerun_blockers` names the ones that differ.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

# The render-record fields a byte-identical rerun needs to repeat (besides the request itself).
_RECORD_FIELDS = (("device", "device"), ("dtype", "dtype"), ("sd_revision", "image model revision"))
_NUMERICS_NAMES = {
    "torch_threads": "torch threads",
    "cpu_capability": "CPU instruction set",
    "deterministic_algorithms": "deterministic algorithms",
    "float32_matmul_precision": "float32 matmul precision",
    "mkldnn": "oneDNN (mkldnn)",
    "gpu": "GPU",
    "cuda_matmul_tf32": "TF32 matmuls",
    "cudnn_tf32": "TF32 convolutions",
    "cudnn_deterministic": "cuDNN deterministic",
    "cudnn_benchmark": "cuDNN benchmark",
}
# Thread count only decides the numbers of work that runs on the CPU.
_CPU_ONLY = frozenset({"torch_threads", "cpu_capability", "mkldnn"})


def engine_threads(configured: int | None) -> int:
    """The torch threads an engine runs with: the configured number, else one per core."""
    return configured or os.cpu_count() or 1


def numerics_record(device_type: str, *, torch_threads: int | None = None) -> dict[str, Any]:
    """This process's settings that decide the exact numbers (`torch_threads`: the planned count)."""
    import torch

    record: dict[str, Any] = {
        "torch_threads": torch.get_num_threads() if torch_threads is None else torch_threads,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "mkldnn": bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled),
    }
    if device_type == "cuda":
        record |= {
            "gpu": torch.cuda.get_device_name(),
            "cuda_matmul_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_tf32": bool(torch.backends.cudnn.allow_tf32),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        }
    return record


def library_versions() -> dict[str, str]:
    """The versions of the libraries that compute a render."""
    import diffusers
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


def local_render_plan(device: str, dtype: str, torch_threads: int | None = None) -> dict[str, Any]:
    """What a local engine with these settings would record, known before any model loads.

    Raises ModelLoadError where the device is not there (IMAGINE_DEVICE=cuda without CUDA).
    """
    from bot.engine.loading import resolve_device, resolve_dtype

    resolved = resolve_device(device)
    threads = engine_threads(torch_threads) if resolved.type == "cpu" else None
    return {
        "device": str(resolved),
        "dtype": str(resolve_dtype(dtype, resolved)).removeprefix("torch."),
        "versions": library_versions(),
        "numerics": numerics_record(resolved.type, torch_threads=threads),
    }


def rerun_blockers(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Why a render with `current` cannot repeat `recorded` byte for byte (two render records); [] if none.

    `current` may hold only what is known before a render (device, dtype, versions, numerics).
    """
    reasons: list[str] = []
    for key, name in _RECORD_FIELDS:
        if key in current and recorded.get(key) != current[key]:
            reasons.append(f"{name} {recorded.get(key, 'unknown')} → {current[key]}")
    old_versions, new_versions = recorded.get("versions") or {}, current.get("versions") or {}
    for library, version in new_versions.items():
        if old_versions.get(library) != version:
            reasons.append(f"{library} {old_versions.get(library, 'unknown')} → {version}")
    old, new = recorded.get("numerics"), current.get("numerics")
    if new is None:
        return reasons
    if old is None:
        # Jobs rendered before the record kept these: nothing says the rerun will match.
        return [*reasons, "the job's record predates torch threads and the other numerics settings"]
    on_cpu = current.get("device", recorded.get("device")) == "cpu"
    for key, name in _NUMERICS_NAMES.items():
        if key in _CPU_ONLY and not on_cpu:
            continue
        if key in new and old.get(key) != new[key]:
            reasons.append(f"{name} {_shown(old.get(key, 'unknown'))} → {_shown(new[key])}")
    return reasons


def describe_numerics(numerics: Mapping[str, Any]) -> str:
    """One line for `show`: the recorded settings that decide the exact numbers."""
    parts = [f"{name} {_shown(numerics[key])}" for key, name in _NUMERICS_NAMES.items() if key in numerics]
    return ", ".join(parts)


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)
