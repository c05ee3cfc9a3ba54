"""The one `commands.Bot` subclass: loads the cogs, owns the job worker and delivery, syncs commands sparingly."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.delivery import Deliverer
from bot.engine.backend import RenderBackend
from bot.engine.types import EngineError
from bot.health import write_heartbeat
from bot.intake import Admitted, Intake, NotQueued, Requester
from bot.jobs import JobRunner
from bot.messages import queued_text
from bot.preferences import PreferenceStore
from bot.settings import Settings
from bot.store import HistoryStore, JobRecord, QueueRefused
from bot.ui import HistoryPageButton, HistorySelect, JobButton

log = logging.getLogger(__name__)

EXTENSIONS: tuple[str, ...] = ("cogs.imagine", "cogs.actions", "cogs.history", "cogs.settings", "cogs.models")
EXTENSIONS += ("cogs.prompts",)  # issue 22: /shorten, /describe
EXTENSIONS += ("cogs.blend",)  # issue 22: /blend
HEARTBEAT_SECONDS = 15.0
COMMANDS_HASH_KEY = "commands_hash"
# A persistent job button's handler: (interaction, button code, job id, image number).
JobButtonHandler = Callable[[discord.Interaction[Any], str, str, "int | None"], Awaitable[None]]
# Produces (source image, mask) bytes for a new job once the interaction is deferred.
InputSource = Callable[[], Awaitable[tuple[bytes | None, bytes | None]]]


def minimal_intents() -> discord.Intents:
    """Only `guilds`: no privileged intents, no message content."""
    intents = discord.Intents.none()
    intents.guilds = True
    return intents


class ImagineBot(commands.Bot):
    """imagine-bot's Discord client. Everything it uses is built in `main()` and passed in."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: HistoryStore,
        backend: RenderBackend,
        runner: JobRunner,
        run_worker: bool = True,
    ) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=minimal_intents(),
            allowed_mentions=discord.AllowedMentions.none(),
            help_command=None,
        )
        self.settings = settings
        self.store = store
        self.backend = backend
        self.runner = runner
        self.run_worker = run_worker
        self.preferences = PreferenceStore(store)
        self.deliverer = Deliverer(
            self, settings=settings, store=store, runner=runner, preferences=self.preferences
        )
        self.intake = Intake(settings, store, preferences=self.preferences, runner=runner)
        self._job_buttons: dict[str, JobButtonHandler] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._leftovers_delivered = False

    async def setup_hook(self) -> None:
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        self.add_dynamic_items(JobButton, HistoryPageButton, HistorySelect)
        self.tree.on_error = self.on_app_command_error  # type: ignore[method-assign]
        if not self.run_worker:
            return
        self.runner.set_handlers(
            on_progress=self.deliverer.on_progress,
            on_started=self.deliverer.on_started,
            on_finished=self.deliverer.on_finished,
        )
        # Starts the backend too: the local one loads the models in the background (minutes on a real GPU
        # box; jobs wait on the same thread), a remote one connects when it can.
        await self.runner.start(requeue_interrupted=True)
        self.deliverer.start()
        self._spawn(self._heartbeat_loop())
        await self.sync_commands(force=False)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Stop taking jobs, let the running one end (or mark it), then disconnect."""
        log.info("shutting down")
        if self.run_worker:
            await self.runner.stop()
            await self.deliverer.stop()
        for task in list(self._background):
            task.cancel()
        with contextlib.suppress(Exception):
            write_heartbeat(self.settings.heartbeat_path, connected=False)
        await super().close()

    # -- command sync ---------------------------------------------------------------------------------
    def commands_hash(self) -> str:
        """A hash of the command definitions; sync only when it changes."""
        payload = [command.to_dict(self.tree) for command in self.tree.get_commands()]
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    async def sync_commands(self, *, force: bool) -> bool:
        """Sync to the dev guild (instant) or globally, only if the definitions changed or `force`."""
        guild = discord.Object(self.settings.dev_guild) if self.settings.dev_guild else None
        key = f"{COMMANDS_HASH_KEY}:{self.settings.dev_guild or 'global'}"
        current = self.commands_hash()
        if not force and await self.store.get_meta(key) == current:
            log.info("slash commands unchanged; not syncing")
            return False
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        synced = await self.tree.sync(guild=guild)
        await self.store.set_meta(key, current)
        log.info("synced %d slash commands %s", len(synced), f"to guild {guild.id}" if guild else "globally")
        return True

    # -- events -----------------------------------------------------------------------------------------
    async def on_ready(self) -> None:
        log.info(
            "connected as %s (%s) to %d guild(s)", self.user, getattr(self.user, "id", "?"), len(self.guilds)
        )
        self._write_heartbeat(True)
        if self.run_worker and not self._leftovers_delivered:
            self._leftovers_delivered = True
            cutoff = self.runner.recovered_at or time.time()
            self._spawn(self.deliverer.deliver_leftovers(started_at=cutoff))

    async def on_resumed(self) -> None:
        self._write_heartbeat(True)

    async def on_disconnect(self) -> None:
        self._write_heartbeat(False)

    def _write_heartbeat(self, connected: bool) -> None:
        try:
            latency = self.latency if self.latency == self.latency else None  # NaN before the first ACK
            runner_ok, runner_reason = self.runner.health() if self.run_worker else (True, "no worker")
            write_heartbeat(
                self.settings.heartbeat_path,
                connected=connected,
                latency=latency,
                runner_ok=runner_ok,
                runner_reason=runner_reason,
                device=getattr(self.runner.backend, "device", None) if self.run_worker else None,
            )
        except OSError:
            log.warning("could not write the heartbeat file %s", self.settings.heartbeat_path)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            connected = self.is_ready() and not self.is_closed() and self.ws is not None and self.ws.open
            self._write_heartbeat(bool(connected))

    # -- component entry points (from bot.ui) ------------------------------------------------------------
    # discord.py only logs an exception from a DynamicItem callback (View.on_error is never called for
    # them), so each entry point routes its errors to the one handler itself.
    def register_job_buttons(self, codes: Iterable[str], handler: JobButtonHandler) -> None:
        """A cog claims the job-button codes it answers (in its cog_load)."""
        for code in codes:
            self._job_buttons[code] = handler

    def unregister_job_buttons(self, codes: Iterable[str]) -> None:
        for code in codes:
            self._job_buttons.pop(code, None)

    async def handle_job_button(
        self, interaction: discord.Interaction[Any], action: str, job_id: str, tile: int | None
    ) -> None:
        handler = self._job_buttons.get(action)
        if handler is None:
            await reply_ephemeral(interaction, "That button doesn't work any more.")
            return
        await self._routed(interaction, handler(interaction, action, job_id, tile))

    async def start_job(
        self, interaction: discord.Interaction[Any], admitted: Admitted, *, inputs: InputSource | None = None
    ) -> JobRecord | None:
        """Defer, fetch and stage the input images, queue through the intake, and follow the job.

        The intake has already checked everything knowable up front (its refusals are ephemeral and
        never "thinking…"); what can still fail here (a download, a lost race for the last queue place)
        is said after the defer.
        """
        spec = admitted.spec
        response_id = None
        if not interaction.response.is_done():
            # A private job (member /settings) is answered ephemerally: delivered to its owner alone.
            deferred = await interaction.response.defer(thinking=True, ephemeral=spec.private)
            response_id = deferred.message_id if deferred is not None else None
        try:
            init_image, mask_image = await inputs() if inputs is not None else (None, None)
            job = await self.intake.submit(admitted, init_image=init_image, mask_image=mask_image)
        except EngineError as exc:
            await refuse_after_defer(interaction, f"Can't start that: {exc.user_message}.")
            return None
        except NotQueued as exc:
            await refuse_after_defer(interaction, str(exc))
            return None
        # No await between submit and track: a fast job must find its tracker.
        text = queued_text(job.id, 1, None, workers_online=self.runner.backend_online)
        self.deliverer.track(job, interaction, text=text, message_id=response_id)
        if admitted.notices:
            # The first followup after a "thinking" defer would replace it: fill the response first.
            with contextlib.suppress(discord.HTTPException):
                await interaction.edit_original_response(content=text)
            for notice in admitted.notices:
                await reply_ephemeral(interaction, notice)
        try:
            await self.deliverer.update_positions()
        except Exception:
            # The row is queued and the worker will run it: say that, not "nothing was changed".
            log.exception("queue position of job %s unknown; it is queued", job.id)
            self.deliverer.retext(job.id, queued_text(job.id, None, None))
        return job

    async def handle_history_page(
        self, interaction: discord.Interaction[Any], viewer: int, target: int, page: int
    ) -> None:
        await self._routed(interaction, self._history_cog().on_page(interaction, viewer, target, page))

    async def handle_history_select(
        self, interaction: discord.Interaction[Any], viewer: int, job_id: str
    ) -> None:
        await self._routed(interaction, self._history_cog().on_select(interaction, viewer, job_id))

    async def _routed(self, interaction: discord.Interaction[Any], callback: Awaitable[None]) -> None:
        try:
            await callback
        except Exception as exc:
            await self.on_interaction_error(interaction, exc)

    def _history_cog(self) -> Any:
        return self.get_cog("HistoryCog")

    # -- errors ---------------------------------------------------------------------------------------------
    async def on_app_command_error(
        self, interaction: discord.Interaction[Any], error: app_commands.AppCommandError
    ) -> None:
        """The command tree's error hook: the same handler as buttons, selects and modals."""
        await self.on_interaction_error(interaction, error)

    async def on_interaction_error(self, interaction: discord.Interaction[Any], error: BaseException) -> None:
        """One place that turns any interaction's error into an ephemeral message; unknown ones are logged.

        Commands (tree.on_error), buttons and selects (the DynamicItem entry points, View.on_error) and
        modals (Modal.on_error) all end here, so a member is never left on "thinking…".
        """
        original = getattr(error, "original", error)
        if isinstance(original, EngineError | QueueRefused):
            message = getattr(original, "user_message", None) or str(original)
        elif isinstance(error, app_commands.MissingPermissions | app_commands.CheckFailure):
            message = "you don't have permission to do that here"
        elif isinstance(error, app_commands.TransformerError):
            message = f"that value isn't valid for `{getattr(error, 'value', '?')}`"
        else:
            data: dict[str, Any] = dict(interaction.data or {})
            what = getattr(interaction.command, "name", None) or data.get("custom_id", "?")
            log.error("interaction %s failed", what, exc_info=original)
            message = "something went wrong on our side; it was logged"
        await reply_ephemeral(interaction, message)

    async def on_error(self, event_method: str, /, *args: Any, **kwargs: Any) -> None:
        # discord.py calls this from inside its except block, so exc_info is the live exception.
        log.error("unhandled error in %s", event_method, exc_info=True)  # noqa: LOG014


