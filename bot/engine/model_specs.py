"""What the engine knows of the model registry: one frozen entry per named model, and LoRA references.

Plain data (bot/models/registry.py reads them from models.toml; the engine receives them in its config),
so they cross processes like every other wire type.
"""

from __future__ import annotations

from dataclasses import dataclass

#: SD 1.x, SD 2.x at 512² (epsilon), SD 2.x at 768² (v-prediction), SD-Turbo (SD 2.1 distilled, 1–4 steps)
KINDS: tuple[str, ...] = ("sd1", "sd2-512", "sd2-768-v", "sd-turbo")
#: LoRAs fit every model of one family (the text encoder's width and the UNet layout are the family's)
KIND_FAMILY = {"sd1": "sd1", "sd2-512": "sd2", "sd2-768-v": "sd2", "sd-turbo": "sd2"}
#: the kind's defaults: (width, height, steps, guidance, scheduler)
KIND_DEFAULTS: dict[str, tuple[int, int, int, float, str]] = {
    "sd1": (512, 512, 25, 7.5, "dpm++"),
    "sd2-512": (512, 512, 25, 7.5, "dpm++"),
    "sd2-768-v": (768, 768, 25, 7.5, "dpm++"),
    "sd-turbo": (512, 512, 1, 0.0, "euler-a"),
}
#: dpm++: DPM-Solver++ from the model's scheduler config (today's); euler-a: Euler ancestral with trailing
#: timesteps (what SD-Turbo is sampled with); model: the model's own scheduler, unchanged
SCHEDULERS = ("dpm++", "euler-a", "model")
# Issue 22: SD 2.1 unCLIP (`StableUnCLIPImg2ImgPipeline`) renders /blend only, never /imagine.
BLEND_KIND = "sd2-unclip"
KINDS += (BLEND_KIND,)
KIND_FAMILY[BLEND_KIND] = "sd2"
KIND_DEFAULTS[BLEND_KIND] = (768, 768, 20, 10.0, "model")
#: the name of the one model when there is no models file (IMAGINE_SD_MODEL)
DEFAULT_MODEL_NAME = "sd21"


@dataclass(frozen=True)
class ModelEntry:
    """One named model of the registry."""

    name: str
    #: a Hub id (org/name) or a local folder with model_index.json
    source: str
    kind: str = "sd2-768-v"
    #: the Hub revision to load (a commit hash or branch); None = the default branch / the folder as is
    revision: str | None = None
    width: int = 768
    height: int = 768
    steps: int = 25
    guidance: float = 7.5
    scheduler: str = "dpm++"
    #: per-model limits on top of the operator's (None = only those)
    max_steps: int | None = None
    max_pixels: int | None = None
    enabled: bool = True
    description: str = ""

    @property
    def family(self) -> str:
        return KIND_FAMILY[self.kind]

    @property
    def is_blend_kind(self) -> bool:
        """SD 2.1 unCLIP: the /blend model (issue 22), never offered to /imagine."""
        return self.kind == BLEND_KIND

    @property
    def is_draft_kind(self) -> bool:
        """SD-Turbo: guidance 0, no negative prompt."""
        return self.kind == "sd-turbo"


@dataclass(frozen=True)
class LoraRef:
    """One LoRA a job uses: its name (file stem in IMAGINE_LORA_DIR) and weight."""

    name: str
    weight: float = 1.0
