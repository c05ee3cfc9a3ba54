"""The LoRAs a server allows: its managers pick a subset in `/settings scope:loras` (none picked = all).

Stored with the server's other settings (`GuildSettings.loras`, the guild_settings JSON). The intake refuses
a job with a LoRA the server does not allow before queueing; `/imagine lora:` autocomplete and `/loras` show
only the allowed ones there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from bot.engine.model_specs import LoraRef

#: a Discord select holds at most 25 options: the most a server can pick from the panel
MAX_ALLOWED = 25


def allowed_names(names: Iterable[str], allowed: Sequence[str]) -> list[str]:
    """The LoRA names a server may use, in `names`' order (an empty `allowed` allows them all)."""
    if not allowed:
        return list(names)
    wanted = {name.lower() for name in allowed}
    return [name for name in names if name.lower() in wanted]


def lora_refusal(loras: Iterable[LoraRef], allowed: Sequence[str], available: Sequence[str]) -> str | None:
    """One sentence naming the first LoRA the server does not allow and the ones it does; None: all fine."""
    if not allowed:
        return None
    wanted = {name.lower() for name in allowed}
    for ref in loras:
        if ref.name.lower() not in wanted:
            usable = allowed_names(available, allowed)
            listing = ", ".join(f"`{name}`" for name in usable) if usable else "none"
            return f"The LoRA `{ref.name}` is not allowed on this server; allowed here: {listing}."
    return None
