"""/shorten and /describe (issue 22): which words of a prompt matter; prompts that would draw a picture."""

from __future__ import annotations

import asyncio
import logging
import re
from functools import partial
from typing import TYPE_CHECKING, Any

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot.batches import ConfirmBatchView, imagine_requests, start_batch
from bot.bot import reply_ephemeral, requester_of
from bot.engine.backend import BackendUnavailable
from bot.engine.shorten import ShortenResult
from bot.engine.types import InvalidRequest
from bot.flags import parse_inline_flags
from bot.intake import NOT_OWNER, Refusal
from bot.permutations import has_permutations
from bot.shortened import load_shortened, save_shortened
from bot.ui import shown
from bot.uploads import check_declared, fit_upload

if TYPE_CHECKING:
    from bot.bot import ImagineBot

log = logging.getLogger(__name__)

WEIGHT_BAR = 10


def shorten_text(result: ShortenResult) -> str:
    """The words by weight (a bar each), then the numbered shorter prompts."""
    lines = ["**Words by importance** (how far the prompt's CLIP embedding moves without each):"]
    for word, weight in result.ranked():
        bar = "█" * max(1 if weight > 0 else 0, round(weight * WEIGHT_BAR))
        lines.append(f"`{weight:4.2f}` {bar} {shown(word, 40)}")
    if result.prompts:
        lines.append("\n**Shorter prompts:**")
        lines.extend(f"**{n}.** {shown(prompt, 300)}" for n, prompt in enumerate(result.prompts, start=1))
    else:
        lines.append("\nThe prompt is too short to shorten.")
    text = "\n".join(lines)
    return text if len(text) <= 1900 else text[:1897] + "…"


class ShortenButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"ib-sh:(?P<answer>[0-9a-f]{10}):(?P<number>[1-9])$",
):
    """**Imagine N** under a /shorten answer: /imagine with shorter prompt N (the member's defaults apply).

    Persistent: the prompts are read from the stored answer (bot/shortened.py), so the button works after a
    restart; only the member who asked may press it.
    """

    def __init__(self, answer_id: str, number: int) -> None:
        super().__init__(
            discord.ui.Button(
                label=f"Imagine {number}",
                style=discord.ButtonStyle.primary,
                custom_id=f"ib-sh:{answer_id}:{number}",
            )
        )
        self.answer_id = answer_id
        self.number = number

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ShortenButton:
        return cls(match["answer"], int(match["number"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:  # type: ignore[override]
        bot = interaction.client
        try:
            stored = await load_shortened(bot.store, self.answer_id)
            if stored is None or not 1 <= self.number <= len(stored[1]):
                await reply_ephemeral(interaction, "That /shorten answer is gone; run /shorten again.")
                return
            owner, prompts = stored
            if owner != interaction.user.id:
                await reply_ephemeral(interaction, NOT_OWNER)
                return
            await imagine_prompts(bot, interaction, (prompts[self.number - 1],))
        except Exception as exc:
            await bot.on_interaction_error(interaction, exc)


def shorten_view(answer_id: str, count: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for number in range(1, count + 1):
        view.add_item(ShortenButton(answer_id, number))
    return view


async def imagine_prompts(
    bot: ImagineBot, interaction: discord.Interaction[Any], prompts: tuple[str, ...]
) -> None:
    """/imagine with each of `prompts` as typed (braces kept literal), through the one intake."""
    requests = []
    for prompt in prompts:
        literal = prompt.replace("\\", "\\\\").replace("{", "\\{").replace("}", "\\}")
        requests.extend(imagine_requests(literal, {}, {}, max_jobs=bot.settings.max_permutations))
    batch = await bot.intake.imagine_many(requester_of(interaction), requests)
    if isinstance(batch, Refusal):
        await reply_ephemeral(interaction, batch.message)
        return
    if batch.confirm:
        view = ConfirmBatchView(bot, batch, None)
        await interaction.response.send_message(view.question(batch), view=view, ephemeral=True)
        return
    await start_batch(bot, interaction, batch, None)


# Buttons under a /describe result (bot.describe_ui): Imagine N, Imagine all.
DESCRIBE_BUTTONS = ("di", "dia")


class PromptToolsCog(commands.Cog):
    """Prompt tools: /shorten, /describe."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.register_job_buttons(DESCRIBE_BUTTONS, self.on_describe_button)
        self.bot.add_dynamic_items(ShortenButton)

    async def cog_unload(self) -> None:
        self.bot.unregister_job_buttons(DESCRIBE_BUTTONS)
        self.bot.remove_dynamic_items(ShortenButton)

    @app_commands.command(name="describe")
    @app_commands.guild_only()
    async def describe(self, interaction: discord.Interaction[ImagineBot], image: discord.Attachment) -> None:
        """Get four prompts that would draw a picture, each with a button to imagine it.

        Parameters
        ----------
        image
            A PNG, JPEG or WebP picture.
        """
        check_declared(image.content_type, image.size, upload_limit=interaction.filesize_limit)
        admitted = await self.bot.intake.describe(requester_of(interaction), image.filename)
        if isinstance(admitted, Refusal):
            await reply_ephemeral(interaction, admitted.message)
            return
        spec = admitted.spec
        inputs = partial(self._uploaded_image, image, spec.width, spec.height)
        await self.bot.start_job(interaction, admitted, inputs=inputs)

    async def _uploaded_image(
        self, attachment: discord.Attachment, width: int, height: int
    ) -> tuple[bytes | None, bytes | None]:
        """The same checks and fitting as an /imagine image prompt (bot.uploads), off the loop."""
        settings = self.bot.settings
        try:
            data = await asyncio.wait_for(attachment.read(), settings.image_download_timeout)
        except TimeoutError:
            raise InvalidRequest("`image` took too long to download; try a smaller file") from None
        except (discord.HTTPException, aiohttp.ClientError) as exc:
            raise InvalidRequest("`image` could not be downloaded from Discord; try again") from exc
        fitted = await asyncio.to_thread(
            fit_upload, data, width=width, height=height, max_side=settings.max_image_side
        )
        return fitted, None

    async def on_describe_button(
        self, interaction: discord.Interaction[Any], code: str, job_id: str, tile: int | None
    ) -> None:
        """Imagine N / Imagine all under a /describe result: the owner's, through the one intake."""
        job = await self.bot.intake.find(requester_of(interaction), job_id, "describe-imagine", tile)
        if isinstance(job, Refusal):
            await reply_ephemeral(interaction, job.message)
            return
        if (job.render_action or job.action) != "describe":
            await reply_ephemeral(interaction, "That button belongs to a /describe result.")
            return
        prompts = job.prompts if code == "dia" or tile is None else (job.prompts[tile - 1],)
        await imagine_prompts(self.bot, interaction, prompts)

    @app_commands.command(name="shorten")
    @app_commands.guild_only()
    async def shorten(
        self, interaction: discord.Interaction[ImagineBot], prompt: app_commands.Range[str, 1, 1000]
    ) -> None:
        """Find which words of a prompt matter, and get shorter prompts to imagine.

        Parameters
        ----------
        prompt
            The prompt to analyse; inline --flags are left out of the analysis.
        """
        text = parse_inline_flags(prompt).text
        if has_permutations(text):
            raise InvalidRequest("/shorten takes one prompt: write it without `{…}` permutations")
        shorten = getattr(self.bot.backend, "shorten", None)
        if shorten is None:
            await reply_ephemeral(
                interaction, "/shorten needs the local GPU worker; this bot renders remotely."
            )
            return
        await interaction.response.defer(thinking=True, ephemeral=True)
        try:
            result: ShortenResult = await shorten(text)
        except BackendUnavailable as exc:  # the HTTP workers (issue 22): none can take it now
            log.warning("/shorten: %s", exc)
            await reply_ephemeral(
                interaction, "The GPU workers are offline right now: try /shorten again later."
            )
            return
        who = requester_of(interaction)
        answer_id = await save_shortened(
            self.bot.store, result.prompts, user_id=who.user_id, guild_id=who.guild_id
        )
        view = shorten_view(answer_id, len(result.prompts))
        await interaction.followup.send(shorten_text(result), view=view, ephemeral=True, wait=True)


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(PromptToolsCog(bot))
