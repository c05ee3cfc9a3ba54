"""The one door every job comes in through: /imagine, every button, Remix, Reproduce and the CLI.

The intake takes plain data — who asks and where (`Requester`), and what (`ImagineRequest` or
`ActionRequest`) — never a Discord interaction or the bot. It applies, in this order: the server's channel
allow-list, the server's pending cap and cooldown, the member's and the server's stored defaults (a stored
value the operator's limits no longer allow is clamped and saved, and the member told once), the filter
decision for the channel the job lands in, the one "made without the filter" rule for actions that start
from a job's pictures (bot.policy), and the operator's limits (the runner's validation and queue caps).
It answers `Admitted` (the JobSpec, where its input images come from, notices for the member) or a
`Refusal` with the sentence to show. `submit` stages the input images and queues the row.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

from bot import policy
from bot.blend import BlendRequest, blend_child_refusal, blend_seed_text
from bot.child_jobs import TileSource, child_spec, tile_inputs
from bot.engine.mitigation import FairGuidance, mitigation_record
from bot.engine.model_specs import LoraRef
from bot.engine.types import EngineError, InvalidRequest
from bot.flags import size_for_ratio
from bot.models.allowed import lora_refusal
from bot.models.choice import (
    check_model_limits,
    choose_model,
    job_model_refusal,
    main_model,
    model_defaults,
)
from bot.models.registry import LoraLibrary, ModelRefused, ModelRegistry, blend_model, load_registry
from bot.preferences import (
    ASPECTS,
    EffectiveParameters,
    GuildSettings,
    JobDefaults,
    MemberSettings,
    PreferenceStore,
    SettingRefused,
    check_job_value,
    effective_parameters,
)
from bot.settings import Settings
from bot.store import HistoryStore, JobRecord, JobSpec, QueueRefused, new_job_id
from bot.uploads import discard_inputs, stage_inputs

log = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1
# The actions on a past job, by the name its record carries (the button codes live in bot.ui).
REPEAT_ACTIONS = ("rerender", "reexpand", "reproduce", "rerun")
TILE_ACTIONS = (
    "variation",
    "upscale-subtle",
    "upscale-creative",
    "vary-subtle",
    "vary-strong",
    "zoom-1.5",
    "zoom-2",
    "pan-left",
    "pan-right",
    "pan-up",
    "pan-down",
    "enhance",
)
ACTIONS = (*REPEAT_ACTIONS, "remix", *TILE_ACTIONS)
# The actor recorded in a server's change log when the bot itself clamps a stale default.
BOT_ACTOR = 0
NOT_OWNER = "Only the person who asked for these images can use their buttons."
GONE = "That job doesn't exist (any more)."
# Issue 22: one /imagine that makes more jobs than this asks the member to confirm first.
CONFIRM_ABOVE = 4


@dataclass(frozen=True)
class Requester:
    """Who asks and where. `user_id` None is the operator at the command line (no server, no limits)."""

    user_id: int | None
    guild_id: int | None = None
    channel_id: int | None = None
    #: the channel's age-restricted (NSFW) flag, as the entry point sees it now
    age_restricted: bool = False
    #: Manage Server / Manage Messages in this channel
    manages_server: bool = False
    manages_messages: bool = False


@dataclass(frozen=True)
class ImagineRequest:
    """A new job from text (and an optional picture). None = the member's, server's or bot's default."""

    seed_text: str
    count: int | None = None
    steps: int | None = None
    guidance: float | None = None
    negative: str | None = None
    aspect: str | None = None
    ratio: tuple[int, int] | None = None
    #: an exact size (the CLI's --width/--height); else the aspect or ratio decide
    width: int | None = None
    height: int | None = None
    job_seed: int | None = None
    expand: bool | None = None
    chaos: int | None = None
    with_image: bool = False
    strength: float | None = None
    #: a bias mitigation (`--mitigation`); None = the server's default (off at the command line)
    mitigation: str | None = None
    #: a registry model name (None: the server's default, else the bot's), LoRAs (`NAME[:WEIGHT]`), Draft
    model: str | None = None
    loras: tuple[str, ...] = ()
    draft: bool = False
    # issue 22: `--tile` (seamless tiling); `--repeat N` (N jobs with new seeds, see `imagine_many`)
    tiling: bool = False
    repeat: int | None = None


