"""Pictures a training run leaves for people: the validation contact sheet and the loss curve."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageDraw

ROW_PREFIX = "step-"


def strip(images: list[Image.Image]) -> Image.Image:
    width, height = images[0].size
    strip = Image.new("RGB", (width * len(images), height))
    for i, image in enumerate(images):
        strip.paste(image, (i * width, 0))
    return strip


def write_contact_sheet(folder: Path, path: Path) -> Path:
    """One row per validation (oldest on top, step 0 = the base model), one column per seed."""
    rows = sorted(folder.glob(f"{ROW_PREFIX}*.png"), key=lambda p: int(p.stem.removeprefix(ROW_PREFIX)))
    strips = []
    for row in rows:
        with Image.open(row) as opened:
            strips.append((int(row.stem.removeprefix(ROW_PREFIX)), opened.convert("RGB")))
    label = 70
    width = label + max(s.width for _, s in strips)
    height = sum(s.height for _, s in strips)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    top = 0
    for step, strip in strips:
        draw.text((4, top + 4), f"step {step}", fill="black")
        sheet.paste(strip, (label, top))
        top += strip.height
    save_atomic(sheet, path)
    return path


def write_loss_plot(losses: list[float], path: Path, *, title: str) -> Path:
    """The training loss per step and its running mean, as a PNG (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5), dpi=100)
    axes = figure.add_subplot()
    steps = range(1, len(losses) + 1)
    axes.plot(steps, losses, linewidth=0.6, alpha=0.5, label="loss")
    window = max(1, len(losses) // 20)
    running = [
        sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
        for i in range(len(losses))
    ]
    axes.plot(steps, running, linewidth=1.5, label=f"mean of {window}")
    axes.set_xlabel("step")
    axes.set_ylabel("MSE")
    axes.set_title(f"LoRA {title}")
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    figure.savefig(tmp)
    os.replace(tmp, path)
    return path


def save_atomic(image: Image.Image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
