"""Getting job state into Discord: throttled progress edits, the final grid, the channel fallback."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import discord
from PIL import Image

from bot import policy
from bot.describe_ui import describe_payload
from bot.engine.images import EncodedImage, encode_png_within_budget
from bot.engine.safety import TileClassifier
from bot.jobs import JobOutcome, JobRunner
from bot.messages import (
    all_flagged_text,
    all_tiles_flagged,
    failure_text,
    progress_text,
    queued_text,
    result_embed,
    result_filename,
)
from bot.preferences import PreferenceStore
from bot.settings import Settings
from bot.store import HistoryStore, JobRecord
from bot.ui import result_view

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
# Multipart overhead and the embed JSON travel in the same request as the file.
UPLOAD_MARGIN = 64 * 1024
# Interaction tokens live 15 minutes; switch to the channel a little before that.
TOKEN_SAFETY_MARGIN = 30.0
DEAD_TOKEN_CODES = {10015, 10062, 50027}
NONCE_TRUST_SECONDS = 120.0


def upload_budget(limit: int) -> int:
    """Bytes one file may take under an upload limit, leaving room for the multipart envelope and embed JSON.

    The margin is at most an eighth of the limit: a fixed 64 KiB would exceed a small limit and leave a
    negative budget (the grid could then never be encoded and the result never delivered).
    """
    return limit - min(UPLOAD_MARGIN, limit // 8)


def delivery_nonce(job_id: str) -> str:
    """The nonce of a job's channel post (Discord allows 25 characters)."""
    return f"ib-{job_id}"


def nonce_still_guards(job: JobRecord, now: float | None = None) -> bool:
    """True while Discord still de-duplicates the job's channel post by its nonce.

    Discord documents the window only as "the past few minutes"; two minutes after the delivery was
    claimed (which precedes the post) stays well inside it.
    """
    if job.delivery_claimed_at is None:
        return False
    return (time.time() if now is None else now) - job.delivery_claimed_at < NONCE_TRUST_SECONDS


def is_result_message(message: discord.Message, job_id: str) -> bool:
    """A final result (grid embed with the Job field, or the failure sentence), not a progress edit."""
    for embed in message.embeds:
        if any(field.name == "Job" and field.value == f"`{job_id}`" for field in embed.fields):
            return True
    # Failure sentences (also with a leading mention in the channel fallback); progress says "Rendering `id`".
    return f"Job `{job_id}` (" in message.content


def is_dead_token(exc: discord.HTTPException) -> bool:
    """Expired or unknown interaction token: never retry it, use the channel."""
    return exc.code in DEAD_TOKEN_CODES or exc.status == 401


class DeliveryClient(Protocol):
    """What delivery needs of the Discord client (the bot): channels, DMs, the guild cache, who it is.

    Delivery takes this instead of the bot class, so nothing here imports back up into bot.bot.
    """

    @property
    def user(self) -> discord.ClientUser | None: ...

    def get_guild(self, id: int, /) -> discord.Guild | None: ...

    def get_channel(self, id: int, /) -> Any: ...

    async def fetch_channel(self, channel_id: int, /) -> Any: ...

    def get_partial_messageable(
        self, id: int, *, guild_id: int | None = None, type: discord.ChannelType | None = None
    ) -> discord.PartialMessageable: ...

    async def create_dm(self, user: discord.abc.Snowflake) -> discord.DMChannel: ...


@dataclass
class Tracker:
    """One job a Discord user is watching through an interaction response."""

    job_id: str
    interaction: discord.Interaction[Any] | None
    text: str = ""
    preview: bytes | None = None
    dirty: asyncio.Event = field(default_factory=asyncio.Event)
    last_edit: float = 0.0
    task: asyncio.Task[None] | None = None
    position: int | None = None
    online: bool = True
    # The interaction response the job's progress and result are edited into (None when unknown).
    message_id: int | None = None
    #: the job renders with the content filter: its previews are screened before they are shown
    safe_mode: bool = True
    #: the response is ephemeral (a private job): only the owner sees it, and only its token reaches it
    private: bool = False
    #: a preview image is on the response now (to be cleared when the result lands)
    preview_shown: bool = False
    _screened: tuple[bytes, bool] | None = None

    def token_usable(self) -> bool:
        if self.interaction is None:
            return False
        remaining = (self.interaction.expires_at - discord.utils.utcnow()).total_seconds()
        return remaining > TOKEN_SAFETY_MARGIN


