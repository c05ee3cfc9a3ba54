"""/settings: a member's /imagine defaults and, for Manage Server, the server's settings (ephemeral panels)."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.bot import reply_ephemeral
from bot.engine.mitigation import MITIGATION_HELP, MITIGATIONS
from bot.intake import BOT_ACTOR
from bot.models.allowed import MAX_ALLOWED, allowed_names
from bot.preferences import (
    ASPECTS,
    POLICY_LABELS,
    GuildSettings,
    MemberSettings,
    SettingRefused,
    check_guild_value,
    check_job_value,
    describe,
    effective_parameters,
)
from bot.settings import Settings

if TYPE_CHECKING:
    from bot.bot import ImagineBot

log = logging.getLogger(__name__)

EMBED_COLOR = discord.Colour.from_rgb(88, 101, 242)
UNSET = "unset"
NOT_MANAGER = "Only members with the Manage Server permission can change this server's settings."
MEMBER_SELECTS = ("count", "aspect", "expand", "private")
SERVER_SELECTS = ("policy", "default_count", "default_aspect", "default_expand")


# -- panels ------------------------------------------------------------------------------------------------
def _source(mine: Any, server: Any) -> str:
    if mine is not None:
        return "yours"
    return "server" if server is not None else "bot"


def member_panel(
    settings: Settings, guild: GuildSettings, member: MemberSettings, user_id: int
) -> tuple[discord.Embed, discord.ui.View]:
    """The member's panel: effective defaults with where each comes from, selects, the modal, reset."""
    current = effective_parameters(settings, guild, member, {})
    embed = discord.Embed(title="Your /imagine defaults on this server", colour=EMBED_COLOR)
    for key, label in (
        ("count", "Images"),
        ("aspect", "Aspect"),
        ("steps", "Steps"),
        ("guidance", "Guidance"),
        ("expand", "Prompt expansion"),
        ("negative", "Negative prompt"),
        ("private", "Post privately"),
    ):
        value = getattr(current, key)
        shown = describe(value) if value not in ("", None) else "none"
        embed.add_field(
            name=label, value=f"{shown} ({_source(getattr(member, key), getattr(guild.defaults, key, None))})"
        )
    embed.set_footer(
        text="/imagine options still override these for one job. Reset returns to the server's defaults. "
        "Privately = the result is shown to you alone (or sent by DM), never in the channel."
    )
    view = discord.ui.View(timeout=None)
    count_options = [str(n) for n in range(1, settings.max_count + 1)]
    view.add_item(SettingsSelect("m", "count", user_id, count_options, member.count, "Images per job", row=0))
    view.add_item(SettingsSelect("m", "aspect", user_id, list(ASPECTS), member.aspect, "Aspect", row=1))
    view.add_item(
        SettingsSelect("m", "expand", user_id, ["on", "off"], member.expand, "Prompt expansion", row=2)
    )
    view.add_item(
        SettingsSelect("m", "private", user_id, ["on", "off"], member.private, "Post privately", row=3)
    )
    view.add_item(SettingsButton("m", "modal", user_id, label="Steps, guidance, negative…", row=4))
    view.add_item(
        SettingsButton("m", "reset", user_id, label="Reset", style=discord.ButtonStyle.danger, row=4)
    )
    view.add_item(SettingsButton("g", "open", user_id, label="Server settings", row=4))
    return embed, view


