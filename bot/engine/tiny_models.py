"""Build tiny, randomly initialised SD2-style and GPT-2 model folders for tests and offline demos."""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import CLIPTokenizer, GPT2Tokenizer, PreTrainedModel

log = logging.getLogger(__name__)

_BOS_CLIP = "<|startoftext|>"
_EOS = "<|endoftext|>"
_CLIP_PAD = "!"  # what stabilityai/stable-diffusion-2 uses
_EOW = "</w>"
_CLIP_MAX_LENGTH = 77
_CLIP_VOCAB_SIZE = 1000
_GPT2_VOCAB_SIZE = 1000
_GPT2_POSITIONS = 256
_GPT2_FINETUNE_STEPS = 80
_GPT2_FINETUNE_LR = 5e-3
_TINY_CLIP_IMAGE = 32
# The split CLIP applies before byte-level encoding (same pattern as transformers' CLIPTokenizer).
_CLIP_SPLIT = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)

_CORPUS: tuple[str, ...] = (
    "a beautiful university campus at sunset, highly detailed, digital art, trending on artstation, 8k",
    "portrait of a wizard in a library, fantasy, intricate, elegant, highly detailed, by greg rutkowski",
    "a futuristic city skyline at night, neon lights, cyberpunk, cinematic lighting, octane render, 4k",
    "a quiet mountain landscape with a lake, morning fog, oil painting, by albert bierstadt",
    "an old castle on a hill, dramatic clouds, matte painting, concept art, unreal engine, volumetric light",
    "a cozy coffee shop interior, warm light, watercolor, soft colors, studio ghibli style",
    "a red fox in a snowy forest, wildlife photography, sharp focus, bokeh, national geographic",
    "students walking across the campus quad in autumn, golden hour, impressionist painting, by claude monet",
    "the university library with tall windows, gothic architecture, atmospheric, highly detailed, 8k",
    "a lighthouse on a rocky coast in a storm, crashing waves, dramatic, oil on canvas, by ivan aivazovsky",
    "a spaceship landing on an alien planet, sci-fi, epic scale, concept art, trending on artstation",
    "a bustling market street in a medieval town, people, banners, digital painting, by craig mullins",
    "portrait of a young woman with flowers in her hair, art nouveau, by alphonse mucha, ornate, gold",
    "a dragon flying over a burning city, fantasy art, epic, dark, highly detailed, by greg rutkowski",
    "a peaceful japanese garden with a pond and cherry blossoms, ukiyo-e, woodblock print, by hokusai",
    "an astronaut riding a horse on the moon, photorealistic, 35mm, sharp focus, cinematic",
    "a cute robot watering plants in a greenhouse, pixar style, 3d render, soft lighting, octane render",
    "a desert landscape with giant sand dunes, blue sky, minimalist, vector art, flat colors",
    "an underwater city with glowing coral, bioluminescent, fantasy, digital art, artstation hq",
    "a rainy city street reflected in puddles, night, moody, film noir, by edward hopper",
    "a steampunk airship above the clouds, brass and copper, intricate machinery, concept art",
    "a cabin in the woods in winter, smoke from the chimney, cozy, christmas card, illustration",
    "the campus clock tower under a starry sky, milky way, long exposure, astrophotography",
    "a knight in shining armor, heroic pose, dramatic lighting, digital painting, by frank frazetta",
    "a field of sunflowers under a bright sky, by vincent van gogh, thick brushstrokes, post-impressionism",
    "a modern glass building on a university campus, architectural photography, clean lines, daylight",
    "a magical forest with glowing mushrooms and fireflies, whimsical, fairy tale, highly detailed",
    "a city park in spring with people having a picnic, bright colors, gouache, children's book illustration",
    "a cat wearing a tiny hat, studio portrait, soft focus, photorealistic, award winning photography",
    "ancient ruins in the jungle, overgrown with vines, rays of light, adventure, matte painting, 8k",
    "a surreal landscape with melting clocks, dreamlike, by salvador dali, oil painting",
    "a samurai standing in a bamboo forest, mist, cinematic composition, by makoto shinkai",
    "a bowl of fruit on a wooden table, still life, chiaroscuro, by caravaggio, baroque",
    "an abstract painting of colorful shapes, bauhaus, geometric, by wassily kandinsky",
    "a snowy mountain village at dusk, warm windows, blue hour, digital art, trending on artstation",
    "a train crossing a stone bridge over a valley, aerial view, summer, detailed, landscape photography",
    "portrait of an old fisherman, weathered face, rembrandt lighting, hyperrealistic, 85mm lens",
    "a giant tree house city in the canopy, rope bridges, lanterns, fantasy concept art, by james gurney",
    "a lecture hall full of students, chalkboard with equations, warm light, editorial illustration",
    "a lonely road through the countryside, rolling hills, clouds, by thomas kinkade, peaceful",
)


