"""/imagine, /queue, /cancel and the buttons under a grid."""

from __future__ import annotations

import asyncio
import io
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot.bot import reply_ephemeral
from bot.delivery import is_dead_token, upload_budget
from bot.engine.images import EncodedImage, encode_png_within_budget
from bot.engine.types import EngineError, InvalidRequest
from bot.flags import merge_flags, parse_inline_flags, size_for_ratio
from bot.jobs import rerun_spec
from bot.messages import SPOILER_PREFIX, queued_text, result_embed, result_filename
from bot.store import JobRecord, JobSpec, QueueRefused
from bot.ui import ACTION_BUTTONS, clip, result_view, shown, tile_view
from bot.uploads import check_declared, discard_inputs, fit_upload, stage_inputs
from cogs.settings import channel_filtered, imagine_settings

if TYPE_CHECKING:
    from bot.bot import ImagineBot

log = logging.getLogger(__name__)

Aspect = Literal["square", "portrait", "landscape"]
MAX_SEED = 2**32 - 1
# How /imagine's options are named in error messages about a clashing inline flag.
OPTION_LABELS = {"seed": "seed_number", "expand": "expand", "negative": "negative", "aspect": "aspect"}
# Produces (source image, mask) bytes for a new job once the interaction is deferred.
InputSource = Callable[[], Awaitable[tuple[bytes | None, bytes | None]]]


