"""The render-backend seam: what the job runner needs from whatever renders a job.

Two implementations: `LocalBackend` (the in-process GPU thread, bot/engine/local_backend.py) and
`HttpBackend` (Ray Serve workers over HTTP, bot/engine/workers/). The runner, the CLI and the bot depend on
this module only; it imports neither torch nor Ray, and everything that crosses it is plain data
(bytes, numbers, strings, frozen dataclasses of them) so that it can travel between processes and hosts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.engine.types import EngineError, GenerationRequest

# (step, total, small preview PNG or None); called on the event loop.
ProgressEvents = Callable[[int, int, bytes | None], None]


class BackendUnavailable(EngineError):
    """No render worker took the job (unreachable, refused, 503): no attempt is spent, the job waits.

    The message says what is wrong (one line naming the workers' URL); it is never a job's failure text.
    """

    user_message = "the GPU workers are offline right now"


class WorkerLost(EngineError):
    """The worker rendering the job died mid-job (e.g. a killed replica): the job may be retried."""

    user_message = "the GPU worker running this job stopped"


@dataclass(frozen=True)
class RenderOutput:
    """A rendered job as plain data: tiles as PNG bytes plus everything needed to reproduce them."""

    prompts: tuple[str, ...]
    image_seeds: tuple[int, ...]
    tiles_png: tuple[bytes, ...]
    expander: dict[str, Any]
    render: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    nsfw_flags: tuple[bool, ...] = ()


class CancelToken:
    """Set once (by the job's owner or by shutdown); backends watch it.

    The local backend hands `event` to the GPU thread, which checks it at every denoising step; a remote
    backend registers a callback that cancels the remote call. `set` and the callbacks run on the loop.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: str | None = None
        self._callbacks: list[Callable[[], None]] = []

    def set(self, reason: str = "cancelled") -> None:
        """Interrupt the job at its next step; the first reason wins."""
        if self.event.is_set():
            return
        self.reason = reason
        self.event.set()
        for callback in self._callbacks:
            callback()
        self._callbacks.clear()

    def is_set(self) -> bool:
        return self.event.is_set()

    def on_set(self, callback: Callable[[], None]) -> None:
        """Run `callback` when the token is set (at once if it already is)."""
        if self.event.is_set():
            callback()
        else:
            self._callbacks.append(callback)


class RenderBackend(Protocol):
    """Renders jobs: the job runner's only view of the GPU(s)."""

    name: str

    @property
    def capacity(self) -> int:
        """How many jobs it can render at once (1 for the local GPU thread, the replicas for Ray)."""
        ...

    async def start(self) -> None:
        """Prepare (load models in the background, connect); must not raise when workers are away."""
        ...

    async def close(self) -> None:
        """Stop; a job still rendering is interrupted by its cancel token first (the runner sets it)."""
        ...

    def validate(self, request: GenerationRequest) -> None:
        """Cheap checks that need no model; raise InvalidRequest naming the bad argument."""
        ...

    async def prepare_validation(self) -> None:
        """Load what `validate` can use beyond the limits (the local seed tokenizer); may do nothing."""
        ...

    async def available(self) -> tuple[bool, str]:
        """Whether jobs can be rendered now (reconnecting if need be), and a one-line reason."""
        ...

    async def render(
        self,
        request: GenerationRequest,
        *,
        on_progress: ProgressEvents | None,
        on_rendered: Callable[[], None],
        cancel: CancelToken,
    ) -> RenderOutput:
        """Render one job.

        `on_progress` reports denoising steps; `on_rendered` is called once when the model work is over
        (from then on the job can no longer be cancelled and its slot is free for the next job, while
        encoding and saving go on). Raises JobCancelled when `cancel` stopped it, WorkerLost when the
        worker died, BackendUnavailable when no worker is reachable, other EngineErrors for bad jobs.
        """
        ...