async def reply_ephemeral(interaction: discord.Interaction[Any], message: str) -> None:
    """An ephemeral reply whether or not the interaction was already answered."""
    text = message[:1900]
    try:
        if interaction.response.is_done():
            await interaction.followup.send(
                text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
            )
        else:
            await interaction.response.send_message(
                text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
            )
    except discord.HTTPException as exc:
        log.info("could not send an error reply: %s %s", exc.status, exc.code)


async def refuse_after_defer(interaction: discord.Interaction[Any], text: str) -> None:
    """An ephemeral refusal once the "thinking" message exists: remove it, then say why privately."""
    try:
        await interaction.delete_original_response()
    except discord.HTTPException as exc:
        log.info("could not remove the thinking message: %s", exc.status)
    await reply_ephemeral(interaction, text)


def requester_of(interaction: discord.Interaction[Any]) -> Requester:
    """The intake's plain data for who asks and where: ids, the channel's age flag, the member's rights."""
    channel = interaction.channel
    age_restricted = bool(channel is not None and getattr(channel, "is_nsfw", lambda: False)())
    permissions = interaction.permissions
    return Requester(
        user_id=interaction.user.id,
        guild_id=interaction.guild_id,
        channel_id=interaction.channel_id,
        age_restricted=age_restricted,
        manages_server=bool(getattr(permissions, "manage_guild", False)),
        manages_messages=bool(getattr(permissions, "manage_messages", False)),
    )
