"""The Midjourney-style actions: Remix (modal), Upscale, Vary, Zoom Out and Pan on a posted image.

ImagineCog.on_job_button checks that the job exists here, is done and belongs to the presser, then
hands these actions over. Every action becomes a child job through ImagineCog.start_job (same queue,
caps, progress and delivery); its source image and mask are stored in the child's own folder.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands
from PIL import Image

from bot.bot import reply_ephemeral
from bot.engine.images import png_bytes
from bot.engine.outpaint import build_canvas, fit_within, outpaint_geometry, upscale_size
from bot.engine.types import InvalidRequest
from bot.jobs import rerun_spec
from bot.store import JobRecord, JobSpec
from bot.ui import TILE_ACTIONS
from cogs.settings import channel_filtered

if TYPE_CHECKING:
    from bot.bot import ImagineBot
    from cogs.imagine import ImagineCog, InputSource

log = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1
# Discord modals hold at most five text inputs: four prompts and the negative prompt.
MODAL_PROMPTS = 4
PROMPT_FIELD_MAX = 2000


class RemixModal(discord.ui.Modal):
    """Prompts of a grid (one field per tile, up to four, plus the negative) or of one image."""

    def __init__(self, cog: ActionsCog, job: JobRecord, tile: int | None) -> None:
        super().__init__(title="Remix" if tile is None else f"Remix image {tile}", timeout=900)
        self.cog = cog
        self.job_id = job.id
        self.tile = tile
        self.prompts: dict[int, discord.ui.TextInput[Any]] = {}
        tiles = job.tiles[:MODAL_PROMPTS] if tile is None else (job.tiles[tile - 1],)
        for source in tiles:
            field: discord.ui.TextInput[Any] = discord.ui.TextInput(
                label=f"Prompt {source.index}" if tile is None else "Prompt",
                style=discord.TextStyle.paragraph,
                default=source.prompt[:PROMPT_FIELD_MAX],
                required=False,
                max_length=PROMPT_FIELD_MAX,
                custom_id=f"p{source.index}",
            )
            self.prompts[source.index] = field
            self.add_item(field)
        self.negative: discord.ui.TextInput[Any] | None = None
        if tile is None:
            self.negative = discord.ui.TextInput(
                label="Negative prompt (empty = none)",
                style=discord.TextStyle.paragraph,
                default=job.negative[:PROMPT_FIELD_MAX] or None,
                required=False,
                max_length=PROMPT_FIELD_MAX,
                custom_id="negative",
            )
            self.add_item(self.negative)

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:  # type: ignore[override]
        prompts = {index: field.value.strip() for index, field in self.prompts.items()}
        negative = self.negative.value.strip() if self.negative is not None else None
        await self.cog.on_remix(interaction, self.job_id, self.tile, prompts, negative)

    async def on_error(self, interaction: discord.Interaction[Any], error: Exception) -> None:  # type: ignore[override]
        # The one error handler of every interaction (commands, buttons, selects, modals).
        await self.cog.bot.on_interaction_error(interaction, error)


class ActionsCog(commands.Cog):
    """Remix, Upscale, Vary, Zoom Out and Pan."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        self.settings = bot.settings

    @property
    def imagine(self) -> ImagineCog:
        cog = self.bot.get_cog("ImagineCog")
        assert cog is not None, "cogs.imagine must be loaded before cogs.actions"
        return cog  # type: ignore[return-value]

    async def on_action(
        self,
        interaction: discord.Interaction[Any],
        code: str,
        job: JobRecord,
        tile: int | None,
        *,
        safe_mode: bool,
    ) -> None:
        """A button of this cog was pressed on a done job by its owner (checked by the caller).

        `safe_mode` is the filter of the channel where the new job lands (never the old row's).
        """
        if code in ("rmx", "rmt"):
            if code == "rmt" and tile is None:
                await reply_ephemeral(interaction, "That button has no image number.")
                return
            await interaction.response.send_modal(RemixModal(self, job, tile if code == "rmt" else None))
            return
        if tile is None:
            await reply_ephemeral(interaction, "That button has no image number.")
            return
        try:
            spec, inputs = self.tile_spec(interaction, job, tile, TILE_ACTIONS[code], safe_mode=safe_mode)
        except InvalidRequest as exc:
            # E.g. an upscale over IMAGINE_MAX_OUTPUT_PIXELS: the button says why, nothing is queued.
            await reply_ephemeral(interaction, f"Can't start that: {exc.user_message}.")
            return
        await self.imagine.start_job(interaction, spec, inputs=inputs)

    def tile_spec(
        self,
        interaction: discord.Interaction[Any],
        job: JobRecord,
        tile: int,
        action: str,
        *,
        safe_mode: bool,
        prompt: str | None = None,
    ) -> tuple[JobSpec, InputSource]:
        """The child job of an action on one tile, and what makes its source image (and mask)."""
        s = self.settings
        source = job.tiles[tile - 1]
        count = s.count
        width, height = fit_within(job.width, job.height, s.max_pixels)
        strength: float | None = None
        geometry = None
        if action.startswith("upscale-"):
            count = 1
            width, height = upscale_size(job.width, job.height, s.max_output_pixels)
            strength = (
                s.upscale_subtle_strength if action == "upscale-subtle" else s.upscale_creative_strength
            )
        elif action.startswith("vary-") or action == "remix":
            strength = s.vary_subtle_strength if action == "vary-subtle" else s.vary_strong_strength
        else:  # zoom-*, pan-*
            (width, height), box = outpaint_geometry(action, job.width, job.height, s.max_output_pixels)
            geometry = ((width, height), box)
        text = prompt or source.prompt
        spec = replace(
            rerun_spec(job, user_id=interaction.user.id, action=action),
            count=count,
            width=width,
            height=height,
            job_seed=secrets.randbelow(MAX_SEED + 1),
            given_prompts=(text,) * count,
            given_seeds=None,
            source_tile=tile,
            strength=strength,
            init_image=None,
            mask_image=None,
            render_action=None,
            safe_mode=safe_mode,
            channel_id=interaction.channel_id,
        )

        async def inputs() -> tuple[bytes | None, bytes | None]:
            return await asyncio.to_thread(_tile_inputs, source.path, geometry)

        return spec, inputs

    async def on_remix(
        self,
        interaction: discord.Interaction[Any],
        job_id: str,
        tile: int | None,
        prompts: dict[int, str],
        negative: str | None,
    ) -> None:
        """The Remix modal was submitted: same image seeds, the edited prompts (empty = keep the old one)."""
        job = await self.bot.store.get_job(job_id)
        if job is None or job.guild_id != interaction.guild_id or job.status != "done":
            await reply_ephemeral(interaction, "That job doesn't exist (any more).")
            return
        if job.user_id != interaction.user.id:
            await reply_ephemeral(interaction, "Only the person who asked for these images can remix them.")
            return
        safe_mode = await channel_filtered(self.bot, interaction)
        if tile is not None:
            if safe_mode and not job.safe_mode:
                await reply_ephemeral(
                    interaction, "That image was made without the content filter; it can't be used here."
                )
                return
            # One image: Vary (Strong) with the new prompt.
            spec, inputs = self.tile_spec(
                interaction, job, tile, "remix", safe_mode=safe_mode, prompt=prompts.get(tile) or None
            )
            await self.imagine.start_job(interaction, spec, inputs=inputs)
            return
        edited = tuple(prompts.get(t.index) or t.prompt for t in job.tiles)
        spec = replace(
            rerun_spec(job, user_id=interaction.user.id, action="remix"),
            given_prompts=edited,
            negative=negative if negative is not None else job.negative,
            safe_mode=safe_mode,
            channel_id=interaction.channel_id,
        )
        await self.imagine.start_job(interaction, spec)


def _tile_inputs(
    path: str | None, geometry: tuple[tuple[int, int], tuple[int, int, int, int]] | None
) -> tuple[bytes | None, bytes | None]:
    """The tile's PNG as the source image, or its outpaint canvas and mask (runs in a thread)."""
    if not path:
        raise InvalidRequest("the image file of that job is gone from disk")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidRequest("the image file of that job is gone from disk") from exc
    if geometry is None:
        return data, None
    with Image.open(io.BytesIO(data)) as opened:
        source = opened.convert("RGB")
    canvas = build_canvas(source, *geometry)
    return png_bytes(canvas.image), png_bytes(canvas.mask)


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(ActionsCog(bot))
