"""The render workers over HTTP: `RenderBackend` for Ray Serve workers, with no Ray in this process.

Failures map onto what the runner does with them:
- unreachable, refused, 401, 409 (format), 404/502/503/504 (not deployed, not ready) → `BackendUnavailable`:
  no worker took the job, no attempt is spent, the job waits, and `available()` says why (health is red);
- a stream that breaks or ends without its final event, even after a 200 → `WorkerLost` (one attempt spent,
  requeued): the replica died mid-job;
- cancel → the stream is closed, which cancels the replica's call at its next denoising step.

Each request names the job's model in the `serve_multiplexed_model_id` header: Serve's proxy sends it to a
replica that already holds that model (serve_app.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import aiohttp

from bot.engine.backend import BackendUnavailable, CancelToken, ProgressEvents, RenderOutput, WorkerLost
from bot.engine.prompts import compile_blocklist
from bot.engine.types import EngineError, GenerationRequest, JobCancelled
from bot.engine.validation import Limits, validate_request
from bot.engine.workers.protocol import (
    PROTOCOL_VERSION,
    ROUTE_PREFIX,
    SHORTEN_PATH,
    STATUS_ROUTE_PREFIX,
    ProtocolError,
    decode_output,
    decode_preview,
    decode_shorten_result,
    encode_request,
    encode_shorten_request,
    error_from_event,
)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 5.0
# The ingress writes a keep-alive line every 5 s: this much silence means the stream is gone.
READ_TIMEOUT_SECONDS = 30.0
STATUS_TIMEOUT_SECONDS = 10.0
PROXY_TIMEOUT_SECONDS = 5.0
STATUS_CACHE_SECONDS = 2.0
# /shorten waits for a free replica (each takes one request at a time) and one text-encoder batch.
SHORTEN_TIMEOUT_SECONDS = 120.0
UNAVAILABLE_STATUSES = {404, 502, 503, 504}


# Serve's proxy routes a request carrying this header to a replica that holds the model it names.
MODEL_HEADER = "serve_multiplexed_model_id"


def model_header(request: GenerationRequest) -> dict[str, str]:
    """The job's registry model for Serve's model multiplexing (none: any replica, the default model)."""
    return {MODEL_HEADER: request.model} if request.model else {}


class HttpBackend:
    """Jobs render on the Serve replicas behind `url`; capacity = replicas running now."""

    name = "ray"

    def __init__(
        self, url: str, token: str, *, limits: Limits, blocklist: Sequence[str] = (), job_label: str = ""
    ) -> None:
        self.url = url.rstrip("/")
        self.base = self.url + ROUTE_PREFIX
        self._token = token
        self.limits = limits
        self.blocklist = compile_blocklist(blocklist)
        self._session: aiohttp.ClientSession | None = None
        self._replicas = 0
        self._online = False
        self._reason = "not checked yet"
        self._checked_at = float("-inf")
        self._reached = False  # whether the last status check got an HTTP answer at all
        self._check_lock = asyncio.Lock()
        # The workers rendering right now (backend, host, pid, replica): for logs and operators.
        self.running_workers: list[dict[str, Any]] = []

    @property
    def capacity(self) -> int:
        return max(1, self._replicas)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def validate(self, request: GenerationRequest) -> None:
        # The seed's CLIP length is checked on the replica (the models may live only on the GPU hosts).
        validate_request(request, self.limits, self.blocklist)

    async def prepare_validation(self) -> None:
        return None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self._token}"},
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=CONNECT_TIMEOUT_SECONDS, sock_read=READ_TIMEOUT_SECONDS
                ),
                trust_env=False,  # the workers sit on a private network, never behind an HTTP proxy
            )
        return self._session

    def _unreachable(self, exc: BaseException) -> str:
        reason = getattr(getattr(exc, "os_error", None), "strerror", None) or str(exc) or type(exc).__name__
        return f"cannot reach the GPU workers at {self.url}: {' '.join(reason.split())[:200]}"

    async def _refusal(self, response: aiohttp.ClientResponse) -> str:
        """One line for a non-200 answer."""
        try:
            detail = str((await response.json(content_type=None)).get("error") or "")
        except (ValueError, AttributeError, aiohttp.ClientError):
            detail = ""
        if response.status == 401:
            return (
                f"the GPU workers at {self.url} refused the token (401): give the bot and the workers the "
                "same IMAGINE_WORKERS_TOKEN"
            )
        if response.status == 409:
            return detail or f"the GPU workers at {self.url} speak another request format"
        if response.status == 404:
            return f"no GPU workers are deployed at {self.url} (404): run `python -m bot workers`" + (
                f" ({detail})" if detail and "no route" not in detail else ""
            )
        return f"the GPU workers at {self.url} are not ready ({response.status}{': ' + detail if detail else ''})"

    async def available(self) -> tuple[bool, str]:
        async with self._check_lock:
            if time.monotonic() - self._checked_at < STATUS_CACHE_SECONDS:
                return self._online, self._reason
            self._online, self._reason = await self._check()
            self._checked_at = time.monotonic()
            return self._online, self._reason

    async def _check(self) -> tuple[bool, str]:
        self._reached = False
        try:
            async with self._client().get(
                self.url + STATUS_ROUTE_PREFIX, timeout=aiohttp.ClientTimeout(total=STATUS_TIMEOUT_SECONDS)
            ) as response:
                self._reached = True
                if response.status != 200:
                    return False, await self._refusal(response)
                status = await response.json(content_type=None)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            return False, self._unreachable(exc)
        if status.get("version") != PROTOCOL_VERSION:
            return False, (
                f"render request format mismatch: the workers at {self.url} speak version "
                f"{status.get('version')}, this bot sends version {PROTOCOL_VERSION}; run the same "
                "imagine-bot release on the bot and the workers"
            )
        replicas = int(status.get("replicas") or 0)
        if replicas != self._replicas:
            log.info("GPU workers at %s: %d replica(s) running", self.url, replicas)
        self._replicas = replicas
        if replicas == 0:
            detail = status.get("message") or status.get("status") or ""
            return False, f"no GPU worker replica is running at {self.url}" + (
                f" ({detail})" if detail else ""
            )
        return True, f"{replicas} worker replica(s) at {self.url}"

    async def _lost_or_unavailable(self, worker: dict[str, Any] | None, what: str) -> NoReturn:
        """A stream that breaks is a lost worker, unless the workers' address itself is gone (the head
        died, the network went): then it is an outage, and the job spends no attempt. Workers that still
        answer, even with no replica left, mean the job's replica died: that spends an attempt, so a job
        that kills its replica every time ends failed instead of looping."""
        if not await self._proxy_answers():
            online, reason = await self._check()
            self._online, self._reason, self._checked_at = online, reason, time.monotonic()
            if not self._reached:
                log.warning("the stream from %s %s; the workers are unreachable: %s", worker, what, reason)
                raise BackendUnavailable(reason)
        log.warning("the stream from %s %s", worker or self.url, what)
        raise WorkerLost()

    async def _proxy_answers(self) -> bool:
        """Whether Serve's proxy itself answers (`/-/healthz`, served by the proxy, no replica involved)."""
        try:
            async with self._client().get(
                self.url + "/-/healthz", timeout=aiohttp.ClientTimeout(total=PROXY_TIMEOUT_SECONDS)
            ):
                self._reached = True
                return True
        except (aiohttp.ClientError, OSError, TimeoutError):
            self._reached = False
            return False

    def _mark_down(self, reason: str) -> None:
        self._online, self._reason, self._checked_at = False, reason, time.monotonic()

    async def shorten(self, text: str) -> Any:
        """/shorten (issue 22) on a worker replica: the ShortenResult of `text` (bot/engine/shorten.py).

        BackendUnavailable when no worker can take it (unreachable, token, format, not deployed); the
        engine's refusal (a prompt too long) as the same EngineError a local engine raises.
        """
        try:
            async with self._client().post(
                self.base + SHORTEN_PATH,
                json=encode_shorten_request(text),
                timeout=aiohttp.ClientTimeout(total=SHORTEN_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS),
            ) as response:
                if response.status == 200:
                    return decode_shorten_result(await response.json(content_type=None))
                if response.status == 400:
                    answer = await response.json(content_type=None)
                    if answer.get("kind"):
                        raise error_from_event(answer | {"message": answer.get("error")})
                    raise EngineError(f"the GPU workers refused /shorten: {answer.get('error')}")
                if response.status == 404 and "no route" in str(
                    (await response.json(content_type=None)).get("error", "")
                ):
                    raise EngineError("the GPU workers run an older release without /shorten")
                raise BackendUnavailable(await self._refusal(response))
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, ProtocolError) as exc:
            if isinstance(exc, ProtocolError):
                raise EngineError(f"the GPU workers answered /shorten with {exc}") from None
            raise BackendUnavailable(self._unreachable(exc)) from None

    async def render(
        self,
        request: GenerationRequest,
        *,
        on_progress: ProgressEvents | None,
        on_rendered: Callable[[], None],
        cancel: CancelToken,
        job: str = "",
    ) -> RenderOutput:
        self.validate(request)
        rendered = False
        worker: dict[str, Any] | None = None
        response: aiohttp.ClientResponse | None = None

        def close_stream() -> None:
            if not rendered and response is not None:  # after the render only the output is left to come
                response.close()

        def finish_render() -> None:
            nonlocal rendered
            if not rendered:
                rendered = True
                on_rendered()

        try:
            try:
                response = await self._client().post(
                    self.base + "/render",
                    json=encode_request(request, job=job),
                    headers=model_header(request),
                )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                reason = self._unreachable(exc)
                self._mark_down(reason)
                raise BackendUnavailable(reason) from None
            async with response:
                if response.status != 200:
                    reason = await self._refusal(response)
                    if response.status == 400:
                        raise EngineError(f"the GPU workers refused the job: {reason}")
                    self._mark_down(reason)
                    raise BackendUnavailable(reason)
                cancel.on_set(close_stream)
                try:
                    async for line in response.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        kind = event.get("event")
                        if kind == "progress":
                            if on_progress is not None:
                                on_progress(int(event["step"]), int(event["total"]), decode_preview(event))
                        elif kind == "started":
                            worker = dict(event["worker"])
                            self.running_workers.append(worker)
                        elif kind == "rendered":
                            finish_render()
                        elif kind == "output":
                            return decode_output(event["output"])
                        elif kind == "error":
                            raise error_from_event(event)
                    if not (cancel.is_set() and not rendered):
                        await self._lost_or_unavailable(worker, "ended without the job's output")
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError, TypeError) as exc:
                    if cancel.is_set() and not rendered:
                        raise JobCancelled() from None
                    await self._lost_or_unavailable(worker, f"broke mid-job ({type(exc).__name__})")
                raise JobCancelled()
        finally:
            if worker is not None and worker in self.running_workers:
                self.running_workers.remove(worker)
            finish_render()
