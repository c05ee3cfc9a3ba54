"""Train a LoRA on the UNet's attention projections from a folder of pictures (own loop, diffusers + peft).

The loop follows diffusers' `train_text_to_image_lora.py`: frozen VAE and text encoder, LoRA on
`to_q, to_k, to_v, to_out.0`, the noise scheduler's own prediction type (epsilon or v_prediction), MSE
on the prediction. Latent distributions and caption embeddings are computed once (both encoders are
frozen), so a step costs one UNet forward and backward. Every random draw comes from one generator
whose state each checkpoint keeps: an interrupted run resumed from its checkpoint takes the same steps
as one that never stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from bot.train.checkpoints import (
    checkpoint_fingerprint,
    checkpoint_step,
    latest_checkpoint,
    load_checkpoint,
    lora_state,
    save_checkpoint,
)
from bot.train.dataset import Dataset
from bot.train.figures import ROW_PREFIX, save_atomic, strip, write_contact_sheet, write_loss_plot

log = logging.getLogger(__name__)

LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")


class TrainingError(Exception):
    """Training cannot start or go on; one line for the operator."""


@dataclass(frozen=True)
class LoraHyperparameters:
    """Everything that decides the weights (recorded in the sidecar, checked on --resume)."""

    steps: int = 500
    rank: int = 8
    lr: float = 1e-4
    batch: int = 1
    resolution: int = 512
    seed: int = 0


@dataclass(frozen=True)
class LoraJob:
    """One training run: what to train, from what, and where everything goes."""

    name: str
    base: str
    dataset: Dataset
    hyper: LoraHyperparameters
    output_dir: Path  # IMAGINE_LORA_DIR: NAME.safetensors and NAME.json land here, nothing else
    work_dir: Path  # checkpoints, validation images, loss curve
    device: str = "cpu"
    checkpoint_every: int = 100
    validate_every: int = 100
    validation_seeds: tuple[int, ...] = (1, 2, 3, 4)
    validation_steps: int = 20
    resume: bool = False
    show_progress: bool = False


@dataclass(frozen=True)
class LoraResult:
    """What a run produced; `interrupted` runs left only a checkpoint."""

    weights: Path | None
    sidecar: Path | None
    checkpoint: Path | None
    steps_done: int
    losses: tuple[float, ...]
    final_loss: float
    seconds: float
    steps_per_second: float
    peak_memory_bytes: int
    device: str
    interrupted: bool
    contact_sheet: Path | None
    loss_plot: Path | None
    resumed_from: int = 0
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Components:
    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    noise_scheduler: Any
    inference_scheduler: Any
    prediction_type: str


def train_lora(
    job: LoraJob,
    *,
    stop: threading.Event | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> LoraResult:
    """Train, checkpoint, validate; write the LoRA and its sidecar unless `stop` was set first."""
    from tqdm import tqdm

    stop = stop or threading.Event()
    device = torch.device(job.device)
    started_wall = time.time()
    parts = _load_components(job.base, device)
    weight_dtype = _mixed_precision_dtype(device)
    with torch.random.fork_rng(devices=[]):  # LoRA's gaussian init draws from the global RNG: seed it
        torch.manual_seed(job.hyper.seed)
        _add_lora(parts.unet, job.hyper.rank)
    if device.type == "cuda":
        parts.unet.enable_gradient_checkpointing()
        parts.vae.to(dtype=weight_dtype)
        parts.text_encoder.to(dtype=weight_dtype)
        parts.unet.to(dtype=weight_dtype)
        for param in parts.unet.parameters():
            if param.requires_grad:  # trainable LoRA weights stay float32; AdamW on half weights drifts
                param.data = param.data.float()
    params = [p for p in parts.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=job.hyper.lr, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cuda") if weight_dtype == torch.float16 else None
    generator = torch.Generator(device="cpu").manual_seed(job.hyper.seed)

    latent_mean, latent_std = _encode_images(job, parts, device)
    captions = job.dataset.captions
    embeddings = _encode_captions(captions, parts, device)

    checkpoints = job.work_dir / "checkpoints"
    losses: list[float] = []
    start_step, elapsed_before = 0, 0.0
    if job.resume:
        latest = latest_checkpoint(checkpoints)
        if latest is None:
            raise TrainingError(f"--resume: no checkpoint in {checkpoints}; start without --resume")
        _check_fingerprint(latest, job)
        start_step, losses, elapsed_before = load_checkpoint(
            latest, unet=parts.unet, optimizer=optimizer, generator=generator
        )
        if start_step > job.hyper.steps:
            raise TrainingError(
                f"--resume: the checkpoint is at step {start_step}, past --steps {job.hyper.steps}"
            )
        log.info("resumed from %s (step %d)", latest, start_step)
    elif checkpoints.is_dir() and latest_checkpoint(checkpoints) is not None:
        raise TrainingError(
            f"{checkpoints} already holds checkpoints of a run named {job.name!r}: pass --resume to go on, "
            "or pick another name"
        )
    if start_step == 0:
        _validate(job, parts, 0, device, weight_dtype)

    def checkpoint(at_step: int, elapsed: float) -> Path:
        return save_checkpoint(
            checkpoints,
            at_step,
            unet=parts.unet,
            optimizer=optimizer,
            generator=generator,
            losses=losses,
            elapsed=elapsed,
            fingerprint=_fingerprint(job),
        )

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    parts.unet.train()
    step = start_step
    last_checkpoint: Path | None = None
    step_seconds = 0.0  # optimiser steps only: what steps/s means (validation and checkpoints excluded)
    bar = tqdm(
        total=job.hyper.steps,
        initial=start_step,
        desc=f"lora {job.name}",
        unit="step",
        file=sys.stderr,
        disable=not job.show_progress,
    )
    try:
        while step < job.hyper.steps and not stop.is_set():
            step_started = time.perf_counter()
            loss = _training_step(
                job,
                parts,
                optimizer,
                scaler,
                generator,
                latent_mean,
                latent_std,
                embeddings,
                device,
                weight_dtype,
            )
            step_seconds += time.perf_counter() - step_started  # `.item()` in the step waits for the GPU
            step += 1
            losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if on_step is not None:
                on_step(step, loss)
            if step % job.checkpoint_every == 0 or step == job.hyper.steps:
                last_checkpoint = checkpoint(step, elapsed_before + step_seconds)
            if step % job.validate_every == 0 or step == job.hyper.steps:
                _validate(job, parts, step, device, weight_dtype)
                parts.unet.train()
                write_loss_plot(losses, job.work_dir / "loss.png", title=job.name)
    finally:
        bar.close()
    steps_run = step - start_step
    if last_checkpoint is None or checkpoint_step(last_checkpoint) != step:
        # Ctrl-C between checkpoints: keep what was learned so far.
        last_checkpoint = checkpoint(step, elapsed_before + step_seconds)
    loss_plot = write_loss_plot(losses, job.work_dir / "loss.png", title=job.name) if losses else None
    sheet = job.work_dir / "contact_sheet.png"
    peak = _peak_memory(device)
    final_loss = _tail_mean(losses)
    seconds = elapsed_before + step_seconds
    result_args: dict[str, Any] = {
        "checkpoint": last_checkpoint,
        "steps_done": step,
        "losses": tuple(losses),
        "final_loss": final_loss,
        "seconds": seconds,
        "steps_per_second": steps_run / step_seconds if step_seconds > 0 else 0.0,
        "peak_memory_bytes": peak,
        "device": _device_name(device),
        "contact_sheet": sheet if sheet.exists() else None,
        "loss_plot": loss_plot,
        "resumed_from": start_step,
    }
    if step < job.hyper.steps:
        return LoraResult(weights=None, sidecar=None, interrupted=True, **result_args)
    record = _sidecar_record(job, step, final_loss, seconds, time.time() - started_wall, device, parts)
    weights, sidecar = _publish(job, parts.unet, record)
    return LoraResult(weights=weights, sidecar=sidecar, interrupted=False, record=record, **result_args)


# -- model parts ------------------------------------------------------------------------------------


def _load_components(base: str, device: torch.device) -> _Components:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from bot.engine.loading import _load_error

    try:
        tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
        vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
        unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
        noise_scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
        inference_scheduler = _inference_scheduler(base)
    except Exception as exc:
        raise _load_error(base, "--base", exc) from exc
    for module in (text_encoder, vae, unet):
        module.requires_grad_(False)
        module.to(device)  # type: ignore[arg-type]  # transformers' `to` wrapper confuses mypy
    text_encoder.eval()
    vae.eval()
    prediction_type = str(noise_scheduler.config.get("prediction_type", "epsilon"))
    if prediction_type not in ("epsilon", "v_prediction"):
        raise TrainingError(
            f"--base {base}: prediction type {prediction_type!r} is not epsilon or v_prediction"
        )
    return _Components(
        tokenizer, text_encoder, vae, unet, noise_scheduler, inference_scheduler, prediction_type
    )


def _inference_scheduler(base: str) -> Any:
    """The bot's sampler (DPM-Solver++) on the base's noise schedule, for validation images."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_pretrained(base, subfolder="scheduler")


