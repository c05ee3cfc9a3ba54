"""The offline image classifier for filtered channels: NudeNet's detector (ONNX, CPU), optional `safety` extra.

NudeNet (https://github.com/notAI-tech/NudeNet) ships its 320 px YOLO detector's weights inside the wheel, so
it runs with no download. Its wheel metadata says MIT but the wheel also carries an AGPL-3.0 licence file:
it is an optional extra (`pip install imagine-bot[safety]`) the operator chooses to install.

The classifier runs in the job runner's save stage (a worker thread, while the next job renders on the GPU
thread). An ONNX Runtime session may be run from several threads at once, so no lock is needed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from bot.engine.images import blur_for_safety

log = logging.getLogger(__name__)

#: Every label the NudeNet 3.4 detector knows.
NUDENET_LABELS: tuple[str, ...] = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)

#: The labels that flag a tile by default: exposed sexual body parts only.
DEFAULT_FLAGGED_CLASSES: tuple[str, ...] = (
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "BUTTOCKS_EXPOSED",
    "ANUS_EXPOSED",
)

INSTALL_HINT = "install the optional extra: pip install 'imagine-bot[safety]' (NudeNet; see README)"


class ClassifierUnavailable(Exception):
    """The classifier was asked for but cannot run (package missing or its model fails to load)."""


@dataclass(frozen=True)
class Detection:
    """One box the detector found: its label and score (0..1)."""

    label: str
    score: float


@dataclass(frozen=True)
class TileVerdict:
    """Whether a tile is flagged, and the detections that counted."""

    flagged: bool
    reasons: tuple[Detection, ...] = ()


class TileClassifier(Protocol):
    """What the job runner calls on a finished job's tiles (from a worker thread)."""

    name: str

    def classify(self, images: Sequence[Image.Image]) -> list[TileVerdict]: ...


class NudeNetClassifier:
    """NudeNet's detector with a threshold and the set of labels that flag a tile."""

    name = "nudenet"

    def __init__(
        self, *, threshold: float = 0.5, classes: Sequence[str] = DEFAULT_FLAGGED_CLASSES, threads: int = 1
    ) -> None:
        unknown = sorted(set(classes) - set(NUDENET_LABELS))
        if unknown:
            raise ValueError(f"unknown NudeNet classes {unknown}; known: {', '.join(NUDENET_LABELS)}")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"`threshold` must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.classes = frozenset(classes)
        try:
            import nudenet
            import onnxruntime
            from nudenet.nudenet import NudeDetector
        except ImportError as exc:
            raise ClassifierUnavailable(f"NudeNet is not installed: {INSTALL_HINT}") from exc
        model_path = Path(nudenet.__file__).parent / "320n.onnx"
        try:
            options = onnxruntime.SessionOptions()
            # One thread: the save stage shares the CPU with the GPU feeder; 20-40 ms a tile is plenty fast.
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(
                str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
            detector: Any = NudeDetector.__new__(NudeDetector)
            detector.onnx_session = session
            detector.input_width = detector.input_height = 320
            detector.input_name = session.get_inputs()[0].name
        except Exception as exc:
            raise ClassifierUnavailable(f"NudeNet's model {model_path} failed to load: {exc}") from exc
        self._detector = detector

    def detections(self, image: Image.Image) -> list[Detection]:
        """Every box NudeNet reports (its own floor is 0.2), any label."""
        import numpy as np

        # NudeNet expects what cv2.imread returns: 8-bit BGR.
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        return [Detection(str(d["class"]), float(d["score"])) for d in self._detector.detect(bgr)]

    def classify(self, images: Sequence[Image.Image]) -> list[TileVerdict]:
        verdicts = []
        for image in images:
            counted = tuple(
                d for d in self.detections(image) if d.label in self.classes and d.score >= self.threshold
            )
            verdicts.append(TileVerdict(bool(counted), counted))
        return verdicts


def screen_tiles(
    classifier: TileClassifier | None, images: Sequence[Image.Image], flagged_before: Sequence[bool] = ()
) -> tuple[list[Image.Image], list[bool]]:
    """Classify tiles (when a classifier is given); flagged ones come back blurred.

    `flagged_before` are flags already set upstream (the CompVis checker blurs its own); a tile is flagged
    when either says so. Flags come back in tile order.
    """
    flags = [bool(flag) for flag in flagged_before] or [False] * len(images)
    if classifier is None:
        return list(images), flags
    verdicts = classifier.classify(images)
    screened: list[Image.Image] = []
    for index, (image, verdict) in enumerate(zip(images, verdicts, strict=True), start=1):
        if verdict.flagged:
            log.info(
                "tile %d flagged by %s: %s",
                index,
                classifier.name,
                ", ".join(f"{d.label} {d.score:.2f}" for d in verdict.reasons),
            )
        # A tile the checker upstream already blurred is not blurred twice.
        screened.append(blur_for_safety(image) if verdict.flagged and not flags[index - 1] else image)
        flags[index - 1] = flags[index - 1] or verdict.flagged
    return screened, flags


def load_classifier(mode: str, *, threshold: float, classes: Sequence[str]) -> TileClassifier | None:
    """The classifier for IMAGINE_IMAGE_CLASSIFIER: `off`, `nudenet` (required) or `auto` (when installed)."""
    if mode == "off":
        return None
    try:
        classifier = NudeNetClassifier(threshold=threshold, classes=classes)
    except ClassifierUnavailable as exc:
        if mode == "auto":
            log.info("image classifier off: %s", exc)
            return None
        raise
    # Never on without a word: with `auto`, installing the `safety` extra is all it takes.
    log.info(
        "image classifier on: NudeNet (IMAGINE_IMAGE_CLASSIFIER=%s), threshold %s, flagging %s; "
        "IMAGINE_IMAGE_CLASSIFIER=off switches it off",
        mode,
        threshold,
        ", ".join(sorted(classes)),
    )
    return classifier
