"""Which model and LoRAs a job runs with, and whether a past job can still be repeated exactly.

The intake (bot/intake.py) asks these before anything is queued; every answer that refuses is a
ModelRefused whose message is the sentence to show.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bot.engine.model_specs import LoraRef, ModelEntry
from bot.models.registry import LoraLibrary, ModelRefused, ModelRegistry, parse_lora_option
from bot.settings import Settings
from bot.store import JobRecord


@dataclass(frozen=True)
class ModelChoice:
    """The model a new job runs on and its LoRAs."""

    entry: ModelEntry
    loras: tuple[LoraRef, ...] = ()


def choose_model(
    registry: ModelRegistry,
    library: LoraLibrary,
    settings: Settings,
    *,
    model: str | None,
    loras: tuple[str, ...],
    draft: bool,
    negative_given: bool,
    server_default: str | None,
    cli: bool = False,
) -> ModelChoice:
    """The asked model (else the server's default, else the registry's), Draft's, and the LoRAs on it."""
    flag = (lambda name: f"`--{name}`") if cli else (lambda name: f"`{name}`")
    if draft:
        entry = registry.draft_entry()
        if model and registry.get(model) != entry:
            raise ModelRefused(
                f"{flag('draft')} renders with the draft model `{entry.name}`: drop {flag('model')} or "
                f"{flag('draft')}."
            )
    elif model:
        entry = registry.usable(model)
    else:
        entry = _server_default(registry, server_default)
    if entry.is_draft_kind and negative_given:
        what = "Draft mode" if draft else f"The model `{entry.name}`"
        raise ModelRefused(
            f"{what} renders with SD-Turbo, which takes no negative prompt: drop `--no` (or `negative`)."
        )
    if len(loras) > settings.max_loras:
        raise ModelRefused(
            f"At most {settings.max_loras} LoRAs per job (IMAGINE_MAX_LORAS), got {len(loras)}."
        )
    refs = tuple(parse_lora_option(text, library) for text in loras)
    names = [ref.name.lower() for ref in refs]
    if len(set(names)) != len(names):
        raise ModelRefused("The same LoRA is given twice.")
    refs = tuple(LoraRef(library.check(ref, entry).name, ref.weight) for ref in refs)
    return ModelChoice(entry, refs)


def _server_default(registry: ModelRegistry, server_default: str | None) -> ModelEntry:
    if server_default:
        entry = registry.get(server_default)
        if entry is not None and entry.enabled:
            return entry
    return registry.usable(None)


def main_model(registry: ModelRegistry, server_default: str | None) -> ModelEntry:
    """The full-quality model Enhance renders with: the server's default unless it is a draft model."""
    entry = _server_default(registry, server_default)
    if entry.is_draft_kind:
        entry = registry.usable(None)
    return entry


def model_defaults(settings: Settings, entry: ModelEntry) -> Settings:
    """The settings with the model's job defaults in place of the bot's (steps, guidance, size)."""
    return settings.model_copy(
        update={
            "steps": entry.steps,
            "guidance": entry.guidance,
            "width": entry.width,
            "height": entry.height,
        }
    )


def check_model_limits(entry: ModelEntry, *, steps: int, width: int, height: int) -> None:
    """The model's own limits (models.toml `max_steps`, `max_pixels`) on top of the operator's."""
    if entry.max_steps is not None and steps > entry.max_steps:
        raise ModelRefused(
            f"`steps` must be 1..{entry.max_steps} with the model `{entry.name}`, got {steps}."
        )
    if entry.max_pixels is not None and width * height > entry.max_pixels:
        raise ModelRefused(
            f"The model `{entry.name}` renders at most {entry.max_pixels} pixels; {width}×{height} is more."
        )


def job_model_refusal(
    registry: ModelRegistry, library: LoraLibrary, job: JobRecord, *, exact: bool
) -> str | None:
    """Why a new job from `job` cannot run on its model now; with `exact` (rerun, Reproduce) also a changed
    revision or LoRA file, which would render differently."""
    try:
        entry = registry.usable(job.model)
        for ref in job.loras:
            library.check(ref, entry)
    except ModelRefused as exc:
        return str(exc)
    render: dict[str, Any] = job.render
    if not exact or "model_name" not in render:
        return None  # a job from before the registry: as exact as it ever was
    if entry.source != render.get("sd_model") or entry.revision != render.get("model_revision"):
        was = render.get("model_revision") or render.get("sd_revision") or "unpinned"
        now = entry.revision or "unpinned"
        return (
            f"Can't repeat job `{job.id}` exactly: the model `{entry.name}` changed since it was made "
            f"({render.get('sd_model')} @ {was} → {entry.source} @ {now})."
        )
    recorded = {r.get("name"): r.get("sha256") for r in render.get("loras", ())}
    for ref in job.loras:
        if library.sha256(ref.name) != recorded.get(ref.name):
            return (
                f"Can't repeat job `{job.id}` exactly: the LoRA file `{ref.name}.safetensors` changed since "
                "it was made (its sha256 differs)."
            )
    return None
