"""Ctrl-C and SIGTERM during a CLI render: stop within the step, a second one exits at once; the progress bar."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any

from bot.cli.common import SECOND_SIGNAL_WRITE_S
from bot.store import HistoryStore

log = logging.getLogger(__name__)


# The first Ctrl-C or SIGTERM of this process, once one came (the render thread may still be finishing).
_SIGNALLED: list[int] = []


def _exit_on_next_signal(first: int) -> None:
    """After the event loop closed (it takes its handlers with it): the interpreter may still wait for the
    render thread to leave its step, and a second Ctrl-C must then exit at once, as it does while the loop
    runs, not raise KeyboardInterrupt in the interpreter's shutdown."""

    def leave(signum: int, frame: Any) -> None:
        os._exit(128 + first)

    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, OSError):  # not the main thread (tests calling main in one)
            signal.signal(signum, leave)


def leave_if_signalled(code: int) -> None:
    """`python -m bot`: once Ctrl-C or SIGTERM stopped this process and its command is done, leave now.

    The interpreter's own shutdown (torch's threads, module teardown) can take a while, and late in it the
    signal handlers are reset to the default: a second Ctrl-C there would kill the process by signal
    instead of exiting with the code the first one set. Nothing is left to do here: the store is closed.
    """
    if _SIGNALLED:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _stop_on_signals(
    runner: Any, store: HistoryStore, job_id: str, *, bar: _ProgressBar | None, quiet: bool
) -> list[int]:
    """Ctrl-C and SIGTERM stop the render within its step; a second one exits at once.

    Returns the list the first signal's number lands in. The second signal does not wait for the
    render thread (it may be inside one long op): it records the row `failed: interrupted`, the same end
    the first would have given it, and leaves with `os._exit`.
    """
    loop = asyncio.get_running_loop()
    received: list[int] = []
    tasks: list[asyncio.Task[None]] = []  # holds the tasks: the loop keeps only a weak reference

    def stop(signum: int) -> None:
        if bar is not None:
            bar.close()  # before any line of ours, or it lands on the bar's line
        received.append(signum)
        if not _SIGNALLED:
            _SIGNALLED.append(signum)
        if len(received) == 1:
            tasks.append(asyncio.ensure_future(runner.stop(grace=0)))
            if not quiet:
                _say("stopping… (press Ctrl-C again to quit at once)")
        elif len(received) == 2:
            tasks.append(asyncio.ensure_future(exit_now(received[0])))

    async def exit_now(first: int) -> None:
        try:
            await asyncio.wait_for(store.mark_failed(job_id, "interrupted"), SECOND_SIGNAL_WRITE_S)
        except Exception as exc:  # the next command's recovery marks the row instead
            log.debug("could not mark job %s interrupted: %s", job_id, exc)
        finally:
            if not quiet:
                _say(f"job {job_id}: interrupted")
            os._exit(128 + first)

    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop, signum)
    return received


def _say(line: str) -> None:
    """A line on stderr that never raises: the terminal or pipe may be gone (a closed ssh session)."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


class _ProgressBar:
    """A tqdm bar on stderr, created at the first step; closed once, before any other line is printed."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._closed = False

    def update(self, job_id: str, step: int, total: int, preview: Any) -> None:
        if self._closed:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="denoising", unit="step", file=sys.stderr)
        self._bar.update(step - self._bar.n)
        if step >= total:
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._bar is not None:
                self._bar.close()
