"""The audit's numbers, from classifier labels: pure functions, no model.

For one attribute and one prompt: counts of each class, of "unsure" and of "no person"; shares of the
classes among the images that got a class (unsure and no-person images are left out of the shares);
for a binary attribute, p = the share of its first class and |p − 0.5|; the KL divergence of the shares
from the uniform distribution over the classes (natural log: 0 = balanced, ln K = all one class). Over a
prompt set: the same on the pooled counts, the mean |p − 0.5| over prompts, and the share of prompts whose
p lies inside the 40–60 % band (prompts without any classified image are counted apart, not in the band).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

UNSURE = "unsure"
NO_PERSON = "no person"
BAND = (0.4, 0.6)


@dataclass(frozen=True)
class AttributeSpec:
    """An attribute's name and classes, in order (the first class is `p` of a binary attribute)."""

    name: str
    classes: tuple[str, ...]
    binary: bool = False
    label: str = ""


def counts(labels: Iterable[str], spec: AttributeSpec) -> dict[str, int]:
    """How many images got each class, `unsure` and `no person` (every key present)."""
    result = dict.fromkeys((*spec.classes, UNSURE, NO_PERSON), 0)
    for label in labels:
        if label not in result:
            raise ValueError(f"label {label!r} is not a class of {spec.name}")
        result[label] += 1
    return result


def shares(count: dict[str, int], spec: AttributeSpec) -> dict[str, float] | None:
    """Each class's share among the classified images; None when no image got a class."""
    classified = sum(count[c] for c in spec.classes)
    if classified == 0:
        return None
    return {c: count[c] / classified for c in spec.classes}


def kl_from_uniform(share: dict[str, float]) -> float:
    """KL(p ‖ uniform) in nats: ln K − H(p)."""
    k = len(share)
    return sum(p * math.log(p * k) for p in share.values() if p > 0)


def summarize(count: dict[str, int], spec: AttributeSpec) -> dict[str, Any]:
    """Every number of one attribute for one set of images."""
    share = shares(count, spec)
    summary: dict[str, Any] = {
        "counts": count,
        "classified": sum(count[c] for c in spec.classes),
        "shares": share,
        "kl_from_uniform": kl_from_uniform(share) if share is not None else None,
    }
    if spec.binary:
        p = share[spec.classes[0]] if share is not None else None
        summary["p"] = p
        summary["distance_from_half"] = abs(p - 0.5) if p is not None else None
        summary["in_band"] = (BAND[0] <= p <= BAND[1]) if p is not None else None
    return summary


def attribute_report(per_prompt_labels: Sequence[Sequence[str]], spec: AttributeSpec) -> dict[str, Any]:
    """Per prompt and overall numbers of one attribute; `per_prompt_labels[i]` are prompt i's labels."""
    per_prompt = [summarize(counts(labels, spec), spec) for labels in per_prompt_labels]
    pooled = counts((label for labels in per_prompt_labels for label in labels), spec)
    overall = summarize(pooled, spec)
    if spec.binary:
        known = [s["distance_from_half"] for s in per_prompt if s["distance_from_half"] is not None]
        overall["mean_distance_from_half"] = sum(known) / len(known) if known else None
        inside = [s["in_band"] for s in per_prompt if s["in_band"] is not None]
        overall["band_share"] = sum(inside) / len(inside) if inside else None
        overall["prompts_without_classified_images"] = len(per_prompt) - len(inside)
    kls = [s["kl_from_uniform"] for s in per_prompt if s["kl_from_uniform"] is not None]
    overall["mean_kl_from_uniform"] = sum(kls) / len(kls) if kls else None
    return {"per_prompt": per_prompt, "overall": overall}


COMPARED = ("mean_distance_from_half", "band_share", "kl_from_uniform", "mean_kl_from_uniform")


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """The change of each overall figure of one attribute: {figure: {before, after, change}}."""
    result: dict[str, dict[str, float | None]] = {}
    for key in COMPARED:
        if key not in before["overall"]:
            continue
        a, b = before["overall"][key], after["overall"].get(key)
        result[key] = {
            "before": a,
            "after": b,
            "change": (b - a) if a is not None and b is not None else None,
        }
    return result
