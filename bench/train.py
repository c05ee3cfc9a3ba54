"""Fine-tuning costs: LoRA training steps/s and peak memory, and expander DPO time per 1,000 pairs.

1. LoRA on the tiny SD2 model, end to end through `bot.train.lora.train_lora` (16 synthetic pictures,
   `--tiny-resolution`, batch 1, rank 8): optimiser steps per second (validation and checkpoints excluded)
   and peak memory (CUDA: `max_memory_allocated`; CPU: the process's peak resident set so far).
2. LoRA on the real SD 2.1 UNet architecture (865.9 M parameters, random weights, built from the
   published config in `bench.gpu_sd21`), v-prediction, at `--sd21-resolution` (latent side / 8), batch 1:
   `--sd21-steps` of the same `_training_step` the trainer runs, after one warm-up step. The trainer
   computes VAE latents and caption embeddings once, so a step is one UNet forward and backward; the
   bench feeds random latents and 77x1024 embeddings of the right shapes instead of building the VAE and
   text encoder. On CUDA it uses the trainer's bf16 autocast and gradient checkpointing.
3. The expander: TRL DPO (`bot.train.expander._dpo`) on `--pairs` synthetic pairs, one epoch, batch 8,
   on the tiny GPT-2 (and `--gpt2-small`: GPT-2 small's architecture, 124 M, random weights); seconds per
   1,000 pairs.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.train                      # CPU: tiny + SD 2.1 (minutes)
    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.train --skip-sd21          # tiny + expander only
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench._common import DEFAULT_TINY_DIR, machine_line, offline, resolve_models


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pictures(folder: Path, side: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(16):
        pixels = rng.integers(0, 80, (side, side, 3), dtype=np.uint8)
        pixels[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = (230, 30, 30)
        Image.fromarray(pixels).save(folder / f"square{i:02d}.png")


def bench_tiny_lora(sd: str, device: str, resolution: int, steps: int) -> dict[str, Any]:
    from bot.train.dataset import load_dataset
    from bot.train.lora import LoraHyperparameters, LoraJob, train_lora

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _pictures(root / "pictures", resolution)
        job = LoraJob(
            name="bench",
            base=sd,
            dataset=load_dataset(root / "pictures", caption="a photo of sks square"),
            hyper=LoraHyperparameters(steps=steps, rank=8, lr=1e-3, batch=1, resolution=resolution),
            output_dir=root / "loras",
            work_dir=root / "work",
            device=device,
            checkpoint_every=steps,
            validate_every=steps,
            validation_seeds=(1,),
            validation_steps=2,
        )
        result = train_lora(job)
    return {
        "steps/s": result.steps_per_second,
        "peak": result.peak_memory_bytes / 2**20,
        "first→last loss": f"{result.losses[0]:.3f}→{result.final_loss:.3f}",
    }


def bench_sd21_lora(device_name: str, resolution: int, steps: int) -> dict[str, Any]:
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from bench.gpu_sd21 import SCHEDULER_CONFIG, UNET_CONFIG, parameter_count
    from bot.train.dataset import Dataset
    from bot.train.lora import (
        LoraHyperparameters,
        LoraJob,
        _add_lora,
        _Components,
        _mixed_precision_dtype,
        _training_step,
    )

    device = torch.device(device_name)
    started = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**UNET_CONFIG)
    unet.requires_grad_(False)
    weight_dtype = _mixed_precision_dtype(device)
    _add_lora(unet, 8)
    if device.type == "cuda":
        unet.enable_gradient_checkpointing()
        unet.to(dtype=weight_dtype)
        for param in unet.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    build_seconds = time.perf_counter() - started
    trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    scheduler_config = {
        k: v
        for k, v in SCHEDULER_CONFIG.items()
        if k not in ("algorithm_type", "solver_order", "use_karras_sigmas")
    }
    parts = _Components(
        tokenizer=None,
        text_encoder=None,
        vae=SimpleNamespace(config=SimpleNamespace(scaling_factor=0.18215)),
        unet=unet,
        noise_scheduler=DDPMScheduler(**scheduler_config),
        inference_scheduler=None,
        prediction_type="v_prediction",
    )
    job = LoraJob(
        name="bench",
        base="sd21-random",
        dataset=Dataset((), ""),
        hyper=LoraHyperparameters(steps=steps, rank=8, lr=1e-4, batch=1, resolution=resolution),
        output_dir=Path("unused"),
        work_dir=Path("unused"),
        device=device_name,
    )
    side = resolution // 8
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(4, 4, side, side, generator=generator)
    std = torch.full_like(mean, 0.05)
    embeddings = torch.randn(4, 77, 1024, generator=generator)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scaler = torch.amp.GradScaler("cuda") if weight_dtype == torch.float16 else None
    unet.train()

    def step() -> float:
        return _training_step(
            job, parts, optimizer, scaler, generator, mean, std, embeddings, device, weight_dtype
        )

    step()  # warm-up (allocator, kernels)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(steps):
        began = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - began)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _peak_rss_mib()
    return {
        "unet params": parameter_count(unet) - trainable,
        "lora params": trainable,
        "build s": build_seconds,
        "s/step": sorted(seconds)[len(seconds) // 2],
        "steps/s": 1 / (sum(seconds) / len(seconds)),
        "peak": peak,
    }


def bench_expander(text_model: str, pairs: int, *, gpt2_small: bool) -> dict[str, Any]:
    import random

    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from bot.train.expander import ExpanderHyperparameters, PreferencePair, _dpo

    tokenizer = AutoTokenizer.from_pretrained(text_model)
    tokenizer.pad_token = tokenizer.eos_token
    if gpt2_small:
        # GPT-2 small as released: 124 M parameters, 50,257-token vocabulary (the tiny tokenizer's ids fit in it).
        config = GPT2Config(bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
        policy, reference = GPT2LMHeadModel(config), GPT2LMHeadModel(config)
    else:
        policy = AutoModelForCausalLM.from_pretrained(text_model)
        reference = AutoModelForCausalLM.from_pretrained(text_model)
    rng = random.Random(0)
    seeds = ["a castle", "a forest", "a city", "a lake", "a robot", "a dragon"]
    styles = ["oil painting, by greg rutkowski", "digital art, trending on artstation", "concept art, 8k"]
    made = [
        PreferencePair(
            f"{s},", " watercolor, soft colors, highly detailed", f" {rng.choice(styles)}", str(i), None
        )
        for i, s in enumerate(rng.choice(seeds) for _ in range(pairs))
    ]
    hyper = ExpanderHyperparameters(epochs=1, lr=5e-5, batch=8)
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        _dpo(policy, reference, tokenizer, made, hyper, Path(tmp) / "out", "cpu")
        seconds = time.perf_counter() - began
    return {"pairs": pairs, "seconds": seconds, "s per 1000 pairs": seconds * 1000 / pairs}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny-dir", type=Path, default=DEFAULT_TINY_DIR)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is steadier on a shared machine)")
    parser.add_argument("--tiny-resolution", type=int, default=64)
    parser.add_argument("--tiny-steps", type=int, default=40)
    parser.add_argument("--sd21-resolution", type=int, default=512)
    parser.add_argument("--sd21-steps", type=int, default=2)
    parser.add_argument("--skip-sd21", action="store_true")
    parser.add_argument("--skip-tiny", action="store_true", help="only the SD 2.1 UNet")
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--gpt2-small", action="store_true", help="also GPT-2 small's architecture (random)")
    parser.add_argument("--gpt2-small-pairs", type=int, default=200)
    args = parser.parse_args()
    offline()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.sd_model = args.text_model = None
    sd, text = resolve_models(args)
    print(machine_line())
    if not args.skip_tiny:
        print(
            f"\n1. LoRA, tiny SD2 model, {args.tiny_resolution}², batch 1, rank 8, {args.device}, {args.tiny_steps} steps"
        )
        tiny = bench_tiny_lora(sd, args.device, args.tiny_resolution, args.tiny_steps)
        print(
            f"   {tiny['steps/s']:.2f} steps/s, peak memory {tiny['peak']:.0f} MiB, loss {tiny['first→last loss']}"
        )
        print(f"\n2. Expander DPO, tiny GPT-2, {args.pairs} pairs, 1 epoch, batch 8, cpu")
        exp = bench_expander(text, args.pairs, gpt2_small=False)
        print(f"   {exp['seconds']:.1f} s = {exp['s per 1000 pairs']:.1f} s per 1,000 pairs")
        if args.gpt2_small:
            print(
                f"\n2b. Expander DPO, GPT-2 small architecture (random), {args.gpt2_small_pairs} pairs, cpu"
            )
            small = bench_expander(text, args.gpt2_small_pairs, gpt2_small=True)
            print(f"   {small['seconds']:.1f} s = {small['s per 1000 pairs']:.1f} s per 1,000 pairs")
    if not args.skip_sd21:
        print(
            f"\n3. LoRA, real SD 2.1 UNet (random weights), {args.sd21_resolution}², batch 1, rank 8, "
            f"v-prediction, {args.device}, {args.sd21_steps} steps after 1 warm-up"
        )
        big = bench_sd21_lora(args.device, args.sd21_resolution, args.sd21_steps)
        print(
            f"   UNet {big['unet params'] / 1e6:.1f} M frozen + {big['lora params'] / 1e6:.2f} M LoRA; built in "
            f"{big['build s']:.0f} s; median {big['s/step']:.1f} s/step ({big['steps/s']:.4f} steps/s); "
            f"peak memory {big['peak']:.0f} MiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