def server_panel(
    settings: Settings, guild: GuildSettings, changes: list[Any], user_id: int
) -> tuple[discord.Embed, discord.ui.View]:
    """The server's panel (Manage Server): channels, content policy, limits, defaults and the change log."""
    embed = discord.Embed(title="Server settings for /imagine", colour=EMBED_COLOR)
    embed.add_field(
        name="Channels", value=describe(guild.channels) if guild.channels else "every channel", inline=False
    )
    policy = POLICY_LABELS[guild.policy]
    if guild.policy == "channel" and not settings.allow_nsfw:
        policy += " (the bot's operator filters everywhere: IMAGINE_ALLOW_NSFW=false)"
    embed.add_field(name="Content policy", value=policy, inline=False)
    embed.add_field(
        name="Pending jobs per member",
        value=f"{guild.max_pending or settings.max_pending_per_user} (bot limit {settings.max_pending_per_user})",
    )
    embed.add_field(
        name="Cooldown",
        value=f"{(guild.cooldown if guild.cooldown is not None else settings.cooldown_seconds):g} s "
        f"(bot minimum {settings.cooldown_seconds:g} s)",
    )
    operator = effective_parameters(settings, GuildSettings(), MemberSettings(), {})
    defaults = []
    for key in ("count", "aspect", "steps", "guidance", "expand", "negative"):
        mine = getattr(guild.defaults, key)
        value = mine if mine is not None else getattr(operator, key)
        defaults.append(
            f"{key}: {describe(value) if value != '' else 'none'}" + ("" if mine is not None else " (bot)")
        )
    embed.add_field(name="Defaults for members", value="\n".join(defaults), inline=False)
    embed.add_field(
        name=f"Bias mitigation: {guild.mitigation}",
        value="\n".join(f"**{name}**: {text}" for name, text in MITIGATION_HELP.items())
        + "\nA job's own `--mitigation NAME` overrides it.",
        inline=False,
    )
    embed.add_field(
        name=f"Learn from choices: {describe(guild.learn_from_choices)}",
        value="Which image members here pick (U, Upscale, Vary, Zoom, Pan, Remix) may teach the prompt writer "
        "(`python -m bot train expander`); off keeps this server's picks out of training.",
        inline=False,
    )
    embed.add_field(
        name="LoRAs",
        value=(describe(guild.loras) if guild.loras else "every LoRA of the bot")
        + " (`/settings scope:loras`)",
        inline=False,
    )
    log_lines = [f"<t:{int(c.at)}:R> {_actor(c.actor_id)} {c.key}: {c.old} → {c.new}" for c in changes] or [
        "no changes yet"
    ]
    embed.add_field(name="Recent changes", value="\n".join(log_lines)[:1024], inline=False)
    view = discord.ui.View(timeout=None)
    view.add_item(ChannelsSelect(user_id, guild.channels))
    view.add_item(
        SettingsSelect("g", "policy", user_id, ["filtered", "channel"], guild.policy, "Content policy", row=1)
    )
    count_options = [str(n) for n in range(1, settings.max_count + 1)]
    view.add_item(
        SettingsSelect(
            "g", "default_count", user_id, count_options, guild.defaults.count, "Default images", row=2
        )
    )
    view.add_item(
        SettingsSelect(
            "g", "default_aspect", user_id, list(ASPECTS), guild.defaults.aspect, "Default aspect", row=3
        )
    )
    view.add_item(SettingsButton("g", "modal", user_id, label="Limits, steps, guidance, negative…", row=4))
    view.add_item(
        SettingsButton(
            "g",
            "default_expand",
            user_id,
            label=f"Default expansion: {describe(guild.defaults.expand) if guild.defaults.expand is not None else 'bot'}",
            row=4,
        )
    )
    view.add_item(
        SettingsButton("g", "mitigation", user_id, label=f"Bias mitigation: {guild.mitigation}", row=4)
    )
    # Several models (README → Models): the server's default model, cycled through the registry's.
    view.add_item(
        SettingsButton("g", "model", user_id, label=f"Default model: {guild.model or 'bot'}"[:80], row=4)
    )
    # Fine-tuning (README → Fine-tuning): may the expander learn from which tiles members here pick?
    view.add_item(
        SettingsButton(
            "g",
            "learn_from_choices",
            user_id,
            label=f"Learn from choices: {describe(guild.learn_from_choices)}",
            row=4,
        )
    )
    return embed, view


def loras_panel(
    names: list[str], listing: str, guild: GuildSettings, user_id: int
) -> tuple[discord.Embed, discord.ui.View]:
    """Which LoRAs members may use on this server (Manage Server): a multi-select, none picked = all."""
    embed = discord.Embed(title="LoRAs allowed on this server", colour=EMBED_COLOR)
    view = discord.ui.View(timeout=None)
    if not names:
        embed.description = listing
        return embed, view
    allowed = allowed_names(names, guild.loras)
    embed.description = (
        "Members may use " + (", ".join(f"`{n}`" for n in allowed) or "none of them") + "."
        if guild.loras
        else f"Members may use every LoRA of the bot ({len(names)})."
    ) + " Pick the ones to allow; none picked allows them all."
    if len(names) > MAX_ALLOWED:
        embed.set_footer(text=f"Only the first {MAX_ALLOWED} of {len(names)} LoRAs can be picked here.")
    view.add_item(LorasSelect(user_id, names[:MAX_ALLOWED], guild.loras))
    view.add_item(SettingsButton("g", "loras_all", user_id, label="Allow every LoRA", row=1))
    return embed, view


