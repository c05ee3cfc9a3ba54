"""kill -9 while a job runs, restart on the same data, repeat: no job lost, no result posted twice.

The bot runs as a real subprocess (`python -m bot run`); the fake Discord runs in this process. The loop
itself lives in `tests/reliability/harness.py` and is shared with `scripts/crash_loop.py`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.harness import run_crash_loop


@pytest.mark.parametrize(
    "iterations",
    [
        pytest.param(2, id="2-kills"),
        pytest.param(20, id="20-kills", marks=[pytest.mark.heavy, pytest.mark.timeout(1800)]),
    ],
)
async def test_kill_9_loop_loses_nothing(
    tmp_path: Path, tiny_models: tuple[Path, Path], iterations: int
) -> None:
    tally = await run_crash_loop(iterations=iterations, models=tiny_models, work_dir=tmp_path)
    print(tally.summary())
    assert tally.kills == iterations
    assert tally.jobs == iterations
    assert tally.lost == []
    assert tally.posted_twice == {}
    assert tally.never_delivered == []
    assert tally.sent_but_missing == []
    assert tally.integrity == ["ok"] * (iterations + 1)
    assert tally.final_exit_code == 0
    assert tally.max_attempts_seen <= 2
