"""The local backend: the in-process GPU thread (`Engine`) behind the `RenderBackend` protocol."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import socket
from collections.abc import Callable

from PIL import Image

from bot.engine.backend import CancelToken, ProgressEvents, RenderOutput
from bot.engine.executor import Engine
from bot.engine.images import png_bytes
from bot.engine.shorten import ShortenResult
from bot.engine.types import EngineError, GenerationRequest, GenerationResult

log = logging.getLogger(__name__)

PREVIEW_SIDE = 256


def preview_png(preview: Image.Image) -> bytes:
    """A small PNG of a denoising preview (~1 ms), what progress messages show."""
    buffer = io.BytesIO()
    preview.resize((PREVIEW_SIDE, PREVIEW_SIDE), Image.Resampling.NEAREST).save(buffer, format="PNG")
    return buffer.getvalue()


def render_output(result: GenerationResult, worker: dict[str, object]) -> RenderOutput:
    """Encode a result's tiles as PNG (off the GPU thread) and record which worker rendered it."""
    return RenderOutput(
        prompts=result.prompts,
        image_seeds=result.image_seeds,
        tiles_png=tuple(png_bytes(image) for image in result.images),
        expander=result.expander,
        render={**result.render, "worker": worker},
        timings=result.timings,
        nsfw_flags=result.nsfw_flags,
    )


class LocalBackend:
    """Capacity 1: one GPU thread. Tiles are PNG-encoded on a worker thread while the next job renders."""

    name = "local"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._load_error: str | None = None
        self._load_task: asyncio.Task[None] | None = None

    @property
    def capacity(self) -> int:
        return 1

    @property
    def device(self) -> str:
        """The torch device this process renders on (the heartbeat records it)."""
        return str(self.engine.device)

    async def start(self) -> None:
        """Load the models on the GPU thread in the background; jobs queue behind the load."""
        self._load_task = asyncio.create_task(self._load(), name="load-models")

    async def _load(self) -> None:
        try:
            await self.engine.load()
            self._load_error = None
        except EngineError as exc:
            # The engine has logged what failed and how to fix it; loading is retried by the next job.
            self._load_error = exc.user_message
            log.warning("models not loaded at start-up (%s); the next job retries", type(exc).__name__)
        except Exception:
            self._load_error = "the models could not be loaded"
            log.exception("loading the models failed")

    async def close(self) -> None:
        await self.engine.close()

    def resident_models(self) -> tuple[str, ...]:
        """The models loaded now (the runner prefers jobs for them, within a bound)."""
        return self.engine.models.names()

    def validate(self, request: GenerationRequest) -> None:
        self.engine.validate(request)

    async def prepare_validation(self) -> None:
        # Only the SD tokenizer (seconds, no weights): `validate` then checks the seed fits CLIP's window.
        await asyncio.to_thread(self.engine.load_seed_tokenizer)

    async def available(self) -> tuple[bool, str]:
        # A failed load is retried by the next job (loading is all-or-nothing); the GPU thread is here.
        if self._load_error is not None:
            return True, f"local GPU thread (last model load failed: {self._load_error})"
        return True, f"local GPU thread on {self.engine.device}"

    async def shorten(self, text: str) -> ShortenResult:
        """/shorten (issue 22) on this GPU thread; remote workers have no such call yet."""
        return await self.engine.shorten(text)

    async def render(
        self,
        request: GenerationRequest,
        *,
        on_progress: ProgressEvents | None,
        on_rendered: Callable[[], None],
        cancel: CancelToken,
    ) -> RenderOutput:
        progress = None
        if on_progress is not None:
            report = on_progress

            def progress(step: int, total: int, preview: Image.Image | None) -> None:
                # On the loop (Engine.generate hops it there); a 256 px PNG is ~1 ms.
                report(step, total, preview_png(preview) if preview is not None else None)

        try:
            result = await self.engine.generate(request, on_progress=progress, cancel=cancel.event)
        finally:
            on_rendered()
        worker = {"backend": "local", "host": socket.gethostname(), "pid": os.getpid()}
        return await asyncio.to_thread(render_output, result, worker)
