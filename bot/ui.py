"""Persistent components: every custom_id carries the action and job, resolved through SQLite after restarts."""

from __future__ import annotations

import re
from typing import Any, Protocol, cast

import discord

from bot.store import JobRecord


class ComponentRouter(Protocol):
    """Where the persistent components send their presses (the bot): ui takes this, not the bot class,
    so nothing here imports back up into bot.bot."""

    async def handle_job_button(
        self, interaction: discord.Interaction[Any], action: str, job_id: str, tile: int | None
    ) -> None: ...

    async def handle_history_page(
        self, interaction: discord.Interaction[Any], viewer: int, target: int, page: int
    ) -> None: ...

    async def handle_history_select(
        self, interaction: discord.Interaction[Any], viewer: int, job_id: str
    ) -> None: ...


def _router(interaction: discord.Interaction[Any]) -> ComponentRouter:
    return cast(ComponentRouter, interaction.client)


# Actions: u = post tile alone, v = variations of a tile, rr = re-render (new image seeds),
# rx = re-expand (new prompts), del = delete the message, post = re-post a saved grid, repro = exact re-render,
# rmx = remix a grid (modal), rmt = remix one image (modal), star = ⭐ an image for the presser;
# the tile actions below (single-image message).
TILE_ACTIONS = {
    "us": "upscale-subtle",
    "uc": "upscale-creative",
    "vs": "vary-subtle",
    "vg": "vary-strong",
    "z15": "zoom-1.5",
    "z2": "zoom-2",
    "pl": "pan-left",
    "pr": "pan-right",
    "pu": "pan-up",
    "pd": "pan-down",
}
ACTION_BUTTONS = ("rmx", "rmt", *TILE_ACTIONS)
JOB_ACTIONS: tuple[str, ...] = ("u", "v", "rr", "rx", "del", "post", "repro", "star", "enh", *ACTION_BUTTONS)
# Issue 22: under a /describe result, Imagine N (di, with N) and Imagine all (dia).
JOB_ACTIONS += ("dia", "di")
JOB_ID = r"[0-9a-f]{10}"


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=rf"ib:(?P<action>{'|'.join(JOB_ACTIONS)}):(?P<job>{JOB_ID})(?::(?P<tile>[1-9]))?$",
):
    """A button on a result or history message; works for messages sent before a restart."""

    def __init__(
        self,
        action: str,
        job_id: str,
        tile: int | None = None,
        *,
        label: str | None = None,
        emoji: str | None = None,
        style: discord.ButtonStyle = discord.ButtonStyle.secondary,
        row: int | None = None,
    ) -> None:
        custom_id = f"ib:{action}:{job_id}" + (f":{tile}" if tile is not None else "")
        super().__init__(
            discord.ui.Button(label=label, emoji=emoji, style=style, custom_id=custom_id, row=row)
        )
        self.action = action
        self.job_id = job_id
        self.tile = tile

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> JobButton:
        tile = match["tile"]
        return cls(match["action"], match["job"], int(tile) if tile else None)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:  # type: ignore[override]
        await _router(interaction).handle_job_button(interaction, self.action, self.job_id, self.tile)


class HistoryPageButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"ib:hp:(?P<viewer>\d{1,20}):(?P<target>\d{1,20}):(?P<page>\d{1,6})$",
):
    """Previous/Next on a /history page; only the viewer who opened it may page it."""

    def __init__(
        self, viewer: int, target: int, page: int, *, label: str = "", disabled: bool = False
    ) -> None:
        super().__init__(
            discord.ui.Button(
                label=label, custom_id=f"ib:hp:{viewer}:{target}:{page}", disabled=disabled, row=1
            )
        )
        self.viewer = viewer
        self.target = target
        self.page = page

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> HistoryPageButton:
        return cls(int(match["viewer"]), int(match["target"]), int(match["page"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:  # type: ignore[override]
        await _router(interaction).handle_history_page(interaction, self.viewer, self.target, self.page)


class HistorySelect(
    discord.ui.DynamicItem[discord.ui.Select[Any]],
    template=r"ib:hs:(?P<viewer>\d{1,20})$",
):
    """A menu on a /history page that opens one job."""

    def __init__(self, viewer: int, jobs: list[JobRecord] | None = None) -> None:
        options = [
            discord.SelectOption(
                label=clip(job.seed_text, 90) or job.id, value=job.id, description=f"{job.id} · {job.status}"
            )
            for job in (jobs or [])
        ] or [discord.SelectOption(label="no jobs", value="none")]
        super().__init__(
            discord.ui.Select(custom_id=f"ib:hs:{viewer}", placeholder="Open a job…", options=options, row=0)
        )
        self.viewer = viewer

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> HistorySelect:
        return cls(int(match["viewer"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:  # type: ignore[override]
        data: dict[str, Any] = dict(interaction.data or {})
        values = list(data.get("values") or [])
        await _router(interaction).handle_history_select(
            interaction, self.viewer, str(values[0]) if values else ""
        )


_ROW_WIDTH = 5


def result_view(job: JobRecord) -> discord.ui.View:
    """U1…Un, V1…Vn, 🔄 ✨ 🗑 under a finished grid."""
    view = discord.ui.View(timeout=None)
    row = 0
    # Discord allows 5 buttons a row and 5 rows: up to 9 images wrap U and V over two rows each.
    rows = [("u", "U"), ("v", "V")]
    if job.render.get("model_kind") == "sd-turbo":
        # A Draft grid: Enhance each image (README → Draft); with more than 5 images E takes V's rows.
        rows = [("u", "U"), ("enh", "E")] if len(job.tiles) > _ROW_WIDTH else [*rows, ("enh", "E")]
    for code, prefix in rows:
        for start in range(0, len(job.tiles), _ROW_WIDTH):
            for tile in job.tiles[start : start + _ROW_WIDTH]:
                label = f"Enhance {tile.index}" if code == "enh" else f"{prefix}{tile.index}"
                view.add_item(JobButton(code, job.id, tile.index, label=label, row=row))
            row += 1
    view.add_item(JobButton("rr", job.id, emoji="🔄", style=discord.ButtonStyle.primary, row=row))
    view.add_item(JobButton("rx", job.id, emoji="✨", style=discord.ButtonStyle.primary, row=row))
    view.add_item(JobButton("rmx", job.id, label="Remix", emoji="✏️", row=row))
    view.add_item(JobButton("del", job.id, emoji="🗑", style=discord.ButtonStyle.danger, row=row))
    return view


def tile_view(job_id: str, tile: int, *, draft: bool = False) -> discord.ui.View:
    """Upscale, Vary, Zoom Out, Pan and Remix under one image posted by a U button (3 rows of ≤ 5); Enhance
    too when it is a Draft image (README → Draft)."""
    view = discord.ui.View(timeout=None)
    primary = discord.ButtonStyle.primary
    for code, label in (
        ("us", "Upscale (Subtle)"),
        ("uc", "Upscale (Creative)"),
        ("vs", "Vary (Subtle)"),
        ("vg", "Vary (Strong)"),
    ):
        view.add_item(JobButton(code, job_id, tile, label=label, style=primary, row=0))
    view.add_item(JobButton("rmt", job_id, tile, label="Remix", emoji="✏️", row=0))
    view.add_item(JobButton("z15", job_id, tile, label="Zoom Out 1.5x", row=1))
    view.add_item(JobButton("z2", job_id, tile, label="Zoom Out 2x", row=1))
    # ⭐ stars the image for the presser (the gallery's `liked` filter; kept as a preference signal).
    view.add_item(JobButton("star", job_id, tile, label="Star", emoji="⭐", row=1))
    if draft:
        view.add_item(JobButton("enh", job_id, tile, label="Enhance", style=primary, row=1))
    for code, arrow in (("pl", "⬅️"), ("pr", "➡️"), ("pu", "⬆️"), ("pd", "⬇️")):
        view.add_item(JobButton(code, job_id, tile, emoji=arrow, row=2))
    return view


def history_job_view(job: JobRecord) -> discord.ui.View:
    """ "Post here" and "Reproduce" under one job of /history."""
    view = discord.ui.View(timeout=None)
    if job.status == "done":
        view.add_item(JobButton("post", job.id, label="Post here", style=discord.ButtonStyle.primary))
        view.add_item(JobButton("repro", job.id, label="Reproduce"))
    return view


def history_page_view(
    viewer: int, target: int, page: int, pages: int, jobs: list[JobRecord]
) -> discord.ui.View:
    """Select menu + Previous/Next for a /history page."""
    view = discord.ui.View(timeout=None)
    if jobs:
        view.add_item(HistorySelect(viewer, jobs))
    view.add_item(HistoryPageButton(viewer, target, max(page - 1, 0), label="Previous", disabled=page <= 0))
    view.add_item(HistoryPageButton(viewer, target, page + 1, label="Next", disabled=page + 1 >= pages))
    return view


def clip(text: str, limit: int) -> str:
    """One line of at most `limit` characters (an ellipsis marks a cut)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# Every character Discord's markdown gives a meaning to inside a line (masked links need `[`/`]`;
# `<` starts mentions, channels, emojis and timestamps). A backslash before punctuation renders as the
# punctuation itself, so escaping more than needed never shows.
_MARKDOWN = re.compile(r"[\\`*_~|\[\]<>#]")
_LEADING_BULLET = re.compile(r"^([-+])(?=\s)")
_LEADING_NUMBER = re.compile(r"^(\d+)\.(?=\s)")


def shown(text: str, limit: int) -> str:
    """Member-typed text for a message or embed: one line, markdown and mentions inert, within `limit`."""
    line = " ".join(text.split())
    escaped = _MARKDOWN.sub(lambda m: "\\" + m[0], line)
    escaped = _LEADING_NUMBER.sub(r"\1\\.", _LEADING_BULLET.sub(r"\\\1", escaped))
    escaped = discord.utils.escape_mentions(escaped)
    if len(escaped) <= limit:
        return escaped
    cut = escaped[: limit - 1]
    # Never end on half an escape: a lone trailing backslash would escape the ellipsis.
    trailing = len(cut) - len(cut.rstrip("\\"))
    if trailing % 2:
        cut = cut[:-1]
    return cut + "…"