def build_tiny_models(out_dir: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """Write out_dir/"sd" (SD2-style pipeline) and out_dir/"text" (GPT-2 + tokenizer); return both paths.

    Also out_dir/"clip" (`tiny_clip_path`): a random CLIPModel and its processor, the bias audit's classifier.
    """
    import torch

    started = time.perf_counter()
    out_dir = Path(out_dir)
    sd_dir = out_dir / "sd"
    text_dir = out_dir / "text"
    out_dir.mkdir(parents=True, exist_ok=True)
    # Fork the RNG so seeding here does not disturb the caller's global torch state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _build_sd(sd_dir)
        torch.manual_seed(seed + 1)
        _build_text(text_dir)
        torch.manual_seed(seed + 2)
        build_tiny_clip(tiny_clip_path(out_dir), tokenizer_dir=sd_dir / "tokenizer")
        # Several models (README → Models): a second model and a draft model, and a models.toml for them.
        build_tiny_model_variants(sd_dir, out_dir, seed=seed)
    log.info("Built tiny models in %s (%.1f s)", out_dir, time.perf_counter() - started)
    return sd_dir, text_dir


def tiny_clip_path(models_dir: Path) -> Path:
    """Where `build_tiny_models(models_dir)` writes the tiny CLIP (IMAGINE_AUDIT_CLIP_MODEL for tests)."""
    return Path(models_dir) / "clip"


def build_tiny_clip(clip_dir: Path, *, tokenizer_dir: Path) -> Path:
    """A random CLIPModel (text and vision towers, 32 wide) with a CLIPProcessor, saved to `clip_dir`.

    Shaped like openai/clip-vit-large-patch14 (a ViT image tower, a causal text tower, both projected
    into one space) at tiny widths and a 32-pixel input, with the SD tokenizer built above.
    """
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPTokenizer,
        CLIPVisionConfig,
    )

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=_TEXT_HIDDEN_SIZE,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_CLIP_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=_TEXT_HIDDEN_SIZE,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=_TINY_CLIP_IMAGE,
        patch_size=8,
    )
    model = CLIPModel(
        CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
    )
    import transformers

    # The PIL backend by name where transformers has it: the default one wants torchvision and warns.
    processor_class = getattr(transformers, "CLIPImageProcessorPil", CLIPImageProcessor)
    image_processor = processor_class(
        size={"shortest_edge": _TINY_CLIP_IMAGE},
        crop_size={"height": _TINY_CLIP_IMAGE, "width": _TINY_CLIP_IMAGE},
    )
    clip_dir = Path(clip_dir)
    model.save_pretrained(clip_dir, safe_serialization=True)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(clip_dir)
    return clip_dir


# --------------------------------------------------------------------------- tokenizers


def _train_bpe(
    words: Iterable[str], *, max_merges: int, split_word: Callable[[str], list[str]]
) -> list[tuple[str, str]]:
    """Learn BPE merges deterministically (ties go to the lexicographically smallest pair)."""
    counts = Counter(words)
    corpus = [(split_word(word), freq) for word, freq in sorted(counts.items())]
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, freq in corpus:
            for pair in itertools.pairwise(symbols):
                pairs[pair] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merged = best[0] + best[1]
        merges.append(best)
        corpus = [(_apply_merge(symbols, best, merged), freq) for symbols, freq in corpus]
    return merges


def _apply_merge(symbols: list[str], pair: tuple[str, str], merged: str) -> list[str]:
    if len(symbols) < 2:
        return symbols
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == pair[0] and symbols[i + 1] == pair[1]:
            out.append(merged)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def _vocab_from(
    base: Sequence[str], merges: Sequence[tuple[str, str]], specials: Sequence[str]
) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for token in [*base, *(a + b for a, b in merges), *specials]:
        vocab.setdefault(token, len(vocab))
    return vocab


def _byte_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def _pre_tokenized_words(tokenizer: Tokenizer, lines: Iterable[str]) -> list[str]:
    words: list[str] = []
    for line in lines:
        normalized = tokenizer.normalizer.normalize_str(line) if tokenizer.normalizer else line
        words.extend(piece for piece, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normalized))
    return words


