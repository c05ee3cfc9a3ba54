"""Text and embeds the bot shows: results, failures, queue, history. Within Discord's size limits."""

from __future__ import annotations

from datetime import UTC, datetime

import discord

from bot.engine.mitigation import describe_mitigation
from bot.store import JobRecord
from bot.ui import clip, shown

EMBED_COLOR = discord.Colour.from_rgb(88, 101, 242)
FAILED_COLOR = discord.Colour.from_rgb(237, 66, 69)

ACTION_TITLES = {
    "imagine": "",
    "rerender": "🔄 re-render of ",
    "reexpand": "✨ new prompts for ",
    "variation": "variations of ",
    "reproduce": "reproduction of ",
    "rerun": "re-run of ",
    "image": "🖼️ ",
    "remix": "✏️ remix of ",
    "upscale-subtle": "upscale (subtle) of ",
    "upscale-creative": "upscale (creative) of ",
    "vary-subtle": "vary (subtle) of ",
    "vary-strong": "vary (strong) of ",
    "zoom-1.5": "zoom out 1.5x of ",
    "zoom-2": "zoom out 2x of ",
    "pan-left": "⬅️ pan of ",
    "pan-right": "➡️ pan of ",
    "pan-up": "⬆️ pan of ",
    "pan-down": "⬇️ pan of ",
}

_REASONS = {
    "interrupted": "the bot restarted while this job was running",
    "cancelled by its owner": "cancelled",
}


def plain_reason(job: JobRecord) -> str:
    """The user-facing reason a job did not finish."""
    reason = job.reason or job.status
    return _REASONS.get(reason, reason)


SPOILER_PREFIX = "SPOILER_"
DEFAULT_LABELS = {
    "count": "count",
    "aspect": "aspect",
    "steps": "steps",
    "guidance": "guidance",
    "expand": "expansion",
    "negative": "negative prompt",
    "private": "post privately",
}


def flagged_count(job: JobRecord) -> int:
    """Tiles the image filter flagged (and blurred)."""
    return sum(1 for tile in job.tiles if tile.nsfw)


def all_tiles_flagged(job: JobRecord) -> bool:
    """Every tile was flagged: the result says so instead of posting blurs."""
    return bool(job.tiles) and flagged_count(job) == len(job.tiles)


def all_flagged_text(job: JobRecord) -> str:
    """The result of a job whose every image the filter flagged (recognised by `is_result_message`)."""
    return (
        f"Job `{job.id}` ({shown(job.seed_text, 80)}): the content filter flagged every image, so none is "
        "shown. Try a different text."
    )


def result_filename(job: JobRecord, extension: str, tile: int | None = None) -> str:
    """The upload name: `SPOILER_` when the grid (or the one tile) holds a flagged image."""
    flagged = job.tiles[tile - 1].nsfw if tile is not None else flagged_count(job) > 0
    name = f"{job.id}-{tile}.{extension}" if tile is not None else f"{job.id}.{extension}"
    return SPOILER_PREFIX + name if flagged else name


def job_page_url(web_url: str | None, job_id: str) -> str | None:
    """The job's page in the web gallery, when IMAGINE_WEB_URL is set."""
    return f"{web_url.rstrip('/')}/job/{job_id}" if web_url else None


def result_embed(job: JobRecord, *, filename: str, web_url: str | None = None) -> discord.Embed:
    """Numbered prompts, job id, seed and main parameters, with the grid as the embed image; the title links
    to the job's page in the web gallery when IMAGINE_WEB_URL is set.

    A spoiler file is not shown inside the embed (Discord would show it unblurred there): it is attached
    below it, and the embed says why.
    """
    prefix = ACTION_TITLES.get(job.action, "")
    title = prefix + shown(job.seed_text, 256 - len(prefix))
    lines = []
    budget = 3900 // max(1, len(job.tiles))
    for tile in job.tiles:
        flag = " ⚠️ filtered" if tile.nsfw else ""
        lines.append(f"**{tile.index}.** {shown(tile.prompt, budget)}{flag}")
    embed = discord.Embed(
        title=title, description="\n".join(lines), colour=EMBED_COLOR, url=job_page_url(web_url, job.id)
    )
    embed.add_field(name="Job", value=f"`{job.id}`")
    embed.add_field(name="Seed", value=f"`{job.job_seed}`")
    embed.add_field(name="Size", value=f"{job.width}×{job.height}")
    embed.add_field(name="Steps", value=str(job.steps))
    embed.add_field(name="Guidance", value=f"{job.guidance:g}")
    if not job.expand and job.given_prompts is None:
        embed.add_field(name="Raw", value="yes (no expansion)")
    if job.chaos is not None:
        embed.add_field(
            name="Chaos", value=f"{job.chaos} (temperature {job.expander.get('temperature', '?')})"
        )
    if job.strength is not None and job.init_image is not None and job.mask_image is None:
        embed.add_field(name="Strength", value=f"{job.strength:g}")
    if job.negative:
        embed.add_field(name="Negative", value=shown(job.negative, 1000), inline=False)
    if job.mitigation:
        embed.add_field(name="Bias mitigation", value=describe_mitigation(job.mitigation))
    if job.parent_id:
        embed.add_field(
            name="From", value=f"`{job.parent_id}`" + (f" tile {job.source_tile}" if job.source_tile else "")
        )
    if job.from_defaults:
        embed.add_field(
            name="From your /settings",
            value=", ".join(DEFAULT_LABELS.get(key, key) for key in job.from_defaults),
            inline=False,
        )
    if filename.startswith(SPOILER_PREFIX):
        flagged = flagged_count(job)
        embed.add_field(
            name="Filtered",
            value=f"{flagged} of {len(job.tiles)} image(s) flagged by the content filter and blurred; "
            "the grid is attached as a spoiler.",
            inline=False,
        )
    else:
        embed.set_image(url=f"attachment://{filename}")
    if job.user_id:
        embed.set_footer(text="Reproduce exactly with /history job:" + job.id)
    return embed


