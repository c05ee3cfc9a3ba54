"""The runner when the render workers go away: an outage spends no attempt, the job waits, health says why.

The backend here is the real local engine behind an outage switch at the `RenderBackend` seam (the
boundary a lost cluster crosses): while the switch is off, `available()` is false and a render that slips
through raises `BackendUnavailable`, as the HTTP backend does on a refused connection or a 503.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

import pytest

from bot.engine.backend import BackendUnavailable, CancelToken, ProgressEvents, RenderOutput
from bot.engine.executor import Engine
from bot.engine.local_backend import LocalBackend
from bot.engine.types import GenerationRequest
from bot.settings import Settings
from bot.store import HistoryStore
from bot.wiring import build_runner
from tests.helpers import job_spec, until

session_loop = pytest.mark.asyncio(loop_scope="session")
OUTAGE = "cannot reach the GPU workers at http://10.0.0.9:8000: Connection refused"


_spec = functools.partial(job_spec, count=1, user_id=1)


class FlakyWorkers:
    """The local engine behind a switch: `down` makes every render fail as unreachable workers do."""

    name = "flaky"

    def __init__(self, inner: LocalBackend) -> None:
        self.inner = inner
        self.down = False
        self.refused = 0
        # The cluster dies between the dispatcher's check and the request: `available()` still says yes.
        self.stale_check = True

    @property
    def capacity(self) -> int:
        return 1

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def validate(self, request: GenerationRequest) -> None:
        self.inner.validate(request)

    async def prepare_validation(self) -> None:
        return None

    async def available(self) -> tuple[bool, str]:
        if self.down and not self.stale_check:
            return False, OUTAGE
        return True, "workers up"

    async def render(
        self,
        request: GenerationRequest,
        *,
        on_progress: ProgressEvents | None,
        on_rendered: Callable[[], None],
        cancel: CancelToken,
    ) -> RenderOutput:
        if self.down:
            self.refused += 1
            on_rendered()
            if self.refused >= 3:
                self.stale_check = False  # the dispatcher's next check sees the outage
            raise BackendUnavailable(OUTAGE)
        return await self.inner.render(
            request, on_progress=on_progress, on_rendered=on_rendered, cancel=cancel
        )


@session_loop
async def test_an_outage_spends_no_attempt_the_job_waits_and_runs_when_the_workers_are_back(
    engine: Engine, settings: Settings
) -> None:
    backend = FlakyWorkers(LocalBackend(engine))
    backend.down = True
    async with HistoryStore(settings.db_path) as store:
        runner = build_runner(settings, store, backend)  # IMAGINE_MAX_ATTEMPTS=2
        runner.poll_seconds = 0.05
        await runner.start()
        try:
            job = await runner.submit(_spec())
            await until(lambda: backend.refused >= 3, 20, "three refused renders")
            await until(lambda: not runner.backend_online, 10, "the dispatcher to see the outage")
            row = await store.get_job(job.id)
            assert row is not None
            # Three refusals later the job still waits, with no attempt spent and no failure text.
            assert (row.status, row.attempts, row.reason) == ("queued", 0, None)
            assert runner.health() == (False, f"render backend unreachable: {OUTAGE}")
            backend.down = False
            backend.stale_check = True
            outcome = await asyncio.wait_for(runner.wait_for(job.id), 60)
            assert (outcome.job.status, outcome.job.attempts) == ("done", 1)
        finally:
            await runner.stop(grace=5)


@session_loop
async def test_the_cli_leaves_no_row_when_the_workers_vanish_between_its_check_and_the_render(
    engine: Engine, settings: Settings
) -> None:
    """Issue 16/17 item 17: the CLI has no dispatcher, so it never waits; a job that never could start
    leaves nothing behind, and the one line names the workers' URL."""
    from bot.cli import CliError, _generate

    backend = FlakyWorkers(LocalBackend(engine))
    backend.down = True  # available() still says yes (stale_check): the render itself is refused
    async with HistoryStore(settings.db_path) as store:
        before = await store.list_jobs(limit=1000)
        spec = _spec(user_id=None, seed_text="a lighthouse at dusk")
        with pytest.raises(CliError) as raised:
            await asyncio.wait_for(_generate(settings, store, spec, as_json=True, backend=backend), 60)
        assert str(raised.value) == f"cannot render: {OUTAGE}"
        assert raised.value.code == 1
        after = await store.list_jobs(limit=1000)
        assert [job.id for job in after] == [job.id for job in before]
        assert backend.refused == 1
