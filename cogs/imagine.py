"""/imagine, /queue, /cancel and the buttons under a grid."""

from __future__ import annotations

import asyncio
import io
import logging
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot import policy
from bot.batches import ConfirmBatchView, imagine_requests, start_batch
from bot.bot import reply_ephemeral, requester_of
from bot.delivery import is_dead_token, upload_budget
from bot.engine.images import EncodedImage, encode_png_within_budget
from bot.engine.types import InvalidRequest
from bot.intake import ActionRequest, Refusal, Requester
from bot.messages import SPOILER_PREFIX, job_page_url, result_embed, result_filename
from bot.models.allowed import allowed_names
from bot.store import JobRecord
from bot.ui import result_view, shown, tile_view
from bot.uploads import check_declared, fit_upload

if TYPE_CHECKING:
    from bot.bot import ImagineBot

log = logging.getLogger(__name__)

Aspect = Literal["square", "portrait", "landscape"]
MAX_SEED = 2**32 - 1
# How /imagine's options are named in error messages about a clashing inline flag.
OPTION_LABELS = {"seed": "seed_number", "expand": "expand", "negative": "negative", "aspect": "aspect"}
# The buttons this cog answers: post an image or the grid, delete, and the jobs that repeat a grid.
BUTTON_ACTIONS = {
    "v": "variation",
    "rr": "rerender",
    "rx": "reexpand",
    "repro": "reproduce",
    "enh": "enhance",
}
POST_BUTTONS = {"u": "post-tile", "post": "post"}
BUTTON_CODES = ("del", "star", *POST_BUTTONS, *BUTTON_ACTIONS)


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
        model: str | None = None,
        lora: str | None = None,
        draft: bool | None = None,
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
        model
            Which model paints (default: this server's). Also `--model NAME` in the text.
        lora
            A LoRA style, NAME or NAME:WEIGHT (more with `--lora` in the text).
        draft
            Draft mode: a fast, rough grid; press Enhance on the one you like.
        """
        # `{a, b}` permutations (issue 22) first, then each one's inline `--flags`; a bad flag, a clash
        # with an option or too many permutations is an InvalidRequest (ephemeral).
        given = {"negative": negative, "seed": seed_number, "steps": steps, "count": count}
        requests = imagine_requests(
            seed,
            {**given, "expand": expand, "aspect": aspect},
            OPTION_LABELS,
            max_jobs=self.settings.max_permutations,
            guidance=guidance,
            with_image=image is not None,
            strength=strength,
            model=model,
            loras=(lora.strip(),) if lora and lora.strip() else (),
            draft=bool(draft),
        )
        if image is not None:
            check_declared(image.content_type, image.size, upload_limit=interaction.filesize_limit)
        batch = await self.bot.intake.imagine_many(requester_of(interaction), requests)
        if isinstance(batch, Refusal):
            await reply_ephemeral(interaction, batch.message)
            return
        spec = batch.jobs[0].spec
        inputs = None if image is None else partial(self._uploaded_image, image, spec.width, spec.height)
        if len(batch.jobs) == 1:
            await self.bot.start_job(interaction, batch.jobs[0], inputs=inputs)
        elif batch.confirm:
            view = ConfirmBatchView(self.bot, batch, inputs)
            await interaction.response.send_message(view.question(batch), view=view, ephemeral=True)
        else:
            await start_batch(self.bot, interaction, batch, inputs)

    @imagine.autocomplete("model")
    async def _model_choices(
        self, interaction: discord.Interaction[ImagineBot], current: str
    ) -> list[app_commands.Choice[str]]:
        """The enabled models of the registry whose name or description has the typed text."""
        typed = current.strip().lower()
        return [
            app_commands.Choice(name=_choice_label(entry.name, entry.description), value=entry.name)
            for entry in self.bot.intake.registry.enabled
            if typed in entry.name.lower() or typed in entry.description.lower()
        ][:25]

    @imagine.autocomplete("lora")
    async def _lora_choices(
        self, interaction: discord.Interaction[ImagineBot], current: str
    ) -> list[app_commands.Choice[str]]:
        """LoRAs in IMAGINE_LORA_DIR this server allows whose name has the typed text (before any `:WEIGHT`)."""
        typed = current.strip().split(":")[0].lower()
        names = await asyncio.to_thread(self.bot.intake.loras.names)
        names = allowed_names(names, (await self.bot.preferences.guild(interaction.guild_id or 0)).loras)
        return [app_commands.Choice(name=name, value=name) for name in names if typed in name.lower()][:25]

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
    async def cog_load(self) -> None:
        self.bot.register_job_buttons(BUTTON_CODES, self.on_job_button)

    async def cog_unload(self) -> None:
        self.bot.unregister_job_buttons(BUTTON_CODES)

    async def on_job_button(
        self, interaction: discord.Interaction[Any], code: str, job_id: str, tile: int | None
    ) -> None:
        """A persistent button under a grid, an image or a /history job; the intake and the policy decide."""
        who = requester_of(interaction)
        if code == "del":
            await self._delete(interaction, job_id)
            return
        if code == "star":
            await self._star(interaction, who, job_id, tile)
            return
        if code in POST_BUTTONS:
            job = await self.bot.intake.find(who, job_id, POST_BUTTONS[code], tile)
            if isinstance(job, Refusal):
                await reply_ephemeral(interaction, job.message)
                return
            filtered_here = await self.bot.intake.filtered_for(who)
            refusal = policy.repost_refusal(job, presser_id=interaction.user.id, filtered_here=filtered_here)
            if refusal is not None:
                await reply_ephemeral(interaction, refusal)
                return
            if code == "u":
                await self._post_tile(interaction, job, tile)
            else:
                await self._repost_grid(interaction, job, tile)
            return
        admitted = await self.bot.intake.action(who, ActionRequest(job_id, BUTTON_ACTIONS[code], tile))
        if isinstance(admitted, Refusal):
            await reply_ephemeral(interaction, admitted.message)
            return
        await self.bot.start_job(interaction, admitted)

    async def _star(
        self, interaction: discord.Interaction[Any], who: Requester, job_id: str, tile: int | None
    ) -> None:
        """⭐ under one image: star it for the presser, or unstar it (the gallery's `liked` filter)."""
        job = await self.bot.intake.find(who, job_id, "star", tile)
        if isinstance(job, Refusal):
            await reply_ephemeral(interaction, job.message)
            return
        assert tile is not None
        starred = await self.bot.store.toggle_like(interaction.user.id, job.id, tile)
        text = (
            f"⭐ Starred image {tile} of job `{job.id}`."
            if starred
            else f"Star taken off image {tile} of job `{job.id}`."
        )
        link = job_page_url(self.settings.web_url, job.id)
        if link:
            text += f" In the gallery: {link}"
        await reply_ephemeral(interaction, text)

    async def _delete(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        job = await self.bot.store.get_job(job_id)
        if job is None or job.guild_id != interaction.guild_id:
            await reply_ephemeral(interaction, "That job doesn't exist (any more).")
            return
        who = requester_of(interaction)
        if not policy.may_delete(job, presser_id=interaction.user.id, manages_messages=who.manages_messages):
            await reply_ephemeral(
                interaction, "Only the person who asked for it (or a moderator) can delete it."
            )
            return
        await interaction.response.defer()
        try:
            await interaction.delete_original_response()
        except discord.HTTPException as exc:
            log.info("delete of job %s message failed: %s", job.id, exc.status)

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
        view = tile_view(job.id, tile, draft=job.render.get("model_kind") == "sd-turbo")
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
            embed=result_embed(job, filename=filename, web_url=self.settings.web_url),
            file=discord.File(io.BytesIO(encoded.data), filename),
            view=result_view(job),
        )
        await interaction.followup.send("Posted.", ephemeral=True)


def _choice_label(name: str, description: str) -> str:
    """An autocomplete label: the name and its description, within Discord's 100 characters."""
    return f"{name} — {description}"[:100] if description else name


async def _encode_saved(path: str | None, upload_limit: int) -> EncodedImage:
    """Read a saved PNG off the loop and fit it to the upload limit (OSError when it is gone)."""
    if not path:
        raise FileNotFoundError("no file recorded")
    data = await asyncio.to_thread(Path(path).read_bytes)
    return await asyncio.to_thread(encode_png_within_budget, data, upload_budget(upload_limit))


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(ImagineCog(bot))