def _fit_lines(lines: list[str], limit: int) -> str:
    """Whole lines joined by newlines, as many as fit in `limit` characters (never half an escape)."""
    kept: list[str] = []
    used = 0
    for line in lines:
        if used + len(line) + 1 > limit:
            kept.append("…")
            break
        kept.append(line)
        used += len(line) + 1
    return "\n".join(kept)


def failure_text(job: JobRecord) -> str:
    """One plain sentence: which job, and why it did not finish."""
    if job.status == "cancelled":
        return f"Job `{job.id}` ({shown(job.seed_text, 80)}) was cancelled."
    return f"Job `{job.id}` ({shown(job.seed_text, 80)}) failed: {plain_reason(job)}."


def progress_text(job_id: str, step: int, total: int) -> str:
    """Step x/y with a small bar."""
    filled = round(10 * step / max(total, 1))
    return f"Rendering `{job_id}` — step {step}/{total} `{'█' * filled}{'░' * (10 - filled)}`"


WORKERS_OFFLINE = "The GPU workers are offline right now: your job is saved and runs when they are back."


def queued_text(job_id: str, position: int | None, eta: float | None, *, workers_online: bool = True) -> str:
    """Position in the queue (None: unknown right now) and a rough wait (or that the GPU workers are offline)."""
    if position is None:
        return f"Queued `{job_id}` — it will run; its place in the queue is unknown right now."
    where = "next in line" if position <= 1 else f"position {position} in the queue"
    wait = f" (about {eta:.0f} s)" if eta is not None and workers_online else ""
    offline = "" if workers_online else f"\n{WORKERS_OFFLINE}"
    return f"Queued `{job_id}` — {where}{wait}.{offline}"


def history_line(job: JobRecord) -> str:
    """Time, seed text, status, tile count and id."""
    icon = {"done": "✅", "failed": "❌", "cancelled": "🚫", "queued": "⏳", "running": "🎨"}.get(
        job.status, "•"
    )
    undelivered = " · ⚠️ not delivered" if job.undelivered_reason else ""
    flagged = flagged_count(job)
    filtered = f" · ⚠️ {flagged} filtered" if flagged else ""
    return (
        f"{icon} <t:{int(job.created_at)}:R> **{shown(job.seed_text, 60)}** · {job.count} tile(s){filtered} · "
        f"`{job.id}`{undelivered}"
    )


def history_page_embed(
    jobs: list[JobRecord], *, page: int, pages: int, total: int, whose: str, web_url: str | None = None
) -> discord.Embed:
    """One page (10 jobs) of a user's history; each job links to its page in the web gallery when
    IMAGINE_WEB_URL is set."""
    embed = discord.Embed(title=f"History of {whose}", colour=EMBED_COLOR)
    lines = [
        history_line(job) + (f" · [open]({job_page_url(web_url, job.id)})" if web_url else "") for job in jobs
    ]
    embed.description = _fit_lines(lines, 4000) if jobs else "No jobs yet. Try `/imagine`."
    if web_url:
        embed.url = f"{web_url.rstrip('/')}/mine"
    embed.set_footer(text=f"Page {page + 1}/{max(pages, 1)} · {total} job(s)")
    return embed


def job_detail_embed(job: JobRecord, *, thumbnail: str | None, web_url: str | None = None) -> discord.Embed:
    """One job in full: prompts, parameters, seeds (the title links to its web gallery page when set)."""
    embed = discord.Embed(
        title=shown(job.seed_text, 256),
        colour=EMBED_COLOR if job.status == "done" else FAILED_COLOR,
        url=job_page_url(web_url, job.id),
    )
    lines = [
        f"**{t.index}.** seed `{t.image_seed}` — {shown(t.prompt, 700)}" + (" ⚠️ filtered" if t.nsfw else "")
        for t in job.tiles
    ]
    status = job.status + (f" ({plain_reason(job)})" if job.status in ("failed", "cancelled") else "")
    embed.description = _fit_lines([f"Status: {status}", *lines], 4000)
    embed.add_field(name="Job", value=f"`{job.id}`")
    embed.add_field(name="Seed", value=f"`{job.job_seed}`")
    embed.add_field(name="Size", value=f"{job.width}×{job.height}")
    embed.add_field(name="Steps", value=str(job.steps))
    embed.add_field(name="Guidance", value=f"{job.guidance:g}")
    embed.add_field(name="Expanded", value="yes" if job.expand else "no")
    if job.action != "imagine":
        source = (
            f" of `{job.parent_id}`" + (f" image {job.source_tile}" if job.source_tile else "")
            if job.parent_id
            else ""
        )
        embed.add_field(name="Action", value=clip(job.action + source, 1000))
    if job.chaos is not None:
        embed.add_field(name="Chaos", value=str(job.chaos))
    if job.negative:
        embed.add_field(name="Negative", value=shown(job.negative, 1000), inline=False)
    if job.undelivered_reason:
        embed.add_field(name="Not delivered", value=clip(job.undelivered_reason, 1000), inline=False)
    model = job.render.get("sd_model")
    if model:
        embed.add_field(
            name="Model", value=clip(f"{model} @ {job.render.get('sd_revision', '?')}", 1000), inline=False
        )
    if thumbnail:
        embed.set_thumbnail(url=f"attachment://{thumbnail}")
    embed.timestamp = datetime.fromtimestamp(job.created_at, tz=UTC)
    return embed