def _clip_pipeline() -> Tokenizer:
    """An empty tokenizer with CLIP's normalizer and pre-tokenizer, used only to split the corpus."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    tok = Tokenizer(BPE())
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    return tok


def _write_bpe_files(directory: Path, vocab: dict[str, int], merges: Sequence[tuple[str, str]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _build_clip_tokenizer(directory: Path) -> CLIPTokenizer:
    """Train a CLIP-format byte-level BPE on the corpus, save it to directory and return it."""
    from transformers import CLIPTokenizer

    alphabet = _byte_alphabet()
    base = [*alphabet, *(ch + _EOW for ch in alphabet)]
    specials = [_BOS_CLIP, _EOS]
    merges = _train_bpe(
        _pre_tokenized_words(_clip_pipeline(), _CORPUS),
        max_merges=_CLIP_VOCAB_SIZE - len(base) - len(specials),
        split_word=lambda w: [*w[:-1], w[-1] + _EOW],
    )
    vocab = _vocab_from(base, merges, specials)
    _write_bpe_files(directory, vocab, merges)
    tokenizer = CLIPTokenizer(
        vocab=str(directory / "vocab.json"),
        merges=str(directory / "merges.txt"),
        pad_token=_CLIP_PAD,
        model_max_length=_CLIP_MAX_LENGTH,
    )
    tokenizer.save_pretrained(directory)
    return tokenizer


def _build_gpt2_tokenizer(directory: Path) -> GPT2Tokenizer:
    """Train a GPT-2-format byte-level BPE on the corpus, save it to directory and return it."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import GPT2Tokenizer

    splitter = Tokenizer(BPE())
    splitter.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    base = _byte_alphabet()
    specials = [_EOS]
    merges = _train_bpe(
        _pre_tokenized_words(splitter, _CORPUS),
        max_merges=_GPT2_VOCAB_SIZE - len(base) - len(specials),
        split_word=list,
    )
    vocab = _vocab_from(base, merges, specials)
    _write_bpe_files(directory, vocab, merges)
    tokenizer = GPT2Tokenizer(
        vocab=str(directory / "vocab.json"),
        merges=str(directory / "merges.txt"),
        model_max_length=_GPT2_POSITIONS,
    )
    tokenizer.save_pretrained(directory)
    return tokenizer


# --------------------------------------------------------------------------- models


# SD 2's shapes at tiny widths. Stable Diffusion 2.x (stable-diffusion-2-1, -2-1-base, -2-inpainting):
#   UNet: 4 blocks, widths 320/640/1280/1280 (1:2:4:4), cross-attention in the first three down and the
#         last three up blocks, a cross-attention mid block, 2 resnets a block, linear projections, and
#         `attention_head_dim` [5, 10, 20, 20] -- diffusers reads that field as a head *count* per block,
#         which gives every head 64 channels.
#   VAE:  4 blocks, widths 128/256/512/512, 2 resnets a block: 3 downsamples, latents 1/8 of the image.
# The tiny copies keep every one of these choices and shrink only the widths (and the heads with them,
# so that every head is 32 channels wide); GroupNorm's 32 groups set the smallest width.
TINY_UNET_BLOCK_OUT_CHANNELS = (32, 64, 128, 128)
TINY_UNET_ATTENTION_HEADS = (1, 2, 4, 4)
TINY_VAE_BLOCK_OUT_CHANNELS = (32, 64, 128, 128)
_TEXT_HIDDEN_SIZE = 32
_SD2_DOWN_BLOCKS = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
_SD2_UP_BLOCKS = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
_SD2_LAYERS_PER_BLOCK = 2
_INPAINT_IN_CHANNELS = 9  # 4 noisy latents + 4 masked-image latents + 1 mask, as SD 2 inpainting


def tiny_unet_config(*, in_channels: int = 4) -> dict[str, Any]:
    """The tiny UNet's config: SD 2's layout and attention kinds at tiny widths (9 channels: inpainting)."""
    return {
        "sample_size": 96,  # SD 2.1's default latent size (768 px); any multiple of 8 px works
        "in_channels": in_channels,
        "out_channels": 4,
        "layers_per_block": _SD2_LAYERS_PER_BLOCK,
        "block_out_channels": TINY_UNET_BLOCK_OUT_CHANNELS,
        "down_block_types": _SD2_DOWN_BLOCKS,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": _SD2_UP_BLOCKS,
        "cross_attention_dim": _TEXT_HIDDEN_SIZE,  # SD 2: 1024, the text encoder's width
        "attention_head_dim": TINY_UNET_ATTENTION_HEADS,  # heads per block (diffusers' name), as SD 2
        "use_linear_projection": True,
        "upcast_attention": True,  # stable-diffusion-2-1 (768 px, the default model)
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "act_fn": "silu",
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "downsample_padding": 1,
    }