def _actor(actor_id: int) -> str:
    """Who changed a setting: a member, or the bot itself (a stale default clamped to a lowered limit)."""
    return "the bot (a lowered limit)" if actor_id == BOT_ACTOR else f"<@{actor_id}>"


# -- components ----------------------------------------------------------------------------------------------
def _option_value(value: Any) -> str:
    if value is None:
        return UNSET
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


class SettingsSelect(
    discord.ui.DynamicItem[discord.ui.Select[Any]],
    template=r"ib:ss:(?P<scope>[mg]):(?P<key>[a-z_]{1,20}):(?P<viewer>\d{1,20})$",
):
    """One select of a settings panel; the viewer id keeps others from using someone's panel."""

    def __init__(
        self,
        scope: str,
        key: str,
        viewer: int,
        choices: list[str] | None = None,
        current: Any = None,
        label: str = "",
        *,
        row: int | None = None,
    ) -> None:
        chosen = _option_value(current)
        options = [
            discord.SelectOption(label=f"{label}: {choice}", value=choice, default=choice == chosen)
            for choice in choices or []
        ]
        if scope == "m" or key != "policy":
            options.append(
                discord.SelectOption(
                    label=f"{label}: {'server' if scope == 'm' else 'bot'} default",
                    value=UNSET,
                    default=chosen == UNSET,
                )
            )
        super().__init__(
            discord.ui.Select(
                custom_id=f"ib:ss:{scope}:{key}:{viewer}",
                options=options or [discord.SelectOption(label="-", value=UNSET)],
                row=row,
            )
        )
        self.scope, self.key, self.viewer = scope, key, viewer

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> SettingsSelect:
        return cls(match["scope"], match["key"], int(match["viewer"]))

    async def callback(self, interaction: discord.Interaction[ImagineBot]) -> None:  # type: ignore[override]
        data: dict[str, Any] = dict(interaction.data or {})
        values = list(data.get("values") or [])
        raw = str(values[0]) if values else UNSET
        await _cog(interaction).on_change(interaction, self.scope, self.key, self.viewer, raw)


class ChannelsSelect(
    discord.ui.DynamicItem[discord.ui.ChannelSelect[Any]],
    template=r"ib:sc:channels:(?P<viewer>\d{1,20})$",
):
    """The server panel's allowed channels (none selected = every channel)."""

    def __init__(self, viewer: int, current: tuple[int, ...] = ()) -> None:
        super().__init__(
            discord.ui.ChannelSelect(
                custom_id=f"ib:sc:channels:{viewer}",
                channel_types=[discord.ChannelType.text],
                placeholder="Channels where /imagine may run (none = all)",
                min_values=0,
                max_values=25,
                default_values=[discord.Object(c, type=discord.abc.GuildChannel) for c in current],
                row=0,
            )
        )
        self.viewer = viewer

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ChannelsSelect:
        return cls(int(match["viewer"]))

    async def callback(self, interaction: discord.Interaction[ImagineBot]) -> None:  # type: ignore[override]
        data: dict[str, Any] = dict(interaction.data or {})
        values = [int(v) for v in data.get("values") or []]
        await _cog(interaction).on_change(interaction, "g", "channels", self.viewer, values)


class LorasSelect(
    discord.ui.DynamicItem[discord.ui.Select[Any]],
    template=r"ib:sl:loras:(?P<viewer>\d{1,20})$",
):
    """The LoRAs panel's multi-select: the LoRAs this server allows."""

    def __init__(self, viewer: int, names: list[str] | None = None, allowed: tuple[str, ...] = ()) -> None:
        chosen = {name.lower() for name in allowed}
        options = [discord.SelectOption(label=n, value=n, default=n.lower() in chosen) for n in names or []]
        super().__init__(
            discord.ui.Select(
                custom_id=f"ib:sl:loras:{viewer}",
                placeholder="LoRAs members may use here (none = all)",
                options=options or [discord.SelectOption(label="-", value=UNSET)],
                min_values=0,
                max_values=max(1, len(options)),
                row=0,
            )
        )
        self.viewer = viewer

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> LorasSelect:
        return cls(int(match["viewer"]))

    async def callback(self, interaction: discord.Interaction[ImagineBot]) -> None:  # type: ignore[override]
        data: dict[str, Any] = dict(interaction.data or {})
        values = [str(v) for v in data.get("values") or [] if v != UNSET]
        await _cog(interaction).on_loras(interaction, self.viewer, values)


class SettingsButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"ib:sb:(?P<scope>[mg]):(?P<key>[a-z_]{1,20}):(?P<viewer>\d{1,20})$",
):
    """A button of a settings panel: open a modal, reset, open the server panel, cycle a default."""

    def __init__(
        self,
        scope: str,
        key: str,
        viewer: int,
        *,
        label: str = "",
        style: discord.ButtonStyle = discord.ButtonStyle.secondary,
        row: int | None = None,
    ) -> None:
        super().__init__(
            discord.ui.Button(
                label=label or key, style=style, custom_id=f"ib:sb:{scope}:{key}:{viewer}", row=row
            )
        )
        self.scope, self.key, self.viewer = scope, key, viewer

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> SettingsButton:
        return cls(match["scope"], match["key"], int(match["viewer"]))

    async def callback(self, interaction: discord.Interaction[ImagineBot]) -> None:  # type: ignore[override]
        await _cog(interaction).on_button(interaction, self.scope, self.key, self.viewer)


class SettingsModal(discord.ui.Modal):
    """Typed values: steps, guidance, negative (and, for a server, the pending cap and the cooldown)."""

    def __init__(self, cog: SettingsCog, scope: str, values: dict[str, Any]) -> None:
        super().__init__(
            title="Server settings" if scope == "g" else "Your defaults", custom_id=f"ib:sm:{scope}"
        )
        self.cog = cog
        self.scope = scope
        self.inputs: dict[str, discord.ui.TextInput[Any]] = {}
        fields = [
            ("steps", "Steps (blank = default)"),
            ("guidance", "Guidance (blank = default)"),
            ("negative", "Negative prompt (blank = default)"),
        ]
        if scope == "g":
            fields = [
                ("max_pending", "Pending jobs per member (blank = bot's)"),
                ("cooldown", "Cooldown seconds (blank = bot's)"),
            ] + [(f"default_{key}", label) for key, label in fields]
        for key, label in fields:
            current = values.get(key)
            text_input: discord.ui.TextInput[Any] = discord.ui.TextInput(
                label=label,
                custom_id=key,
                required=False,
                default="" if current is None else describe(current),
                style=discord.TextStyle.paragraph if key.endswith("negative") else discord.TextStyle.short,
                max_length=500 if key.endswith("negative") else 20,
            )
            self.inputs[key] = text_input
            self.add_item(text_input)

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        values = {key: (text_input.value or "").strip() or None for key, text_input in self.inputs.items()}
        await self.cog.on_modal(interaction, self.scope, values)

    async def on_error(self, interaction: discord.Interaction[Any], error: Exception, /) -> None:  # type: ignore[override]
        await _report(interaction, error)


def _cog(interaction: discord.Interaction[Any]) -> SettingsCog:
    cog = interaction.client.get_cog(SettingsCog.__cog_name__)
    assert isinstance(cog, SettingsCog)
    return cog


async def _report(interaction: discord.Interaction[Any], error: Exception) -> None:
    """The component path's error reply: refusals shown, anything else logged and never shown."""
    if isinstance(error, SettingRefused):
        await reply_ephemeral(interaction, f"Not changed: {error}.")
        return
    log.error("settings interaction failed", exc_info=error)
    await reply_ephemeral(interaction, "something went wrong on our side; nothing was changed")


