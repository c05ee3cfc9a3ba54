"""What the store reads and writes: job specs and records, tiles, the column encoding, admission errors."""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import Field, dataclass, field, fields
from typing import Any

import aiosqlite

from bot.engine.model_specs import LoraRef
from bot.engine.types import JobParams


class QueueRefused(Exception):
    """A job was refused by a queue limit; the message is user-facing."""


class QueueFull(QueueRefused):
    """The global queue cap is reached."""


class UserLimit(QueueRefused):
    """The user's pending-job cap is reached."""


class Cooldown(QueueRefused):
    """The user started a job too recently."""


@dataclass(frozen=True)
class Tile:
    """One image of a job."""

    index: int
    prompt: str
    image_seed: int
    path: str | None
    nsfw: bool = False


@dataclass(frozen=True)
class JobSpec(JobParams):
    """A new job row: its parameters (`JobParams`, the one definition) and what the row adds.

    Its columns are its field names (`_SPEC_COLUMNS`), so a field added here needs only its migration.
    """

    action: str = "imagine"
    parent_id: str | None = None
    source_tile: int | None = None
    strength: float | None = None
    given_prompts: tuple[str, ...] | None = None
    given_seeds: tuple[int, ...] | None = None
    init_image: str | None = None
    user_id: int | None = None
    guild_id: int | None = None
    channel_id: int | None = None
    mask_image: str | None = None
    chaos: int | None = None
    # A reproduction renders like its original (upscale: 2x limit, VAE tiling): the original's action.
    render_action: str | None = None
    # Preallocated id: the job's input images are written into its folder before the row exists.
    id: str | None = None
    #: deliver to the member alone (the ephemeral response, else a DM), never the channel
    private: bool = False
    #: the parameters that came from the member's /settings defaults (shown in the result)
    from_defaults: tuple[str, ...] = ()
    #: the registry model's name (None: the default model)
    model: str | None = None
    #: issue 22: the first sibling's id when one /imagine queued several jobs (permutations, --repeat)
    group_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class JobRecord(JobSpec):
    """A stored job row with its tiles: the spec it was created from and what happened to it since."""

    id: str
    status: str
    reason: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    expander: dict[str, Any] = field(default_factory=dict)
    render: dict[str, Any] = field(default_factory=dict)
    grid_path: str | None = None
    delivery: str = "pending"
    message_id: int | None = None
    tiles: tuple[Tile, ...] = ()
    # Set when Discord refused both the interaction edit and the channel post (delivery is then 'none').
    undelivered_reason: str | None = None
    delivery_claimed_at: float | None = None

    @property
    def prompts(self) -> tuple[str, ...]:
        return tuple(tile.prompt for tile in self.tiles)

    def to_json(self) -> dict[str, Any]:
        """The CLI's JSON shape."""
        return {
            "job_id": self.id,
            "status": self.status,
            "reason": self.reason,
            "action": self.action,
            "parent_id": self.parent_id,
            "seed_text": self.seed_text,
            "negative": self.negative,
            "seed": self.job_seed,
            "count": self.count,
            "steps": self.steps,
            "guidance": self.guidance,
            "width": self.width,
            "height": self.height,
            "expand": self.expand,
            "chaos": self.chaos,
            "strength": self.strength,
            "source_tile": self.source_tile,
            "init_image": self.init_image,
            "mask_image": self.mask_image,
            "prompts": list(self.prompts),
            "image_seeds": [tile.image_seed for tile in self.tiles],
            "images": [tile.path for tile in self.tiles],
            "grid": self.grid_path,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "attempts": self.attempts,
            "expander": self.expander,
            "render": self.render,
            "user_id": self.user_id,
            "guild_id": self.guild_id,
            "channel_id": self.channel_id,
            "mitigation": self.mitigation,
            "group_id": self.group_id,
            "tile": self.tiling,
        }


@dataclass(frozen=True)
class TilePress:
    """A button pressed on tile `tile` of the expanded grid `grid_id`: that prompt over the grid's others."""

    press_id: str
    action: str
    tile: int
    grid_id: str
    guild_id: int | None
    seed_text: str
    job_seed: int
    prompts: tuple[str, ...]
    expander: dict[str, Any]


def new_job_id() -> str:
    """Short, unguessable, URL- and custom_id-safe."""
    return secrets.token_hex(5)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no Infinity/NaN (scheduler configs carry -inf)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _dumps(value: Any) -> str:
    return json.dumps(_json_safe(value), allow_nan=False)


#: A field's column where the names differ (everything else: the field's name is the column's).
_COLUMN_OF = {"expander": "expander_json", "render": "render_json"}
_SPEC_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(JobSpec))
_RECORD_FIELDS: tuple[Field[Any], ...] = tuple(f for f in fields(JobRecord) if f.name != "tiles")


def _encode(name: str, value: Any) -> Any:
    """A JobSpec field's value as its column stores it."""
    if name in ("given_prompts", "given_seeds"):
        return json.dumps(list(value)) if value is not None else None
    if name == "from_defaults":
        return ",".join(value)
    if name == "mitigation":
        return json.dumps(value) if value is not None else None
    if name == "loras":
        return _loras_json(value)
    if isinstance(value, bool):
        return int(value)
    return value


def _decode(item: Field[Any], value: Any) -> Any:
    """A column's value as the JobRecord field `item` holds it (the inverse of `_encode`)."""
    name = item.name
    if name in ("given_prompts", "given_seeds"):
        return tuple(json.loads(value)) if value else None
    if name == "from_defaults":
        return tuple(filter(None, (value or "").split(",")))
    if name == "mitigation":
        return json.loads(value) if value else None
    if name in ("expander", "render"):
        return json.loads(value) if value else {}
    if name == "loras":
        return _loras_from(value)
    if item.type == "bool":
        return bool(value)
    return value


def _record(row: aiosqlite.Row, tiles: tuple[Tile, ...]) -> JobRecord:
    values = {f.name: _decode(f, row[_COLUMN_OF.get(f.name, f.name)]) for f in _RECORD_FIELDS}
    return JobRecord(**values, tiles=tiles)


def _loras_json(loras: tuple[LoraRef, ...]) -> str | None:
    return json.dumps([{"name": r.name, "weight": r.weight} for r in loras]) if loras else None


def _loras_from(text: str | None) -> tuple[LoraRef, ...]:
    return tuple(LoraRef(str(r["name"]), float(r["weight"])) for r in json.loads(text)) if text else ()
