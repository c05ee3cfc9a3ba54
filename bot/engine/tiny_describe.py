"""Tiny random-weight models for /describe (issue 22): a BLIP captioner and a CLIP model, shaped like the real
ones (BlipForConditionalGeneration, CLIPModel) so the real code paths run offline in seconds."""

from __future__ import annotations

from pathlib import Path

WORDS = [
    "a",
    "an",
    "the",
    "of",
    "in",
    "on",
    "with",
    "and",
    "photo",
    "painting",
    "picture",
    "drawing",
    "cat",
    "dog",
    "fox",
    "tree",
    "house",
    "city",
    "street",
    "sky",
    "sea",
    "red",
    "green",
    "blue",
    "light",
    "dark",
    "small",
    "big",
    "old",
    "new",
    "man",
    "woman",
    "car",
    "road",
    "snow",
    "sun",
    "night",
    "day",
]


def build_tiny_describe_models(out_dir: Path, sd_tokenizer: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """Write out_dir/"caption" (BLIP) and, unless it is there already, out_dir/"clip" (the tiny CLIP of
    `tiny_models.build_tiny_clip`, with the tiny SD tokenizer, which the bias audit uses too); return both."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    from bot.engine.tiny_models import build_tiny_clip

    out_dir = Path(out_dir)
    caption_dir, clip_dir = out_dir / "caption", out_dir / "clip"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        caption_dir.mkdir(parents=True, exist_ok=True)
        vocab = caption_dir / "vocab.txt"
        vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *WORDS]) + "\n")
        tokenizer = BertTokenizer(str(vocab), bos_token="[DEC]")
        images = BlipImageProcessor(size={"height": 32, "width": 32})
        BlipProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(caption_dir)
        config = BlipConfig(
            text_config={
                "vocab_size": len(tokenizer),
                "hidden_size": 32,
                "encoder_hidden_size": 32,
                "intermediate_size": 37,
                "num_attention_heads": 4,
                "num_hidden_layers": 2,
                "max_position_embeddings": 64,
                "bos_token_id": tokenizer.convert_tokens_to_ids("[DEC]"),
                "pad_token_id": tokenizer.pad_token_id,
                "sep_token_id": tokenizer.sep_token_id,
            },
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 37,
                "num_attention_heads": 4,
                "num_hidden_layers": 2,
                "image_size": 32,
                "patch_size": 8,
            },
            projection_dim=32,
        )
        BlipForConditionalGeneration(config).eval().save_pretrained(caption_dir)

        torch.manual_seed(seed + 1)
        if not (clip_dir / "config.json").is_file():  # `tiny-models` already wrote the one tiny CLIP there
            build_tiny_clip(clip_dir, tokenizer_dir=sd_tokenizer)
    return caption_dir, clip_dir
