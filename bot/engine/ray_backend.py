"""Ray Serve workers behind the `RenderBackend` protocol, and the `workers` deployment.

The only module that imports Ray, and only inside functions: the single-box path never needs it
(`pip install 'imagine-bot[ray]'` adds it). A replica wraps the same `Engine` as the local backend, runs one
job at a time (`max_ongoing_requests=1`) and streams plain-data events back to the bot:
`("started", worker)`, `("progress", step, total, preview_png)`, `("rendered",)`, `("output", RenderOutput)`.
Workers write nothing durable: the bot host saves files and SQLite rows.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from bot.engine.backend import BackendUnavailable, CancelToken, ProgressEvents, RenderOutput, WorkerLost
from bot.engine.prompts import compile_blocklist
from bot.engine.types import EngineError, GenerationRequest, JobCancelled
from bot.engine.validation import Limits, validate_request

if TYPE_CHECKING:
    from bot.engine.executor import EngineConfig

log = logging.getLogger(__name__)

APP_NAME = "imagine-workers"
DEPLOYMENT_NAME = "RenderWorker"
RAY_PIN = "2.60.0"  # pyproject's `ray` extra; bot and cluster must run the same Ray and Python
CONNECT_TIMEOUT_SECONDS = 3.0
STATUS_CACHE_SECONDS = 2.0


class RayConnectError(Exception):
    """The cluster cannot be used; the message is one line for an operator."""


# -- the replica -------------------------------------------------------------------------------------
class RenderWorker:
    """One Serve replica: the engine (its own GPU thread) loaded once, one job at a time."""

    def __init__(self, config: EngineConfig) -> None:
        from ray import serve

        from bot.engine.executor import Engine

        self.engine = Engine(config)
        self.engine.load_sync()
        context = serve.get_replica_context()
        self.worker = {
            "backend": "ray",
            "host": socket.gethostname(),
            "replica": context.replica_tag,
            "pid": os.getpid(),
            "python": platform.python_version(),
            "ray": _ray_version(),
        }

    async def render(self, request: GenerationRequest) -> AsyncIterator[tuple[Any, ...]]:
        """Stream a job's events; a caller's `cancel()` arrives here as CancelledError."""
        from bot.engine.local_backend import preview_png, render_output

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        cancel = threading.Event()

        def progress(step: int, total: int, preview: Any) -> None:
            events.put_nowait(
                ("progress", step, total, preview_png(preview) if preview is not None else None)
            )

        yield ("started", self.worker)
        job = loop.create_task(self.engine.generate(request, on_progress=progress, cancel=cancel))
        try:
            while not job.done() or not events.empty():
                getter = loop.create_task(events.get())
                await asyncio.wait({job, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            result = job.result()
        except asyncio.CancelledError:
            cancel.set()  # the GPU thread stops at its next step
            job.cancel()
            raise
        yield ("rendered",)
        yield ("output", await asyncio.to_thread(render_output, result, self.worker))

    def ping(self) -> dict[str, Any]:
        """Who this replica is (for the deploy check)."""
        return self.worker


def _ray_version() -> str:
    import ray

    return str(ray.__version__)


# -- connecting --------------------------------------------------------------------------------------
def _tcp_reachable(address: str) -> str | None:
    """None if host:port accepts a TCP connection, else why not (fast, before Ray's long retries)."""
    if address.startswith("ray://"):
        address = address.removeprefix("ray://")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return None  # let Ray interpret unusual forms ("auto", a bare host)
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_SECONDS):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def connect(address: str | None) -> None:
    """Connect this process to the cluster at `address` (idempotent); RayConnectError with one line if not."""
    if not address:
        raise RayConnectError(
            "RAY_ADDRESS is not set: point it at the Ray head, e.g. RAY_ADDRESS=head-host:6379"
        )
    try:
        import ray
    except ImportError:
        raise RayConnectError(
            "Ray is not installed: pip install 'imagine-bot[ray]' (the same Ray and Python as the cluster)"
        ) from None
    # Checked every time (cheap): it also notices a cluster that went away while this process stays attached.
    problem = _tcp_reachable(address)
    if problem is not None:
        raise RayConnectError(f"cannot reach the Ray cluster at {address}: {problem}")
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as exc:
        text = " ".join(str(exc).split())
        if "version mismatch" in text.lower() or "mismatch" in text.lower():
            raise RayConnectError(
                f"Ray/Python version mismatch with the cluster at {address}: this host runs Ray "
                f"{ray.__version__} on Python {platform.python_version()}; install the cluster's versions "
                f"({text[:300]})"
            ) from None
        raise RayConnectError(f"cannot connect to the Ray cluster at {address}: {text[:300]}") from None
    log.info("connected to the Ray cluster at %s (Ray %s)", address, ray.__version__)


