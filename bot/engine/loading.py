"""Model loading: device/dtype resolution, `from_pretrained` on hub ids or local folders, revisions."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bot.engine.images import blur_for_safety
from bot.engine.types import ModelLoadError

log = logging.getLogger(__name__)

_HASH_FULL_LIMIT = 256 * 1024 * 1024
_HASH_EDGE = 1024 * 1024


def quiet_libraries() -> None:
    """No per-file progress bars or advisory warnings from diffusers/transformers in our logs."""
    import transformers

    # transformers first: importing diffusers already logs torchvision fallbacks through it.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


def resolve_device(name: str) -> torch.device:
    """`auto` → cuda if available, else mps, else cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            "IMAGINE_DEVICE=cuda but no CUDA device is available: set IMAGINE_DEVICE=auto or cpu, "
            "or check the NVIDIA driver (nvidia-smi)"
        )
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError(
            "IMAGINE_DEVICE=mps but MPS is not available here (Apple silicon with macOS 12.3+ only): "
            "set IMAGINE_DEVICE=auto or cpu"
        )
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` → float16 on cuda/mps, float32 on cpu."""
    if name == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def folder_content_hash(folder: Path) -> str:
    """A content hash of a local model folder (large files: size + first/last MiB)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
        with path.open("rb") as handle:
            if size <= _HASH_FULL_LIMIT:
                digest.update(handle.read())
            else:
                digest.update(handle.read(_HASH_EDGE))
                handle.seek(size - _HASH_EDGE)
                digest.update(handle.read(_HASH_EDGE))
    return "sha256:" + digest.hexdigest()[:16]


def resolve_revision(model_id: str, revision: str | None = None) -> str:
    """Commit hash for a cached Hub model, a content hash for a local folder."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        return folder_content_hash(path)
    try:
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(
            model_id, revision=revision, local_files_only=True, allow_patterns=["*.json"]
        )
        return Path(snapshot).name
    except Exception:  # the revision is informative; never fail a load over it
        log.debug("could not resolve the revision of %s", model_id, exc_info=True)
        return "unknown"


def _is_folder(model_id: str) -> bool:
    """A local folder (a revision pin applies to Hub ids only); a name too long for a path is none."""
    try:
        return Path(model_id).expanduser().is_dir()
    except OSError:
        return False


def _looks_like_a_path(model_id: str) -> bool:
    """`./models/sd`, `/models/sd`, `~/sd`, `a/b/c`: meant as a folder (a Hub id is `name` or `org/name`)."""
    return model_id.startswith((".", "/", "~", "\\")) or model_id.count("/") > 1 or "\\" in model_id


_SMOKE_HINT = (
    "(for an offline smoke test: `python -m bot tiny-models .tiny-models` then "
    "IMAGINE_SD_MODEL=.tiny-models/sd IMAGINE_TEXT_MODEL=.tiny-models/text)"
)


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long, no permission: not a folder we can load
        return False


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False


def _load_error(model_id: str, setting: str, exc: BaseException) -> ModelLoadError:
    path = Path(model_id).expanduser()
    if _looks_like_a_path(model_id) and not _is_dir(path):
        # huggingface_hub would call it a malformed repo id; the user meant a folder that is not there.
        what = "not a folder" if _exists(path) else "no such folder"
        return ModelLoadError(
            f"could not load {setting}={model_id!r}: {what} ({path.resolve()}). Point it at a model folder "
            "(one with model_index.json for IMAGINE_SD_MODEL, config.json for the others) or a Hub id "
            f"like org/name {_SMOKE_HINT}"
        )
    # The whole first line of the cause: this text goes to the log and the operator's terminal only.
    text = str(exc).strip()
    cause = f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
    return ModelLoadError(
        f"could not load {setting}={model_id!r} ({cause}). "
        f"Check the id and your network, or point it at a local folder {_SMOKE_HINT}"
    )


def load_sd_pipeline(
    model_id: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    low_vram: bool,
    compile_mode: str,
    revision: str | None = None,
    scheduler: str = "dpm++",
    setting: str = "IMAGINE_SD_MODEL",
) -> tuple[Any, dict[str, Any]]:
    """StableDiffusionPipeline with DPM-Solver++ from the model's own scheduler config (or `scheduler`)."""
    from diffusers import StableDiffusionPipeline

    pinned = {"revision": revision} if revision and not _is_folder(model_id) else {}
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            model_id, dtype=dtype, safety_checker=None, requires_safety_checker=False, **pinned
        )
    except Exception as exc:
        raise _load_error(model_id, setting, exc) from exc
    loaded_dtype = pipe.unet.dtype
    if loaded_dtype != dtype:
        # diffusers < 0.40 ignored `dtype=` (it read only `torch_dtype=`): never record one dtype and run another.
        raise ModelLoadError(
            f"IMAGINE_SD_MODEL={model_id!r} loaded as {loaded_dtype}, not the requested {dtype}: "
            "upgrade diffusers (>= 0.40)"
        )
    use_scheduler(pipe, scheduler)
    if low_vram and device.type == "cuda":
        pipe.enable_attention_slicing()
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(device)
    if device.type == "cuda":
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        if hasattr(pipe, "fuse_qkv_projections"):
            try:
                pipe.fuse_qkv_projections()
            except Exception:  # older diffusers or unsupported processors: unfused is only slower
                log.info("fused QKV projections unavailable", exc_info=True)
        if compile_mode != "off":
            _compile(pipe, compile_mode)
    info = {"model": model_id, "revision": resolve_revision(model_id, revision)}
    return pipe, info


def load_inpaint_pipeline(model_id: str, *, base: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """A dedicated inpainting checkpoint (its UNet and scheduler), sharing the base text encoder and VAE.

    Only loaded when IMAGINE_INPAINT_MODEL is set; without it outpainting uses the base UNet.
    """
    from diffusers import StableDiffusionInpaintPipeline

    try:
        pipe = StableDiffusionInpaintPipeline.from_pretrained(
            model_id,
            vae=base.vae,
            text_encoder=base.text_encoder,
            tokenizer=base.tokenizer,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            dtype=dtype,
        )
    except Exception as exc:
        raise _load_error(model_id, "IMAGINE_INPAINT_MODEL", exc) from exc
    _use_dpm_solver(pipe)
    pipe.unet.to(device)
    return pipe


def use_scheduler(pipe: Any, name: str) -> None:
    """The registry's scheduler: dpm++ (today's), euler-a (trailing timesteps, SD-Turbo) or the model's own."""
    if name == "euler-a":
        from diffusers import EulerAncestralDiscreteScheduler

        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(
            pipe.scheduler.config, timestep_spacing="trailing"
        )
        pipe.set_progress_bar_config(disable=True)
    elif name == "model":
        pipe.set_progress_bar_config(disable=True)
    else:
        _use_dpm_solver(pipe)


def _use_dpm_solver(pipe: Any) -> None:
    """DPM-Solver++ from the model's own scheduler config (~20-25 steps); no tqdm bars in a bot's log."""
    from diffusers import DPMSolverMultistepScheduler

    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, algorithm_type="dpmsolver++", use_karras_sigmas=False
    )
    pipe.set_progress_bar_config(disable=True)


def _compile(pipe: Any, mode: str) -> None:
    if mode == "unet" and hasattr(pipe.unet, "compile_repeated_blocks"):
        # Regional compilation: each repeated block compiles once, start-up stays short.
        pipe.unet.compile_repeated_blocks(fullgraph=True)
    else:
        pipe.unet = torch.compile(pipe.unet, mode="max-autotune-no-cudagraphs", fullgraph=True)
    pipe.vae.decode = torch.compile(pipe.vae.decode)


def load_seed_tokenizer(model_id: str) -> Any:
    """The SD model's CLIP tokenizer alone (a few MB of vocabulary: no weights, no device)."""
    from transformers import AutoTokenizer

    # Counting an over-long seed's tokens would log transformers' "Token indices sequence length is
    # longer than …" beside our own one-line refusal: quiet first, as the full load does.
    quiet_libraries()

    try:
        return AutoTokenizer.from_pretrained(model_id, subfolder="tokenizer")
    except Exception as exc:
        raise _load_error(model_id, "IMAGINE_SD_MODEL", exc) from exc


def load_text_model(model_id: str, *, device: torch.device) -> tuple[Any, Any, dict[str, Any]]:
    """GPT-2-family causal LM + tokenizer (float32 on CPU, float16 on CUDA)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype)
    except Exception as exc:
        raise _load_error(model_id, "IMAGINE_TEXT_MODEL", exc) from exc
    model = model.to(device)  # type: ignore[arg-type]  # transformers' `to` wrapper confuses mypy
    model.eval()
    info = {"model": model_id, "revision": resolve_revision(model_id), "version": expander_version(model_id)}
    return model, tokenizer, info


#: Written into every expander folder `python -m bot train expander` makes; its `version` names the model.
EXPANDER_RECORD = "imagine_expander.json"


def expander_version(model_id: str) -> str:
    """The `version` a trained expander folder records, or "base" for any other model."""
    try:
        data = json.loads((Path(model_id).expanduser() / EXPANDER_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "base"
    value = data.get("version") if isinstance(data, dict) else None
    return str(value) if value else "base"


class SafetyFilter:
    """The CompVis image safety checker; flagged images are blurred and marked."""

    def __init__(self, checker: Any, processor: Any, device: torch.device, dtype: torch.dtype) -> None:
        self.checker = checker
        self.processor = processor
        self.device = device
        self.dtype = dtype

    def __call__(self, images: list[Image.Image]) -> tuple[list[Image.Image], tuple[bool, ...]]:
        inputs = self.processor(images, return_tensors="pt").to(self.device)
        arrays = np.stack([np.asarray(image, dtype=np.float32) / 255.0 for image in images])
        with torch.inference_mode():
            _, flags = self.checker(images=arrays, clip_input=inputs.pixel_values.to(self.dtype))
        flags = tuple(bool(flag) for flag in flags)
        return [blur_for_safety(img) if flag else img for img, flag in zip(images, flags, strict=True)], flags


def load_safety_checker(model_id: str, *, device: torch.device, dtype: torch.dtype) -> SafetyFilter:
    """Load the optional image safety checker (a separate download; SD 2 ships none)."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    try:
        checker = StableDiffusionSafetyChecker.from_pretrained(model_id, dtype=dtype).to(device)  # type: ignore[arg-type]
        processor = CLIPImageProcessor.from_pretrained(model_id)
    except Exception as exc:
        raise _load_error(model_id, "IMAGINE_SAFETY_CHECKER_MODEL", exc) from exc
    return SafetyFilter(checker, processor, device, dtype)
