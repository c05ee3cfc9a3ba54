"""The Ray Serve applications: render replicas that are their own HTTP ingress. The only module importing Ray.

Deployed by `python -m bot workers` through the dashboard's REST API (bot/engine/workers/deploy.py); they run
on the cluster's nodes, never in the bot. Two applications, so that a status request never waits behind a
render (a replica takes one request at a time):

- `imagine-workers` at `/imagine` (`build_app`): N `RenderWorker` replicas, one GPU or one CPU each, one job
  at a time (`max_ongoing_requests=1`; Serve's proxy routes each request to a free replica). A replica checks
  the bearer token and the request format version and streams the job's events back as NDJSON
  (bot/engine/workers/protocol.py) from the same `Engine` as the local backend: one hop, proxy → replica. A
  client that closes the stream cancels the request: the replica's render stops at its next denoising step.
  Models are multiplexed: the client names the job's registry model in the `serve_multiplexed_model_id`
  header, Serve's proxy routes the request to a replica that holds that model (else to one holding the
  fewest), and the replica loads it through `@serve.multiplexed`, keeping at most IMAGINE_MAX_RESIDENT_MODELS
  (the engine's own residency bound, so Serve's view and the engine's agree).
- `imagine-workers-status` at `/imagine-status` (`build_status_app`): one tiny replica (no CPU) answering
  `GET /imagine-status` with the running render replicas (the bot's capacity).

Settings (models, device, token) come from each node's own environment or `.env`, never from the Serve
config, which the dashboard shows to anyone holding the Ray token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import platform
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from bot.engine.types import EngineError, JobCancelled
from bot.engine.workers.protocol import (
    APP_NAME,
    DEPLOYMENT_NAME,
    PROTOCOL_VERSION,
    SHORTEN_PATH,
    STATUS_DEPLOYMENT_NAME,
    VERSION_HEADER,
    ProtocolError,
    decode_request,
    encode_output,
    error_event,
    progress_event,
    version_mismatch,
)

log = logging.getLogger(__name__)

# A replica streams step events at most this often (previews and the last step always): each is a hop.
PROGRESS_EVERY_SECONDS = 0.25
# With nothing else to send, a replica writes a keep-alive line this often: a client that hears nothing
# for several of these has lost the stream (a vanished host sends no reset).
KEEPALIVE_SECONDS = 5.0
STATUS_CACHE_SECONDS = 1.0


def _settings() -> Any:
    from bot.settings import load_settings

    return load_settings()


def _resident_limit() -> int:
    """IMAGINE_MAX_RESIDENT_MODELS on this node: read when Serve imports this module on the replica's node."""
    try:
        return int(_settings().max_resident_models)
    except Exception:  # a broken setting stops the replica's constructor in one clear line
        return 1


def _token() -> bytes:
    """The workers' token from this node's settings; a replica refuses to start without one."""
    token = _settings().workers_token
    if token is None:
        raise RuntimeError(
            "IMAGINE_WORKERS_TOKEN (or IMAGINE_WORKERS_TOKEN_FILE) is not set on this Ray node: "
            "the workers refuse to serve without it"
        )
    return b"Bearer " + token.get_secret_value().encode()


def _authorized(request: Request, expected: bytes) -> bool:
    return hmac.compare_digest(request.headers.get("authorization", "").encode(), expected)


