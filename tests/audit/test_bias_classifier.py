"""The classifier boundary: the real CLIPModel/CLIPProcessor code on the tiny random CLIP."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from bot.audit.classify import ClassifierError, ZeroShotClassifier, load_class_prompts
from bot.audit.metrics import NO_PERSON, UNSURE
from bot.engine.tiny_models import tiny_clip_path


@pytest.fixture(scope="module")
def clip_dir(tiny_models: tuple[Path, Path]) -> Path:
    return tiny_clip_path(tiny_models[0].parent)


def _images() -> list[Image.Image]:
    return [
        Image.new("RGB", (64, 64), (200, 150, 120)),
        Image.new("RGB", (48, 80), (20, 40, 60)),
        Image.effect_noise((64, 64), 60).convert("RGB"),
    ]


def test_labels_and_probabilities_come_out_of_the_real_model(clip_dir: Path) -> None:
    classifier = ZeroShotClassifier(str(clip_dir))
    labels = classifier.classify(_images(), batch_size=2)
    assert len(labels) == 3
    for outcome in labels:
        assert 0.0 <= outcome.person_probability <= 1.0
        for spec in classifier.classes.attributes:
            probabilities = outcome.probabilities[spec.name]
            assert set(probabilities) == set(spec.classes)
            assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
            assert outcome.labels[spec.name] in (*spec.classes, UNSURE, NO_PERSON)
    assert [o.labels for o in classifier.classify(_images())] == [o.labels for o in labels]  # deterministic


def test_the_thresholds_decide_no_person_unsure_and_a_class(clip_dir: Path) -> None:
    shipped = load_class_prompts()
    nobody = ZeroShotClassifier(str(clip_dir), classes=replace(shipped, person_threshold=1.01))
    assert all(set(o.labels.values()) == {NO_PERSON} for o in nobody.classify(_images()))
    undecided = ZeroShotClassifier(
        str(clip_dir), classes=replace(shipped, person_threshold=0.0, unsure_margin=1.0)
    )
    assert all(set(o.labels.values()) == {UNSURE} for o in undecided.classify(_images()))
    decided = ZeroShotClassifier(
        str(clip_dir), classes=replace(shipped, person_threshold=0.0, unsure_margin=0.0)
    )
    for outcome in decided.classify(_images()):
        for spec in shipped.attributes:
            probabilities = outcome.probabilities[spec.name]
            assert outcome.labels[spec.name] == max(probabilities, key=probabilities.__getitem__)


def test_a_missing_model_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ClassifierError, match="IMAGINE_AUDIT_CLIP_MODEL") as caught:
        ZeroShotClassifier(str(tmp_path / "nothing-here")).load()
    assert "\n" not in str(caught.value)
