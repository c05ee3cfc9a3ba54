#!/usr/bin/env python3
"""Serve the test suite's fake Discord (tests/fakediscord.py) to a bot in another process or container.

Used by scripts/docker-smoke.sh: the bot runs in its own container with DISCORD_API_BASE and
DISCORD_GATEWAY_URL pointing here. This waits for the bot to connect, sends one `/imagine` as a member,
waits for the result and checks it carries a PNG grid, printing one line per step; then it keeps serving
(so that the bot stays connected and `health` can be checked) until SIGTERM or SIGINT.

Exit status: 0 after a clean stop with the check passed; 1 when the bot did not connect or the result did
not come (the reason is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

# Run as a file (python scripts/fake_discord.py): the repository root holds the `tests` package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakediscord import FakeDiscord, FakeMessage

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--advertised-host", help="name the bot reaches this server by (default: --host)")
    parser.add_argument("--token-file", type=Path, required=True, help="file holding the bot token to accept")
    parser.add_argument("--seed", default="a lighthouse at dusk", help="seed text of the /imagine")
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="seconds for the bot to connect")
    parser.add_argument("--job-timeout", type=float, default=600.0, help="seconds for the result")
    return parser.parse_args()


def _has_grid(message: FakeMessage) -> bool:
    return bool(message.attachments and message.embeds)


async def _serve(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    token = args.token_file.read_text(encoding="utf-8").strip()
    fake = FakeDiscord(
        token=token, host=args.host, port=args.port, advertised_host=args.advertised_host or args.host
    )
    async with fake:
        print(f"fake discord: listening on {args.host}:{fake.port}, API {fake.api_base}", flush=True)
        try:
            await fake.wait_ready(timeout=args.ready_timeout)
            print("fake discord: bot connected (READY sent)", flush=True)
            interaction = await fake.send_slash("imagine", {"seed": args.seed}, user_id=fake.alice_id)
            final = await interaction.wait_final(timeout=args.job_timeout, predicate=_has_grid)
        except (TimeoutError, AssertionError) as exc:
            print(f"fake discord: FAILED: {exc}", flush=True)
            return 1
        grid = final.attachments[0]
        if not grid.data.startswith(PNG_MAGIC):
            print(f"fake discord: FAILED: {grid.filename} is not a PNG ({grid.data[:8]!r})", flush=True)
            return 1
        print(
            f"fake discord: /imagine answered with {grid.filename}, a {grid.width}x{grid.height} PNG of "
            f"{len(grid.data)} bytes",
            flush=True,
        )
        await stop.wait()
    return 0


def main() -> int:
    """Entry point."""
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_serve(_parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
