"""Bias mitigations a job may run with (README → Bias audit and mitigations): names, one line each, and the
plain-data record a job stores and a render request carries (no torch here: the CLI and the bot import it).

A job's `mitigation` is None (off) or a dict with `mode`: `{"mode": "diverse-prompts"}`, or
`{"mode": "fair-guidance", "edit_scale": …, "warmup_steps": …, "threshold": …, …}` with every parameter the
render used, so Reproduce and `rerun` repeat it even after the operator changed the settings.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

from bot.engine.types import InvalidRequest

MITIGATIONS = ("off", "diverse-prompts", "fair-guidance")
#: One line each, as /settings, `--help` and the README explain them.
MITIGATION_HELP = {
    "off": "no mitigation: prompts and denoising exactly as asked",
    "diverse-prompts": "a prompt of a person that names no gender, ethnicity or age gets such descriptors, "
    "spread evenly over the grid's images (shown in each image's prompt)",
    "fair-guidance": "while denoising, each image is steered toward a female or a male presentation, "
    "half the grid each (Fair Diffusion's semantic guidance)",
}

# Fair Diffusion's edit prompts and the values of its reproduction script (generate_images.py, edit mode):
# edit guidance scale 4, warm-up 5 steps, threshold 0.95, momentum scale 0.5, momentum beta 0.6 (its
# README's example uses warm-up 10 and momentum 0.3). It ran SD 1.5 at diffusers' default 50 steps.
DEFAULT_CONCEPTS = ("female person", "male person")
DEFAULT_EDIT_SCALE = 4.0
DEFAULT_WARMUP_STEPS = 5
DEFAULT_THRESHOLD = 0.95
DEFAULT_MOMENTUM_SCALE = 0.5
DEFAULT_MOMENTUM_BETA = 0.6


@dataclass(frozen=True)
class FairGuidance:
    """The parameters of one job's fair guidance (stored with the job as plain data)."""

    edit_scale: float = DEFAULT_EDIT_SCALE
    warmup_steps: int = DEFAULT_WARMUP_STEPS
    threshold: float = DEFAULT_THRESHOLD
    momentum_scale: float = DEFAULT_MOMENTUM_SCALE
    momentum_beta: float = DEFAULT_MOMENTUM_BETA
    concepts: tuple[str, str] = field(default=DEFAULT_CONCEPTS)

    def record(self) -> dict[str, Any]:
        """As stored in the job's `mitigation` record."""
        return {"mode": "fair-guidance", **asdict(self), "concepts": list(self.concepts)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> FairGuidance:
        """The parameters of a stored record; InvalidRequest names a bad one."""
        try:
            concepts = tuple(str(c) for c in record.get("concepts", DEFAULT_CONCEPTS))
            params = cls(
                edit_scale=float(record.get("edit_scale", DEFAULT_EDIT_SCALE)),
                warmup_steps=int(record.get("warmup_steps", DEFAULT_WARMUP_STEPS)),
                threshold=float(record.get("threshold", DEFAULT_THRESHOLD)),
                momentum_scale=float(record.get("momentum_scale", DEFAULT_MOMENTUM_SCALE)),
                momentum_beta=float(record.get("momentum_beta", DEFAULT_MOMENTUM_BETA)),
                concepts=(concepts[0], concepts[1]) if len(concepts) == 2 else ("", ""),
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise InvalidRequest(f"`mitigation` has a malformed fair-guidance record ({exc})") from None
        params.check()
        return params

    def check(self) -> None:
        """InvalidRequest naming the first value out of range."""
        if not 0.0 <= self.edit_scale <= 50.0:
            raise InvalidRequest(f"fair guidance `edit_scale` must be 0..50, got {self.edit_scale}")
        if not 0 <= self.warmup_steps <= 1000:
            raise InvalidRequest(f"fair guidance `warmup_steps` must be 0..1000, got {self.warmup_steps}")
        if not 0.0 <= self.threshold < 1.0:
            raise InvalidRequest(f"fair guidance `threshold` must be in [0, 1), got {self.threshold}")
        if not 0.0 <= self.momentum_scale <= 10.0 or not 0.0 <= self.momentum_beta < 1.0:
            raise InvalidRequest("fair guidance momentum must be scale 0..10 and beta in [0, 1)")
        if not all(c.strip() for c in self.concepts) or len(self.concepts) != 2:
            raise InvalidRequest("fair guidance needs two non-empty edit concepts")


def directions(seed: int, count: int) -> list[int]:
    """Per image, the index of the concept it is guided toward: balanced over the grid, shuffled by `seed`."""
    chosen = [i % 2 for i in range(count)]
    random.Random(f"fair-guidance:{seed}").shuffle(chosen)
    return chosen


def mitigation_mode(record: dict[str, Any] | None) -> str:
    """`off`, `diverse-prompts` or `fair-guidance`."""
    return "off" if not record else str(record.get("mode", "off"))


def mitigation_record(mode: str, fair: FairGuidance | None = None) -> dict[str, Any] | None:
    """What a new job stores for `mode` (None when off); fair guidance with `fair`'s parameters."""
    if mode not in MITIGATIONS:
        raise InvalidRequest(f"`mitigation` must be one of {', '.join(MITIGATIONS)}, got {str(mode)[:40]!r}")
    if mode == "off":
        return None
    if mode == "fair-guidance":
        return (fair or FairGuidance()).record()
    return {"mode": mode}


def check_mitigation(record: object) -> None:
    """InvalidRequest naming what is wrong with a request's `mitigation`."""
    if record is None:
        return
    if not isinstance(record, dict):
        raise InvalidRequest(f"`mitigation` must be a record or null, got {type(record).__name__}")
    mode = mitigation_mode(record)
    if mode not in MITIGATIONS:
        raise InvalidRequest(f"`mitigation` must be one of {', '.join(MITIGATIONS)}, got {mode[:40]!r}")
    if mode == "fair-guidance":
        FairGuidance.from_record(record)


def describe_mitigation(record: dict[str, Any] | None) -> str:
    """One line for `show` and the result: the mode and, for fair guidance, its parameters."""
    mode = mitigation_mode(record)
    if mode != "fair-guidance" or record is None:
        return mode
    return (
        f"fair-guidance (edit scale {record.get('edit_scale')}, warm-up {record.get('warmup_steps')} steps, "
        f"threshold {record.get('threshold')})"
    )