class Deliverer:
    """Owns every message the bot edits or sends for a job."""

    def __init__(
        self,
        bot: DeliveryClient,
        *,
        settings: Settings,
        store: HistoryStore,
        runner: JobRunner,
        preferences: PreferenceStore,
    ) -> None:
        self.bot = bot
        self.settings = settings
        self.store = store
        self.runner = runner
        self.preferences = preferences
        self.trackers: dict[str, Tracker] = {}
        self._queue_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._queue_task = asyncio.create_task(self._queue_position_loop(), name="queue-positions")

    async def stop(self) -> None:
        tasks = [t.task for t in self.trackers.values() if t.task] + (
            [self._queue_task] if self._queue_task else []
        )
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- tracking ------------------------------------------------------------------------------------
    def track(
        self,
        job: JobRecord,
        interaction: discord.Interaction[Any],
        *,
        text: str,
        message_id: int | None = None,
    ) -> None:
        """Follow a job through `interaction`'s original response (already deferred)."""
        tracker = Tracker(
            job.id,
            interaction,
            text=text,
            message_id=message_id,
            safe_mode=job.safe_mode,
            private=job.private,
        )
        tracker.last_edit = time.monotonic()
        tracker.task = asyncio.create_task(self._edit_loop(tracker), name=f"progress-{job.id}")
        self.trackers[job.id] = tracker

    def retext(self, job_id: str, text: str) -> None:
        """Show `text` in a tracked job's message at the next (throttled) edit."""
        tracker = self.trackers.get(job_id)
        if tracker is not None:
            tracker.text = text
            tracker.dirty.set()

    def on_progress(self, job_id: str, step: int, total: int, preview: bytes | None) -> None:
        """Called on the loop for each denoising step; `preview` is a small PNG from the render backend."""
        tracker = self.trackers.get(job_id)
        if tracker is None:
            return
        tracker.text = progress_text(job_id, step, total)
        if preview is not None:
            tracker.preview = preview
        tracker.dirty.set()

    async def on_started(self, job: JobRecord) -> None:
        tracker = self.trackers.get(job.id)
        if tracker is not None:
            tracker.text = progress_text(job.id, 0, job.steps)
            tracker.dirty.set()

    async def _edit_loop(self, tracker: Tracker) -> None:
        interval = self.settings.progress_interval
        while True:
            await tracker.dirty.wait()
            wait = interval - (time.monotonic() - tracker.last_edit)
            if wait > 0:
                # Coalesce: whatever arrives meanwhile is sent as one edit.
                await asyncio.sleep(wait)
            tracker.dirty.clear()
            if not tracker.token_usable():
                return
            assert tracker.interaction is not None
            preview = await self._shown_preview(tracker)
            attachments = [discord.File(io.BytesIO(preview), "preview.png")] if preview else []
            try:
                await tracker.interaction.edit_original_response(
                    content=tracker.text, attachments=attachments
                )
                tracker.preview_shown = preview is not None
            except discord.HTTPException as exc:
                if is_dead_token(exc):
                    tracker.interaction = None
                    return
                log.info("progress edit for %s failed: %s", tracker.job_id, exc.status)
            tracker.last_edit = time.monotonic()

    async def _shown_preview(self, tracker: Tracker) -> bytes | None:
        """The latest preview if it may be shown (bot.policy): a filtered job's only after the classifier
        passed it; without a classifier a filtered job shows its progress as text alone."""
        preview = tracker.preview
        if preview is None or not tracker.safe_mode:
            return preview
        classifier = self.runner.classifier
        if classifier is None:
            return None
        if tracker._screened is None or tracker._screened[0] is not preview:
            clean = await asyncio.to_thread(_preview_clean, classifier, preview)
            tracker._screened = (preview, clean)
        clean = tracker._screened[1]
        return preview if policy.preview_allowed(safe_mode=True, screened_clean=clean) else None

    async def _queue_position_loop(self) -> None:
        while True:
            await asyncio.sleep(max(self.settings.progress_interval * 2, 2.0))
            try:
                await self.update_positions()
            except Exception:
                log.exception("queue position update failed")

    async def update_positions(self) -> None:
        """Refresh the position/ETA text of tracked queued jobs whose position changed."""
        if not self.trackers:
            return
        order = await self.runner.queue_positions()
        queued = [job for job in order if job.status == "queued"]
        for position, job in enumerate(queued, start=1):
            tracker = self.trackers.get(job.id)
            if tracker is not None and (tracker.position, tracker.online) != (
                position,
                self.runner.backend_online,
            ):
                tracker.online = self.runner.backend_online
                tracker.position = position
                tracker.text = queued_text(
                    job.id,
                    position,
                    self.runner.eta_seconds(position),
                    workers_online=self.runner.backend_online,
                )
                tracker.dirty.set()

    # -- final results -------------------------------------------------------------------------------
    async def on_finished(self, outcome: JobOutcome) -> None:
        """Deliver a finished job exactly once: the interaction if its token lives, else the channel."""
        job = outcome.job
        tracker = self.trackers.pop(job.id, None)
        if tracker is not None and tracker.task is not None:
            tracker.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await tracker.task
        if job.channel_id is None or job.delivery != "pending":
            return
        interaction = tracker.interaction if tracker is not None and tracker.token_usable() else None
        # The filter is checked again now: the server's policy or the channel's flag may have changed.
        withheld = policy.withheld_text(job, filtered_now=await self._filtered_now(job))
        # The response the result will be edited into is recorded first: after a crash, a restart looks at
        # that one message instead of scanning the channel.
        response_id = tracker.message_id if tracker is not None and interaction is not None else None
        if not await self.store.claim_delivery(job.id, message_id=response_id):
            return
        limit = interaction.filesize_limit if interaction is not None else self._channel_upload_limit(job)
        encoded = None
        if withheld is None and job.status == "done" and not all_tiles_flagged(job):
            try:
                encoded = await self._encoded_grid(job, outcome.grid_png, limit)
            except (OSError, ValueError):
                # Claimed already: post the text result rather than nothing at all.
                log.exception("could not encode the grid of job %s; delivering without it", job.id)
        message = None
        if interaction is not None:
            message = await self._edit_response(interaction, job, encoded, withheld=withheld)
        if message is None and tracker is not None:
            # The response could not take the result: its last preview must not stay behind.
            await self._clear_preview(tracker)
        if message is None:
            # A private job (member /settings) never falls back to the channel: a DM instead.
            send = self._send_privately if job.private else self._send_to_channel
            where = "the DM to its owner" if job.private else f"the post in <#{job.channel_id}>"
            try:
                message = await send(job, encoded, withheld=withheld)
            except discord.HTTPException as exc:
                # Neither way in: say so in the row (and /history) rather than "sent" with no message.
                log.warning(
                    "job %s was not delivered: %s was refused (%s %s) and no interaction token was usable",
                    job.id,
                    "the DM" if job.private else f"channel {job.channel_id}",
                    exc.status,
                    exc.code,
                )
                answer = " ".join(part for part in (str(exc.status), exc.text) if part)
                reason = f"Discord refused {where} ({answer})"
                await self.store.mark_undelivered(job.id, reason)
                return
        if withheld is not None:
            # Said where the result would have been; the row says why it is not there (/history).
            await self.store.mark_undelivered(job.id, policy.WITHHELD_REASON)
            return
        await self.store.mark_delivered(job.id, message_id=message.id)

    async def _filtered_now(self, job: JobRecord) -> bool:
        """Whether the job's channel is filtered now (only asked for a job made without the filter)."""
        if job.safe_mode or job.channel_id is None:
            return True
        try:
            guild = await self.preferences.guild(job.guild_id or 0)
        except Exception:
            log.exception(
                "could not read the settings of guild %s; treating job %s as filtered", job.guild_id, job.id
            )
            return True
        age_restricted = await self._age_restricted(job.channel_id)
        return policy.filtered(
            guild.policy, age_restricted=age_restricted, allow_nsfw=self.settings.allow_nsfw
        )

    async def _age_restricted(self, channel_id: int) -> bool:
        """The channel's age-restricted flag as Discord has it now (the cache follows CHANNEL_UPDATE);
        unknown counts as not age-restricted, the filtered side."""
        channel: Any = self.bot.get_channel(channel_id)
        if channel is None:
            try:
                channel = await self.bot.fetch_channel(channel_id)
            except (discord.HTTPException, discord.InvalidData) as exc:
                log.info("could not read channel %s (%s); treating it as filtered", channel_id, exc)
                return False
        return bool(getattr(channel, "is_nsfw", lambda: False)())

    async def _clear_preview(self, tracker: Tracker) -> None:
        """Remove a preview left on a response whose token can no longer edit it (the channel endpoint
        still can: the response is the bot's own message). An ephemeral one is the owner's alone."""
        if not tracker.preview_shown or tracker.message_id is None or tracker.private:
            return
        job = await self.store.get_job(tracker.job_id)
        if job is None or job.channel_id is None:
            return
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        message = channel.get_partial_message(tracker.message_id)
        try:
            await message.edit(content=f"Job `{job.id}`: the result is posted below.", attachments=[])
        except discord.HTTPException as exc:
            log.info("could not clear the preview of job %s (%s); deleting it", job.id, exc.status)
            with contextlib.suppress(discord.HTTPException):
                await message.delete()

    def _channel_upload_limit(self, job: JobRecord) -> int:
        """The guild's upload limit (boost tier) from the cache; Discord's default when unknown."""
        guild = self.bot.get_guild(job.guild_id) if job.guild_id else None
        return guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT

    async def _encoded_grid(self, job: JobRecord, grid_png: bytes | None, limit: int) -> EncodedImage | None:
        def encode() -> EncodedImage | None:
            data = grid_png
            if data is None and job.grid_path and Path(job.grid_path).is_file():
                data = Path(job.grid_path).read_bytes()
            return encode_png_within_budget(data, upload_budget(limit)) if data is not None else None

        return await asyncio.to_thread(encode)

    def _payload(
        self,
        job: JobRecord,
        encoded: EncodedImage | None,
        *,
        withheld: str | None = None,
        buttons: bool = True,
    ) -> dict[str, Any]:
        if withheld is not None:
            return {"content": withheld}
        if (job.render_action or job.action) == "describe" and job.status == "done" and encoded is not None:
            return describe_payload(job, encoded, buttons=buttons)  # issue 22
        if job.status == "done" and all_tiles_flagged(job):
            return {"content": all_flagged_text(job)}
        if job.status != "done" or encoded is None:
            return {
                "content": failure_text(job) if job.status != "done" else f"Job `{job.id}`: images missing."
            }
        filename = result_filename(job, encoded.extension)
        return {
            "content": None,
            "embed": result_embed(job, filename=filename, web_url=self.settings.web_url),
            "file": discord.File(io.BytesIO(encoded.data), filename),
            **({"view": result_view(job)} if buttons else {}),
        }

    async def _edit_response(
        self,
        interaction: discord.Interaction[Any],
        job: JobRecord,
        encoded: EncodedImage | None,
        *,
        withheld: str | None = None,
    ) -> discord.Message | None:
        payload = self._payload(job, encoded, withheld=withheld)
        file = payload.pop("file", None)
        try:
            return await interaction.edit_original_response(
                attachments=[file] if file is not None else [],
                view=payload.pop("view", None),
                embed=payload.pop("embed", None),
                **payload,
            )
        except discord.HTTPException as exc:
            if not is_dead_token(exc):
                log.warning(
                    "result edit for %s failed (%s %s); using the channel", job.id, exc.status, exc.code
                )
            return None

    async def _send_to_channel(
        self, job: JobRecord, encoded: EncodedImage | None, *, withheld: str | None = None
    ) -> discord.Message:
        """Post the result in the job's channel (raises HTTPException when Discord refuses).

        The post carries the job's nonce with `enforce_nonce`: a repeat within Discord's window (a
        retried request, a restart after a crash mid-post) returns the first message, never a second.
        """
        assert job.channel_id is not None
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        payload = self._payload(job, encoded, withheld=withheld)
        mention = f"<@{job.user_id}> " if job.user_id else ""
        ready = job.status == "done" and withheld is None
        lead = "your images are ready" if ready else (payload.get("content") or "")
        payload["content"] = f"{mention}{lead}".strip()
        allowed = (
            discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(job.user_id)])
            if job.user_id
            else discord.AllowedMentions.none()
        )
        return await channel.send(allowed_mentions=allowed, nonce=delivery_nonce(job.id), **payload)

    async def _send_privately(
        self, job: JobRecord, encoded: EncodedImage | None, *, withheld: str | None = None
    ) -> discord.Message:
        """A private job whose interaction is gone goes to the owner's DMs (raises HTTPException when refused,
        e.g. 403 50007 with DMs closed: the result then stays in /history, never in the channel).

        No buttons in a DM (bot.policy): they act on the server the job belongs to, and cannot there.
        """
        assert job.user_id is not None
        buttons = policy.buttons_allowed(direct_message=True)
        payload = self._payload(job, encoded, withheld=withheld, buttons=buttons)
        if job.status == "done" and payload.get("content") is None:
            payload["content"] = "Your images are ready (you asked for them privately in /settings)."
        channel = await self.bot.create_dm(discord.Object(job.user_id))
        return await channel.send(nonce=delivery_nonce(job.id), **payload)

    async def deliver_leftovers(self, *, started_at: float) -> None:
        """After a restart: post results that finished before it but were never delivered, exactly once."""
        for job in await self.store.undelivered_jobs(finished_before=started_at):
            if job.delivery == "sending" and job.private:
                continue  # the DM cannot be searched like the channel: never risk a duplicate
            if job.delivery == "sending":
                # Killed between claiming the delivery and recording the message: look before re-posting.
                if job.message_id is not None:
                    shown = await self._shows_result(job, job.message_id)
                    if shown is None:
                        continue  # cannot tell: never risk a duplicate (the result stays in /history)
                    if shown:
                        await self.store.mark_delivered(job.id, message_id=job.message_id)
                        continue
                if not nonce_still_guards(job):
                    # Discord may have forgotten the nonce: the channel's recent messages are all we have.
                    readable, posted = await self._find_posted_result(job)
                    if posted is not None:
                        await self.store.mark_delivered(job.id, message_id=posted)
                        continue
                    if not readable:
                        continue  # cannot tell: never risk a duplicate (the result stays in /history)
                # Within the nonce window a channel post that did land is returned again, not repeated.
                await self.store.reset_delivery(job.id)
                job = replace(job, delivery="pending", message_id=None)
            await self.on_finished(JobOutcome(job))

    async def _shows_result(self, job: JobRecord, message_id: int) -> bool | None:
        """Whether the recorded interaction response shows the job's final result (None: can't read it)."""
        assert job.channel_id is not None
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        try:
            message = await channel.fetch_message(message_id)
        except discord.NotFound:
            return False  # deleted (or never filled): nothing shows the result
        except discord.HTTPException as exc:
            log.warning(
                "cannot read message %s in channel %s to check job %s: %s",
                message_id,
                job.channel_id,
                job.id,
                exc.status,
            )
            return None
        return is_result_message(message, job.id)

    async def _find_posted_result(self, job: JobRecord) -> tuple[bool, int | None]:
        """(channel readable, id of a result message for `job` among its recent bot messages)."""
        assert job.channel_id is not None
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        me = self.bot.user.id if self.bot.user else None
        try:
            async for message in channel.history(limit=100):
                if message.author.id == me and is_result_message(message, job.id):
                    return True, message.id
        except discord.HTTPException as exc:
            log.warning("cannot read channel %s to check job %s: %s", job.channel_id, job.id, exc.status)
            return False, None
        return True, None


def _preview_clean(classifier: TileClassifier, preview: bytes) -> bool:
    """Whether the classifier passes one preview PNG (runs in a thread); a failing classifier passes none."""
    try:
        with Image.open(io.BytesIO(preview)) as opened:
            image = opened.convert("RGB")
        (verdict,) = classifier.classify([image])
    except Exception:
        log.exception("the image classifier failed on a preview; not showing it")
        return False
    return not verdict.flagged