@dataclass(frozen=True)
class ActionRequest:
    """An action on a past job: one of `ACTIONS`, on image `tile` where it needs one.

    Remix of a grid takes `prompts` (image number → new prompt, empty = keep) and `negative`; Remix of
    one image takes `prompt`.
    """

    job_id: str
    action: str
    tile: int | None = None
    prompt: str | None = None
    prompts: dict[int, str] = field(default_factory=dict)
    negative: str | None = None


@dataclass(frozen=True)
class Admitted:
    """A job the intake let in: the row to write, its source, and what to tell the member."""

    spec: JobSpec
    source: TileSource | None = None
    notices: tuple[str, ...] = ()
    #: the server's own (tighter) caps, enforced again atomically when the row is written
    max_pending: int | None = None
    cooldown: float | None = None


@dataclass(frozen=True)
class Batch:
    """Issue 22: the sibling jobs of one /imagine (permutations, --repeat), each admitted on its own."""

    jobs: tuple[Admitted, ...]
    #: more than CONFIRM_ABOVE jobs: the member confirms with a button before any is queued
    confirm: bool = False


@dataclass(frozen=True)
class Refusal:
    """Why a job cannot start, as the sentence to show; `usage` marks a bad argument (CLI exit 2)."""

    message: str
    usage: bool = False


class NotQueued(Exception):
    """Staging or queueing failed after the checks passed (a lost race, a vanished file): the sentence."""


class Runner(Protocol):
    """What the intake needs of the job runner."""

    async def admission_refusal(self, spec: JobSpec) -> Exception | None: ...

    async def submit(
        self, spec: JobSpec, *, max_pending_per_user: int | None = None, cooldown_seconds: float | None = None
    ) -> JobRecord: ...


