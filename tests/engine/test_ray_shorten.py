"""/shorten on real Ray Serve replicas (issue 22): `POST /imagine/shorten` through Serve's proxy.

The replica's dispatch (serve_app.RenderWorker) to the shorten handler; the loopback tests in
tests/cogs/test_shorten_workers.py cover the handler, the client and the command without Ray.
Marked `ray`: inside scripts/fence.sh.
"""

from __future__ import annotations

import pytest

from bot.engine.types import InvalidRequest
from bot.engine.validation import Limits
from bot.engine.workers.http_backend import HttpBackend
from tests.raycluster import RayCluster

pytestmark = pytest.mark.ray

PROMPT = "a red fox sitting in deep snow, golden hour, oil painting"


async def test_a_replica_shortens_a_prompt(ray_cluster: RayCluster) -> None:
    backend = HttpBackend(ray_cluster.url, ray_cluster.token, limits=Limits())
    try:
        result = await backend.shorten(PROMPT)
        assert result.words == tuple(PROMPT.split()) and max(result.weights) == 1.0
        assert 1 <= len(result.prompts) <= 5
        with pytest.raises(InvalidRequest, match="at most 60"):
            await backend.shorten("word " * 61)
    finally:
        await backend.close()