# -- the replica -------------------------------------------------------------------------------------
class RenderWorker:
    """One replica: the engine (its own GPU thread) loaded once; Serve sends it one job at a time."""

    def __init__(
        self, device: str | None = None, torch_threads: int | None = None, preview_every: int | None = None
    ) -> None:
        import dataclasses

        from bot.engine.executor import Engine
        from bot.wiring import engine_config_from

        config = engine_config_from(_settings())
        if device is not None:  # a CPU-only cluster: every replica pins one core
            config = dataclasses.replace(config, device=device, torch_threads=torch_threads)
        if preview_every is not None:  # bench/scaleout.py measures the cost of streaming previews
            config = dataclasses.replace(config, preview_every=preview_every)
        self._token = _token()
        self.engine = Engine(config)
        self.engine.load_sync()
        context = serve.get_replica_context()
        self.worker = {
            "backend": "ray",
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "replica": context.replica_tag,
            "python": platform.python_version(),
            "ray": _ray_version(),
        }

    async def __call__(self, request: Request) -> Response:
        if not _authorized(request, self._token):
            return JSONResponse({"error": "the workers refused the token"}, status_code=401)
        root = request.scope.get("root_path", "")
        path = request.url.path.removeprefix(root) or "/"
        if path == SHORTEN_PATH and request.method == "POST":  # issue 22: /shorten on the workers
            return await self._shorten(request)
        if path != "/render" or request.method != "POST":
            return JSONResponse({"error": f"no route {request.method} {path}"}, status_code=404)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        theirs = body.get("version") if isinstance(body, dict) else None
        if theirs != PROTOCOL_VERSION:
            return JSONResponse(
                {"error": version_mismatch(theirs), "version": PROTOCOL_VERSION}, status_code=409
            )
        try:
            job, generation = decode_request(body)
            model = self.engine.config.entry(generation.model).name
        except (ProtocolError, EngineError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return StreamingResponse(
            _ndjson(self.render(generation, job, model)),
            media_type="application/x-ndjson",
            headers={VERSION_HEADER: str(PROTOCOL_VERSION)},
        )

    async def _shorten(self, request: Request) -> Response:
        from bot.engine.workers.shorten_route import shorten_answer

        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        status, answer = await shorten_answer(self.engine, body)
        return JSONResponse(answer, status_code=status)

    @serve.multiplexed(max_num_models_per_replica=_resident_limit())
    async def load_model(self, model: str) -> str:
        """Serve's model multiplexer: load the registry model `model` here (the engine unloads the least
        recently used one first); Serve then routes the requests naming it to this replica."""
        return await self.engine.ensure_model(model)

    async def _generate(self, model: str, request: Any, progress: Any, cancel: threading.Event) -> Any:
        if model:
            await self.load_model(model)
        return await self.engine.generate(request, on_progress=progress, cancel=cancel)

    def _job_worker(self) -> dict[str, Any]:
        """The worker record of a job: this replica, the models it holds now and the swaps it has made."""
        models = self.engine.models
        return {**self.worker, "resident": list(models.names()), "swaps": models.swaps}

    async def render(self, request: Any, job: str = "", model: str = "") -> AsyncIterator[dict[str, Any]]:
        """Stream a job's events; a cancelled call arrives here as CancelledError and stops the GPU loop."""
        from bot.engine.local_backend import preview_png, render_output

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, int, Any]] = asyncio.Queue()
        cancel = threading.Event()
        last_step = [0, request.steps]

        def progress(step: int, total: int, preview: Any) -> None:
            last_step[:] = [step, total]
            events.put_nowait((step, total, preview_png(preview) if preview is not None else None))

        yield {"event": "started", "worker": self.worker}
        task = loop.create_task(self._generate(model, request, progress, cancel))
        last_sent = float("-inf")
        try:
            while not task.done() or not events.empty():
                getter = loop.create_task(events.get())
                await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    continue
                step, total, preview = getter.result()
                if preview is None and step < total and time.monotonic() - last_sent < PROGRESS_EVERY_SECONDS:
                    continue
                last_sent = time.monotonic()
                yield progress_event(step, total, preview)
            result = task.result()
        except EngineError as exc:
            yield error_event(exc)
            return
        except BaseException:  # CancelledError (the client went away) or GeneratorExit
            if not task.done():
                cancel.set()  # the GPU thread stops at its next step

                def stopped(done: asyncio.Task[Any]) -> None:
                    cancelled = not done.cancelled() and isinstance(done.exception(), JobCancelled)
                    log.warning(
                        "job %s stopped at step %d of %d: %s",
                        job or "?",
                        last_step[0],
                        last_step[1],
                        "cancelled in the GPU loop" if cancelled else "ended",
                    )

                task.add_done_callback(stopped)
            raise
        yield {"event": "rendered"}
        output = await asyncio.to_thread(render_output, result, self._job_worker())
        yield {"event": "output", "output": encode_output(output)}


def _ray_version() -> str:
    import ray

    return str(ray.__version__)


async def _ndjson(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """Events as NDJSON lines, with a keep-alive line after each silence of KEEPALIVE_SECONDS.

    When the client goes away Serve cancels the request: the CancelledError reaches `events` (the render)
    through the pending step below and stops the GPU loop.
    """
    pending: asyncio.Future[Any] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(events.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=KEEPALIVE_SECONDS)
            if not done:
                yield b'{"event": "alive"}\n'
                continue
            try:
                event = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield json.dumps(event).encode() + b"\n"
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending


# -- the status application --------------------------------------------------------------------------
class Status:
    """`GET /imagine-status`: the running render replicas, apart from the replicas so it never waits."""

    def __init__(self) -> None:
        self._token = _token()
        self._status: tuple[float, dict[str, Any]] = (float("-inf"), {})

    async def __call__(self, request: Request) -> Response:
        if not _authorized(request, self._token):
            return JSONResponse({"error": "the workers refused the token"}, status_code=401)
        return JSONResponse(await self._replicas())

    async def _replicas(self) -> dict[str, Any]:
        """Running replicas per the controller (it may count a just-killed one for a few seconds)."""
        checked, cached = self._status
        if time.monotonic() - checked < STATUS_CACHE_SECONDS:
            return cached
        status = await asyncio.to_thread(serve.status)
        app = status.applications.get(APP_NAME)
        deployment = app.deployments.get(DEPLOYMENT_NAME) if app is not None else None
        states = deployment.replica_states.items() if deployment is not None else ()
        running = sum(int(count) for state, count in states if str(state) == "RUNNING")
        message = " ".join(((deployment.message if deployment is not None else "") or "").split())
        result = {
            "version": PROTOCOL_VERSION,
            "replicas": running,
            "status": str(getattr(getattr(deployment, "status", None), "value", "NOT_DEPLOYED")),
            "message": message[:300],
        }
        self._status = (time.monotonic(), result)
        return result


def build_app(args: dict[str, Any]) -> Any:
    """Serve's builder for the render replicas (the config's `args`: `device`, `torch_threads` for CPU
    clusters, `preview_every` for benchmarks); no secrets travel here."""
    threads, previews = args.get("torch_threads"), args.get("preview_every")
    deployment: Any = serve.deployment
    return deployment(
        RenderWorker, name=DEPLOYMENT_NAME, max_ongoing_requests=1, health_check_period_s=5
    ).bind(
        args.get("device"),
        int(threads) if threads is not None else None,
        int(previews) if previews is not None else None,
    )


def build_status_app(args: dict[str, Any]) -> Any:
    """Serve's builder for the status application."""
    deployment: Any = serve.deployment
    return deployment(
        Status, name=STATUS_DEPLOYMENT_NAME, max_ongoing_requests=100, ray_actor_options={"num_cpus": 0}
    ).bind()