def _add_lora(unet: Any, rank: int) -> None:
    from peft import LoraConfig

    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        init_lora_weights="gaussian",
        target_modules=list(LORA_TARGET_MODULES),
    )
    unet.add_adapter(config)


def _mixed_precision_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the GPU has it, else fp16 with loss scaling; float32 off CUDA (CPU autocast is slower)."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _pixels(path: Path, resolution: int) -> torch.Tensor:
    """The picture scaled so its short side is `resolution`, centre-cropped square, in [-1, 1]."""
    import numpy as np

    with Image.open(path) as opened:
        image = opened.convert("RGB")
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.LANCZOS)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


@torch.no_grad()
def _encode_images(
    job: LoraJob, parts: _Components, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each picture's latent distribution (mean, std), once: the VAE is frozen."""
    means, stds = [], []
    dtype = next(parts.vae.parameters()).dtype
    for image in job.dataset.images:
        pixels = _pixels(image.path, job.hyper.resolution).unsqueeze(0).to(device, dtype)
        dist = parts.vae.encode(pixels).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def _encode_captions(captions: list[str], parts: _Components, device: torch.device) -> torch.Tensor:
    """Each caption's text-encoder hidden states, once: the text encoder is frozen."""
    tokens = parts.tokenizer(
        captions,
        padding="max_length",
        max_length=parts.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return parts.text_encoder(tokens.input_ids.to(device))[0].float().cpu()


def _training_step(
    job: LoraJob,
    parts: _Components,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    generator: torch.Generator,
    latent_mean: torch.Tensor,
    latent_std: torch.Tensor,
    embeddings: torch.Tensor,
    device: torch.device,
    weight_dtype: torch.dtype,
) -> float:
    """One optimiser step on a random batch; returns its loss."""
    count = latent_mean.shape[0]
    index = torch.randint(0, count, (job.hyper.batch,), generator=generator)
    sample = latent_mean[index] + latent_std[index] * torch.randn(
        latent_mean[index].shape, generator=generator
    )
    latents = (sample * parts.vae.config.scaling_factor).to(device)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    steps = parts.noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (job.hyper.batch,), generator=generator).to(device)
    noisy = parts.noise_scheduler.add_noise(latents, noise, timesteps)
    if parts.prediction_type == "v_prediction":
        target = parts.noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    hidden = embeddings[index].to(device)
    with torch.autocast(device.type, dtype=weight_dtype, enabled=device.type == "cuda"):
        prediction = parts.unet(noisy.to(weight_dtype), timesteps, hidden.to(weight_dtype)).sample
    loss = torch.nn.functional.mse_loss(prediction.float(), target.float(), reduction="mean")
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    value = float(loss.detach().item())
    if not math.isfinite(value):
        raise TrainingError(f"the loss became {value}; lower --lr (now {job.hyper.lr})")
    return value


def _fingerprint(job: LoraJob) -> dict[str, Any]:
    """What a resumed run must share with its checkpoint (--steps may grow)."""
    hyper = asdict(job.hyper)
    hyper.pop("steps")
    return {"base": job.base, "dataset": job.dataset.digest, **hyper}


def _check_fingerprint(path: Path, job: LoraJob) -> None:
    recorded, expected = checkpoint_fingerprint(path), _fingerprint(job)
    changed = [k for k in expected if recorded.get(k) != expected[k]]
    if changed:
        was = ", ".join(f"{k}={recorded.get(k)!r} (now {expected[k]!r})" for k in changed)
        raise TrainingError(f"--resume: {path} was trained with {was}; resume with the same settings")


# -- outputs ----------------------------------------------------------------------------------------


def _publish(job: LoraJob, unet: Any, record: dict[str, Any]) -> tuple[Path, Path]:
    """Write NAME.safetensors (diffusers' LoRA format) and NAME.json, each by atomic rename."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    job.output_dir.mkdir(parents=True, exist_ok=True)
    weights = job.output_dir / f"{job.name}.safetensors"
    sidecar = job.output_dir / f"{job.name}.json"
    staging = job.work_dir / f".publish-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        layers = convert_state_dict_to_diffusers(lora_state(unet))
        StableDiffusionPipeline.save_lora_weights(
            staging, unet_lora_layers=layers, weight_name=weights.name, safe_serialization=True
        )
        tmp_weights = job.output_dir / f".{weights.name}.{os.getpid()}.tmp"
        shutil.move(str(staging / weights.name), tmp_weights)
        os.replace(tmp_weights, weights)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    tmp_sidecar = job.output_dir / f".{sidecar.name}.{os.getpid()}.tmp"
    tmp_sidecar.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp_sidecar, sidecar)
    return weights, sidecar


def _sidecar_record(
    job: LoraJob,
    steps: int,
    final_loss: float,
    seconds: float,
    wall_seconds: float,
    device: torch.device,
    parts: _Components,
) -> dict[str, Any]:
    from bot.engine.loading import resolve_revision

    return {
        "name": job.name,
        "kind": "lora",
        "base_model": job.base,
        "base_revision": resolve_revision(job.base),
        "prediction_type": parts.prediction_type,
        "target_modules": list(LORA_TARGET_MODULES),
        "dataset": {
            "folder": str(job.dataset.images[0].path.parent.resolve()),
            "hash": job.dataset.digest,
            "images": len(job.dataset.images),
            "captions": sorted(set(job.dataset.captions)),
        },
        "hyperparameters": asdict(job.hyper)
        | {
            "lora_alpha": job.hyper.rank,
            "optimizer": "AdamW(weight_decay=0.01)",
            "mixed_precision": str(_mixed_precision_dtype(device)).removeprefix("torch."),
            "gradient_checkpointing": device.type == "cuda",
            "checkpoint_every": job.checkpoint_every,
            "validate_every": job.validate_every,
            "validation_seeds": list(job.validation_seeds),
        },
        "steps": steps,
        "final_loss": final_loss,
        "training_seconds": round(seconds, 3),
        "wall_seconds": round(wall_seconds, 3),
        "device": _device_name(device),
        "created_at": time.time(),
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _peak_memory(device: torch.device) -> int:
    """Peak CUDA memory allocated in the loop, or the process's peak resident memory off CUDA."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # kilobytes on Linux


def _tail_mean(losses: list[float]) -> float:
    """The mean of the last tenth of the losses (a single step's loss is mostly timestep noise)."""
    if not losses:
        return float("nan")
    tail = losses[-max(1, len(losses) // 10) :]
    return sum(tail) / len(tail)


@torch.no_grad()
def render_validation(
    parts: _Components, job: LoraJob, device: torch.device, weight_dtype: torch.dtype
) -> list[Image.Image]:
    """The first caption at each validation seed, with the UNet as it is now."""
    from diffusers import StableDiffusionPipeline

    pipe: Any = StableDiffusionPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        unet=parts.unet,
        scheduler=parts.inference_scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    parts.unet.eval()
    images = []
    prompt = job.dataset.images[0].caption
    for seed in job.validation_seeds:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        with torch.autocast(device.type, dtype=weight_dtype, enabled=device.type == "cuda"):
            out = pipe(
                prompt,
                num_inference_steps=job.validation_steps,
                height=job.hyper.resolution,
                width=job.hyper.resolution,
                generator=generator,
            )
        images.append(out.images[0])
    return images


def _validate(
    job: LoraJob, parts: _Components, step: int, device: torch.device, weight_dtype: torch.dtype
) -> None:
    images = render_validation(parts, job, device, weight_dtype)
    folder = job.work_dir / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    save_atomic(strip(images), folder / f"{ROW_PREFIX}{step:07d}.png")
    write_contact_sheet(folder, job.work_dir / "contact_sheet.png")
