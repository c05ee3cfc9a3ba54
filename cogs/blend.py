"""/blend (issue 22): 2–5 pictures blended into one grid by SD 2.1 unCLIP, with an optional prompt."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot.blend import BlendRequest, parse_blend
from bot.bot import reply_ephemeral, requester_of
from bot.engine.blend import SOURCE_SIDE, pack_sheet
from bot.engine.types import InvalidRequest
from bot.intake import Refusal
from bot.uploads import check_declared, fit_upload

if TYPE_CHECKING:
    from bot.bot import ImagineBot


class BlendCog(commands.Cog):
    """/blend."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name="blend")
    @app_commands.guild_only()
    async def blend(
        self,
        interaction: discord.Interaction[ImagineBot],
        image1: discord.Attachment,
        image2: discord.Attachment,
        image3: discord.Attachment | None = None,
        image4: discord.Attachment | None = None,
        image5: discord.Attachment | None = None,
        prompt: app_commands.Range[str, 1, 1000] | None = None,
    ) -> None:
        """Blend 2 to 5 pictures into new ones (SD 2.1 unCLIP), optionally steered by a prompt.

        Parameters
        ----------
        image1
            A PNG, JPEG or WebP picture.
        image2
            A second picture.
        image3
            A third picture (optional).
        image4
            A fourth picture (optional).
        image5
            A fifth picture (optional).
        prompt
            Optional text, with --iw 1,0.5 (a weight per picture), --ar W:H, --no, --seed, --steps, --count.
        """
        attachments = [a for a in (image1, image2, image3, image4, image5) if a is not None]
        for number, attachment in enumerate(attachments, start=1):
            with _named(number):
                check_declared(
                    attachment.content_type, attachment.size, upload_limit=interaction.filesize_limit
                )
        request = parse_blend(prompt, len(attachments))
        admitted = await self.bot.intake.blend(requester_of(interaction), request)
        if isinstance(admitted, Refusal):
            await reply_ephemeral(interaction, admitted.message)
            return

        async def inputs() -> tuple[bytes | None, bytes | None]:
            return await self._sheet(attachments, request), None

        await self.bot.start_job(interaction, admitted, inputs=inputs)

    async def _sheet(self, attachments: list[discord.Attachment], request: BlendRequest) -> bytes:
        """Download, check and fit every picture as an image prompt's (bot.uploads), then pack the sheet."""
        settings = self.bot.settings
        fitted = []
        for number, attachment in enumerate(attachments, start=1):
            with _named(number):
                try:
                    data = await asyncio.wait_for(attachment.read(), settings.image_download_timeout)
                except TimeoutError:
                    raise InvalidRequest("`image` took too long to download; try a smaller file") from None
                except (discord.HTTPException, aiohttp.ClientError) as exc:
                    raise InvalidRequest("`image` could not be downloaded from Discord; try again") from exc
                fitted.append(
                    await asyncio.to_thread(
                        fit_upload,
                        data,
                        width=SOURCE_SIDE,
                        height=SOURCE_SIDE,
                        max_side=settings.max_image_side,
                    )
                )
        return await asyncio.to_thread(
            pack_sheet, fitted, request.weights, request.prompt, settings.blend_noise_level
        )


class _named:
    """Name the picture in an upload refusal: "`image2` is not a PNG…" rather than "`image` is …"."""

    def __init__(self, number: int) -> None:
        self.number = number

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, InvalidRequest) and "`image`" in exc.user_message:
            raise InvalidRequest(exc.user_message.replace("`image`", f"`image{self.number}`", 1)) from exc


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(BlendCog(bot))
