"""The Midjourney-style actions: Remix (modal), Upscale, Vary, Zoom Out and Pan on a posted image.

Every action becomes a child job through the intake (bot/intake.py: the same checks, queue, caps and
records as /imagine) and starts through `ImagineBot.start_job` (progress and delivery); its source image
and mask are stored in the child's own folder.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot.bot import reply_ephemeral, requester_of
from bot.intake import ActionRequest, Refusal
from bot.store import JobRecord
from bot.ui import ACTION_BUTTONS, TILE_ACTIONS

if TYPE_CHECKING:
    from bot.bot import ImagineBot

log = logging.getLogger(__name__)

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

    async def cog_load(self) -> None:
        self.bot.register_job_buttons(ACTION_BUTTONS, self.on_job_button)

    async def cog_unload(self) -> None:
        self.bot.unregister_job_buttons(ACTION_BUTTONS)

    async def on_job_button(
        self, interaction: discord.Interaction[Any], code: str, job_id: str, tile: int | None
    ) -> None:
        """A button of this cog was pressed: Remix opens its form, the others start a job."""
        who = requester_of(interaction)
        if code in ("rmx", "rmt"):
            if code == "rmt" and tile is None:
                await reply_ephemeral(interaction, "That button has no image number.")
                return
            job = await self.bot.intake.find(who, job_id, "remix", tile if code == "rmt" else None)
            if isinstance(job, Refusal):
                await reply_ephemeral(interaction, job.message)
                return
            # The form's submit goes through the intake again: it decides, not the press.
            await interaction.response.send_modal(RemixModal(self, job, tile if code == "rmt" else None))
            return
        admitted = await self.bot.intake.action(who, ActionRequest(job_id, TILE_ACTIONS[code], tile))
        if isinstance(admitted, Refusal):
            await reply_ephemeral(interaction, admitted.message)
            return
        await self.bot.start_job(interaction, admitted)

    async def on_remix(
        self,
        interaction: discord.Interaction[Any],
        job_id: str,
        tile: int | None,
        prompts: dict[int, str],
        negative: str | None,
    ) -> None:
        """The Remix form was submitted: same image seeds, the edited prompts (empty = keep the old one);
        one image: Vary (Strong) with the new prompt."""
        request = ActionRequest(
            job_id,
            "remix",
            tile,
            prompt=(prompts.get(tile) or None) if tile is not None else None,
            prompts=prompts,
            negative=negative,
        )
        admitted = await self.bot.intake.action(requester_of(interaction), request)
        if isinstance(admitted, Refusal):
            await reply_ephemeral(interaction, admitted.message)
            return
        await self.bot.start_job(interaction, admitted)


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(ActionsCog(bot))
