"""`python -m bot run` / `sync`: build settings, store, engine and bot in one place and start them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable

import aiohttp
import discord
import yarl

from bot.bot import ImagineBot
from bot.settings import Settings
from bot.store import HistoryStore
from bot.wiring import build_backend, build_runner

log = logging.getLogger(__name__)


def apply_discord_endpoints(settings: Settings) -> None:
    """Point discord.py's REST base and gateway at DISCORD_API_BASE / DISCORD_GATEWAY_URL (before login)."""
    discord.http.Route.BASE = settings.discord_api_base.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


def _token(settings: Settings) -> str | None:
    if settings.discord_token is None:
        print(
            "error: DISCORD_TOKEN is not set: put your bot token in the environment or in .env "
            "(see README → Discord setup)",
            file=sys.stderr,
        )
        return None
    return settings.discord_token.get_secret_value().strip()


def _print_unreachable(settings: Settings, exc: BaseException) -> None:
    # Logging in is the first network call; once connected, discord.py reconnects by itself.
    print(
        f"error: cannot reach Discord at {settings.discord_api_base} ({exc}): check the network "
        "connection, a proxy, or DISCORD_API_BASE",
        file=sys.stderr,
    )


def _install_signal_handlers(bot: ImagineBot) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, lambda: asyncio.ensure_future(bot.close()))


async def run_bot(
    settings: Settings, *, on_bot: Callable[[ImagineBot], None] | None = None, handle_signals: bool = True
) -> int:
    """The main job: connect to Discord and serve until SIGTERM/Ctrl-C (`on_bot` lets tests hold the bot)."""
    token = _token(settings)
    if token is None:
        return 2
    apply_discord_endpoints(settings)
    async with HistoryStore(settings.db_path, lease_seconds=settings.lease_seconds) as store:
        backend = build_backend(settings)
        runner = build_runner(settings, store, backend)
        try:
            async with ImagineBot(settings=settings, store=store, backend=backend, runner=runner) as bot:
                if handle_signals:
                    _install_signal_handlers(bot)
                if on_bot is not None:
                    on_bot(bot)
                await bot.start(token)
        except discord.LoginFailure:
            print(
                "error: Discord rejected DISCORD_TOKEN (401 Unauthorized): reset the token and try again",
                file=sys.stderr,
            )
            return 2
        except discord.PrivilegedIntentsRequired:
            print("error: Discord refused the gateway intents", file=sys.stderr)
            return 2
        except (aiohttp.ClientError, OSError) as exc:
            _print_unreachable(settings, exc)
            return 1
        finally:
            await backend.close()
    log.info("stopped")
    return 0


async def sync_commands_now(settings: Settings) -> int:
    """Log in over REST only and sync the slash commands (ignores the stored hash)."""
    token = _token(settings)
    if token is None:
        return 2
    apply_discord_endpoints(settings)
    async with HistoryStore(settings.db_path, lease_seconds=settings.lease_seconds) as store:
        backend = build_backend(settings)
        runner = build_runner(settings, store, backend)
        bot = ImagineBot(settings=settings, store=store, backend=backend, runner=runner, run_worker=False)
        try:
            async with bot:
                await bot.login(token)
                await bot.sync_commands(force=True)
        except discord.LoginFailure:
            print("error: Discord rejected DISCORD_TOKEN (401 Unauthorized)", file=sys.stderr)
            return 2
        except (aiohttp.ClientError, OSError) as exc:
            _print_unreachable(settings, exc)
            return 1
        finally:
            await backend.close()
    print("slash commands synced")
    return 0
