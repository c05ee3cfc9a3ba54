"""The NudeNet classifier for real (the `safety` extra) on images the test draws, and the blur it triggers."""

from __future__ import annotations

import logging

import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageStat

from bot.engine.safety import (
    DEFAULT_FLAGGED_CLASSES,
    ClassifierUnavailable,
    NudeNetClassifier,
    TileVerdict,
    load_classifier,
    screen_tiles,
)

pytest.importorskip("nudenet", reason="the optional `safety` extra (NudeNet) is not installed")

# A skin-tone oval with one dark spot on a blue ground. NudeNet 3.4's detector scores it ~0.85
# FEMALE_BREAST_EXPOSED at every size from 256 to 768 px: a known false positive of the detector (README →
# Image safety), and a flagged image any test can draw. Found by hill-climbing the detector's raw score.
FLAGGED_DRAWING = (
    (0.3022, 0.2, 0.4, 0.55, (236, 188, 160)),
    (0.54, 0.3316, 0.06, 0.0997, (61, 40, 30)),
    (0.4101, 0.6, 0.0706, 0.0776, (200, 89, 80)),
    (0.03, 0.5999, 0.0745, 0.0531, (201, 148, 229)),
)


def draw_flagged(side: int = 320) -> Image.Image:
    image = Image.new("RGB", (side, side), (70, 110, 160))
    draw = ImageDraw.Draw(image)
    for x, y, w, h, colour in FLAGGED_DRAWING:
        draw.ellipse((x * side, y * side, (x + w) * side, (y + h) * side), fill=colour)
    return image.filter(ImageFilter.GaussianBlur(2 * side / 320))


@pytest.fixture(scope="module")
def classifier() -> NudeNetClassifier:
    return NudeNetClassifier()


def test_flat_and_plain_images_pass(classifier: NudeNetClassifier) -> None:
    images = [
        Image.new("RGB", (768, 768), colour) for colour in ((128, 128, 128), (236, 188, 160), (0, 0, 0))
    ]
    assert [v.flagged for v in classifier.classify(images)] == [False, False, False]


@pytest.mark.parametrize("side", [256, 768])
def test_the_drawing_is_flagged_with_the_default_classes(classifier: NudeNetClassifier, side: int) -> None:
    (verdict,) = classifier.classify([draw_flagged(side)])
    assert verdict.flagged
    assert [d.label for d in verdict.reasons] == ["FEMALE_BREAST_EXPOSED"]
    assert verdict.reasons[0].score >= 0.7
    assert "FEMALE_BREAST_EXPOSED" in DEFAULT_FLAGGED_CLASSES


def test_threshold_and_classes_decide(classifier: NudeNetClassifier) -> None:
    image = draw_flagged()
    score = classifier.detections(image)[0].score
    assert not NudeNetClassifier(threshold=min(1.0, score + 0.05)).classify([image])[0].flagged
    assert not NudeNetClassifier(classes=["MALE_GENITALIA_EXPOSED"]).classify([image])[0].flagged
    assert (
        NudeNetClassifier(threshold=score - 0.05, classes=["FEMALE_BREAST_EXPOSED"])
        .classify([image])[0]
        .flagged
    )
    with pytest.raises(ValueError, match="unknown NudeNet classes"):
        NudeNetClassifier(classes=["NSFW"])


def test_screen_blurs_only_flagged_tiles_and_keeps_upstream_flags(classifier: NudeNetClassifier) -> None:
    flagged, clean, upstream = (
        draw_flagged(128),
        Image.new("RGB", (128, 128), (40, 160, 90)),
        draw_flagged(128),
    )
    images, flags = screen_tiles(classifier, [flagged, clean, upstream], (False, False, True))
    assert flags == [True, False, True]
    assert images[1] is clean and images[2] is upstream  # the upstream checker blurred its own already
    # Blurred: the detail is gone (the drawing's edges spread), and the classifier no longer flags it.
    assert ImageStat.Stat(images[0].convert("L")).stddev[0] < ImageStat.Stat(flagged.convert("L")).stddev[0]
    assert not classifier.classify([images[0]])[0].flagged
    # No classifier (unfiltered channels): nothing changes.
    assert screen_tiles(None, [flagged], ()) == ([flagged], [False])


def test_load_modes() -> None:
    assert load_classifier("off", threshold=0.5, classes=DEFAULT_FLAGGED_CLASSES) is None
    loaded = load_classifier("auto", threshold=0.5, classes=DEFAULT_FLAGGED_CLASSES)
    assert isinstance(loaded, NudeNetClassifier)
    assert isinstance(loaded.classify([Image.new("RGB", (64, 64))])[0], TileVerdict)


@pytest.mark.parametrize("mode", ["auto", "nudenet"])
def test_switching_the_classifier_on_says_which_in_the_log(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: `auto` switched NudeNet on without a word once the `safety` extra was installed."""
    with caplog.at_level(logging.INFO, logger="bot.engine.safety"):
        assert load_classifier(mode, threshold=0.4, classes=("FEMALE_BREAST_EXPOSED",)) is not None
    (line,) = [record.getMessage() for record in caplog.records if "classifier on" in record.getMessage()]
    assert line.startswith("image classifier on: NudeNet")
    assert f"IMAGINE_IMAGE_CLASSIFIER={mode}" in line
    assert "threshold 0.4" in line and "FEMALE_BREAST_EXPOSED" in line
    assert "IMAGINE_IMAGE_CLASSIFIER=off" in line  # how to switch it off


def test_a_model_that_fails_to_load_is_a_clear_error(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model file is the boundary: a corrupt one gives ClassifierUnavailable, and `auto` turns it off."""
    import nudenet

    broken = tmp_path / "nudenet"
    broken.mkdir()
    (broken / "320n.onnx").write_bytes(b"not an onnx model")
    monkeypatch.setattr(nudenet, "__file__", str(broken / "__init__.py"))
    with pytest.raises(ClassifierUnavailable, match="failed to load"):
        NudeNetClassifier()
    assert load_classifier("auto", threshold=0.5, classes=DEFAULT_FLAGGED_CLASSES) is None
    with pytest.raises(ClassifierUnavailable):
        load_classifier("nudenet", threshold=0.5, classes=DEFAULT_FLAGGED_CLASSES)
