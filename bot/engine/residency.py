"""Which pipelines a GPU worker keeps loaded: at most IMAGINE_MAX_RESIDENT_MODELS, least recently used out
first, its memory freed before the next one loads. GPU thread only."""

from __future__ import annotations

import gc
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from bot.engine.lora import LoraSlots
from bot.engine.model_specs import ModelEntry
from bot.engine.renderer import Renderer, free_device_memory

log = logging.getLogger(__name__)


@dataclass
class Resident:
    """A loaded model: its renderer (pipelines sharing one set of weights), load info and LoRA state."""

    entry: ModelEntry
    renderer: Renderer
    info: dict[str, Any]
    loras: LoraSlots = field(default_factory=LoraSlots)


class ResidentModels:
    """An LRU of loaded models; `get` loads on a miss, unloading the least recently used first."""

    def __init__(
        self, limit: int, load: Callable[[ModelEntry], tuple[Renderer, dict[str, Any]]], device: torch.device
    ) -> None:
        self.limit = max(1, limit)
        self._load = load
        self.device = device
        self._resident: OrderedDict[str, Resident] = OrderedDict()
        #: "load NAME" / "unload NAME", newest last (tests and /status read it)
        self.events: deque[str] = deque(maxlen=200)
        self.swaps = 0
        self.load_seconds: deque[float] = deque(maxlen=50)

    def names(self) -> tuple[str, ...]:
        """Resident models, least recently used first."""
        return tuple(self._resident)

    def peek(self, name: str) -> Resident | None:
        return self._resident.get(name)

    def get(self, entry: ModelEntry) -> Resident:
        """The loaded model for `entry` (most recently used from now on)."""
        found = self._resident.get(entry.name)
        if found is not None and found.entry == entry:
            self._resident.move_to_end(entry.name)
            return found
        if found is not None:  # the registry entry changed: load it afresh
            self._unload(entry.name)
        while len(self._resident) >= self.limit:
            self._unload(next(iter(self._resident)))
        started = time.perf_counter()
        renderer, info = self._load(entry)
        self.load_seconds.append(time.perf_counter() - started)
        if self.events:
            self.swaps += 1
        resident = Resident(entry, renderer, info)
        self._resident[entry.name] = resident
        self.events.append(f"load {entry.name}")
        log.info("model %s loaded in %.1fs", entry.name, self.load_seconds[-1])
        return resident

    def _unload(self, name: str) -> None:
        resident = self._resident.pop(name)
        del resident
        # Pipelines hold reference cycles, and the engine froze the loaded models out of the collector:
        # unfreeze so this collect can free them, before the next model asks for the memory.
        gc.unfreeze()
        gc.collect()
        free_device_memory(self.device)
        self.events.append(f"unload {name}")
        log.info("model %s unloaded", name)
