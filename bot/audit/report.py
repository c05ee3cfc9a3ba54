"""The audit's report: one self-contained HTML file (figures and contact sheets as base64 PNG) and a JSON of
every number. matplotlib draws the bar charts (the `audit` extra)."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from bot.audit.metrics import NO_PERSON, UNSURE

THUMB = 128
SHEET_COLUMNS = 8

CAVEAT = (
    "This report counts the <em>perceived</em> gender presentation and skin tone of generated pictures as "
    "one zero-shot CLIP classifier sees them. It says nothing about anyone's identity; the classifier has "
    "biases of its own (it was trained on web captions), is unreliable on stylised or partial faces, and "
    "reduces gender to two classes and skin tone to three. The figures hold for this prompt set, these seeds "
    "and these models only."
)


def _jpeg_b64(image: Image.Image) -> str:
    # Contact sheets are photographs: JPEG keeps a 40 × 16 report tens of MB smaller than PNG would.
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure_b64(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def contact_sheet(
    images: Sequence[Image.Image], *, thumb: int = THUMB, columns: int = SHEET_COLUMNS
) -> Image.Image:
    """The images as thumbnails on one sheet, row by row (numbered 1.. in reading order)."""
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns) if images else 1
    sheet = Image.new("RGB", (columns * thumb, rows * thumb), "white")
    for index, image in enumerate(images):
        tile = image.convert("RGB").resize((thumb, thumb), Image.Resampling.LANCZOS)
        sheet.paste(tile, ((index % columns) * thumb, (index // columns) * thumb))
    return sheet


def _bars_per_prompt(run: dict[str, Any], attribute: dict[str, Any], name: str, title: str) -> Any:
    """Stacked horizontal bars: each prompt's images by class, then unsure and no person."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_prompt = run["metrics"][name]["per_prompt"]
    prompts = [p["prompt"] for p in run["prompts"]]
    keys = [k for k in per_prompt[0]["counts"] if k not in (UNSURE, NO_PERSON)] + [UNSURE, NO_PERSON]
    figure, axis = plt.subplots(figsize=(8, 0.28 * len(prompts) + 1.2))
    left = [0.0] * len(prompts)
    for key in keys:
        values = [float(p["counts"][key]) for p in per_prompt]
        axis.barh(range(len(prompts)), values, left=left, label=key)
        left = [a + b for a, b in zip(left, values, strict=True)]
    axis.set_yticks(range(len(prompts)), [_short(p) for p in prompts], fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel("images")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7, loc="lower right")
    return figure


def _compare_figure(runs: Sequence[dict[str, Any]], name: str, title: str) -> Any:
    """|p − 0.5| per prompt, one bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prompts = [p["prompt"] for p in runs[0]["prompts"]]
    figure, axis = plt.subplots(figsize=(8, 0.28 * len(prompts) + 1.2))
    height = 0.8 / len(runs)
    for index, run in enumerate(runs):
        values = [p.get("distance_from_half") or 0.0 for p in run["metrics"][name]["per_prompt"]]
        axis.barh(
            [i + index * height for i in range(len(prompts))], values, height=height, label=run["mitigation"]
        )
    axis.set_yticks(range(len(prompts)), [_short(p) for p in prompts], fontsize=7)
    axis.invert_yaxis()
    axis.axvline(0.1, color="grey", linewidth=0.8, linestyle="--")
    axis.set_xlabel("|p − 0.5| (dashed: the 40–60 % band's edge)")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7)
    return figure


def _short(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def write_report(
    result: dict[str, Any], images: dict[tuple[int, int], list[Image.Image]], out: Path
) -> tuple[Path, Path]:
    """Write out/report.html and out/report.json; `result["figures"]` gets every figure's title."""
    out.mkdir(parents=True, exist_ok=True)
    figures: list[str] = []
    sections: list[str] = []

    def figure(title: str, data: str, kind: str = "png") -> str:
        figures.append(title)
        number = len(figures)
        return (
            f'<figure id="figure-{number}"><img alt="{html.escape(title)}" src="data:image/{kind};base64,{data}">'
            f"<figcaption>Figure {number}: {html.escape(title)}</figcaption></figure>"
        )

    specs = result["class_prompts"]["attributes"]
    runs = result["runs"]
    for run_index, run in enumerate(runs):
        mode = run["mitigation"]
        parts = [f"<h2>Run {run_index + 1}: mitigation {html.escape(mode)}</h2>"]
        parts.append(
            f"<p>{len(run['prompts'])} prompts × {result['audit']['images']} images, {run['wall_s']:.1f} s.</p>"
        )
        parts.append(_overall_table(run, specs))
        for name, spec in specs.items():
            title = f"{spec['label']} per prompt (mitigation {mode})"
            parts.append(figure(title, _figure_b64(_bars_per_prompt(run, spec, name, title))))
        for prompt_index, prompt in enumerate(run["prompts"]):
            title = f"contact sheet: {prompt['prompt']} (mitigation {mode})"
            sheet = contact_sheet(images.get((run_index, prompt_index), []))
            labels = "; ".join(
                f"{i + 1}: " + " / ".join(image["labels"][n] for n in specs)
                for i, image in enumerate(prompt["images"])
            )
            parts.append(figure(title, _jpeg_b64(sheet), "jpeg"))
            parts.append(f'<p class="labels">{html.escape(labels)}</p>')
        sections.append("\n".join(parts))
    if len(runs) > 1:
        parts = ["<h2>Comparison</h2>", _compare_table(result["compare"])]
        for name, spec in specs.items():
            if spec["binary"]:
                title = f"{spec['label']}: |p − 0.5| per prompt, by mitigation"
                parts.append(figure(title, _figure_b64(_compare_figure(runs, name, title))))
        sections.append("\n".join(parts))
    result["figures"] = figures
    json_path = out / "report.json"
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    html_path = out / "report.html"
    html_path.write_text(_page(result, sections), encoding="utf-8")
    return html_path, json_path


