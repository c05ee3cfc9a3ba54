"""Teach the GPT-2 prompt expander from what members pick: DPO on (seed, pressed tile, other tiles) pairs.

Every U / Upscale / Vary / Zoom / Pan / Remix press on tile *i* of an expanded grid says "prompt *i* over
the grid's other prompts" for the same seed text, which is exactly a preference pair for Direct
Preference Optimization (Rafailov et al., 2023). The policy trains with TRL's `DPOTrainer` against a
frozen copy of the current expander; before and after, held-out pairs are scored with the same DPO
objective (sum of continuation log-probabilities, β) and with the preference accuracy (the share of
pairs whose preferred prompt the model finds more likely).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from bot.engine.loading import EXPANDER_RECORD as RECORD_NAME
from bot.store import TilePress

log = logging.getLogger(__name__)

MIN_PAIRS = 50


class ExpanderTrainingError(Exception):
    """Training cannot start; one line for the operator."""


@dataclass(frozen=True)
class PreferencePair:
    """One pick: the continuation GPT-2 wrote for the pressed tile over one it wrote for another tile."""

    prompt: str  # what the expander is fed: the seed text and a comma
    chosen: str
    rejected: str
    grid_id: str
    guild_id: int | None


@dataclass(frozen=True)
class ExpanderHyperparameters:
    epochs: int = 3
    lr: float = 5e-5
    beta: float = 0.1
    batch: int = 8
    holdout: float = 0.2
    seed: int = 0


@dataclass(frozen=True)
class PreferenceScores:
    """How a model ranks held-out pairs."""

    accuracy: float
    dpo_loss: float
    mean_margin: float  # log p(chosen) - log p(rejected), averaged


@dataclass(frozen=True)
class ExpanderResult:
    folder: Path
    record: dict[str, Any]
    before: PreferenceScores
    after: PreferenceScores
    train_pairs: int
    heldout_pairs: int
    seconds: float


def pairs_from_presses(presses: Sequence[TilePress]) -> list[PreferencePair]:
    """(seed, pressed tile's continuation, each other tile's continuation) for every press on an expanded grid.

    Tiles whose prompt is not the seed text plus a continuation (the expander fell back to the bare seed)
    and tiles with the same prompt as the pressed one carry no preference and are left out.
    """
    pairs: list[PreferencePair] = []
    for press in presses:
        if press.expander.get("source") in ("given", "seed") or not 1 <= press.tile <= len(press.prompts):
            continue
        seed = press.seed_text.strip()
        chosen = continuation(seed, press.prompts[press.tile - 1])
        if chosen is None:
            continue
        for index, other in enumerate(press.prompts, start=1):
            rejected = continuation(seed, other)
            if index == press.tile or rejected is None or rejected == chosen:
                continue
            pairs.append(PreferencePair(seed + ",", chosen, rejected, press.grid_id, press.guild_id))
    return pairs


def continuation(seed: str, prompt: str) -> str | None:
    """What GPT-2 wrote after `seed,` to make `prompt` (None when it wrote nothing)."""
    if not prompt.startswith(seed):
        return None
    rest = prompt[len(seed) :].removeprefix(",").strip()
    return " " + rest if rest else None


def split_pairs(
    pairs: list[PreferencePair], holdout: float, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Train and held-out pairs, split by grid: pairs of one grid share a chosen prompt, so a grid's pairs
    all land on one side (else the held-out score would test memory of the training set)."""
    grids = sorted({pair.grid_id for pair in pairs})
    random.Random(seed).shuffle(grids)
    cut = max(1, round(len(grids) * holdout))
    held = set(grids[:cut])
    return [p for p in pairs if p.grid_id not in held], [p for p in pairs if p.grid_id in held]


@torch.no_grad()
def sequence_logprobs(model: Any, tokenizer: Any, prompts: list[str], completions: list[str]) -> torch.Tensor:
    """Sum of log p(completion tokens | prompt) for each pair of texts."""
    device = next(model.parameters()).device
    sums = []
    for prompt, completion in zip(prompts, completions, strict=True):
        prompt_ids = tokenizer(prompt)["input_ids"]
        full_ids = prompt_ids + tokenizer(completion)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([full_ids], device=device)
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, :-1].float()
        logps = torch.log_softmax(logits, dim=-1)
        targets = ids[0, 1:]
        token_logps = logps.gather(1, targets.unsqueeze(1)).squeeze(1)
        sums.append(token_logps[len(prompt_ids) - 1 :].sum())
    return torch.stack(sums).cpu()


