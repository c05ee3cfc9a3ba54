"""Issue 22 on the real architectures with random weights: /blend and /describe vs a plain grid.

`python -m bench.mj --arch real` runs this. Nothing is downloaded: every model is built from its published
config, written out below (as bench/gpu_sd21.py does for SD 2.1), with random weights, in fp32 by default:

* plain grid: SD 2.1 (bench.gpu_sd21.build_pipeline) through the product's `Renderer.render`;
* /blend: SD 2.1 unCLIP-H (`StableUnCLIPImg2ImgPipeline`, stabilityai/stable-diffusion-2-1-unclip): the SD 2.1
  UNet with the unCLIP class-embedding config (`class_embed_type="projection"`, input 2 × 1024), the
  CLIPVisionModelWithProjection ViT-H/14 image encoder, `StableUnCLIPImageNormalizer(1024)`, the squared-cosine
  image-noising DDPM schedule; it shares the grid's text encoder, tokenizer and VAE (the published unCLIP
  uses the same OpenCLIP-H text tower and VAE). Run through the product's `Blender.render` on the sheet
  of two pictures (`--iw 1,0.5`);
* /describe: BLIP-large (Salesforce/blip-image-captioning-large) + CLIP ViT-H/14 (laion/CLIP-ViT-H-14-laion2B,
  the family SD 2's text encoder comes from) through the product's `Describer.describe`. CLIP's vision tower
  is the unCLIP image encoder's own tensors (same ViT-H/14 config; saves 2.5 GB in fp32 on a 23 GiB box;
  the cost of a forward pass does not depend on which tensors it reads).

Tokenizers: the tiny models' (no download). The SD side pads to 77 tokens, so the vocabulary does not
change its cost; BLIP decodes its 30 tokens whatever their text; the CLIP ranking pads each modifier list
to its longest entry, which the tiny BPE (1,000 tokens) splits into somewhat more tokens than the real one.
"""

from __future__ import annotations

import argparse
import io
import resource
import time
from pathlib import Path
from typing import Any

from bench._common import Summary, machine_line, print_table

# stabilityai/stable-diffusion-2-1-unclip unet/config.json: the SD 2.1 UNet plus the image-embedding
# class embedding (noised CLIP image embedding 1024 + its noise-level embedding 1024).
UNCLIP_UNET_EXTRA: dict[str, Any] = {
    "class_embed_type": "projection",
    "projection_class_embeddings_input_dim": 2048,
}

# stabilityai/stable-diffusion-2-1-unclip image_encoder/config.json (OpenCLIP ViT-H/14 image tower)
VIT_H_VISION_CONFIG: dict[str, Any] = {
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "image_size": 224,
    "intermediate_size": 5120,
    "layer_norm_eps": 1e-05,
    "num_attention_heads": 16,
    "num_channels": 3,
    "num_hidden_layers": 32,
    "patch_size": 14,
    "projection_dim": 1024,
}

# laion/CLIP-ViT-H-14-laion2B-s32B-b79K config.json: text tower (24 layers) + the same vision tower
VIT_H_TEXT_CONFIG: dict[str, Any] = {
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "projection_dim": 1024,
    "vocab_size": 49408,
}
VIT_H_PROJECTION_DIM = 1024

# Salesforce/blip-image-captioning-large config.json
BLIP_LARGE_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 30524,
    "hidden_size": 768,
    "encoder_hidden_size": 1024,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 512,
    "bos_token_id": 30522,
    "pad_token_id": 0,
    "sep_token_id": 102,
}
BLIP_LARGE_VISION_CONFIG: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "image_size": 384,
    "patch_size": 16,
    "layer_norm_eps": 1e-05,
}
BLIP_IMAGE_SIZE = 384

# stabilityai/stable-diffusion-2-1-unclip: image_noising_scheduler and scheduler configs
IMAGE_NOISING_CONFIG: dict[str, Any] = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"}
UNCLIP_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}


def millions(module: Any) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def _clip_image_processor() -> Any:
    import transformers
    from transformers import CLIPImageProcessor

    # The PIL backend by name where transformers has it (the default one wants torchvision).
    cls = getattr(transformers, "CLIPImageProcessorPil", CLIPImageProcessor)
    return cls(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})


def build_unclip(sd_pipe: Any, device: Any, dtype: Any) -> Any:
    """SD 2.1 unCLIP-H with random weights, sharing `sd_pipe`'s text encoder, tokenizer and VAE."""
    import torch
    from diffusers import DDPMScheduler, PNDMScheduler, StableUnCLIPImg2ImgPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from bench.gpu_sd21 import UNET_CONFIG

    torch.manual_seed(1)
    with torch.device(device):
        unet = UNet2DConditionModel(**UNET_CONFIG, **UNCLIP_UNET_EXTRA)
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_H_VISION_CONFIG))
        normalizer = StableUnCLIPImageNormalizer(embedding_dim=VIT_H_PROJECTION_DIM)
    pipe: Any = StableUnCLIPImg2ImgPipeline(
        feature_extractor=_clip_image_processor(),
        image_encoder=image_encoder,
        image_normalizer=normalizer,
        image_noising_scheduler=DDPMScheduler(**IMAGE_NOISING_CONFIG),
        tokenizer=sd_pipe.tokenizer,
        text_encoder=sd_pipe.text_encoder,
        unet=unet,
        scheduler=PNDMScheduler(**UNCLIP_SCHEDULER_CONFIG),
        vae=sd_pipe.vae,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device, dtype=dtype)