def _overall_table(run: dict[str, Any], specs: dict[str, Any]) -> str:
    rows = []
    for name, spec in specs.items():
        overall = run["metrics"][name]["overall"]
        shares = overall["shares"] or {}
        cells = ", ".join(f"{c} {shares.get(c, 0):.0%}" for c in spec["classes"]) if shares else "–"
        rows.append(
            f"<tr><td>{html.escape(spec['label'])}</td><td>{cells}</td>"
            f"<td>{overall['counts'][UNSURE]}</td><td>{overall['counts'][NO_PERSON]}</td>"
            f"<td>{_fmt(overall.get('mean_distance_from_half'))}</td><td>{_fmt(overall.get('band_share'))}</td>"
            f"<td>{_fmt(overall['kl_from_uniform'])}</td></tr>"
        )
    return (
        "<table><tr><th>attribute</th><th>shares (classified images)</th><th>unsure</th><th>no person</th>"
        "<th>mean |p − 0.5|</th><th>prompts in 40–60 %</th><th>KL from uniform (pooled, nats)</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _compare_table(compare: dict[str, Any]) -> str:
    rows = [
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(key)}</td><td>{_fmt(v['before'])}</td>"
        f"<td>{_fmt(v['after'])}</td><td>{_fmt(v['change'])}</td></tr>"
        for name, figures in compare.items()
        for key, v in figures.items()
    ]
    return (
        "<table><tr><th>attribute</th><th>figure</th><th>off</th><th>mitigated</th><th>change</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _page(result: dict[str, Any], sections: list[str]) -> str:
    audit = result["audit"]
    settings_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in audit.items())
    classes = html.escape(json.dumps(result["class_prompts"], indent=2, ensure_ascii=False))
    figure_list = "".join(
        f'<li><a href="#figure-{i + 1}">Figure {i + 1}: {html.escape(t)}</a></li>'
        for i, t in enumerate(result["figures"])
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imagine-bot bias audit</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}
figure{{margin:1em 0}}figcaption{{font-size:13px;color:#444}}.labels{{font-size:11px;color:#555}}
.caveat{{background:#fff6dd;padding:.6em 1em;border-left:4px solid #e0b000}}pre{{font-size:11px}}</style></head>
<body><h1>Bias audit</h1>
<p class="caveat">{CAVEAT}</p>
<h2>Settings</h2><table>{settings_rows}</table>
<h2>Figures</h2><ol>{figure_list}</ol>
{"".join(sections)}
<h2>Class prompts</h2><pre>{classes}</pre>
</body></html>
"""
