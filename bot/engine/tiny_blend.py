"""A tiny random-weight SD 2.1 unCLIP (issue 22, /blend), shaped like stabilityai/stable-diffusion-2-1-unclip.

Built from the tiny SD 2 folder's tokenizer, text encoder and VAE, plus what unCLIP adds: a CLIP vision
tower with a projection (`CLIPVisionModelWithProjection`) and its image processor, the image-embedding
normalizer and noising scheduler, and a UNet that takes the noised image embedding as its class
embedding (`class_embed_type="projection"`, input twice the embedding width: embedding + noise level).
"""

from __future__ import annotations

from pathlib import Path

#: the image embedding's width (SD 2.1 unCLIP-H: 1024)
TINY_IMAGE_EMBED = 32
_TINY_VISION_IMAGE = 32


def tiny_blend_path(models_dir: Path) -> Path:
    """Where `build_tiny_blend_model(models_dir, …)` writes the tiny unCLIP (IMAGINE_BLEND_MODEL for tests)."""
    return Path(models_dir) / "unclip"


def build_tiny_blend_model(models_dir: Path, sd_dir: Path, *, seed: int = 3) -> Path:
    """Write the tiny unCLIP pipeline next to the tiny SD 2 folder `sd_dir`; return its folder."""
    import torch
    import transformers
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        PNDMScheduler,
        StableUnCLIPImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPTextModel,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from bot.engine.tiny_models import tiny_unet_config

    out = tiny_blend_path(models_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = CLIPTokenizer.from_pretrained(sd_dir / "tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(sd_dir / "text_encoder")
        vae = AutoencoderKL.from_pretrained(sd_dir / "vae")
        unet = UNet2DConditionModel(
            **tiny_unet_config(),
            class_embed_type="projection",
            projection_class_embeddings_input_dim=2 * TINY_IMAGE_EMBED,
        )
        image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=32,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=_TINY_VISION_IMAGE,
                patch_size=8,
                projection_dim=TINY_IMAGE_EMBED,
            )
        )
        # The PIL backend by name where transformers has it: the default one wants torchvision and warns.
        processor_class = getattr(transformers, "CLIPImageProcessorPil", CLIPImageProcessor)
        feature_extractor = processor_class(
            size={"shortest_edge": _TINY_VISION_IMAGE},
            crop_size={"height": _TINY_VISION_IMAGE, "width": _TINY_VISION_IMAGE},
        )
        # The embedding's noise: a DDPM schedule, squared cosine (diffusers' unCLIP noising components). The
        # picture's: stable-diffusion-2-1-unclip's own scheduler config (PNDM, v-prediction, no PRK steps).
        image_noising_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
        scheduler = PNDMScheduler(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            prediction_type="v_prediction",
            set_alpha_to_one=False,
            skip_prk_steps=True,
            steps_offset=1,
        )
        pipe = StableUnCLIPImg2ImgPipeline(
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
            image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=TINY_IMAGE_EMBED),
            image_noising_scheduler=image_noising_scheduler,
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            unet=unet,
            scheduler=scheduler,
            vae=vae,
        )
        pipe.save_pretrained(out, safe_serialization=True)  # type: ignore[attr-defined]
    return out