def worker_status() -> tuple[str, int, str]:
    """(application status, running replicas, message) of the worker application."""
    from ray import serve

    status = serve.status()
    app = status.applications.get(APP_NAME)
    if app is None:
        return "NOT_DEPLOYED", 0, "no worker application on the cluster: run `python -m bot workers`"
    deployment = app.deployments.get(DEPLOYMENT_NAME)
    states = deployment.replica_states.items() if deployment is not None else ()
    running = sum(int(count) for state, count in states if state == "RUNNING")
    message = " ".join(((deployment.message if deployment is not None else "") or app.message or "").split())
    return str(app.status.value if hasattr(app.status, "value") else app.status), running, message


# -- the backend -------------------------------------------------------------------------------------
class RayBackend:
    """Jobs render on the Serve replicas at RAY_ADDRESS; capacity = replicas running now."""

    name = "ray"

    def __init__(self, address: str | None, *, limits: Limits, blocklist: Sequence[str] = ()) -> None:
        self.address = address
        self.limits = limits
        self.blocklist = compile_blocklist(blocklist)
        self._handle: Any = None
        self._replicas = 0
        self._online = False
        self._reason = "not connected yet"
        self._checked_at = float("-inf")
        self._check_lock = asyncio.Lock()
        # The workers rendering right now (replica, host, pid): for logs and operators.
        self.running_workers: list[dict[str, Any]] = []

    @property
    def capacity(self) -> int:
        return max(1, self._replicas)

    async def start(self) -> None:
        """Nothing to do up front: the dispatcher's `available()` connects (and reconnects) in the background."""
        return None

    async def close(self) -> None:
        self._handle = None

    def validate(self, request: GenerationRequest) -> None:
        # The seed's CLIP length is checked on the replica (the models may live only on the GPU hosts).
        validate_request(request, self.limits, self.blocklist)

    async def prepare_validation(self) -> None:
        return None

    async def available(self) -> tuple[bool, str]:
        async with self._check_lock:
            if time.monotonic() - self._checked_at < STATUS_CACHE_SECONDS:
                return self._online, self._reason
            try:
                self._online, self._reason = await asyncio.to_thread(self._check_sync)
            except Exception as exc:  # Ray raises many kinds when the cluster is going away
                log.debug("Ray status check failed", exc_info=True)
                self._online, self._reason = (
                    False,
                    f"Ray cluster at {self.address}: {type(exc).__name__}: {exc}",
                )
            self._checked_at = time.monotonic()
            return self._online, self._reason

    def _check_sync(self) -> tuple[bool, str]:
        try:
            connect(self.address)
        except RayConnectError as exc:
            return False, str(exc)
        status, running, message = worker_status()
        self._replicas = running
        if running == 0:
            return False, f"no GPU worker replica is running ({status}{': ' + message if message else ''})"
        if self._handle is None:
            from ray import serve

            self._handle = serve.get_app_handle(APP_NAME).options(stream=True)
        return True, f"{running} worker replica(s) on the Ray cluster at {self.address}"

    def _mark_down(self, reason: str) -> None:
        self._online, self._reason, self._checked_at = False, reason, float("-inf")

    async def render(
        self,
        request: GenerationRequest,
        *,
        on_progress: ProgressEvents | None,
        on_rendered: Callable[[], None],
        cancel: CancelToken,
    ) -> RenderOutput:
        from ray.exceptions import RayActorError, RayError, RayTaskError
        from ray.serve.exceptions import RequestCancelledError

        handle = self._handle
        if handle is None:
            raise BackendUnavailable()
        self.validate(request)
        stream = handle.render.remote(request)
        rendered = False
        worker: dict[str, Any] | None = None

        def cancel_remote() -> None:
            if not rendered:  # after the render only the output is left to come: let it
                stream.cancel()

        cancel.on_set(cancel_remote)
        output: RenderOutput | None = None
        try:
            async for event in stream:
                kind = event[0]
                if kind == "progress":
                    if on_progress is not None:
                        on_progress(event[1], event[2], event[3])
                elif kind == "started":
                    worker = event[1]
                    self.running_workers.append(worker)
                elif kind == "rendered":
                    rendered = True
                    on_rendered()
                elif kind == "output":
                    output = event[1]
        except RequestCancelledError:
            raise JobCancelled() from None
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, EngineError):
                raise type(cause)(cause.user_message) from None
            if isinstance(cause, RayActorError):
                raise WorkerLost() from None
            log.error("a worker failed: %s", " ".join(str(cause or exc).split())[:500])
            raise EngineError("the GPU worker failed on this job") from None
        except RayActorError as exc:
            log.warning("the worker replica died mid-job: %s", type(exc).__name__)
            raise WorkerLost() from None
        except (RayError, ConnectionError, OSError, TimeoutError) as exc:
            # The cluster itself is failing (GCS gone, node lost): requeue the job, check again before the next.
            log.warning("Ray failed under a job: %s", " ".join(str(exc).split())[:300])
            self._mark_down(f"lost the Ray cluster at {self.address}: {type(exc).__name__}")
            raise BackendUnavailable() from None
        finally:
            if worker is not None and worker in self.running_workers:
                self.running_workers.remove(worker)
            if not rendered:
                on_rendered()
        if output is None:
            raise WorkerLost()
        return output


