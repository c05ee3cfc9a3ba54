"""A render backend whose every job runs in a fresh worker process: faults are real processes dying.

The worker (`python -c …`) holds its job for a set time, then writes PNG tiles to stdout. A worker killed
mid-job (SIGKILL, like a replica or GPU box dying) is reported as `WorkerLost`, exactly as the remote
backends report it; a cancel kills the worker (unless `ignore_cancel`: a hung worker) → `JobCancelled`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import sys
from collections.abc import Callable

from bot.engine.backend import CancelToken, ProgressEvents, RenderOutput, WorkerLost
from bot.engine.types import GenerationRequest, JobCancelled

WORKER = """
import base64, io, sys, time
from PIL import Image
count, size, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
print("started", flush=True)
time.sleep(hold)
for index in range(count):
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (40 * index, 90, 160)).save(buffer, "PNG")
    print(base64.b64encode(buffer.getvalue()).decode(), flush=True)
"""


class ProcessBackend:
    """Renders each job in a fresh worker process; a worker that dies mid-job raises WorkerLost."""

    name = "process"
    capacity = 1

    def __init__(self, holds: list[float], *, ignore_cancel: bool = False) -> None:
        self.holds = holds  # seconds each successive worker holds its job before answering
        self.ignore_cancel = ignore_cancel
        self.workers: list[int] = []
        self.started = asyncio.Event()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def validate(self, request: GenerationRequest) -> None:
        return None

    async def prepare_validation(self) -> None:
        return None

    async def available(self) -> tuple[bool, str]:
        return True, "worker processes"

    async def render(
        self,
        request: GenerationRequest,
        *,
        on_progress: ProgressEvents | None,
        on_rendered: Callable[[], None],
        cancel: CancelToken,
    ) -> RenderOutput:
        hold = self.holds.pop(0) if self.holds else 0.0
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WORKER,
            str(request.count),
            str(request.width),
            str(hold),
            stdout=asyncio.subprocess.PIPE,
        )
        self.workers.append(worker.pid)
        try:
            if not self.ignore_cancel:
                cancel.on_set(lambda: _kill(worker))
            assert worker.stdout is not None
            await worker.stdout.readline()
            self.started.set()
            output, _ = await worker.communicate()
        finally:
            if worker.returncode is None:  # the job's task was cancelled: leave no worker behind
                _kill(worker)
        if cancel.is_set() and not self.ignore_cancel:
            raise JobCancelled(cancel.reason or "cancelled")
        if worker.returncode != 0:
            raise WorkerLost()  # as the remote backends report a replica that died
        on_rendered()
        tiles = tuple(base64.b64decode(line) for line in output.decode().split())
        return RenderOutput(
            prompts=(request.seed_text,) * request.count,
            image_seeds=tuple(range(request.job_seed, request.job_seed + request.count)),
            tiles_png=tiles,
            expander={},
            render={"worker": {"backend": self.name, "pid": worker.pid}},
        )


def _kill(worker: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        worker.kill()
