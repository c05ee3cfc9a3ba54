"""/models and /loras: what the registry and the LoRA folder offer (ephemeral, paginated)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.bot import reply_ephemeral
from bot.models.allowed import allowed_names
from bot.models.registry import ModelRefused
from bot.ui import shown

if TYPE_CHECKING:
    from bot.bot import ImagineBot

log = logging.getLogger(__name__)

LORAS_PER_PAGE = 10
NONE_ALLOWED = "None of this bot's LoRAs is allowed on this server (its managers choose them in `/settings scope:loras`)."


class ModelsCog(commands.Cog):
    """The models and LoRAs members can pick in /imagine."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name="models")
    @app_commands.guild_only()
    async def models(self, interaction: discord.Interaction[ImagineBot]) -> None:
        """List the models /imagine can paint with (`model:` or `--model NAME`)."""
        registry = self.bot.intake.registry
        guild = await self.bot.preferences.guild(interaction.guild_id or 0)
        lines = []
        for entry in registry.enabled:
            marks = []
            if entry.name == registry.default:
                marks.append("bot default")
            if guild.model and entry.name.lower() == guild.model.lower():
                marks.append("this server's default")
            if entry.name == registry.draft:
                marks.append("`--draft`")
            mark = f" ({', '.join(marks)})" if marks else ""
            about = f" — {shown(entry.description, 100)}" if entry.description else ""
            lines.append(
                f"`{entry.name}`{mark}: {entry.kind}, {entry.width}×{entry.height}, {entry.steps} steps{about}"
            )
        await reply_ephemeral(interaction, "\n".join(lines))

    @app_commands.command(name="loras")
    @app_commands.guild_only()
    async def loras(
        self, interaction: discord.Interaction[ImagineBot], page: app_commands.Range[int, 1, 1000] = 1
    ) -> None:
        """List the LoRAs /imagine can add (`lora:` or `--lora NAME[:WEIGHT]`).

        Parameters
        ----------
        page
            Which page of the list (10 a page).
        """
        library = self.bot.intake.loras
        names = await asyncio.to_thread(library.names)
        if not names:
            await reply_ephemeral(interaction, library.listing())
            return
        allowed = (await self.bot.preferences.guild(interaction.guild_id or 0)).loras
        names = allowed_names(names, allowed)
        if not names:
            await reply_ephemeral(interaction, NONE_ALLOWED)
            return
        pages = (len(names) + LORAS_PER_PAGE - 1) // LORAS_PER_PAGE
        page = min(page, pages)
        here = " allowed on this server" if allowed else ""
        lines = [f"LoRAs{here}, page {page} of {pages} (`/loras page:N`):"]
        for name in names[(page - 1) * LORAS_PER_PAGE : page * LORAS_PER_PAGE]:
            try:
                info = await asyncio.to_thread(library.info, name)
            except ModelRefused as exc:
                lines.append(f"`{name}`: {exc}")
                continue
            parts = [f"for {info.base}" if info.base else "any SD base", f"weight {info.weight:g}"]
            if info.triggers:
                parts.append("triggers: " + ", ".join(shown(t, 40) for t in info.triggers[:5]))
            about = f" — {shown(info.description, 120)}" if info.description else ""
            lines.append(f"`{info.name}` ({'; '.join(parts)}){about}")
        await reply_ephemeral(interaction, "\n".join(lines))


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(ModelsCog(bot))