# -- the cog --------------------------------------------------------------------------------------------------
class SettingsCog(commands.Cog):
    """Member defaults and server settings for /imagine, stored in SQLite."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        self.settings = bot.settings

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(SettingsSelect, ChannelsSelect, SettingsButton, LorasSelect)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(SettingsSelect, ChannelsSelect, SettingsButton, LorasSelect)

    @app_commands.command(name="settings")
    @app_commands.guild_only()
    async def settings_command(
        self,
        interaction: discord.Interaction[ImagineBot],
        scope: Literal["mine", "server", "loras"] = "mine",
    ) -> None:
        """Your /imagine defaults here, or the server's settings (Manage Server); only you see the panel.

        Parameters
        ----------
        scope
            mine: your defaults; server: the server's channels, content policy, limits and defaults;
            loras: the LoRAs members may use here.
        """
        if scope in ("server", "loras"):
            if not _is_manager(interaction):
                await reply_ephemeral(interaction, NOT_MANAGER)
                return
            embed, view = await (
                self._server_panel(interaction) if scope == "server" else self._loras_panel(interaction)
            )
        else:
            embed, view = await self._member_panel(interaction)
        await interaction.response.send_message(embed=embed, view=view, ephemeral=True)

    @commands.Cog.listener()
    async def on_guild_remove(self, guild: discord.Guild) -> None:
        """The bot left (or was removed from) a server: its settings and its members' settings go."""
        await self.bot.preferences.forget_guild(guild.id)
        log.info("forgot the settings of guild %s", guild.id)

    # -- panels ---------------------------------------------------------------------------------------
    async def _member_panel(
        self, interaction: discord.Interaction[Any]
    ) -> tuple[discord.Embed, discord.ui.View]:
        guild_id = interaction.guild_id or 0
        guild = await self.bot.preferences.guild(guild_id)
        member = await self.bot.preferences.member(guild_id, interaction.user.id)
        return member_panel(self.settings, guild, member, interaction.user.id)

    async def _server_panel(
        self, interaction: discord.Interaction[Any]
    ) -> tuple[discord.Embed, discord.ui.View]:
        guild_id = interaction.guild_id or 0
        guild = await self.bot.preferences.guild(guild_id)
        changes = await self.bot.preferences.guild_changes(guild_id)
        return server_panel(self.settings, guild, changes, interaction.user.id)

    async def _loras_panel(
        self, interaction: discord.Interaction[Any]
    ) -> tuple[discord.Embed, discord.ui.View]:
        library = self.bot.intake.loras
        names = await asyncio.to_thread(library.names)
        guild = await self.bot.preferences.guild(interaction.guild_id or 0)
        return loras_panel(names, library.listing(), guild, interaction.user.id)

    async def on_loras(
        self, interaction: discord.Interaction[Any], viewer: int, names: list[str] | None
    ) -> None:
        """The LoRAs panel: the picked LoRAs (None or none picked: every LoRA) become the allowed ones."""
        try:
            if not await self._allowed(interaction, "g", viewer):
                return
            await self._set_guild(interaction, {"loras": names or ()})
            embed, view = await self._loras_panel(interaction)
            await interaction.response.edit_message(embed=embed, view=view)
        except Exception as exc:
            await _report(interaction, exc)

    async def _allowed(self, interaction: discord.Interaction[Any], scope: str, viewer: int) -> bool:
        """Only the panel's viewer may use it; the server scope re-checks Manage Server on every press."""
        if interaction.user.id != viewer:
            await reply_ephemeral(interaction, "That isn't your settings panel: run `/settings`.")
            return False
        if scope == "g" and not _is_manager(interaction):
            await reply_ephemeral(interaction, NOT_MANAGER)
            return False
        return True

    async def _refresh(self, interaction: discord.Interaction[Any], scope: str) -> None:
        embed, view = await (
            self._server_panel(interaction) if scope == "g" else self._member_panel(interaction)
        )
        await interaction.response.edit_message(embed=embed, view=view)

    # -- changes ---------------------------------------------------------------------------------------
    async def on_change(
        self, interaction: discord.Interaction[Any], scope: str, key: str, viewer: int, raw: Any
    ) -> None:
        """A select changed one value."""
        try:
            if not await self._allowed(interaction, scope, viewer):
                return
            value = _parse(key, raw)
            if scope == "m":
                if key not in ("count", "aspect", "expand", "private"):
                    raise SettingRefused(f"unknown setting `{key}`")
                await self._set_member(interaction, {key: value})
            else:
                await self._set_guild(interaction, {key: value})
            await self._refresh(interaction, scope)
        except Exception as exc:
            await _report(interaction, exc)

    async def on_button(
        self, interaction: discord.Interaction[Any], scope: str, key: str, viewer: int
    ) -> None:
        try:
            if not await self._allowed(interaction, scope, viewer):
                return
            guild_id = interaction.guild_id or 0
            if key == "open":
                embed, view = await self._server_panel(interaction)
                await interaction.response.send_message(embed=embed, view=view, ephemeral=True)
            elif key == "reset" and scope == "m":
                await self.bot.preferences.set_member(guild_id, interaction.user.id, MemberSettings())
                await self._refresh(interaction, scope)
            elif key == "modal":
                if scope == "g":
                    guild = await self.bot.preferences.guild(guild_id)
                    values: dict[str, Any] = {
                        "max_pending": guild.max_pending,
                        "cooldown": guild.cooldown,
                        **{
                            f"default_{k}": getattr(guild.defaults, k)
                            for k in ("steps", "guidance", "negative")
                        },
                    }
                else:
                    member = await self.bot.preferences.member(guild_id, interaction.user.id)
                    values = {k: getattr(member, k) for k in ("steps", "guidance", "negative")}
                await interaction.response.send_modal(SettingsModal(self, scope, values))
            elif key == "mitigation" and scope == "g":
                mode = (await self.bot.preferences.guild(guild_id)).mitigation
                await self._set_guild(
                    interaction, {key: MITIGATIONS[(MITIGATIONS.index(mode) + 1) % len(MITIGATIONS)]}
                )
                await self._refresh(interaction, scope)
            elif key == "model" and scope == "g":
                now = (await self.bot.preferences.guild(guild_id)).model
                names: list[str | None] = [None, *(e.name for e in self.bot.intake.registry.enabled)]
                chosen = names[(names.index(now) + 1) % len(names)] if now in names else names[1]
                await self._set_guild(interaction, {key: chosen})
                await self._refresh(interaction, scope)
            elif key == "loras_all" and scope == "g":
                await self.on_loras(interaction, viewer, None)
            elif key == "learn_from_choices" and scope == "g":
                learning = (await self.bot.preferences.guild(guild_id)).learn_from_choices
                await self._set_guild(interaction, {key: not learning})
                await self._refresh(interaction, scope)
            elif key == "default_expand" and scope == "g":
                current = (await self.bot.preferences.guild(guild_id)).defaults.expand
                following = {None: True, True: False, False: None}[current]
                await self._set_guild(interaction, {key: following})
                await self._refresh(interaction, scope)
            else:
                raise SettingRefused(f"unknown button `{key}`")
        except Exception as exc:
            await _report(interaction, exc)

    async def on_modal(self, interaction: discord.Interaction[Any], scope: str, raw: dict[str, Any]) -> None:
        """The modal's values: all checked first, then stored together (a refusal changes nothing)."""
        try:
            if scope == "g" and not _is_manager(interaction):
                await reply_ephemeral(interaction, NOT_MANAGER)
                return
            if scope == "g":
                await self._set_guild(interaction, raw)
            else:
                await self._set_member(interaction, raw)
            if interaction.message is not None:
                await self._refresh(interaction, scope)
            else:
                await reply_ephemeral(interaction, "Saved.")
        except Exception as exc:
            await _report(interaction, exc)

    async def _set_member(self, interaction: discord.Interaction[Any], raw: dict[str, Any]) -> None:
        checked = {key: check_job_value(self.settings, key, value) for key, value in raw.items()}
        guild_id = interaction.guild_id or 0
        member = await self.bot.preferences.member(guild_id, interaction.user.id)
        await self.bot.preferences.set_member(guild_id, interaction.user.id, replace(member, **checked))

    async def _set_guild(self, interaction: discord.Interaction[Any], raw: dict[str, Any]) -> None:
        checked = {key: check_guild_value(self.settings, key, value) for key, value in raw.items()}
        for key, value in checked.items():
            change = await self.bot.preferences.change_guild(
                interaction.guild_id or 0, interaction.user.id, key, value
            )
            if change is not None:
                log.info(
                    "guild %s: %s changed %s from %s to %s",
                    interaction.guild_id,
                    interaction.user.id,
                    key,
                    change.old,
                    change.new,
                )


def _parse(key: str, raw: Any) -> Any:
    """A select's string value as the setting's type (validated afterwards by the bounds checks)."""
    if raw == UNSET:
        return None
    if key in ("expand", "private", "default_expand"):
        return raw == "on"
    if key in ("count", "default_count"):
        return int(raw) if str(raw).isdigit() else raw
    return raw


def _is_manager(interaction: discord.Interaction[Any]) -> bool:
    return bool(getattr(interaction.permissions, "manage_guild", False))


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(SettingsCog(bot))
