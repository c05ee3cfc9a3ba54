"""The engine: one dedicated GPU thread owns both models; an asyncio-facing API in front of it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import gc
import io
import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from PIL import Image

from bot.engine.diverse_prompts import apply_to_job as diversify_job_prompts
from bot.engine.expander import PromptExpander, SamplingSettings
from bot.engine.fair_guidance import plan_for
from bot.engine.loading import (
    load_inpaint_pipeline,
    load_safety_checker,
    load_sd_pipeline,
    load_seed_tokenizer,
    load_text_model,
    quiet_libraries,
    resolve_device,
    resolve_dtype,
)
from bot.engine.mitigation import mitigation_mode
from bot.engine.model_specs import DEFAULT_MODEL_NAME, ModelEntry
from bot.engine.numerics import engine_threads, library_versions, numerics_record
from bot.engine.outpaint import composite
from bot.engine.prompts import compile_blocklist
from bot.engine.renderer import Renderer, clip_token_count, free_device_memory, is_out_of_memory
from bot.engine.residency import Resident, ResidentModels
from bot.engine.shorten import ShortenResult
from bot.engine.shorten import shorten as shorten_prompt
from bot.engine.types import (
    EngineError,
    GenerationRequest,
    GenerationResult,
    InvalidRequest,
    ModelLoadError,
    OutOfMemory,
    ProgressCallback,
)
from bot.engine.validation import Limits, check_seed_tokens, validate_request

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class EngineConfig:
    """What the engine needs from the settings (kept separate so the engine never imports the bot)."""

    sd_model: str
    text_model: str
    device: str = "auto"
    dtype: str = "auto"
    low_vram: bool = False
    compile: str = "off"
    safety_checker: bool = False
    safety_checker_model: str = "CompVis/stable-diffusion-safety-checker"
    preview_every: int = 5
    limits: Limits = field(default_factory=Limits)
    blocklist: tuple[str, ...] = ()
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    warmup_size: tuple[int, int] | None = None
    # CPU only: torch threads for this engine (None: every core). Ray replicas sharing a box pin 1 each.
    torch_threads: int | None = None
    # A dedicated inpainting checkpoint for Zoom Out/Pan; None = the base model's UNet.
    inpaint_model: str | None = None
    # The model registry (bot/models/registry.py); empty = `sd_model` alone, named `sd21`.
    models: tuple[ModelEntry, ...] = ()
    default_model: str = ""
    max_resident_models: int = 1
    lora_dir: str | None = None

    def model_entries(self) -> tuple[ModelEntry, ...]:
        """The registry's entries, or today's one model."""
        return self.models or (ModelEntry(DEFAULT_MODEL_NAME, self.sd_model),)

    def entry(self, name: str) -> ModelEntry:
        """The entry `name` names ("" = the default); InvalidRequest for an unknown or disabled one."""
        entries = self.model_entries()
        wanted = (name or self.default_model or entries[0].name).lower()
        for entry in entries:
            if entry.name.lower() == wanted and entry.enabled:
                return entry
        valid = ", ".join(e.name for e in entries if e.enabled)
        raise InvalidRequest(f"`model` must be one of {valid}, got {name[:40]!r}")

    # /describe (issue 22): None = off
    caption_model: str | None = None
    describe_clip_model: str | None = None
    # /blend (issue 22): an SD 2.1 unCLIP model (Hub id or folder) and where it was configured; None = off
    blend_model: str | None = None
    blend_model_setting: str = "IMAGINE_BLEND_MODEL"


@dataclass
class GpuStats:
    """Busy/idle bookkeeping of the GPU thread (for benchmarks and /status)."""

    jobs: int = 0
    busy_seconds: float = 0.0
    last_end: float | None = None
    # Bounded: a bot runs for months; the benchmarks read only the recent gaps.
    idle_gaps: deque[float] = field(default_factory=lambda: deque(maxlen=1000))


class Engine:
    """Loads the models on its own thread and runs every model call there."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu")
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.renderer: Renderer | None = None
        self.expander: PromptExpander | None = None
        self._safety: Any | None = None
        self._seed_tokenizer: Any | None = None
        self.model_info: dict[str, Any] = {}
        self.stats = GpuStats()
        #: the loaded models (IMAGINE_MAX_RESIDENT_MODELS, least recently used out first)
        self.models = ResidentModels(config.max_resident_models, self._load_entry, self.device)
        # Compiled here, not at load: the member's own text is checked before a job is queued.
        self.blocklist = compile_blocklist(config.blocklist)
        self._describer: Any | None = None  # /describe models, loaded on the first describe job
        self._blender: Any | None = None  # /blend's unCLIP pipeline, loaded on the first blend job

    # -- thread plumbing -------------------------------------------------------------------------
    async def _on_gpu(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn)

    async def on_gpu_thread(self, fn: Callable[[], T]) -> T:
        """Await `fn` run on the GPU thread (model work beside rendering: /shorten, tests)."""
        await self.load()
        return await self._on_gpu(fn)

    def run_sync(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the GPU thread from synchronous code (CLI, benchmarks)."""
        return self._executor.submit(fn).result()

    async def load(self) -> None:
        """Load both models on the GPU thread (once)."""
        await self._on_gpu(self._load_sync)

    def load_sync(self) -> None:
        """Load both models on the GPU thread from synchronous code (a Ray replica's constructor)."""
        self.run_sync(self._load_sync)

    def _load_sync(self, model: str = "") -> None:
        """Load every model, or none: a failed load leaves the engine unloaded, and the next call retries.

        `model`: the registry model to load first (a job's own; "" = the default).
        """
        if self.renderer is not None:
            return
        quiet_libraries()
        if self.device.type == "cpu":
            torch.set_num_threads(engine_threads(self.config.torch_threads))
        started = time.perf_counter()
        try:
            renderer, expander, safety, model_info = self._load_models(model)
        except Exception as exc:
            # The traceback holds the half-built pipeline in its frames: drop those locals so a failed
            # load does not keep gigabytes of weights on the device until the next attempt.
            _clear_traceback_frames(exc)
            gc.collect()
            free_device_memory(self.device)
            if isinstance(exc, ModelLoadError):
                log.error("%s", exc.detail)
            raise
        # Published together, only after everything loaded: `renderer is not None` means fully loaded.
        self.expander, self._safety, self.model_info = expander, safety, model_info
        self.renderer = renderer
        if self.config.warmup_size is not None and self.config.compile != "off":
            self._warm_up(*self.config.warmup_size)
        # The models are hundreds of thousands of long-lived objects; a full GC walking them stalls every
        # thread (the event loop too) for ~200 ms. Freezing them out of the collector removes those pauses.
        gc.collect()
        gc.freeze()
        log.info(
            "models loaded on %s (%s) in %.1fs",
            self.device,
            self.model_info["dtype"],
            time.perf_counter() - started,
        )

    def _load_entry(self, entry: ModelEntry) -> tuple[Renderer, dict[str, Any]]:
        """One registry model as a renderer (the dedicated inpainting checkpoint goes with the default)."""
        pipe, sd_info = load_sd_pipeline(
            entry.source,
            device=self.device,
            dtype=self.dtype,
            low_vram=self.config.low_vram,
            compile_mode=self.config.compile,
            revision=entry.revision,
            scheduler=entry.scheduler,
            setting="IMAGINE_SD_MODEL" if not self.config.models else f"models.{entry.name}.source",
        )
        inpaint_pipe = None
        if self.config.inpaint_model and entry.name == self.config.entry("").name:
            inpaint_pipe = load_inpaint_pipeline(
                self.config.inpaint_model, base=pipe, device=self.device, dtype=self.dtype
            )
        renderer = Renderer(
            pipe,
            device=self.device,
            dtype=self.dtype,
            preview_every=self.config.preview_every,
            inpaint_pipe=inpaint_pipe,
            inpaint_model=self.config.inpaint_model or "base",
        )
        return renderer, sd_info

    def _load_models(self, model: str = "") -> tuple[Renderer, PromptExpander, Any | None, dict[str, Any]]:
        resident = self.models.get(self.config.entry(model))
        renderer, sd_info, pipe = resident.renderer, resident.info, resident.renderer.pipe
        model, tokenizer, text_info = load_text_model(self.config.text_model, device=self.device)
        expander = PromptExpander(
            model,
            tokenizer,
            model_id=self.config.text_model,
            revision=text_info["revision"],
            version=text_info["version"],
            device=self.device,
            blocklist=self.config.blocklist,
            sampling=self.config.sampling,
            # The tokenizer alone, not the renderer: an unloaded model's weights must not stay reachable.
            count_clip_tokens=functools.partial(clip_token_count, pipe.tokenizer),
            clip_max_tokens=renderer.clip_max_tokens,
        )
        if self._seed_tokenizer is None:
            # From now on `validate` refuses an over-long seed before its row is written (the bot path).
            # Set before the rest is published: harmless alone, and `validate` only reads it.
            self._seed_tokenizer = load_seed_tokenizer(self.config.entry("").source)
        safety = None
        if self.config.safety_checker:
            safety = load_safety_checker(
                self.config.safety_checker_model, device=self.device, dtype=self.dtype
            )
        model_info = {
            "sd": sd_info,
            "text": text_info,
            "device": str(self.device),
            # What the weights really are, not what was asked for (load_sd_pipeline checks they agree).
            "dtype": str(pipe.unet.dtype).removeprefix("torch."),
            "safety_checker": self.config.safety_checker_model if safety is not None else None,
            "versions": library_versions(),
        }
        return renderer, expander, safety, model_info

    def _warm_up(self, width: int, height: int) -> None:
        assert self.renderer is not None
        started = time.perf_counter()
        self.renderer.render(["warm up"], [0], negative="", steps=2, guidance=7.5, width=width, height=height)
        log.info("warm-up (compile) took %.1fs", time.perf_counter() - started)

    async def close(self) -> None:
        """Stop the thread after the running job (if any) ends."""
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)

    # -- jobs --------------------------------------------------------------------------------------
    def validate(self, request: GenerationRequest) -> None:
        """Cheap checks that need no model (run them on the event loop before queueing).

        Once the seed tokenizer is there (`load_seed_tokenizer`, or after the models loaded) this also
        checks the seed fits CLIP's window, so an over-long seed never becomes a row.
        """
        validate_request(request, self.config.limits, self.blocklist)
        self.config.entry(request.model)
        tokenizer = self._seed_tokenizer
        if tokenizer is not None:
            count = functools.partial(clip_token_count, tokenizer)
            check_seed_tokens(request.seed_text, count, tokenizer.model_max_length - 2)

    def load_seed_tokenizer(self) -> None:
        """Load only the SD text tokenizer for `validate` (seconds, no weights); the CLI calls it up front.

        A separate instance from the pipeline's: HF tokenizers must not be shared across threads, and
        this one is used on the event loop's thread, the pipeline's on the GPU thread.
        """
        if self._seed_tokenizer is None:
            self._seed_tokenizer = load_seed_tokenizer(self.config.entry("").source)

    async def generate(
        self,
        request: GenerationRequest,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        """Expand and render on the GPU thread; progress reaches the loop via call_soon_threadsafe."""
        self.validate(request)
        loop = asyncio.get_running_loop()
        threadsafe_progress: ProgressCallback | None = None
        if on_progress is not None:
            callback = on_progress

            def threadsafe_progress(step: int, total: int, preview: Image.Image | None) -> None:
                if not loop.is_closed():
                    loop.call_soon_threadsafe(callback, step, total, preview)

        return await self._on_gpu(lambda: self.generate_sync(request, threadsafe_progress, cancel))

    def generate_sync(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        """The job itself; must run on the GPU thread."""
        assert threading.current_thread().name.startswith("gpu"), "model work must run on the GPU thread"
        self._load_sync(request.model)
        assert self.renderer is not None and self.expander is not None
        started = time.perf_counter()
        if self.stats.last_end is not None:
            self.stats.idle_gaps.append(started - self.stats.last_end)
        try:
            resident = self._model_for(request)
            loras = resident.loras.apply(
                resident.renderer.pipe, request.loras, self.config.lora_dir, resident.entry.name
            )
            result = self._generate_checked(request, on_progress, cancel, started)
            return dataclasses.replace(result, render=self._model_record(result.render, resident, loras))
        except EngineError:
            raise
        except Exception as exc:
            if is_out_of_memory(exc):
                free_device_memory(self.device)
                raise OutOfMemory() from exc
            raise
        finally:
            end = time.perf_counter()
            self.stats.last_end = end
            self.stats.busy_seconds += end - started
            self.stats.jobs += 1

    async def ensure_model(self, model: str) -> str:
        """Load the registry model `model` ("" = the default) unless it is resident; its name.

        A Ray replica calls it from its `@serve.multiplexed` loader, before the job that needs it.
        """

        def load() -> str:
            self._load_sync(model)
            return self._resident_for(model).entry.name

        return await self._on_gpu(load)

    def _model_for(self, request: GenerationRequest) -> Resident:
        """The job's model, loaded (swapping out the least recently used one if need be)."""
        return self._resident_for(request.model)

    def _resident_for(self, model: str) -> Resident:
        entry = self.config.entry(model)
        resident = self.models.peek(entry.name)
        if resident is None or resident.entry != entry:
            # Drop the engine's own reference first, so the unloaded model's memory is really freed.
            self.renderer = None
            try:
                resident = self.models.get(entry)
            except Exception as exc:
                _clear_traceback_frames(exc)
                free_device_memory(self.device)
                if isinstance(exc, ModelLoadError):
                    log.error("%s", exc.detail)
                raise
            gc.collect()
            gc.freeze()
        else:
            resident = self.models.get(entry)
        self.renderer = resident.renderer
        return resident

    def _model_record(
        self, render: dict[str, Any], resident: Resident, loras: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """The render record of the job's model: its registry name, kind and revision, and its LoRAs."""
        entry = resident.entry
        record = {
            **render,
            "sd_model": entry.source,
            "sd_revision": resident.info["revision"],
            "model_name": entry.name,
            "model_kind": entry.kind,
            "model_revision": entry.revision,
        }
        if loras:
            record["loras"] = loras
        return record

    def _generate_checked(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None,
        cancel: threading.Event | None,
        started: float,
    ) -> GenerationResult:
        assert self.renderer is not None and self.expander is not None
        if request.action == "describe":  # issue 22: prompts from a picture, no rendering
            return self._describe_checked(request, started)
        if request.action == "blend":  # issue 22: unCLIP from 2–5 pictures
            return self._blend_checked(request, on_progress, cancel, started)
        seed = request.seed_text.strip()
        check_seed_tokens(seed, self.renderer.count_clip_tokens, self.renderer.clip_max_tokens)
        timings: dict[str, float] = {}
        if request.prompts is not None:
            prompts = tuple(request.prompts)
            expander_record: dict[str, Any] = {"source": "given"}
        elif request.expand:
            expansion = self.expander.expand(
                seed,
                request.count,
                request.job_seed,
                safe_mode=request.safe_mode,
                temperature=request.temperature,
            )
            prompts = expansion.prompts
            expander_record = expansion.settings
        else:
            prompts = (seed,) * request.count
            expander_record = {"source": "seed", "expand": False}
        prompts, mitigation = self._mitigate_prompts(request, prompts)
        fair, not_guided = plan_for(request)
        timings["expand"] = time.perf_counter() - started
        image_seeds = request.tile_seeds
        init_image = _decoded(request.init_image, "RGB", "init_image")
        mask_image = _decoded(request.mask_image, "L", "mask_image")
        render_started = time.perf_counter()
        images = self.renderer.render(
            prompts,
            image_seeds,
            negative=request.negative.strip(),
            steps=request.steps,
            guidance=request.guidance,
            width=request.width,
            height=request.height,
            on_progress=on_progress,
            cancel=cancel,
            init_image=init_image,
            strength=request.strength,
            mask_image=mask_image,
            tiled_vae=request.tiled_vae,
            fair_guidance=fair,
            tiling=request.tiling,
        )
        if init_image is not None and mask_image is not None:
            # Outside the mask the result is the source itself, not its trip through the VAE.
            canvas = init_image.resize((request.width, request.height), Image.Resampling.LANCZOS)
            mask = mask_image.resize((request.width, request.height), Image.Resampling.NEAREST)
            images = [composite(image, canvas, mask) for image in images]
        timings["render"] = time.perf_counter() - render_started
        nsfw: tuple[bool, ...] = (False,) * len(images)
        if self._safety is not None and request.safe_mode:
            images, nsfw = self._safety(images)
        scheduler = self.renderer.pipe.scheduler
        render_record = {
            "sd_model": self.config.sd_model,
            "sd_revision": self.model_info["sd"]["revision"],
            "scheduler": type(scheduler).__name__,
            "scheduler_config": dict(scheduler.config),
            "device": self.model_info["device"],
            "dtype": self.model_info["dtype"],
            "versions": self.model_info["versions"],
            "mode": request.mode,
            "action": request.action,
            "tiled_vae": request.tiled_vae,
            # Read on this thread, where the engine set them: what a byte-identical rerun must repeat.
            "numerics": numerics_record(self.device.type),
        }
        if request.mode != "txt2img":
            render_record["strength"] = request.strength if request.mode == "img2img" else 1.0
        if request.tiling:
            render_record["tile"] = True  # issue 22: only on tiled jobs, so older records read the same
        if request.mode == "outpaint":
            render_record["inpaint_model"] = self.renderer.inpaint_model
        if request.mitigation is not None:
            render_record["mitigation"] = fair.record() if fair else mitigation or {"not_applied": not_guided}
        timings["total"] = time.perf_counter() - started
        return GenerationResult(
            prompts=prompts,
            image_seeds=tuple(image_seeds),
            images=tuple(images),
            expander=expander_record,
            render=render_record,
            timings=timings,
            nsfw_flags=tuple(nsfw),
        )

    def _mitigate_prompts(
        self, request: GenerationRequest, prompts: tuple[str, ...]
    ) -> tuple[tuple[str, ...], dict[str, Any] | None]:
        """Diverse prompts, after expansion and before the blocklist check of what is rendered."""
        if mitigation_mode(request.mitigation) != "diverse-prompts":
            return prompts, None
        assert self.renderer is not None
        return diversify_job_prompts(
            prompts,
            job_seed=request.job_seed,
            given=request.prompts is not None,
            count_tokens=self.renderer.count_clip_tokens,
            max_tokens=self.renderer.clip_max_tokens,
            blocklist=self.blocklist if request.safe_mode else (),
        )

    def _describe_checked(self, request: GenerationRequest, started: float) -> GenerationResult:
        """/describe: caption + CLIP-ranked modifiers → four prompts (GPU thread)."""
        from bot.engine.describe import Describer

        config = self.config
        if config.caption_model is None or config.describe_clip_model is None:
            raise InvalidRequest("/describe is off on this bot (IMAGINE_CAPTION_MODEL is not set)")
        if self._describer is None:
            assert self.renderer is not None
            self._describer = Describer(
                config.caption_model,
                config.describe_clip_model,
                device=self.device,
                dtype=self.renderer.dtype,
            )
        image = _decoded(request.init_image, "RGB", "init_image")
        if image is None:
            raise InvalidRequest("/describe needs an image")
        renderer = self.renderer
        assert renderer is not None
        result = self._describer.describe(
            image,
            blocklist=self.blocklist if request.safe_mode else (),
            fits=lambda text: renderer.count_clip_tokens(text) <= renderer.clip_max_tokens,
        )
        timings = {"describe": time.perf_counter() - started, "total": time.perf_counter() - started}
        return GenerationResult(
            prompts=result.prompts,
            image_seeds=(0,) * len(result.prompts),
            images=(),
            expander={"source": "describe", "caption": result.caption, "ranked": result.ranked},
            render={
                "mode": "describe",
                "action": "describe",
                "caption_model": config.caption_model,
                "clip_model": config.describe_clip_model,
                "device": self.model_info["device"],
                "versions": self.model_info["versions"],
            },
            timings=timings,
        )

    def _blend_checked(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None,
        cancel: threading.Event | None,
        started: float,
    ) -> GenerationResult:
        """/blend: the pictures' CLIP image embeddings, weighted and averaged, through SD 2.1 unCLIP."""
        from bot.engine.blend import (
            Blender,
            conditioning_texts,
            load_unclip_pipeline,
            placeholder,
            unpack_sheet,
        )

        config = self.config
        if config.blend_model is None:
            # The bot's intake refuses /blend when it is off there; this is a render host without it (a Ray
            # node without IMAGINE_BLEND_MODEL) or a job queued before a restart without it.
            raise InvalidRequest(
                "/blend is off on the machine that renders this bot's images: IMAGINE_BLEND_MODEL is not set there"
            )
        sheet = unpack_sheet(request.init_image)
        if self._blender is None or self._blender.source != config.blend_model:
            pipe = load_unclip_pipeline(
                config.blend_model, device=self.device, dtype=self.dtype, setting=config.blend_model_setting
            )
            self._blender = Blender(pipe, source=config.blend_model, device=self.device)
        image_seeds = request.tile_seeds
        shown = request.prompts or (sheet.prompt or placeholder(len(sheet.images)),) * request.count
        images = self._blender.render(
            sheet,
            image_seeds,
            prompts=conditioning_texts(sheet, shown, request.count),
            negative=request.negative.strip(),
            steps=request.steps,
            guidance=request.guidance,
            width=request.width,
            height=request.height,
            on_progress=on_progress,
            cancel=cancel,
        )
        nsfw: tuple[bool, ...] = (False,) * len(images)
        if self._safety is not None and request.safe_mode:
            images, nsfw = self._safety(images)
        scheduler = self._blender.pipe.scheduler
        timings = {"render": time.perf_counter() - started, "total": time.perf_counter() - started}
        return GenerationResult(
            prompts=tuple(shown),
            image_seeds=tuple(image_seeds),
            images=tuple(images),
            expander={"source": "blend", "expand": False},
            render={
                "mode": "blend",
                "action": "blend",
                "blend": sheet.record(),
                "unclip_model": config.blend_model,
                "scheduler": type(scheduler).__name__,
                "scheduler_config": dict(scheduler.config),
                "device": self.model_info["device"],
                "dtype": str(self.dtype).removeprefix("torch."),
                "versions": self.model_info["versions"],
                "numerics": numerics_record(self.device.type),
            },
            timings=timings,
            nsfw_flags=tuple(nsfw),
        )

    async def shorten(self, text: str) -> ShortenResult:
        """/shorten (issue 22): word weights from the SD text encoder, on the GPU thread."""
        return await self.on_gpu_thread(lambda: self.shorten_sync(text))

    def shorten_sync(self, text: str) -> ShortenResult:
        """GPU thread: the pipeline's own tokenizer and text encoder (never used from another thread)."""
        self._load_sync()
        assert self.renderer is not None
        pipe = self.renderer.pipe
        return shorten_prompt(pipe.tokenizer, pipe.text_encoder, text, self.device)

    def expand_sync(self, seed_text: str, count: int, job_seed: int) -> tuple[str, ...]:
        """Prompts only (tests, benchmarks); GPU thread."""
        self._load_sync()
        assert self.expander is not None
        return self.expander.expand(seed_text, count, job_seed).prompts


def _decoded(data: bytes | None, mode: str, name: str) -> Image.Image | None:
    """PNG/JPEG/WebP bytes of a request as a decoded image in `mode`."""
    if data is None:
        return None
    try:
        with Image.open(io.BytesIO(data)) as opened:
            return opened.convert(mode)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidRequest(f"`{name}` is not a readable image ({type(exc).__name__})") from exc


def _clear_traceback_frames(exc: BaseException | None) -> None:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__
