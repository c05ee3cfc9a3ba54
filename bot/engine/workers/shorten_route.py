"""`POST /imagine/shorten` on a render replica (issue 22): /shorten with the replica's own engine.

Kept apart from serve_app.py (the only module importing Ray) so the handler runs, and is tested, without Ray:
serve_app's replica calls `shorten_answer` for that path.
"""

from __future__ import annotations

from typing import Any

from bot.engine.types import EngineError
from bot.engine.workers.protocol import (
    PROTOCOL_VERSION,
    ProtocolError,
    decode_shorten_request,
    encode_shorten_result,
    error_event,
    version_mismatch,
)


async def shorten_answer(engine: Any, body: object) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) for a shorten request: the engine's word weights, or why not."""
    theirs = body.get("version") if isinstance(body, dict) else None
    if theirs != PROTOCOL_VERSION:
        return 409, {"error": version_mismatch(theirs), "version": PROTOCOL_VERSION}
    try:
        text = decode_shorten_request(body)
    except ProtocolError as exc:
        return 400, {"error": str(exc)}
    try:
        result = await engine.shorten(text)
    except EngineError as exc:
        event = error_event(exc)
        return 400, {"error": event["message"], "kind": event["kind"]}
    return 200, encode_shorten_result(result)
