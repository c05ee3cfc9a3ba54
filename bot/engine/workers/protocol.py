"""The wire format between the bot (or CLI) and the render workers: versioned JSON in, NDJSON out.

`POST {IMAGINE_WORKERS_URL}/render` with `Authorization: Bearer TOKEN` and a body
`{"version": PROTOCOL_VERSION, "job": "<job id, for logs>", "request": <GenerationRequest>}` answers 200
and a stream of one JSON object per line:

    {"event": "started", "worker": {...}}                  the replica that took the job
    {"event": "progress", "step": s, "total": t, "preview": "<base64 PNG>" | null}
    {"event": "rendered"}                                   the model work is over
    {"event": "output", "output": <RenderOutput>}           the tiles; always the last line of a success
    {"event": "error", "kind": "InvalidRequest", "message": "..."}   a job the engine refused or failed

A stream that ends without `output` or `error` lost its worker, even after the 200. Refusals before the
stream: 401 (token), 409 (format version; the body names both), 400 (malformed body). While a job is quiet
the stream carries `{"event": "alive"}` lines. `GET {IMAGINE_WORKERS_URL}/imagine-status` (same token)
answers `{"version", "replicas", "status", "message"}`: the running render replicas.
Bytes travel as base64; everything else is plain JSON. Nothing here imports Ray or torch.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

from bot.engine.backend import RenderOutput
from bot.engine.model_specs import LoraRef
from bot.engine.types import (
    BlockedText,
    EngineError,
    GenerationRequest,
    InvalidRequest,
    JobCancelled,
    OutOfMemory,
)

# Bump when a field's meaning changes or a field is added that the other side must understand.
PROTOCOL_VERSION = 1
APP_NAME = "imagine-workers"
DEPLOYMENT_NAME = "RenderWorker"
ROUTE_PREFIX = "/imagine"
STATUS_APP_NAME = "imagine-workers-status"
STATUS_DEPLOYMENT_NAME = "Status"
STATUS_ROUTE_PREFIX = "/imagine-status"
DEFAULT_PORT = 8000
VERSION_HEADER = "X-Imagine-Protocol"

# Errors a replica may report by name; anything else arrives as a plain EngineError with its message.
ERROR_KINDS: dict[str, type[EngineError]] = {
    cls.__name__: cls for cls in (InvalidRequest, BlockedText, OutOfMemory, JobCancelled, EngineError)
}
_BYTES_FIELDS = ("init_image", "mask_image")
_TUPLE_FIELDS = ("prompts", "image_seeds")


class ProtocolError(ValueError):
    """A malformed message; the text is one line."""


def version_mismatch(theirs: object) -> str:
    """The one line naming both format versions."""
    return (
        f"render request format mismatch: the workers speak version {PROTOCOL_VERSION}, the request was "
        f"version {theirs}; run the same imagine-bot release on the bot and the workers"
    )


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: object, what: str) -> bytes | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise ProtocolError(f"`{what}` must be base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise ProtocolError(f"`{what}` is not valid base64") from None


def encode_request(request: GenerationRequest, *, job: str = "") -> dict[str, Any]:
    """The request body for `POST /render`."""
    fields = dataclasses.asdict(request)
    for name in _BYTES_FIELDS:
        fields[name] = _b64(fields[name])
    for name in _TUPLE_FIELDS:
        if fields[name] is not None:
            fields[name] = list(fields[name])
    return {"version": PROTOCOL_VERSION, "job": job, "request": fields}


def decode_request(body: object) -> tuple[str, GenerationRequest]:
    """(job id, request) from a body; ProtocolError for a malformed one (the version is checked first)."""
    if not isinstance(body, dict):
        raise ProtocolError("the body must be a JSON object")
    fields = body.get("request")
    if not isinstance(fields, dict):
        raise ProtocolError("`request` must be a JSON object")
    known = {f.name for f in dataclasses.fields(GenerationRequest)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ProtocolError(f"unknown request fields {unknown}")
    values = dict(fields)
    for name in _BYTES_FIELDS:
        values[name] = _unb64(values.get(name), name)
    for name in _TUPLE_FIELDS:
        if values.get(name) is not None:
            values[name] = tuple(values[name])
    if values.get("loras") is not None:
        # Several models and LoRAs: each LoRA travels as {"name", "weight"}; none is an empty tuple.
        try:
            values["loras"] = tuple(LoraRef(str(r["name"]), float(r["weight"])) for r in values["loras"])
        except (TypeError, KeyError, ValueError):
            raise ProtocolError("`loras` must be a list of {name, weight}") from None
    try:
        request = GenerationRequest(**values)
    except TypeError as exc:
        raise ProtocolError(f"bad request: {exc}") from None
    return str(body.get("job") or ""), request


def encode_output(output: RenderOutput) -> dict[str, Any]:
    """A RenderOutput as JSON (tiles base64)."""
    return {
        "prompts": list(output.prompts),
        "image_seeds": list(output.image_seeds),
        "tiles_png": [_b64(tile) for tile in output.tiles_png],
        "expander": output.expander,
        "render": output.render,
        "timings": output.timings,
        "nsfw_flags": list(output.nsfw_flags),
    }


def decode_output(data: object) -> RenderOutput:
    """The RenderOutput an `output` event carries."""
    if not isinstance(data, dict):
        raise ProtocolError("`output` must be a JSON object")
    try:
        tiles = tuple(_unb64(tile, "tiles_png") or b"" for tile in data["tiles_png"])
        return RenderOutput(
            prompts=tuple(data["prompts"]),
            image_seeds=tuple(int(seed) for seed in data["image_seeds"]),
            tiles_png=tiles,
            expander=dict(data["expander"]),
            render=dict(data["render"]),
            timings={str(k): float(v) for k, v in data.get("timings", {}).items()},
            nsfw_flags=tuple(bool(flag) for flag in data.get("nsfw_flags", ())),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed output: {type(exc).__name__}: {exc}") from None


def progress_event(step: int, total: int, preview: bytes | None) -> dict[str, Any]:
    return {"event": "progress", "step": step, "total": total, "preview": _b64(preview)}


def decode_preview(event: dict[str, Any]) -> bytes | None:
    return _unb64(event.get("preview"), "preview")


def error_event(exc: EngineError) -> dict[str, Any]:
    kind = type(exc).__name__ if type(exc).__name__ in ERROR_KINDS else "EngineError"
    return {"event": "error", "kind": kind, "message": exc.user_message}


def error_from_event(event: dict[str, Any]) -> EngineError:
    cls = ERROR_KINDS.get(str(event.get("kind")), EngineError)
    return cls(str(event.get("message") or "the GPU worker failed on this job"))


# -- /shorten (issue 22) -------------------------------------------------------------------------------
# `POST {IMAGINE_WORKERS_URL}/imagine/shorten` (same token) with `{"version": PROTOCOL_VERSION, "text": "..."}`
# answers 200 `{"version", "result": {"words", "weights", "effects", "prompts"}}`, or 400
# `{"error": "...", "kind": "InvalidRequest"}` when the engine refuses the text (as a render's error event).
SHORTEN_PATH = "/shorten"


def encode_shorten_request(text: str) -> dict[str, Any]:
    return {"version": PROTOCOL_VERSION, "text": text}


def decode_shorten_request(body: object) -> str:
    """The text of a shorten body; ProtocolError for a malformed one."""
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str):
        raise ProtocolError("`text` must be a string")
    return text


def encode_shorten_result(result: Any) -> dict[str, Any]:
    """A ShortenResult (bot/engine/shorten.py) as the 200 body."""
    return {
        "version": PROTOCOL_VERSION,
        "result": {
            "words": list(result.words),
            "weights": list(result.weights),
            "effects": list(result.effects),
            "prompts": list(result.prompts),
        },
    }


def decode_shorten_result(body: object) -> Any:
    """The ShortenResult a 200 body carries."""
    from bot.engine.shorten import ShortenResult

    data = body.get("result") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise ProtocolError("`result` must be a JSON object")
    try:
        return ShortenResult(
            words=tuple(str(w) for w in data["words"]),
            weights=tuple(float(w) for w in data["weights"]),
            effects=tuple(float(e) for e in data["effects"]),
            prompts=tuple(str(p) for p in data["prompts"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed shorten result: {type(exc).__name__}: {exc}") from None
