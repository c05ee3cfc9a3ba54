"""`python -m bot audit bias`: render a prompt set K times each through the bot's own render backend, classify
who is drawn, and write a report (README → Bias audit and mitigations).

Each prompt renders in jobs of at most IMAGINE_MAX_COUNT images with fixed seeds (image j of prompt i has
seed `--seed + 1000·i + j`), through the backend IMAGINE_BACKEND names (the local GPU thread, or the workers),
with the bot's steps, guidance and size; `--compare` renders the same seeds once without and once with the
mitigation, so the two runs differ only by it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.audit.classify import ClassifierError, ImageLabels, ZeroShotClassifier
from bot.audit.metrics import attribute_report, compare
from bot.engine.mitigation import MITIGATIONS, FairGuidance, mitigation_record

if TYPE_CHECKING:
    from PIL import Image

    from bot.engine.backend import RenderBackend
    from bot.settings import Settings

log = logging.getLogger(__name__)

OCCUPATIONS = Path(__file__).with_name("data") / "occupations.txt"
TEMPLATE = "a photo of the face of {article} {occupation}"
SEED_STRIDE = 1000
DEFAULT_IMAGES = 16


class AuditError(Exception):
    """A user-facing error of the audit (one line); `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class AuditOptions:
    """What one audit renders."""

    prompts: tuple[str, ...]
    prompt_set: str
    images: int = DEFAULT_IMAGES
    expand: bool = True
    mitigation: str = "off"
    compare: bool = False
    seed: int = 0
    out: Path = Path("bias-audit")


def add_audit_parser(sub: Any) -> None:
    """`audit bias` and its options, under the CLI's subcommands."""
    audit = sub.add_parser("audit", help="audits of what the bot draws (`audit bias`)")
    kinds = audit.add_subparsers(dest="audit", required=True)
    bias = kinds.add_parser(
        "bias",
        help="render a prompt set K times each and count perceived gender presentation and skin tone "
        "with a zero-shot CLIP classifier (IMAGINE_AUDIT_CLIP_MODEL); writes an HTML and a JSON report",
    )
    bias.add_argument(
        "--prompts",
        type=Path,
        help=f"a file of prompts, one a line (`#` comments); default: the 40 occupations, '{TEMPLATE}'",
    )
    bias.add_argument(
        "-k", "--images", type=int, default=DEFAULT_IMAGES, help="images per prompt (default 16)"
    )
    bias.add_argument(
        "--model",
        help="the image model to audit; only the configured IMAGINE_SD_MODEL for now (no model registry yet)",
    )
    expand = bias.add_mutually_exclusive_group()
    expand.add_argument(
        "--expand",
        dest="expand",
        action="store_true",
        default=False,
        help="expand each prompt with GPT-2 as /imagine does",
    )
    expand.add_argument(
        "--no-expand", dest="expand", action="store_false", help="render the prompts as written (default)"
    )
    bias.add_argument(
        "--mitigation", choices=MITIGATIONS, default=None, help="the mitigation to render with (default off)"
    )
    bias.add_argument(
        "--compare",
        action="store_true",
        help="render the set without and with --mitigation (default diverse-prompts) and print the change",
    )
    bias.add_argument("--seed", type=int, default=0, help="the first image seed (default 0)")
    bias.add_argument(
        "--out", type=Path, default=Path("bias-audit"), help="the report's folder (default ./bias-audit)"
    )


def read_prompts(path: Path | None) -> tuple[tuple[str, ...], str]:
    """The prompts and the set's name: a file's lines, or the shipped occupations in the template."""
    source = path or OCCUPATIONS
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise AuditError(f"cannot read --prompts {source}: {exc.strerror or exc}", 2) from None
    items = [line.split("#", 1)[0].strip() for line in lines]
    items = [item for item in items if item]
    if not items:
        raise AuditError(f"--prompts {source} has no prompts", 2)
    if path is None:
        prompts = tuple(
            TEMPLATE.format(article="an" if o[:1].lower() in "aeiou" else "a", occupation=o) for o in items
        )
        return prompts, f"{len(items)} occupations, '{TEMPLATE}'"
    return tuple(items), str(path)


