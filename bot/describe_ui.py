"""The /describe result (issue 22): the source picture, four prompts, **Imagine N** and **Imagine all**."""

from __future__ import annotations

import io
from typing import Any

import discord

from bot.engine.images import EncodedImage
from bot.messages import EMBED_COLOR
from bot.store import JobRecord
from bot.ui import JobButton, shown


def describe_embed(job: JobRecord, *, filename: str) -> discord.Embed:
    """The four prompts, numbered, with the source picture as the thumbnail."""
    lines = [f"**{tile.index}.** {shown(tile.prompt, 900)}" for tile in job.tiles]
    embed = discord.Embed(title="Describe", description="\n".join(lines), colour=EMBED_COLOR)
    embed.add_field(name="Job", value=f"`{job.id}`")
    caption = job.expander.get("caption")
    if caption:
        embed.add_field(name="Caption", value=shown(str(caption), 1000))
    embed.set_thumbnail(url=f"attachment://{filename}")
    return embed


def describe_view(job: JobRecord) -> discord.ui.View:
    """Persistent buttons: they work after a restart (the prompts are read from the job's row)."""
    view = discord.ui.View(timeout=None)
    for tile in job.tiles:
        view.add_item(
            JobButton(
                "di", job.id, tile.index, label=f"Imagine {tile.index}", style=discord.ButtonStyle.primary
            )
        )
    view.add_item(JobButton("dia", job.id, label="Imagine all", style=discord.ButtonStyle.success))
    return view


def describe_payload(job: JobRecord, encoded: EncodedImage, *, buttons: bool = True) -> dict[str, Any]:
    """Message keywords for a finished /describe job (the deliverer's payload shape)."""
    filename = f"describe-{job.id}.{encoded.extension}"
    return {
        "content": None,
        "embed": describe_embed(job, filename=filename),
        "file": discord.File(io.BytesIO(encoded.data), filename),
        **({"view": describe_view(job)} if buttons else {}),
    }
