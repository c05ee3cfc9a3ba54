"""The LoRA training folder: images with optional `IMAGE.txt` captions, checked before any model loads."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

#: Fewer images than this refuse the dataset (a DreamBooth-style subject LoRA trains on 5-20).
MIN_IMAGES = 16
#: Largest picture accepted, in pixels (about 36 megapixels: a full-frame camera's); larger ones are
#: almost always scans or panoramas a LoRA should be cropped from first.
MAX_IMAGE_PIXELS = 6000 * 6000
CAPTION_SUFFIX = ".txt"


class DatasetError(Exception):
    """The training folder cannot be used; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class TrainingImage:
    """One picture of the dataset and the caption it trains on."""

    path: Path
    caption: str
    width: int
    height: int


@dataclass(frozen=True)
class Dataset:
    """A checked training folder."""

    images: tuple[TrainingImage, ...]
    digest: str

    @property
    def captions(self) -> list[str]:
        return [image.caption for image in self.images]


def load_dataset(
    folder: Path,
    *,
    caption: str | None,
    min_images: int = MIN_IMAGES,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Dataset:
    """Check `folder` and return its images with captions; DatasetError lists every problem found.

    Order matters to the reader: a file that is not a readable image comes first (it refuses the
    dataset whatever the count), then captions without an image, oversized pictures, images with no
    caption, and last the count rule.
    """
    if not folder.is_dir():
        raise DatasetError([f"--images {folder} is not a folder"])
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    caption_files = {p.stem: p for p in files if p.suffix.lower() == CAPTION_SUFFIX}
    candidates = [p for p in files if p.suffix.lower() != CAPTION_SUFFIX]
    unreadable: list[str] = []
    oversized: list[str] = []
    readable: list[tuple[Path, int, int]] = []
    for path in candidates:
        try:
            size = _image_size(path)
        except Image.DecompressionBombError:
            oversized.append(f"{path} has too many pixels (Pillow refuses to decode it); scale it down")
            continue
        if size is None:
            unreadable.append(f"{path} is not a readable image (PNG, JPEG, WebP…); remove it from the folder")
            continue
        width, height = size
        if width * height > max_pixels:
            oversized.append(
                f"{path} has too many pixels ({width}x{height} = {width * height:,}; at most {max_pixels:,}); "
                "scale it down"
            )
            continue
        readable.append((path, width, height))
    stems = {path.stem for path in candidates}
    orphans = [
        f"{path} is a caption without its image (no {path.stem}.png/.jpg/.webp beside it)"
        for stem, path in sorted(caption_files.items())
        if stem not in stems
    ]
    images: list[TrainingImage] = []
    uncaptioned: list[str] = []
    for path, width, height in readable:
        text = _read_caption(caption_files.get(path.stem)) or caption
        if not text:
            uncaptioned.append(
                f"{path} has no caption: add {path.stem}{CAPTION_SUFFIX} beside it or pass --caption"
            )
            continue
        images.append(TrainingImage(path, text, width, height))
    problems = unreadable + orphans + oversized + uncaptioned
    if len(readable) < min_images:
        problems.append(f"{folder} has {len(readable)} usable image(s); a LoRA needs at least {min_images}")
    if problems:
        raise DatasetError(problems)
    return Dataset(tuple(images), _dataset_digest(images))


def _image_size(path: Path) -> tuple[int, int] | None:
    """The picture's size if Pillow can decode it fully, else None (DecompressionBombError: far too big)."""
    try:
        with Image.open(path) as opened:
            opened.verify()  # checks the file's structure; `load` below decodes the pixels
        with Image.open(path) as opened:
            opened.load()
            return opened.size
    except Image.DecompressionBombError:
        raise
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return None


def _read_caption(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return " ".join(path.read_text(encoding="utf-8").split())
    except (OSError, UnicodeDecodeError):
        return ""


def _dataset_digest(images: list[TrainingImage]) -> str:
    """sha256 over every image's bytes and caption, in name order: the same folder gives the same hash."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(image.path.name.encode())
        digest.update(hashlib.sha256(image.path.read_bytes()).digest())
        digest.update(image.caption.encode())
    return "sha256:" + digest.hexdigest()