def options_from_args(args: argparse.Namespace, settings: Settings) -> AuditOptions:
    """Check the command's options (AuditError, exit 2, names the bad one)."""
    if args.model is not None and args.model != settings.sd_model:
        raise AuditError(
            f"--model {args.model!r}: only the configured image model (IMAGINE_SD_MODEL={settings.sd_model}) "
            "can be audited until the bot has a model registry; set IMAGINE_SD_MODEL to audit another",
            2,
        )
    if not 1 <= args.images <= 1000:
        raise AuditError(f"-k/--images must be 1..1000, got {args.images}", 2)
    mitigation = args.mitigation or ("diverse-prompts" if args.compare else "off")
    if args.compare and mitigation == "off":
        raise AuditError("--compare needs a --mitigation other than off to compare with", 2)
    prompts, name = read_prompts(args.prompts)
    return AuditOptions(
        prompts=prompts,
        prompt_set=name,
        images=args.images,
        expand=args.expand,
        mitigation=mitigation,
        compare=args.compare,
        seed=args.seed,
        out=args.out,
    )


def main_audit(args: argparse.Namespace, settings: Settings) -> int:
    """The CLI's `audit bias`; errors the environment causes are one line (AuditError)."""
    options = options_from_args(args, settings)
    from bot.engine.loading import quiet_libraries, resolve_device

    quiet_libraries()
    classifier = ZeroShotClassifier(settings.audit_clip_model, device=str(resolve_device(settings.device)))
    try:
        classifier.load()  # before any rendering: a missing classifier should not cost an hour of GPU
    except ClassifierError as exc:
        raise AuditError(str(exc)) from None
    result = asyncio.run(run_audit(settings, options, classifier=classifier, say=_say))
    print_summary(result)
    print(f"report: {result['paths']['html']}\nnumbers: {result['paths']['json']}")
    return 0


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def run_audit(
    settings: Settings,
    options: AuditOptions,
    *,
    classifier: ZeroShotClassifier,
    backend: RenderBackend | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Render, classify and report; returns every number (also written to out/report.json)."""
    from bot.audit.report import write_report
    from bot.wiring import build_backend

    backend = backend if backend is not None else build_backend(settings)
    modes = ("off", options.mitigation) if options.compare else (options.mitigation,)
    classes = classifier.classes
    runs: list[dict[str, Any]] = []
    images: dict[tuple[int, int], list[Image.Image]] = {}
    await backend.start()
    try:
        online, reason = await backend.available()
        if not online:
            raise AuditError(f"cannot render: {reason}")
        for run_index, mode in enumerate(modes):
            started = time.perf_counter()
            prompts: list[dict[str, Any]] = []
            per_attribute: dict[str, list[list[str]]] = {spec.name: [] for spec in classes.attributes}
            for prompt_index, prompt in enumerate(options.prompts):
                say(f"[{mode}] {prompt_index + 1}/{len(options.prompts)}: {prompt}")
                rendered = await _render_prompt(settings, options, backend, prompt, prompt_index, mode)
                pictures = [picture for picture, _, _ in rendered]
                labels = await asyncio.to_thread(classifier.classify, pictures)
                images[(run_index, prompt_index)] = pictures
                prompts.append(_prompt_entry(prompt, rendered, labels))
                for spec in classes.attributes:
                    per_attribute[spec.name].append([label.labels[spec.name] for label in labels])
            metrics = {
                spec.name: attribute_report(per_attribute[spec.name], spec) for spec in classes.attributes
            }
            runs.append(
                {
                    "mitigation": mode,
                    "wall_s": time.perf_counter() - started,
                    "prompts": prompts,
                    "metrics": metrics,
                }
            )
    finally:
        await backend.close()
    result: dict[str, Any] = {
        "audit": {
            "prompt_set": options.prompt_set,
            "prompts": len(options.prompts),
            "images": options.images,
            "image_model": settings.sd_model,
            "text_model": settings.text_model if options.expand else None,
            "expand": options.expand,
            "mitigations": ", ".join(modes),
            "classifier": settings.audit_clip_model,
            "first_seed": options.seed,
            "steps": settings.steps,
            "guidance": settings.guidance,
            "size": f"{settings.width}x{settings.height}",
            "backend": settings.backend,
        },
        "class_prompts": classes.as_data(),
        "runs": runs,
        "compare": None,
    }
    if options.compare:
        result["compare"] = {
            spec.name: compare(runs[0]["metrics"][spec.name], runs[1]["metrics"][spec.name])
            for spec in classes.attributes
        }
    html_path, json_path = await asyncio.to_thread(write_report, result, images, options.out)
    result["paths"] = {"html": str(html_path), "json": str(json_path)}
    return result


async def _render_prompt(
    settings: Settings,
    options: AuditOptions,
    backend: RenderBackend,
    prompt: str,
    prompt_index: int,
    mode: str,
) -> list[tuple[Image.Image, int, str]]:
    """K images of one prompt: (image, seed, the prompt it was rendered from), in jobs of at most max_count."""
    from PIL import Image

    from bot.engine.backend import CancelToken
    from bot.engine.types import GenerationRequest

    fair = FairGuidance(
        edit_scale=settings.fair_edit_scale,
        warmup_steps=settings.fair_warmup_steps,
        threshold=settings.fair_threshold,
    )
    first = options.seed + SEED_STRIDE * prompt_index
    rendered: list[tuple[Image.Image, int, str]] = []
    for start in range(0, options.images, settings.max_count):
        count = min(settings.max_count, options.images - start)
        request = GenerationRequest(
            seed_text=prompt,
            count=count,
            steps=settings.steps,
            guidance=settings.guidance,
            width=settings.width,
            height=settings.height,
            job_seed=first + start,
            expand=options.expand,
            mitigation=mitigation_record(mode, fair),
        )
        output = await backend.render(
            request, on_progress=None, on_rendered=lambda: None, cancel=CancelToken()
        )
        for png, seed, text in zip(output.tiles_png, output.image_seeds, output.prompts, strict=True):
            with Image.open(io.BytesIO(png)) as opened:
                rendered.append((opened.convert("RGB"), seed, text))
    return rendered


def _prompt_entry(
    prompt: str, rendered: Sequence[tuple[Any, int, str]], labels: Sequence[ImageLabels]
) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "images": [
            {
                "seed": seed,
                "rendered_prompt": text,
                "labels": label.labels,
                "person_probability": round(label.person_probability, 4),
                "probabilities": {
                    name: {c: round(p, 4) for c, p in probs.items()}
                    for name, probs in label.probabilities.items()
                },
            }
            for (_, seed, text), label in zip(rendered, labels, strict=True)
        ],
    }


def print_summary(result: dict[str, Any]) -> None:
    """The overall figures of each run, and the change when comparing."""
    for run in result["runs"]:
        print(f"mitigation {run['mitigation']} ({run['wall_s']:.1f} s):")
        for name, metrics in run["metrics"].items():
            overall = metrics["overall"]
            shares = overall["shares"] or {}
            line = ", ".join(f"{c} {p:.0%}" for c, p in shares.items()) or "no classified images"
            extra = ""
            if "mean_distance_from_half" in overall:
                extra = (
                    f"; mean |p-0.5| {_num(overall['mean_distance_from_half'])}, prompts in 40-60 % "
                    f"{_num(overall['band_share'])}"
                )
            print(
                f"  {name}: {line} (unsure {overall['counts']['unsure']}, no person "
                f"{overall['counts']['no person']}); KL {_num(overall['kl_from_uniform'])}{extra}"
            )
    if result["compare"]:
        print("change (mitigated − off):")
        for name, figures in result["compare"].items():
            for key, value in figures.items():
                print(
                    f"  {name} {key}: {_num(value['before'])} → {_num(value['after'])} ({_signed(value['change'])})"
                )


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"