def tiny_vae_config() -> dict[str, Any]:
    """The tiny VAE's config: SD 2's four blocks (latents 1/8 of the image) at tiny widths."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": TINY_VAE_BLOCK_OUT_CHANNELS,
        "layers_per_block": _SD2_LAYERS_PER_BLOCK,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "act_fn": "silu",
        "sample_size": 768,
    }


TINY_MODELS_TOML = """# The tiny models of `python -m bot tiny-models` (random weights: the images are noise).
default = "tiny"
draft = "tiny-draft"

[models.tiny]
source = "./sd"
kind = "sd2-768-v"
width = 64
height = 64
steps = 2
description = "tiny SD 2 (the default)"

[models.tiny-b]
source = "./sd-b"
kind = "sd2-512"
width = 64
height = 64
steps = 2
description = "a second tiny SD 2"

[models.tiny-draft]
source = "./draft"
kind = "sd-turbo"
width = 64
height = 64
steps = 1
max_steps = 4
guidance = 0.0
scheduler = "euler-a"
description = "tiny draft model (SD-Turbo's scheduler)"
"""


def build_tiny_model_variants(sd_dir: Path, out_dir: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """out_dir/"sd-b" (the tiny SD with another UNet) and out_dir/"draft" (another UNet and SD-Turbo's
    scheduler config: Euler, trailing timesteps), and out_dir/"models.toml" naming all three."""
    import shutil

    import torch
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

    made = []
    for offset, name in ((11, "sd-b"), (12, "draft")):
        target = out_dir / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(sd_dir, target)
        shutil.rmtree(target / "unet")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + offset)
            unet = UNet2DConditionModel(**tiny_unet_config())
        unet.save_pretrained(target / "unet", safe_serialization=True)  # type: ignore[attr-defined]
        made.append(target)
    turbo = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        timestep_spacing="trailing",
        steps_offset=1,
    )
    shutil.rmtree(made[1] / "scheduler")
    turbo.save_pretrained(made[1] / "scheduler")  # type: ignore[attr-defined]
    index = json.loads((made[1] / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "EulerDiscreteScheduler"]
    (made[1] / "model_index.json").write_text(json.dumps(index, indent=2))
    (out_dir / "models.toml").write_text(TINY_MODELS_TOML)
    return made[0], made[1]


def build_tiny_inpaint_model(sd_dir: Path, out_dir: Path, *, seed: int = 0) -> Path:
    """Write out_dir: the tiny SD folder with a 9-channel UNet, laid out like SD 2's inpainting model."""
    import shutil

    import torch
    from diffusers import UNet2DConditionModel

    out_dir = Path(out_dir)
    shutil.copytree(sd_dir, out_dir)
    shutil.rmtree(out_dir / "unet")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**tiny_unet_config(in_channels=_INPAINT_IN_CHANNELS))
    unet.save_pretrained(out_dir / "unet", safe_serialization=True)  # type: ignore[attr-defined]
    return out_dir


def _build_sd(sd_dir: Path) -> None:
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _build_clip_tokenizer(sd_dir / "tokenizer")
    unet = UNet2DConditionModel(**tiny_unet_config())
    vae = AutoencoderKL(**tiny_vae_config())
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=_TEXT_HIDDEN_SIZE,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=_CLIP_MAX_LENGTH,
            hidden_act="gelu",
            layer_norm_eps=1e-5,
            projection_dim=32,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        algorithm_type="dpmsolver++",
        solver_order=2,
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(sd_dir, safe_serialization=True)  # type: ignore[attr-defined]


def _build_text(text_dir: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = _build_gpt2_tokenizer(text_dir)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=_GPT2_POSITIONS,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config)
    loss = _finetune(model, tokenizer)
    log.debug("Tiny GPT-2 fine-tuned for %d steps, final loss %.3f", _GPT2_FINETUNE_STEPS, loss)
    model.save_pretrained(text_dir, safe_serialization=True)


def _finetune(model: PreTrainedModel, tokenizer: GPT2Tokenizer) -> float:
    """Run full-batch AdamW steps on the corpus so samples look vaguely like prompts; return the loss."""
    import torch

    eos = str(tokenizer.eos_token)
    rows: list[list[int]] = tokenizer([eos + line + eos for line in _CORPUS])["input_ids"]
    width = max(len(row) for row in rows)
    input_ids = torch.tensor([row + [tokenizer.eos_token_id] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    targets = input_ids.masked_fill(mask == 0, -100)[:, 1:].reshape(-1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=_GPT2_FINETUNE_LR)
    model.train()
    loss = torch.zeros(())
    for _ in range(_GPT2_FINETUNE_STEPS):
        optimizer.zero_grad(set_to_none=True)
        logits = model(input_ids=input_ids, attention_mask=mask).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets)
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss.item())