def size_for_aspect(aspect: str, width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """Map an aspect choice to a size with about the default's pixel count, multiples of 8, within the limit."""
    if aspect not in ("square", "portrait", "landscape"):
        # Discord offers only the choices, but a forged interaction can carry any string.
        raise InvalidRequest(f"`aspect` must be square, portrait or landscape, got {clip(str(aspect), 40)!r}")
    if aspect == "square":
        return width, height
    area = min(width * height, max_pixels)
    ratio = 3 / 4 if aspect == "portrait" else 4 / 3
    w = max(64, int(math.sqrt(area * ratio)) // 8 * 8)
    h = max(64, int(math.sqrt(area / ratio)) // 8 * 8)
    return w, h


def is_manager(interaction: discord.Interaction[Any], permission: str) -> bool:
    """True when the member has `permission` (from the interaction payload) in this channel."""
    return bool(getattr(interaction.permissions, permission, False))


class ImagineCog(commands.Cog):
    """Generating images and the Midjourney-style buttons."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        self.settings = bot.settings

    @app_commands.command(name="imagine")
    @app_commands.guild_only()
    async def imagine(
        self,
        interaction: discord.Interaction[ImagineBot],
        seed: str,
        count: app_commands.Range[int, 1, 9] | None = None,
        negative: str | None = None,
        steps: app_commands.Range[int, 1, 500] | None = None,
        guidance: app_commands.Range[float, 0.0, 50.0] | None = None,
        aspect: Aspect | None = None,
        seed_number: app_commands.Range[int, 0, MAX_SEED] | None = None,
        expand: bool | None = None,
        image: discord.Attachment | None = None,
        strength: app_commands.Range[float, 0.05, 1.0] | None = None,
    ) -> None:
        """Turn a short text into pictures: GPT-2 writes the prompts, Stable Diffusion paints them.

        Parameters
        ----------
        seed
            The idea, e.g. "Northeastern University". It starts every prompt.
        count
            How many images (1 to the server's limit, usually 4).
        negative
            What to keep out of the pictures, e.g. "blurry, text".
        steps
            Denoising steps: more is slower and finer (default 25).
        guidance
            How strictly to follow the prompt (default 7.5).
        aspect
            Square, portrait (3:4) or landscape (4:3).
        seed_number
            A number that makes the result reproducible.
        expand
            Let GPT-2 write richer prompts (on) or use your text as-is (off).
        image
            A PNG, JPEG or WebP picture to start every image from.
        strength
            With an image: how far to move away from it, 0.05 (barely) to 1 (ignore it).
        """
        s = self.settings
        # Inline `--flags` in the seed; a bad one or a clash with an option is an InvalidRequest (ephemeral).
        flags = parse_inline_flags(seed)
        given = {"negative": negative, "seed": seed_number, "steps": steps, "count": count}
        merged = merge_flags(flags, {**given, "expand": expand, "aspect": aspect}, OPTION_LABELS)
        # The member's and the server's /settings fill what the command and its flags leave open.
        wanted = {key: merged[key] for key in ("count", "steps", "negative", "aspect", "expand")}
        if merged["ratio"] is not None:
            wanted["aspect"] = "square"  # `--ar` decides the shape: no aspect default applies
        resolved = await imagine_settings(self.bot, interaction, {**wanted, "guidance": guidance})
        if resolved.refusal is not None:
            await reply_ephemeral(interaction, resolved.refusal)
            return
        p = resolved.parameters
        if merged["ratio"] is not None:
            width, height = size_for_ratio(merged["ratio"], s.width, s.height, s.max_pixels)
        else:
            width, height = size_for_aspect(p.aspect, s.width, s.height, s.max_pixels)
        if strength is not None and image is None:
            raise InvalidRequest("`strength` only applies together with `image`")
        if image is not None:
            check_declared(image.content_type, image.size, upload_limit=interaction.filesize_limit)
        spec = JobSpec(
            seed_text=flags.text,
            count=p.count,
            steps=p.steps,
            guidance=p.guidance,
            width=width,
            height=height,
            job_seed=_pick(merged["seed"], secrets.randbelow(MAX_SEED + 1)),
            negative=p.negative,
            expand=p.expand,
            safe_mode=resolved.safe_mode,
            action="imagine" if image is None else "image",
            strength=None if image is None else _pick(strength, s.image_strength),
            chaos=flags.chaos,
            user_id=interaction.user.id,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            private=p.private,
            from_defaults=p.from_member,
        )
        inputs = None if image is None else partial(self._uploaded_image, image, width, height)
        await self.start_job(interaction, spec, inputs=inputs)

    async def _uploaded_image(
        self, attachment: discord.Attachment, width: int, height: int
    ) -> tuple[bytes | None, bytes | None]:
        """Download the upload (async, with a timeout) and fit it to the job's size off the loop."""
        try:
            data = await asyncio.wait_for(attachment.read(), self.settings.image_download_timeout)
        except TimeoutError:
            raise InvalidRequest("`image` took too long to download; try a smaller file") from None
        except (discord.HTTPException, aiohttp.ClientError) as exc:
            raise InvalidRequest("`image` could not be downloaded from Discord; try again") from exc
        fitted = await asyncio.to_thread(
            fit_upload, data, width=width, height=height, max_side=self.settings.max_image_side
        )
        return fitted, None

    async def start_job(
        self, interaction: discord.Interaction[Any], spec: JobSpec, *, inputs: InputSource | None = None
    ) -> JobRecord | None:
        """Check (ephemeral refusal), defer, fetch and stage input images, queue, and follow the job.

        `inputs` produces (source image, mask) bytes after the defer (a download, a canvas); inputs the
        spec already points at (a rerun's, a variation's tile) are copied into the new job's folder.
        """
        refusal = await self.bot.runner.admission_refusal(spec)
        if refusal is not None:
            message = getattr(refusal, "user_message", None) or str(refusal)
            await reply_ephemeral(interaction, f"Can't start that: {message}.")
            return None
        response_id = None
        if not interaction.response.is_done():
            # A private job (member /settings) is answered ephemerally: delivered to its owner alone.
            deferred = await interaction.response.defer(thinking=True, ephemeral=spec.private)
            response_id = deferred.message_id if deferred is not None else None
        images_dir = self.settings.images_dir
        try:
            init_image, mask_image = await inputs() if inputs is not None else (None, None)
            spec = await asyncio.to_thread(
                stage_inputs, images_dir, spec, init_image=init_image, mask_image=mask_image
            )
        except EngineError as exc:
            await _refuse_after_defer(interaction, f"Can't start that: {exc.user_message}.")
            return None
        try:
            job = await self.bot.runner.submit(spec)
        except (QueueRefused, EngineError) as exc:
            await asyncio.to_thread(discard_inputs, images_dir, spec)
            # Lost a race with another request after the pre-check: say so in the (public) thinking message.
            message = getattr(exc, "user_message", None) or str(exc)
            await interaction.edit_original_response(content=f"Can't queue that: {message}.")
            return None
        # No await between submit and track: a fast job must find its tracker.
        text = queued_text(job.id, 1, None, workers_online=self.bot.runner.backend_online)
        self.bot.deliverer.track(job, interaction, text=text, message_id=response_id)
        try:
            await self.bot.deliverer.update_positions()
        except Exception:
            # The row is queued and the worker will run it: say that, not "nothing was changed".
            log.exception("queue position of job %s unknown; it is queued", job.id)
            self.bot.deliverer.retext(job.id, queued_text(job.id, None, None))
        return job

    @app_commands.command(name="queue")
    @app_commands.guild_only()
    async def queue(self, interaction: discord.Interaction[ImagineBot]) -> None:
        """Show your jobs waiting in the queue and their positions."""
        order = await self.bot.runner.queue_positions()
        lines = []
        for position, job in enumerate(order, start=1):
            if job.user_id == interaction.user.id:
                where = "rendering now" if job.status == "running" else f"position {position}"
                lines.append(f"`{job.id}` — {where} — {shown(job.seed_text, 60)}")
        text = "\n".join(lines) if lines else "You have no jobs in the queue."
        text += f"\nQueue length: {len(order)}."
        await reply_ephemeral(interaction, text)

    @app_commands.command(name="cancel")
    @app_commands.guild_only()
    async def cancel(self, interaction: discord.Interaction[ImagineBot], job: str | None = None) -> None:
        """Cancel one of your queued or running jobs.

        Parameters
        ----------
        job
            The job id (default: your most recent waiting job).
        """
        mine = [j for j in await self.bot.runner.queue_positions() if j.user_id == interaction.user.id]
        if job is not None:
            mine = [j for j in mine if j.id == job.strip()]
        if not mine:
            await reply_ephemeral(interaction, "No waiting job of yours matches that.")
            return
        target = mine[-1] if job is None else mine[0]
        if await self.bot.runner.cancel(target.id):
            verb = "will stop at the next step" if target.status == "running" else "was cancelled"
            await reply_ephemeral(interaction, f"Job `{target.id}` {verb}.")
        else:
            await reply_ephemeral(interaction, f"Job `{target.id}` already finished rendering.")

    # -- buttons ------------------------------------------------------------------------------------------
    async def on_job_button(
        self, interaction: discord.Interaction[Any], action: str, job_id: str, tile: int | None
    ) -> None:
        """Dispatch a persistent button, checking that the job exists here and the presser may use it."""
        job = await self.bot.store.get_job(job_id)
        if job is None or job.guild_id != interaction.guild_id:
            await reply_ephemeral(interaction, "That job doesn't exist (any more).")
            return
        owner = job.user_id == interaction.user.id
        if action == "del":
            if not (owner or is_manager(interaction, "manage_messages")):
                await reply_ephemeral(
                    interaction, "Only the person who asked for it (or a moderator) can delete it."
                )
                return
            await interaction.response.defer()
            try:
                await interaction.delete_original_response()
            except discord.HTTPException as exc:
                log.info("delete of job %s message failed: %s", job.id, exc.status)
            return
        if not (owner or (action in ("post", "repro") and is_manager(interaction, "manage_guild"))):
            await reply_ephemeral(
                interaction, "Only the person who asked for these images can use their buttons."
            )
            return
        if job.status != "done":
            await reply_ephemeral(interaction, f"Job `{job.id}` has no images ({job.status}).")
            return
        if tile is not None and not 1 <= tile <= len(job.tiles):
            await reply_ephemeral(interaction, f"Job `{job.id}` has no image {tile}.")
            return
        # The channel where the post or the new job lands decides the filter, never the old row.
        filtered_here = await channel_filtered(self.bot, interaction)
        handlers = {
            "u": self._post_tile,
            "post": self._repost_grid,
        }
        if action in handlers:
            if filtered_here and not job.safe_mode:
                await reply_ephemeral(
                    interaction,
                    f"Job `{job.id}` was made without the content filter (in an age-restricted channel); "
                    "its images can't be posted in this channel.",
                )
                return
            await handlers[action](interaction, job, tile)
            return
        if action in ACTION_BUTTONS:
            if filtered_here and not job.safe_mode and action != "rmx":
                # The new images start from this job's pictures: the same rule as posting them here.
                await reply_ephemeral(
                    interaction,
                    f"Job `{job.id}` was made without the content filter (in an age-restricted channel); "
                    "its images can't be used in this channel.",
                )
                return
            actions = self.bot.get_cog("ActionsCog")
            await actions.on_action(interaction, action, job, tile, safe_mode=filtered_here)  # type: ignore[union-attr]
            return
        spec = replace(
            self._child_spec(interaction, job, action, tile),
            safe_mode=filtered_here,
            channel_id=interaction.channel_id,
        )
        await self.start_job(interaction, spec)

    def _child_spec(
        self, interaction: discord.Interaction[Any], job: JobRecord, action: str, tile: int | None
    ) -> JobSpec:
        """The new job a button press asks for, linked to its parent."""
        if action == "repro":
            return rerun_spec(job, user_id=interaction.user.id, action="reproduce")
        # Same seed text and parameters, new image seeds, owned by the presser, linked to the parent.
        base = replace(
            rerun_spec(job, user_id=interaction.user.id, action="rerender"),
            job_seed=secrets.randbelow(MAX_SEED + 1),
            given_seeds=None,
        )
        if action == "rr":
            return base
        if action == "rx":
            return replace(base, action="reexpand", given_prompts=None)
        assert action == "v" and tile is not None
        source = job.tiles[tile - 1]
        return replace(
            base,
            action="variation",
            source_tile=tile,
            strength=self.settings.variation_strength,
            given_prompts=(source.prompt,) * job.count,
            init_image=source.path,
            # img2img from the tile: not the parent's outpaint mask or upscale rendering.
            mask_image=None,
            render_action=None,
        )

    async def _post_tile(
        self, interaction: discord.Interaction[Any], job: JobRecord, tile: int | None
    ) -> None:
        assert tile is not None
        await interaction.response.defer(thinking=True, ephemeral=job.private)
        source = job.tiles[tile - 1]
        try:
            encoded = await _encode_saved(source.path, interaction.filesize_limit)
        except OSError:
            await interaction.followup.send(f"The image file of job `{job.id}` is gone.", ephemeral=True)
            return
        embed = discord.Embed(
            description=f"**{tile}.** {shown(source.prompt, 3900)}", colour=discord.Colour.blurple()
        )
        filename = result_filename(job, encoded.extension, tile)
        if not filename.startswith(SPOILER_PREFIX):  # a flagged tile goes below the embed, as a spoiler
            embed.set_image(url=f"attachment://{filename}")
        embed.set_footer(text=f"Job {job.id} · image seed {source.image_seed}")
        view = tile_view(job.id, tile)
        try:
            await interaction.followup.send(
                embed=embed,
                file=discord.File(io.BytesIO(encoded.data), filename),
                view=view,
                wait=True,
                ephemeral=job.private,
            )
        except discord.HTTPException as exc:
            if not is_dead_token(exc):
                raise

    async def _repost_grid(
        self, interaction: discord.Interaction[Any], job: JobRecord, tile: int | None
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            encoded = await _encode_saved(job.grid_path, interaction.filesize_limit)
        except OSError:
            await interaction.followup.send(f"The grid of job `{job.id}` is gone from disk.", ephemeral=True)
            return
        filename = result_filename(job, encoded.extension)
        channel = self.bot.get_partial_messageable(interaction.channel_id or 0, guild_id=interaction.guild_id)
        await channel.send(
            embed=result_embed(job, filename=filename),
            file=discord.File(io.BytesIO(encoded.data), filename),
            view=result_view(job),
        )
        await interaction.followup.send("Posted.", ephemeral=True)


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


async def _refuse_after_defer(interaction: discord.Interaction[Any], text: str) -> None:
    """An ephemeral refusal once the public "thinking" message exists: remove it, then say why privately."""
    try:
        await interaction.delete_original_response()
    except discord.HTTPException as exc:
        log.info("could not remove the thinking message: %s", exc.status)
    await reply_ephemeral(interaction, text)


async def _encode_saved(path: str | None, upload_limit: int) -> EncodedImage:
    """Read a saved PNG off the loop and fit it to the upload limit (OSError when it is gone)."""
    if not path:
        raise FileNotFoundError("no file recorded")
    data = await asyncio.to_thread(Path(path).read_bytes)
    return await asyncio.to_thread(encode_png_within_budget, data, upload_budget(upload_limit))


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(ImagineCog(bot))