def size_for_aspect(aspect: str, width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """Map an aspect choice to a size with about the default's pixel count, multiples of 8, within the limit."""
    if aspect not in ASPECTS:
        # Discord offers only the choices, but a forged interaction can carry any string.
        raise InvalidRequest(f"`aspect` must be square, portrait or landscape, got {str(aspect)[:40]!r}")
    if aspect == "square":
        return width, height
    area = min(width * height, max_pixels)
    ratio = 3 / 4 if aspect == "portrait" else 4 / 3
    w = max(64, int(math.sqrt(area * ratio)) // 8 * 8)
    h = max(64, int(math.sqrt(area / ratio)) // 8 * 8)
    return w, h


class Intake:
    """Decides what every new job runs with, or why it cannot run (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        store: HistoryStore,
        *,
        preferences: PreferenceStore | None = None,
        runner: Runner | None = None,
        registry: ModelRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        #: the models (models.toml) and LoRAs (IMAGINE_LORA_DIR) jobs may ask for
        self.registry = registry if registry is not None else load_registry(settings)
        self.loras = LoraLibrary(settings.loras_path)
        self.preferences = preferences if preferences is not None else PreferenceStore(store)
        #: None at the command line before a backend exists: the CLI validates when it renders
        self.runner = runner

    # -- the doors -------------------------------------------------------------------------------------
    async def imagine(self, who: Requester, request: ImagineRequest) -> Admitted | Refusal:
        """A new job from text: /imagine, the CLI's `imagine`."""
        s = self.settings
        guild, member = await self._stored(who)
        refusal = await self._server_rules(who, guild)
        if refusal is not None:
            return refusal
        if request.strength is not None and not request.with_image:
            option = "`strength`" if who.user_id is not None else "`--strength`"
            image = "`image`" if who.user_id is not None else "`--image`"
            return Refusal(f"{option} only applies together with {image}", usage=True)
        guild, member, notices = await self._clamp_stale(who, guild, member)
        try:
            choice = choose_model(
                self.registry,
                self.loras,
                s,
                model=request.model,
                loras=request.loras,
                draft=request.draft,
                negative_given=bool(request.negative),
                server_default=guild.model,
                cli=who.user_id is None,
            )
        except ModelRefused as exc:
            return Refusal(str(exc), usage=True)
        refused = await self._lora_refusal(choice.loras, guild)
        if refused is not None:
            return Refusal(refused, usage=True)
        s = model_defaults(s, choice.entry)
        if choice.entry.is_draft_kind:
            # SD-Turbo: its own steps, guidance 0, no negative; stored defaults for other models don't apply.
            member = replace(member, steps=None, guidance=None, negative=None)
            guild = replace(guild, defaults=replace(guild.defaults, steps=None, guidance=None, negative=None))
        wanted = {
            "count": request.count,
            "steps": request.steps,
            "guidance": request.guidance,
            "negative": request.negative,
            "aspect": "square" if request.ratio is not None else request.aspect,
            "expand": request.expand,
        }
        p = effective_parameters(s, guild, member, wanted)
        try:
            width, height = self._size(request, p, s)
            check_model_limits(choice.entry, steps=p.steps, width=width, height=height)
            mitigation = self._mitigation(request.mitigation or guild.mitigation)
        except InvalidRequest as exc:
            return Refusal(exc.user_message, usage=True)
        except ModelRefused as exc:
            return Refusal(str(exc), usage=True)
        spec = JobSpec(
            seed_text=request.seed_text,
            count=p.count,
            steps=p.steps,
            guidance=p.guidance,
            width=width,
            height=height,
            job_seed=request.job_seed if request.job_seed is not None else secrets.randbelow(MAX_SEED + 1),
            negative=p.negative,
            expand=p.expand,
            safe_mode=self._filtered(who, guild),
            action="image" if request.with_image else "imagine",
            strength=(request.strength if request.strength is not None else s.image_strength)
            if request.with_image
            else None,
            chaos=request.chaos,
            user_id=who.user_id,
            guild_id=who.guild_id,
            channel_id=who.channel_id,
            private=p.private,
            from_defaults=p.from_member,
            mitigation=mitigation,
            model=choice.entry.name,
            loras=choice.loras,
            tiling=request.tiling,
        )
        return await self._admit(Admitted(spec, notices=notices, **self._caps(guild)))

    async def describe(self, who: Requester, filename: str) -> Admitted | Refusal:
        """Issue 22: /describe, a job of kind `describe` (prompts from a picture, no images) through the queue."""
        s = self.settings
        if s.caption_model is None:
            return Refusal("/describe is off on this bot: its operator has not set IMAGINE_CAPTION_MODEL.")
        guild, member = await self._stored(who)
        refusal = await self._server_rules(who, guild)
        if refusal is not None:
            return refusal
        wanted = dict.fromkeys(("count", "steps", "guidance", "negative", "aspect", "expand"))
        p = effective_parameters(s, guild, member, wanted)
        name = " ".join(filename.split())[:80] or "image"
        spec = JobSpec(
            seed_text=f"/describe {name}",
            count=1,
            steps=p.steps,
            guidance=p.guidance,
            width=s.width,
            height=s.height,
            job_seed=0,
            expand=False,
            safe_mode=self._filtered(who, guild),
            action="describe",
            user_id=who.user_id,
            guild_id=who.guild_id,
            channel_id=who.channel_id,
            private=p.private,
        )
        return await self._admit(Admitted(spec, **self._caps(guild)))

    async def blend(self, who: Requester, request: BlendRequest) -> Admitted | Refusal:
        """Issue 22: /blend, a job of kind `blend` (2–5 pictures through unCLIP) through the queue.

        The pictures and weights reach the engine in the job's blend sheet (bot.engine.blend), its source
        image, which the caller packs with `blend_noise_level` once the uploads are checked.
        """
        s = self.settings
        model = blend_model(s, self.registry)
        if model is None:
            return Refusal(
                "/blend is off on this bot: its operator has not set IMAGINE_BLEND_MODEL "
                "(or an `sd2-unclip` model in the models file)."
            )
        guild, member = await self._stored(who)
        refusal = await self._server_rules(who, guild)
        if refusal is not None:
            return refusal
        s = model_defaults(s, model[0])
        wanted = {
            "count": request.count,
            "steps": request.steps,
            "guidance": None,
            "negative": request.negative,
            "aspect": "square" if request.ratio is not None else None,
            "expand": False,
        }
        p = effective_parameters(s, guild, member, wanted)
        try:
            width, height = self._size(ImagineRequest("", ratio=request.ratio), p, s)
        except InvalidRequest as exc:
            return Refusal(exc.user_message, usage=True)
        spec = JobSpec(
            seed_text=blend_seed_text(request),
            count=p.count,
            steps=p.steps,
            guidance=p.guidance,
            width=width,
            height=height,
            job_seed=request.job_seed if request.job_seed is not None else secrets.randbelow(MAX_SEED + 1),
            negative=p.negative,
            expand=False,
            safe_mode=self._filtered(who, guild),
            action="blend",
            user_id=who.user_id,
            guild_id=who.guild_id,
            channel_id=who.channel_id,
            private=p.private,
            from_defaults=p.from_member,
        )
        return await self._admit(Admitted(spec, **self._caps(guild)))

    async def imagine_many(self, who: Requester, requests: Sequence[ImagineRequest]) -> Batch | Refusal:
        """Issue 22: the jobs of one /imagine with `{a, b}` permutations (one request each) and `--repeat N`.

        At most IMAGINE_MAX_PERMUTATIONS jobs; a member's pending cap must have room for all of them (no
        half-queued batch). Every job passes `imagine`'s rules; the jobs are siblings (`group_id` is the
        first one's id) and each is an ordinary row of the member's, so the fair queue serves them in turn
        with everyone else's. A repeat gets a new job seed (the given `--seed`, then one image count on
        for each repeat, so the repeats of a seeded job are reproducible too).
        """
        limit = self.settings.max_permutations
        total = sum(request.repeat or 1 for request in requests)
        if total > limit:
            return Refusal(
                f"That asks for {total} jobs; the limit is {limit} (IMAGINE_MAX_PERMUTATIONS).", usage=True
            )
        admitted: list[Admitted] = []
        for request in requests:
            for index in range(request.repeat or 1):
                seed = request.job_seed
                if index and seed is not None:
                    seed = (seed + index * max(1, request.count or self.settings.count)) % (MAX_SEED + 1)
                answer = await self.imagine(who, replace(request, job_seed=seed))
                if isinstance(answer, Refusal):
                    return answer
                admitted.append(answer)
        if len(admitted) > 1 and who.user_id is not None:
            refusal = await self._room_for(who, admitted)
            if refusal is not None:
                return refusal
        if len(admitted) > 1:
            group = new_job_id()
            ids = [group, *(new_job_id() for _ in admitted[1:])]
            admitted = [
                replace(a, spec=replace(a.spec, id=job_id, group_id=group))
                for a, job_id in zip(admitted, ids, strict=True)
            ]
        return Batch(tuple(admitted), confirm=len(admitted) > CONFIRM_ABOVE)

    async def _room_for(self, who: Requester, admitted: Sequence[Admitted]) -> Refusal | None:
        """The member's pending cap (the bot's, or the server's tighter one) must hold the whole batch."""
        caps = [self.settings.max_pending_per_user]
        if admitted[0].max_pending is not None:
            caps.append(admitted[0].max_pending)
        cap = min(caps)
        mine = sum(1 for job in await self.store.pending_jobs() if job.user_id == who.user_id)
        if mine + len(admitted) > cap:
            return Refusal(
                f"Can't start that: it is {len(admitted)} jobs and you have {mine} waiting "
                f"(the limit is {cap}); use fewer permutations or wait for your jobs to finish."
            )
        return None

    async def action(self, who: Requester, request: ActionRequest) -> Admitted | Refusal:
        """A new job from a past one: 🔄, ✨, V, Reproduce, Remix, Upscale, Vary, Zoom, Pan; and the CLI's."""
        if request.action not in ACTIONS:
            return Refusal(f"unknown action {request.action[:40]!r}", usage=True)
        job = await self.find(who, request.job_id, request.action, request.tile)
        if isinstance(job, Refusal):
            return job
        guild, _ = await self._stored(who)
        refusal = await self._server_rules(who, guild)
        if refusal is not None:
            return refusal
        # The place where the new job lands decides the filter, never the old row.
        safe_mode = self._filtered(who, guild) if who.user_id is not None else job.safe_mode
        if request.action == "enhance":
            if job.render.get("model_kind") != "sd-turbo":
                return Refusal("Enhance works on Draft images (made with `--draft`).", usage=True)
        else:
            exact = request.action in ("rerun", "reproduce")
            refused = job_model_refusal(self.registry, self.loras, job, exact=exact)
            if refused is not None:
                return Refusal(refused)
        try:
            spec, source = child_spec(
                self.settings,
                job,
                request.action,
                request.tile,
                owner=who.user_id,
                prompt=request.prompt,
                prompts=request.prompts,
                negative=request.negative,
                main_model=main_model(self.registry, guild.model) if request.action == "enhance" else None,
            )
            spec = self._owned(spec, who)
        except InvalidRequest as exc:
            # E.g. an upscale over IMAGINE_MAX_OUTPUT_PIXELS: nothing is queued, the member is told why.
            return Refusal(f"Can't start that: {exc.user_message}.")
        # Issue 22: a repeat of a /blend job renders through unCLIP: it needs /blend on (and, exact, the same model).
        refused = blend_child_refusal(
            self.settings, self.registry, job, spec, exact=request.action in ("rerun", "reproduce")
        )
        if refused is not None:
            return Refusal(refused)
        if source is not None or spec.init_image is not None:
            refused = policy.source_refusal(job, filtered_here=safe_mode)
            if refused is not None:
                return Refusal(refused)
        refused = await self._lora_refusal(spec.loras, guild)
        if refused is not None:
            return Refusal(refused)
        spec = replace(spec, safe_mode=safe_mode)
        if who.user_id is not None:
            spec = replace(spec, channel_id=who.channel_id)
        return await self._admit(Admitted(spec, source=source, **self._caps(guild)))

    async def find(
        self, who: Requester, job_id: str, action: str, tile: int | None = None
    ) -> JobRecord | Refusal:
        """The done job an action (or a post: `post`, `post-tile`) uses, if `who` may use it here."""
        job = await self.store.get_job(job_id.strip())
        if job is None or (who.user_id is not None and job.guild_id != who.guild_id):
            return Refusal(GONE)
        if not self._may_act(who, job, action):
            return Refusal(NOT_OWNER)
        if job.status != "done":
            return Refusal(f"Job `{job.id}` has no images ({job.status}).")
        if tile is None and (action in TILE_ACTIONS or action in ("post-tile", "star")):
            return Refusal("That button has no image number.", usage=True)
        if tile is not None and not 1 <= tile <= len(job.tiles):
            return Refusal(f"Job `{job.id}` has no image {tile}.", usage=True)
        return job

    async def submit(
        self, admitted: Admitted, *, init_image: bytes | None = None, mask_image: bytes | None = None
    ) -> JobRecord:
        """Stage the input images in the job's own folder and write the `queued` row (NotQueued: why not)."""
        images_dir = self.settings.images_dir
        try:
            if admitted.source is not None and init_image is None:
                init_image, mask_image = await asyncio.to_thread(tile_inputs, admitted.source)
            spec = await asyncio.to_thread(
                stage_inputs, images_dir, admitted.spec, init_image=init_image, mask_image=mask_image
            )
        except EngineError as exc:
            raise NotQueued(f"Can't start that: {exc.user_message}.") from exc
        assert self.runner is not None, "submit needs the runner"
        try:
            return await self.runner.submit(
                spec, max_pending_per_user=admitted.max_pending, cooldown_seconds=admitted.cooldown
            )
        except (QueueRefused, EngineError) as exc:
            await asyncio.to_thread(discard_inputs, images_dir, spec)
            message = getattr(exc, "user_message", None) or str(exc)
            raise NotQueued(f"Can't queue that: {message}.") from exc

    async def filtered_for(self, who: Requester) -> bool:
        """Whether what lands where `who` is (a post, a new job) is filtered now."""
        guild, _ = await self._stored(who)
        return self._filtered(who, guild)

    # -- rules -------------------------------------------------------------------------------------------
    async def _lora_refusal(self, loras: tuple[LoraRef, ...], guild: GuildSettings) -> str | None:
        """A LoRA the server does not allow (its managers pick them in /settings): one sentence."""
        if not loras or not guild.loras:
            return None
        return lora_refusal(loras, guild.loras, await asyncio.to_thread(self.loras.names))

    async def _stored(self, who: Requester) -> tuple[GuildSettings, MemberSettings]:
        if who.user_id is None or who.guild_id is None:
            return GuildSettings(), MemberSettings()
        guild = await self.preferences.guild(who.guild_id)
        member = await self.preferences.member(who.guild_id, who.user_id)
        return guild, member

    def _filtered(self, who: Requester, guild: GuildSettings) -> bool:
        if who.user_id is None:
            return True  # the command line renders filtered, as it always has
        return policy.filtered(
            guild.policy, age_restricted=who.age_restricted, allow_nsfw=self.settings.allow_nsfw
        )

    @staticmethod
    def _may_act(who: Requester, job: JobRecord, action: str) -> bool:
        """The owner may use every action; a server manager may also Reproduce and Post here (/history);
        anyone who sees a result that is not private may star (⭐) its images.

        Whether a post may land in the channel is bot.policy's answer (a private result: the owner only).
        """
        if who.user_id is None or job.user_id == who.user_id:
            return True
        if action == "star":
            return not job.private
        return action in ("reproduce", "post") and who.manages_server

    async def _server_rules(self, who: Requester, guild: GuildSettings) -> Refusal | None:
        """The server's channel allow-list, pending cap and cooldown: for every job, every entry point."""
        if who.user_id is None:
            return None
        if guild.channels and who.channel_id not in guild.channels:
            where = ", ".join(f"<#{c}>" for c in guild.channels)
            return Refusal(f"On this server `/imagine` runs only in {where} (its buttons too).")
        if guild.max_pending is not None or guild.cooldown is not None:
            refused = await self.store.admission_refusal(
                who.user_id,
                max_pending_per_user=guild.max_pending,
                max_queue=None,
                cooldown_seconds=guild.cooldown or 0.0,
            )
            if refused is not None:
                return Refusal(f"Can't start that: {refused} (this server's limit).")
        return None

    @staticmethod
    def _caps(guild: GuildSettings) -> dict[str, Any]:
        return {"max_pending": guild.max_pending, "cooldown": guild.cooldown}

    async def _admit(self, admitted: Admitted) -> Admitted | Refusal:
        """The operator's limits: the request's validation and the queue caps (nothing written)."""
        if self.runner is None:
            return admitted
        refusal = await self.runner.admission_refusal(admitted.spec)
        if refusal is not None:
            message = getattr(refusal, "user_message", None) or str(refusal)
            return Refusal(f"Can't start that: {message}.", usage=isinstance(refusal, InvalidRequest))
        return admitted

    async def _clamp_stale(
        self, who: Requester, guild: GuildSettings, member: MemberSettings
    ) -> tuple[GuildSettings, MemberSettings, tuple[str, ...]]:
        """Item 6: stored defaults are checked when used, not only when saved. A value the operator's limits
        no longer allow is clamped to the limit (or dropped when it cannot be), saved that way, and the
        member is told once — the next job finds the saved value in bounds."""
        if who.user_id is None or who.guild_id is None:
            return guild, member, ()
        notices: list[str] = []
        fixed_member = self._clamped_values(member, "Your /settings default", notices)
        if fixed_member:
            member = replace(member, **fixed_member)
            await self.preferences.set_member(who.guild_id, who.user_id, member)
        fixed_guild = self._clamped_values(guild.defaults, "This server's default", notices)
        for key, value in fixed_guild.items():
            await self.preferences.change_guild(who.guild_id, BOT_ACTOR, f"default_{key}", value)
        if fixed_guild:
            guild = replace(guild, defaults=replace(guild.defaults, **fixed_guild))
        return guild, member, tuple(notices)

    def _clamped_values(self, stored: JobDefaults, whose: str, notices: list[str]) -> dict[str, Any]:
        s = self.settings
        limits: dict[str, tuple[Any, str]] = {
            "count": (s.max_count, "IMAGINE_MAX_COUNT"),
            "steps": (s.max_steps, "IMAGINE_MAX_STEPS"),
            "guidance": (s.max_guidance, "IMAGINE_MAX_GUIDANCE"),
        }
        fixed: dict[str, Any] = {}
        for f in fields(JobDefaults):
            value = getattr(stored, f.name)
            if value is None:
                continue
            try:
                check_job_value(s, f.name, value)
                continue
            except SettingRefused:
                pass
            if f.name in limits and isinstance(value, int | float) and not isinstance(value, bool):
                limit, setting = limits[f.name]
                if value > limit:
                    fixed[f.name] = limit
                    notices.append(
                        f"{whose} {f.name} ({value:g}) is above the bot's limit now ({setting}={limit:g}): "
                        f"it is {limit:g} from now on; change it with `/settings`."
                    )
                    continue
            fixed[f.name] = None
            notices.append(
                f"{whose} {f.name} is no longer allowed by the bot's limits: it was removed; "
                "set it again with `/settings`."
            )
        return fixed

    def _size(
        self, request: ImagineRequest, p: EffectiveParameters, base: Settings | None = None
    ) -> tuple[int, int]:
        s = base or self.settings
        if request.ratio is not None:
            if request.width is not None or request.height is not None:
                raise InvalidRequest("`--ar` in SEED and the --width/--height options disagree: use one")
            return size_for_ratio(request.ratio, s.width, s.height, s.max_pixels)
        if request.width is not None or request.height is not None:
            return (
                request.width if request.width is not None else s.width,
                request.height if request.height is not None else s.height,
            )
        return size_for_aspect(p.aspect, s.width, s.height, s.max_pixels)

    def _mitigation(self, mode: str) -> dict[str, Any] | None:
        """The record a new job stores for a mitigation: fair guidance with the operator's parameters now."""
        s = self.settings
        fair = FairGuidance(
            edit_scale=s.fair_edit_scale, warmup_steps=s.fair_warmup_steps, threshold=s.fair_threshold
        )
        return mitigation_record(mode, fair)

    @staticmethod
    def _owned(spec: JobSpec, who: Requester) -> JobSpec:
        """A job from the command line belongs to no member, server or channel (nothing is posted)."""
        if who.user_id is not None:
            return spec
        return replace(spec, user_id=None, guild_id=None, channel_id=None)