# -- `python -m bot workers` -----------------------------------------------------------------------------
def deploy_workers(
    config: EngineConfig,
    *,
    address: str | None,
    replicas: int | None,
    gpus_per_replica: str | float,
    timeout: float = 900.0,
    say: Callable[[str], None] = print,
) -> None:
    """Deploy (or update) the worker application and wait until every replica is running.

    Raises RayConnectError (one line) when the cluster is unusable or the replicas fail to start.
    """
    import dataclasses

    connect(address)
    import ray
    from ray import serve

    resources = ray.cluster_resources()
    cluster_gpus = float(resources.get("GPU", 0.0))
    gpus = (1.0 if cluster_gpus >= 1 else 0.0) if gpus_per_replica == "auto" else float(gpus_per_replica)
    if replicas is None:
        replicas = max(1, int(cluster_gpus // gpus)) if gpus > 0 else 1
    if replicas < 1:
        raise RayConnectError(f"`--replicas` must be >= 1, got {replicas}")
    if gpus > 0 and cluster_gpus < gpus * replicas:
        say(
            f"warning: {replicas} replica(s) × {gpus:g} GPU need more than the {cluster_gpus:g} GPU(s) in the cluster"
        )
    # On a CPU-only box every replica takes one CPU and pins torch to one thread (no oversubscription).
    actor_options: dict[str, Any] = {"num_gpus": gpus, "num_cpus": 0 if gpus > 0 else 1}
    if gpus == 0:
        config = dataclasses.replace(config, device="cpu", torch_threads=1)
    serve.start(proxy_location="Disabled")
    app = (
        cast(Any, serve.deployment)(RenderWorker)
        .options(
            name=DEPLOYMENT_NAME,
            num_replicas=replicas,
            max_ongoing_requests=1,
            ray_actor_options=actor_options,
            health_check_period_s=5,
        )
        .bind(config)
    )
    say(
        f"deploying {replicas} worker replica(s) ({gpus:g} GPU each) to {address} "
        f"(Ray {ray.__version__}, Python {platform.python_version()})"
    )
    failure: list[BaseException] = []

    def run() -> None:
        try:
            serve.run(app, name=APP_NAME, route_prefix=None)
        except BaseException as exc:  # reported by the waiting loop below
            failure.append(exc)

    runner = threading.Thread(target=run, name="serve-deploy", daemon=True)
    runner.start()
    deadline = time.monotonic() + timeout
    last = ""
    while runner.is_alive():
        runner.join(2.0)
        try:
            status, running, message = worker_status()
        except Exception:
            continue
        line = f"  {status}: {running}/{replicas} replica(s) running" + (f" — {message}" if message else "")
        if line != last:
            say(line[:300])
            last = line
        if time.monotonic() > deadline:
            raise RayConnectError(f"the worker replicas were not ready within {timeout:.0f} s ({status})")
    if failure:
        text = " ".join(str(failure[0]).split())
        raise RayConnectError(f"the worker replicas failed to start: {text[:400]}")
    status, running, message = worker_status()
    if running < replicas:
        raise RayConnectError(
            f"only {running}/{replicas} worker replica(s) are running ({status}: {message})"
        )
    say(f"ready: {running} worker replica(s) running as Serve application {APP_NAME!r}")
