"""Issue 22: one /imagine that makes several jobs (`{a, b}` permutations, `--repeat N`).

`imagine_requests` turns the member's text and options into one `ImagineRequest` per permutation (each
permutation's inline flags parsed on its own); the intake (`Intake.imagine_many`) admits them as sibling
jobs. `start_batch` queues them from an interaction: the first follows the interaction's response like
any job, the others are posted in the channel (or the member's DMs, for a private job) when each is done.
Above CONFIRM_ABOVE jobs the member first presses **Queue N jobs** (`ConfirmBatchView`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import discord

from bot.engine.types import EngineError, InvalidRequest
from bot.flags import merge_flags, parse_inline_flags
from bot.intake import Batch, ImagineRequest, NotQueued
from bot.messages import queued_text
from bot.permutations import expand_permutations
from bot.ui import shown

if TYPE_CHECKING:
    from bot.bot import ImagineBot

log = logging.getLogger(__name__)

# Produces (source image, mask) bytes once the interaction is deferred (bot.bot.InputSource).
InputSource = Callable[[], Awaitable[tuple[bytes | None, bytes | None]]]
CONFIRM_SECONDS = 300.0


def imagine_requests(
    seed: str,
    options: dict[str, Any],
    labels: dict[str, str],
    *,
    max_jobs: int,
    model: str | None = None,
    loras: tuple[str, ...] = (),
    draft: bool = False,
    **fixed: Any,
) -> list[ImagineRequest]:
    """One request per permutation of `seed`; `options` by canonical name (bot.flags.merge_flags); `model`,
    `loras` and `draft` as the command's own options give them (joined with `--model`, `--lora`, `--draft`
    in the text); `fixed` the ImagineRequest fields no flag touches (guidance, width, height, with_image,
    strength)."""
    if not isinstance(seed, str):  # a client that sends another type: the same sentence as the flags parser's
        raise InvalidRequest(f"`seed` must be text, got {type(seed).__name__}")
    requests = []
    for text in expand_permutations(seed, limit=max_jobs):
        flags = parse_inline_flags(text)
        merged = merge_flags(flags, options, labels)
        if model and flags.model and model.strip().lower() != flags.model.lower():
            raise InvalidRequest(
                f"`--model {flags.model}` in the text and the model option ({model}) disagree: use one"
            )
        requests.append(
            ImagineRequest(
                seed_text=flags.text,
                count=merged.get("count"),
                steps=merged.get("steps"),
                negative=merged.get("negative"),
                aspect=merged.get("aspect"),
                ratio=merged["ratio"],
                job_seed=merged.get("seed"),
                expand=merged.get("expand"),
                chaos=flags.chaos,
                tiling=flags.tile,
                repeat=flags.repeat,
                mitigation=merged.get("mitigation"),
                model=(model or "").strip() or flags.model,
                loras=flags.loras + tuple(loras),
                draft=draft or flags.draft,
                **fixed,
            )
        )
    return requests


def once(inputs: InputSource | None) -> InputSource | None:
    """The upload is downloaded and fitted once for all the jobs of a batch (each stages its own copy)."""
    if inputs is None:
        return None
    result: asyncio.Future[tuple[bytes | None, bytes | None]] | None = None

    async def cached() -> tuple[bytes | None, bytes | None]:
        nonlocal result
        if result is None:
            result = asyncio.ensure_future(inputs())
        return await asyncio.shield(result)

    return cached


async def start_batch(
    bot: ImagineBot, interaction: discord.Interaction[Any], batch: Batch, inputs: InputSource | None
) -> None:
    """Queue every job of `batch` through the intake; the first follows `interaction`'s response."""
    inputs = once(inputs)
    first = await bot.start_job(interaction, batch.jobs[0], inputs=inputs)
    if first is None or len(batch.jobs) == 1:
        return
    lines = [f"`{first.id}` {shown(first.seed_text, 80)}"]
    for admitted in batch.jobs[1:]:
        try:
            init_image, mask_image = await inputs() if inputs is not None else (None, None)
            job = await bot.intake.submit(admitted, init_image=init_image, mask_image=mask_image)
        except (EngineError, NotQueued) as exc:
            lines.append(f"not queued: {shown(admitted.spec.seed_text, 60)} — {exc}")
            continue
        lines.append(f"`{job.id}` {shown(job.seed_text, 80)}")
    try:
        await bot.deliverer.update_positions()
    except Exception:  # the rows are queued and the worker will run them: say so below regardless
        log.exception("queue positions of group %s unknown; its jobs are queued", first.id)
    where = "in your DMs" if first.private else "here"
    summary = (
        f"Queued {len(batch.jobs)} jobs, one after another (`{first.id}` shows its progress above; "
        f"each other result is posted {where} when it is done):\n" + "\n".join(lines)
    )
    # The first followup after a "thinking" defer would replace it: the response shows the queue first.
    with contextlib.suppress(discord.HTTPException):
        await interaction.edit_original_response(content=queued_text(first.id, 1, None))
    with contextlib.suppress(discord.HTTPException):
        await interaction.followup.send(
            summary[:1900], ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )


class ConfirmBatchView(discord.ui.View):
    """**Queue N jobs** / **Cancel** under an ephemeral question; only its member sees it, once."""

    def __init__(self, bot: ImagineBot, batch: Batch, inputs: InputSource | None) -> None:
        super().__init__(timeout=CONFIRM_SECONDS)
        self.bot = bot
        self.batch = batch
        self.inputs = inputs
        self.answered = False
        confirm: discord.ui.Button[ConfirmBatchView] = discord.ui.Button(
            label=f"Queue {len(batch.jobs)} jobs", style=discord.ButtonStyle.primary, custom_id="ib-batch:yes"
        )
        cancel: discord.ui.Button[ConfirmBatchView] = discord.ui.Button(
            label="Cancel", style=discord.ButtonStyle.secondary, custom_id="ib-batch:no"
        )
        confirm.callback = self._confirm  # type: ignore[method-assign]
        cancel.callback = self._cancel  # type: ignore[method-assign]
        self.add_item(confirm)
        self.add_item(cancel)

    @staticmethod
    def question(batch: Batch) -> str:
        listed = "\n".join(f"• {shown(a.spec.seed_text, 80)}" for a in batch.jobs[:10])
        more = f"\n… and {len(batch.jobs) - 10} more" if len(batch.jobs) > 10 else ""
        return f"That makes {len(batch.jobs)} jobs:\n{listed}{more}\nQueue them all?"

    async def _confirm(self, interaction: discord.Interaction[Any]) -> None:
        if self._taken():
            await interaction.response.send_message("Already answered.", ephemeral=True)
            return
        try:
            await start_batch(self.bot, interaction, self.batch, self.inputs)
        except Exception as exc:
            await self.bot.on_interaction_error(interaction, exc)

    async def _cancel(self, interaction: discord.Interaction[Any]) -> None:
        if self._taken():
            await interaction.response.send_message("Already answered.", ephemeral=True)
            return
        await interaction.response.edit_message(content="Nothing was queued.", view=None)

    def _taken(self) -> bool:
        taken, self.answered = self.answered, True
        if not taken:
            self.stop()
        return taken