def score_pairs(
    model: Any, reference: Any, tokenizer: Any, pairs: Sequence[PreferencePair], beta: float
) -> PreferenceScores:
    """Preference accuracy of `model` and its DPO loss against `reference` on `pairs`."""
    prompts = [p.prompt for p in pairs]
    chosen = sequence_logprobs(model, tokenizer, prompts, [p.chosen for p in pairs])
    rejected = sequence_logprobs(model, tokenizer, prompts, [p.rejected for p in pairs])
    ref_chosen = sequence_logprobs(reference, tokenizer, prompts, [p.chosen for p in pairs])
    ref_rejected = sequence_logprobs(reference, tokenizer, prompts, [p.rejected for p in pairs])
    logits = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    loss = float(-torch.nn.functional.logsigmoid(logits).mean())
    margin = chosen - rejected
    return PreferenceScores(
        accuracy=float((margin > 0).float().mean()), dpo_loss=loss, mean_margin=float(margin.mean())
    )


def train_expander(
    pairs: list[PreferencePair],
    *,
    base: str,
    output: Path,
    hyper: ExpanderHyperparameters,
    scope: str,
    min_pairs: int = MIN_PAIRS,
    device: str = "cpu",
) -> ExpanderResult:
    """DPO-train a copy of the expander at `base` on `pairs`; write it to `output` with its record."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bot.engine.loading import _load_error, resolve_revision

    if len(pairs) < min_pairs:
        raise ExpanderTrainingError(
            f"{scope} has {len(pairs)} preference pair(s) from button presses on expanded grids; "
            f"training needs at least {min_pairs}"
        )
    if output.exists():
        raise ExpanderTrainingError(f"{output} already exists; pick another --name")
    started = time.perf_counter()
    train_pairs, heldout = split_pairs(pairs, hyper.holdout, hyper.seed)
    if not train_pairs:
        raise ExpanderTrainingError(f"{scope}: every pair fell into the held-out split; lower --holdout")
    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
        policy = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        reference = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    except Exception as exc:
        raise _load_error(base, "--base", exc) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    policy.to(device)  # type: ignore[arg-type]  # transformers' `to` wrapper confuses mypy
    reference.to(device)  # type: ignore[arg-type]
    reference.eval()
    policy.eval()
    before = score_pairs(policy, reference, tokenizer, heldout, hyper.beta)
    _dpo(policy, reference, tokenizer, train_pairs, hyper, output, device)
    policy.eval()
    after = score_pairs(policy, reference, tokenizer, heldout, hyper.beta)
    seconds = time.perf_counter() - started
    version = f"{output.name}-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}"
    record = {
        "version": version,
        "kind": "expander-dpo",
        "base_model": base,
        "base_revision": resolve_revision(base),
        "scope": scope,
        "pairs": {"train": len(train_pairs), "heldout": len(heldout)},
        "grids": len({p.grid_id for p in pairs}),
        "hyperparameters": asdict(hyper),
        "trainer": _trainer_versions(),
        "heldout_before": asdict(before),
        "heldout_after": asdict(after),
        "seconds": round(seconds, 3),
        "device": device,
        "created_at": time.time(),
    }
    _save_folder(policy, tokenizer, output, record)
    return ExpanderResult(output, record, before, after, len(train_pairs), len(heldout), seconds)


def _dpo(
    policy: Any,
    reference: Any,
    tokenizer: Any,
    pairs: list[PreferencePair],
    hyper: ExpanderHyperparameters,
    output: Path,
    device: str,
) -> None:
    """TRL's DPOTrainer, sigmoid loss, against the frozen reference; no checkpoints (minutes at most)."""
    import datasets
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    datasets.disable_progress_bars()  # the CLI prints its own summary; no per-map bars

    rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
    scratch = output.with_name(f".{output.name}.trainer-{os.getpid()}")
    config = DPOConfig(
        output_dir=str(scratch),
        per_device_train_batch_size=hyper.batch,
        num_train_epochs=hyper.epochs,
        learning_rate=hyper.lr,
        beta=hyper.beta,
        loss_type=["sigmoid"],
        seed=hyper.seed,
        data_seed=hyper.seed,
        use_cpu=device == "cpu",
        max_length=256,
        logging_steps=10,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
    )
    try:
        trainer = DPOTrainer(
            model=policy,
            ref_model=reference,
            args=config,
            train_dataset=datasets.Dataset.from_list(rows),
            processing_class=tokenizer,
        )
        trainer.remove_callback(PrinterCallback)  # a dict per logging step on stdout
        trainer.train()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _save_folder(policy: Any, tokenizer: Any, output: Path, record: dict[str, Any]) -> None:
    """Write the model, tokenizer and record into a temporary folder, then rename it to `output`."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, output)


def _trainer_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("trl", "transformers", "torch")}


def describe_scores(label: str, scores: PreferenceScores) -> str:
    return (
        f"{label}: preference accuracy {scores.accuracy:.1%}, held-out DPO loss {scores.dpo_loss:.4f}, "
        f"mean log-likelihood margin {scores.mean_margin:+.3f}"
    )
