"""LoRAs on a loaded pipeline with diffusers' LoRA API (PEFT backend). GPU thread only.

A pipeline keeps the adapters of the last job that used some; the next job with the same set (same files,
by hash) only sets the weights, a job with another set (or none) unloads them first. Not fused: fusing
would bake one weight into the UNet and make every change of weight a reload. With IMAGINE_COMPILE on, a
change of adapter set should cost one recompilation (PEFT's layers are ordinary modules; not measured).
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any

from bot.engine.model_specs import LoraRef
from bot.engine.types import InvalidRequest

log = logging.getLogger(__name__)

_FILE_HASHES: dict[Path, tuple[int, int, str]] = {}


def lora_path(lora_dir: str | None, name: str) -> Path:
    """The file of LoRA `name`; InvalidRequest when it is not there."""
    if not lora_dir:
        raise InvalidRequest(f"the LoRA `{name}` is not available here (no IMAGINE_LORA_DIR)")
    folder = Path(lora_dir)
    match = (
        next((p for p in folder.glob("*.safetensors") if p.stem.lower() == name.lower()), None)
        if folder.is_dir()
        else None
    )
    if match is None:
        raise InvalidRequest(f"the LoRA `{name}` is not in {folder}")
    return match


def file_sha256(path: Path) -> str:
    """sha256 (hex) of a LoRA file, cached while its size and mtime stay the same."""
    stat = path.stat()
    cached = _FILE_HASHES.get(path)
    if cached is not None and cached[:2] == (stat.st_size, stat.st_mtime_ns):
        return cached[2]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    _FILE_HASHES[path] = (stat.st_size, stat.st_mtime_ns, digest.hexdigest())
    return digest.hexdigest()


class LoraSlots:
    """Which adapters a pipeline holds now (by name and file hash)."""

    def __init__(self) -> None:
        self.loaded: tuple[tuple[str, str], ...] = ()
        self.loads = 0
        self.unloads = 0

    def apply(
        self, pipe: Any, wanted: tuple[LoraRef, ...], lora_dir: str | None, model_name: str
    ) -> list[dict[str, Any]]:
        """Load (or keep) exactly `wanted` on `pipe` at their weights; the job's record of them."""
        if not wanted:
            self.clear(pipe)
            return []
        files = [(ref, lora_path(lora_dir, ref.name)) for ref in wanted]
        hashed = [(ref, path, file_sha256(path)) for ref, path in files]
        key = tuple((path.stem, sha) for _, path, sha in hashed)
        adapters = [_adapter_name(stem, sha) for stem, sha in key]
        if key != self.loaded:
            self.clear(pipe)
            for (ref, path, _), adapter in zip(hashed, adapters, strict=True):
                try:
                    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter)
                except Exception as exc:
                    self._drop_all(pipe)
                    text = str(exc).strip()
                    if "size mismatch" in text:
                        cause = "its layer shapes differ from the model's: it was made for another base model"
                    else:
                        cause = text.splitlines()[0][:160] if text else type(exc).__name__
                    raise InvalidRequest(
                        f"the LoRA `{ref.name}` does not fit the model `{model_name}` ({cause})"
                    ) from exc
            self.loaded = key
            self.loads += 1
        pipe.set_adapters(adapters, adapter_weights=[float(ref.weight) for ref in wanted])
        return [{"name": path.stem, "sha256": sha, "weight": float(ref.weight)} for ref, path, sha in hashed]

    def clear(self, pipe: Any) -> None:
        """No adapters on `pipe` (the plain model again)."""
        if self.loaded:
            self._drop_all(pipe)
            self.unloads += 1

    def _drop_all(self, pipe: Any) -> None:
        pipe.unload_lora_weights()
        self.loaded = ()


def _adapter_name(stem: str, sha: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", stem) + "_" + sha[:8]
