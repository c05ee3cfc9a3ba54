"""/history (ephemeral pages, one job in detail) and /forget."""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands
from PIL import Image

from bot import policy
from bot.bot import reply_ephemeral, requester_of
from bot.forgetting import forget_member
from bot.messages import history_page_embed, job_detail_embed
from bot.store import JobRecord
from bot.ui import history_job_view, history_page_view

if TYPE_CHECKING:
    from bot.bot import ImagineBot

log = logging.getLogger(__name__)

PAGE_SIZE = 10
THUMBNAIL_SIDE = 256
NOT_FOUND = "No job `{job_id}` in your history."


class HistoryCog(commands.Cog):
    """Browsing, re-posting and forgetting past jobs."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name="history")
    @app_commands.guild_only()
    async def history(
        self,
        interaction: discord.Interaction[ImagineBot],
        job: str | None = None,
        user: discord.Member | discord.User | None = None,
        page: app_commands.Range[int, 1, 100000] = 1,
    ) -> None:
        """Your past images in this server, newest first (only you see this).

        Parameters
        ----------
        job
            Open one job by its id: prompts, seeds, and buttons to re-post or reproduce it.
        user
            Another member's history (needs the Manage Server permission).
        page
            Which page of 10 to show.
        """
        await interaction.response.defer(ephemeral=True, thinking=True)
        if isinstance(page, bool) or not isinstance(page, int):
            # Discord sends an integer; a forged interaction may not (discord.py does not re-check).
            await interaction.followup.send("`page` must be a whole number.", ephemeral=True)
            return
        if job is not None:
            await self._send_job(interaction, job.strip())
            return
        target = user.id if user is not None else interaction.user.id
        if target != interaction.user.id and not requester_of(interaction).manages_server:
            await interaction.followup.send(
                "Only members with Manage Server can see someone else's history.", ephemeral=True
            )
            return
        embed, view = await self._page(interaction, interaction.user.id, target, page - 1)
        await interaction.followup.send(embed=embed, view=view, ephemeral=True)

    async def _page(
        self, interaction: discord.Interaction[Any], viewer: int, target: int, page: int
    ) -> tuple[discord.Embed, discord.ui.View]:
        store = self.bot.store
        total = await store.count_jobs(user_id=target, guild_id=interaction.guild_id)
        pages = max(1, -(-total // PAGE_SIZE))
        page = min(max(page, 0), pages - 1)
        jobs = await store.list_jobs(
            user_id=target, guild_id=interaction.guild_id, limit=PAGE_SIZE, offset=page * PAGE_SIZE
        )
        whose = "you" if target == viewer else f"<@{target}>"
        embed = history_page_embed(
            jobs, page=page, pages=pages, total=total, whose=whose, web_url=self.bot.settings.web_url
        )
        return embed, history_page_view(viewer, target, page, pages, jobs)

    async def _visible_job(self, interaction: discord.Interaction[Any], job_id: str) -> JobRecord | None:
        """The job if the caller may see it: their own, or any in this server with Manage Server."""
        job = await self.bot.store.get_job(job_id)
        if job is None or job.guild_id != interaction.guild_id:
            return None
        manages_server = requester_of(interaction).manages_server
        if not policy.may_view(job, viewer_id=interaction.user.id, manages_server=manages_server):
            return None
        return job

    async def _send_job(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        job = await self._visible_job(interaction, job_id)
        if job is None:
            await interaction.followup.send(NOT_FOUND.format(job_id=job_id[:40]), ephemeral=True)
            return
        filtered_here = await self.bot.intake.filtered_for(requester_of(interaction))
        thumbnail = None
        if policy.thumbnail_allowed(job, filtered_here=filtered_here):
            thumbnail = await asyncio.to_thread(_thumbnail, job.grid_path)
        kwargs: dict[str, Any] = {}
        filename = None
        if thumbnail is not None:
            filename = f"{job.id}-thumb.jpg"
            kwargs["file"] = discord.File(io.BytesIO(thumbnail), filename)
        await interaction.followup.send(
            embed=job_detail_embed(job, thumbnail=filename, web_url=self.bot.settings.web_url),
            view=history_job_view(job),
            ephemeral=True,
            **kwargs,
        )

    async def on_page(
        self, interaction: discord.Interaction[Any], viewer: int, target: int, page: int
    ) -> None:
        """Previous/Next: only the viewer may page; permission re-checked for other users' history."""
        if interaction.user.id != viewer:
            await reply_ephemeral(interaction, "That isn't your history page.")
            return
        if target != viewer and not requester_of(interaction).manages_server:
            await reply_ephemeral(
                interaction, "Only members with Manage Server can see someone else's history."
            )
            return
        embed, view = await self._page(interaction, viewer, target, page)
        await interaction.response.edit_message(embed=embed, view=view)

    async def on_select(self, interaction: discord.Interaction[Any], viewer: int, job_id: str) -> None:
        """The select menu on a page opens one job."""
        if interaction.user.id != viewer:
            await reply_ephemeral(interaction, "That isn't your history page.")
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        await self._send_job(interaction, job_id)

    @app_commands.command(name="forget")
    @app_commands.guild_only()
    async def forget(self, interaction: discord.Interaction[ImagineBot], confirm: bool) -> None:
        """Delete your finished jobs in this server, their image files and your /settings here.

        Parameters
        ----------
        confirm
            Set to True to really delete them; this cannot be undone.
        """
        if not confirm:
            await reply_ephemeral(
                interaction, "Nothing deleted. Run `/forget confirm:True` to delete your history here."
            )
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        forgotten = await forget_member(
            runner=self.bot.runner,
            store=self.bot.store,
            preferences=self.bot.preferences,
            images_dir=self.bot.settings.images_dir,
            user_id=interaction.user.id,
            guild_id=interaction.guild_id or 0,
        )
        parts = [f"Deleted {forgotten.jobs} job(s) and their images"]
        if forgotten.cancelled:
            parts.append(f"after cancelling {forgotten.cancelled} waiting or running job(s)")
        text = " ".join(parts)
        if forgotten.copies:
            text += f", {forgotten.copies} copy(ies) others made of your pictures"
        if forgotten.had_settings:
            text += " and your /settings here"
        if forgotten.log_rows:
            text += f"; your {forgotten.log_rows} change(s) in the server's settings log are gone too"
        await interaction.followup.send(text + ".", ephemeral=True)


def _thumbnail(grid_path: str | None) -> bytes | None:
    if not grid_path or not Path(grid_path).is_file():
        return None
    with Image.open(grid_path) as opened:
        thumbnail = opened.convert("RGB")
    thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    thumbnail.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(HistoryCog(bot))