def build_describe_models(
    tiny_caption: Path, sd_tokenizer: Path, vision_tower: Any, device: Any, dtype: Any
) -> tuple[Any, Any, Any, Any]:
    """(BLIP processor, BLIP-large, CLIP processor, CLIP ViT-H/14) as `Describer._load` returns them; CLIP's
    vision tower and projection are `vision_tower`'s (a CLIPVisionModelWithProjection ViT-H/14)."""
    import torch
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
        CLIPConfig,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    tiny_blip = BlipProcessor.from_pretrained(tiny_caption)
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": BLIP_IMAGE_SIZE, "width": BLIP_IMAGE_SIZE}),
        tokenizer=tiny_blip.tokenizer,
    )
    torch.manual_seed(2)
    with torch.device(device):
        captioner: Any = BlipForConditionalGeneration(
            BlipConfig(
                text_config=BLIP_LARGE_TEXT_CONFIG,
                vision_config=BLIP_LARGE_VISION_CONFIG,
                projection_dim=512,
                image_text_hidden_size=256,
            )
        )
        # The text tower only: the vision tower (and its projection) comes from `vision_tower`.
        clip_config = CLIPConfig(
            text_config=VIT_H_TEXT_CONFIG,
            vision_config={**VIT_H_VISION_CONFIG, "num_hidden_layers": 1},
            projection_dim=VIT_H_PROJECTION_DIM,
        )
        clip: Any = CLIPModel(clip_config)
    clip.vision_model = vision_tower.vision_model
    clip.visual_projection = vision_tower.visual_projection
    clip.config.vision_config.num_hidden_layers = VIT_H_VISION_CONFIG["num_hidden_layers"]
    clip_processor = CLIPProcessor(
        image_processor=_clip_image_processor(), tokenizer=CLIPTokenizer.from_pretrained(sd_tokenizer)
    )
    return (
        processor,
        captioner.to(device=device, dtype=dtype).eval(),
        clip_processor,
        clip.to(device=device, dtype=dtype).eval(),
    )


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def run_real(args: argparse.Namespace, sd_model: str, tiny_caption: Path) -> int:
    """Interleaved reps of grid / describe / blend on the real architectures; ratios to the grid."""
    import os

    import torch
    from PIL import Image

    from bench.gpu_sd21 import build_pipeline
    from bench.mj import blend_sheet, picture
    from bot.engine.blend import Blender, unpack_sheet
    from bot.engine.describe import Describer
    from bot.engine.loading import resolve_device, resolve_dtype
    from bot.engine.renderer import Renderer

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    print(machine_line())
    print(f"load average before building: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    started = time.perf_counter()
    sd_pipe = build_pipeline(sd_model, device, dtype)
    unclip = build_unclip(sd_pipe, device, dtype)
    describer = Describer(str(tiny_caption), "(built in memory)", device=device, dtype=dtype)
    describer._models = build_describe_models(  # the product's loader reads folders; these are built here
        tiny_caption, Path(sd_model) / "tokenizer", unclip.image_encoder, device, dtype
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    built = time.perf_counter() - started
    _, captioner, _, clip = describer._models
    print(
        f"built in {built:.0f} s on {device} ({dtype}), peak RSS {peak_rss_gib():.1f} GiB; parameters (M): "
        f"SD 2.1 UNet {millions(sd_pipe.unet):.1f}, VAE {millions(sd_pipe.vae):.1f}, text encoder "
        f"{millions(sd_pipe.text_encoder):.1f}; unCLIP UNet {millions(unclip.unet):.1f}, ViT-H/14 image encoder "
        f"{millions(unclip.image_encoder):.1f}; BLIP-large {millions(captioner):.1f}; CLIP ViT-H/14 "
        f"{millions(clip):.1f} (vision tower shared with the image encoder)"
    )
    caption_tokens: list[int] = []
    generate = captioner.generate

    def counted_generate(**kwargs: Any) -> Any:  # how many tokens the random BLIP decodes (≤ 30 + start)
        ids = generate(**kwargs)
        caption_tokens.append(int(ids.shape[-1]))
        return ids

    captioner.generate = counted_generate
    renderer = Renderer(sd_pipe, device=device, dtype=dtype)
    blender = Blender(unclip, source="(built in memory)", device=device)
    sheet = unpack_sheet(blend_sheet())
    with Image.open(io.BytesIO(picture(args.width, args.height))) as opened:
        photo = opened.convert("RGB")
    size = {"steps": args.steps, "guidance": args.guidance, "width": args.width, "height": args.height}
    seeds = list(range(args.count))
    calls = {
        "grid": lambda: renderer.render(["Northeastern University"] * args.count, seeds, negative="", **size),
        "describe": lambda: describer.describe(photo),
        "blend (2 pictures)": lambda: blender.render(sheet, seeds, negative="", **size),
    }
    print(
        f"{args.count} × {args.width}×{args.height}, {args.steps} steps, guidance {args.guidance}; "
        f"1 warm-up + {args.reps} interleaved reps",
        flush=True,
    )
    first: dict[str, float] = {}
    for name, call in calls.items():
        begun = time.perf_counter()
        call()
        first[name] = time.perf_counter() - begun
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.reps):
        for name, call in calls.items():
            begun = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - begun)
        print(f"  rep done, load average {os.getloadavg()[0]:.2f}", flush=True)
    base = Summary.of(times["grid"]).median
    rows = []
    for name, values in times.items():
        s = Summary.of(values)
        rows.append((name, s.median, s.minimum, s.maximum, first[name], s.median / base))
    print_table(("call", "median s", "min s", "max s", "warm-up s", "× plain grid"), rows)
    print(f"BLIP decoded {caption_tokens[-1]} token ids per caption (start token included; at most 31)")
    print(
        f"peak RSS {peak_rss_gib():.1f} GiB; load average after: "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    return 0
