"""The audit's zero-shot classifier: a CLIP model (transformers' CLIPModel and CLIPProcessor) and class
prompts that are data (`data/classes.toml`).

For each image: is a person there (the softmax over every presence prompt, summed per side, against
`person_threshold`); if so, for each attribute the softmax over its classes (each class's prompt
embeddings averaged: prompt ensembling), and "unsure" when the two likeliest classes are within
`unsure_margin`. What comes out is the *perceived* presentation in a generated picture as this one model
sees it, with that model's own biases — never a person's identity.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.audit.metrics import NO_PERSON, UNSURE, AttributeSpec

log = logging.getLogger(__name__)

CLASS_PROMPTS = Path(__file__).with_name("data") / "classes.toml"


class ClassifierError(Exception):
    """The classifier cannot be loaded or its class prompts are malformed: one line, what to do."""


@dataclass(frozen=True)
class ClassPrompts:
    """The class prompts and thresholds of `data/classes.toml`."""

    person: tuple[str, ...]
    no_person: tuple[str, ...]
    attributes: tuple[AttributeSpec, ...]
    prompts: dict[str, dict[str, tuple[str, ...]]]
    person_threshold: float = 0.5
    unsure_margin: float = 0.1

    def as_data(self) -> dict[str, Any]:
        """Every prompt and threshold, as the report lists them."""
        return {
            "person_threshold": self.person_threshold,
            "unsure_margin": self.unsure_margin,
            "presence": {"person": list(self.person), "no_person": list(self.no_person)},
            "attributes": {
                spec.name: {
                    "label": spec.label,
                    "binary": spec.binary,
                    "classes": {c: list(self.prompts[spec.name][c]) for c in spec.classes},
                }
                for spec in self.attributes
            },
        }


def load_class_prompts(path: Path = CLASS_PROMPTS) -> ClassPrompts:
    """Read a class-prompt file (the shipped one by default); ClassifierError names what is wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        specs, prompts = [], {}
        for attribute in data["attribute"]:
            classes = {str(k): tuple(str(p) for p in v) for k, v in attribute["classes"].items()}
            if len(classes) < 2 or not all(classes.values()):
                raise ValueError(f"attribute {attribute['name']!r} needs two or more classes with prompts")
            if bool(attribute.get("binary")) and len(classes) != 2:
                raise ValueError(f"binary attribute {attribute['name']!r} needs exactly two classes")
            specs.append(
                AttributeSpec(
                    name=str(attribute["name"]),
                    classes=tuple(classes),
                    binary=bool(attribute.get("binary", False)),
                    label=str(attribute.get("label", attribute["name"])),
                )
            )
            prompts[str(attribute["name"])] = classes
        return ClassPrompts(
            person=tuple(data["presence"]["person"]),
            no_person=tuple(data["presence"]["no_person"]),
            attributes=tuple(specs),
            prompts=prompts,
            person_threshold=float(data.get("person_threshold", 0.5)),
            unsure_margin=float(data.get("unsure_margin", 0.1)),
        )
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ClassifierError(f"cannot read the class prompts {path}: {exc}") from None


@dataclass(frozen=True)
class ImageLabels:
    """One image's outcome: a label per attribute (a class, `unsure` or `no person`) and the probabilities."""

    labels: dict[str, str]
    person_probability: float
    probabilities: dict[str, dict[str, float]] = field(default_factory=dict)


def decide(probabilities: dict[str, float], margin: float) -> str:
    """The likeliest class, or `unsure` when the runner-up is within `margin` of it."""
    ranked = sorted(probabilities.items(), key=lambda item: item[1], reverse=True)
    if len(ranked) > 1 and ranked[0][1] - ranked[1][1] < margin:
        return UNSURE
    return ranked[0][0]


def label_image(
    person_probability: float, attribute_probabilities: dict[str, dict[str, float]], classes: ClassPrompts
) -> ImageLabels:
    """The labels of one image from its probabilities (the boundary between the model and the counting)."""
    if person_probability < classes.person_threshold:
        labels = {spec.name: NO_PERSON for spec in classes.attributes}
    else:
        labels = {
            spec.name: decide(attribute_probabilities[spec.name], classes.unsure_margin)
            for spec in classes.attributes
        }
    return ImageLabels(labels, person_probability, attribute_probabilities)


class ZeroShotClassifier:
    """A CLIP model and the class prompts' text embeddings; `classify` labels a batch of images."""

    def __init__(self, model_id: str, *, device: str = "cpu", classes: ClassPrompts | None = None) -> None:
        self.model_id = model_id
        self.device = device
        self.classes = classes or load_class_prompts()
        self._model: Any = None
        self._processor: Any = None
        self._presence: Any = None
        self._attributes: dict[str, Any] = {}

    def load(self) -> None:
        """Load the model and embed every class prompt (once); ClassifierError when the model is missing."""
        if self._model is not None:
            return
        import torch
        from transformers import CLIPModel, CLIPProcessor

        try:
            self._processor = CLIPProcessor.from_pretrained(self.model_id)
            model: Any = CLIPModel.from_pretrained(self.model_id)
            self._model = model.to(self.device).eval()
        except (OSError, ValueError) as exc:
            raise ClassifierError(
                f"cannot load the audit classifier IMAGINE_AUDIT_CLIP_MODEL={self.model_id!r} "
                f"({type(exc).__name__}): download it once (`hf download {self.model_id}`) or give a local "
                "folder"
            ) from None
        with torch.inference_mode():
            self._presence = self._embed_texts([*self.classes.person, *self.classes.no_person])
            for spec in self.classes.attributes:
                per_class = [
                    self._embed_texts(list(self.classes.prompts[spec.name][c])).mean(dim=0)
                    for c in spec.classes
                ]
                stacked = torch.stack(per_class)
                self._attributes[spec.name] = stacked / stacked.norm(dim=-1, keepdim=True)

    def _embed_texts(self, texts: Sequence[str]) -> Any:
        tokens = self._processor.tokenizer(list(texts), padding=True, return_tensors="pt").to(self.device)
        features = _features(self._model.get_text_features(**tokens))
        return features / features.norm(dim=-1, keepdim=True)

    def classify(self, images: Sequence[Any], *, batch_size: int = 16) -> list[ImageLabels]:
        """Labels for each PIL image."""
        import torch

        self.load()
        scale = self._model.logit_scale.exp()
        person_count = len(self.classes.person)
        results: list[ImageLabels] = []
        for start in range(0, len(images), batch_size):
            batch = [image.convert("RGB") for image in images[start : start + batch_size]]
            with torch.inference_mode():
                pixels = self._processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
                features = _features(self._model.get_image_features(pixel_values=pixels))
                features = features / features.norm(dim=-1, keepdim=True)
                presence = (scale * features @ self._presence.T).softmax(dim=-1)
                person = presence[:, :person_count].sum(dim=-1)
                per_attribute = {
                    name: (scale * features @ embeds.T).softmax(dim=-1)
                    for name, embeds in self._attributes.items()
                }
            for row in range(len(batch)):
                probabilities = {
                    spec.name: {
                        c: float(per_attribute[spec.name][row, i]) for i, c in enumerate(spec.classes)
                    }
                    for spec in self.classes.attributes
                }
                results.append(label_image(float(person[row]), probabilities, self.classes))
        return results


def _features(output: Any) -> Any:
    """transformers 5 returns the projected features as `pooler_output` of an output object; 4.x a tensor."""
    return output if hasattr(output, "norm") else output.pooler_output
