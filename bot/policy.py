"""May this result, preview, re-post or source image land where it is going, now? One answer for every path.

Plain functions over plain data (a job row, the filter of the place it is going, who asks): no Discord, no
store. Delivery, the buttons and /history ask here; the intake asks here whether a new job may start from
an old job's pictures. Where a rule refuses, it returns the sentence to show; None means allowed.
"""

from __future__ import annotations

from bot.preferences import Policy, safe_mode_for_policy
from bot.store import JobRecord
from bot.ui import shown


def filtered(policy: Policy, *, age_restricted: bool, allow_nsfw: bool) -> bool:
    """Whether a job or post landing in a channel is filtered: the server's content policy, the channel's
    age-restricted flag and the operator's IMAGINE_ALLOW_NSFW, as they are now."""
    return safe_mode_for_policy(policy, nsfw_channel=age_restricted, allow_nsfw=allow_nsfw)


def unfiltered_here(job: JobRecord, *, filtered_here: bool) -> bool:
    """A job made without the content filter whose pictures would land where the filter applies."""
    return filtered_here and not job.safe_mode


def source_refusal(job: JobRecord, *, filtered_here: bool) -> str | None:
    """Item 5: every action that starts from a job's pictures (V, Upscale, Vary, Zoom, Pan, Remix of an
    image, Reproduce or 🔄 of an image job) follows the same rule as posting those pictures here."""
    if unfiltered_here(job, filtered_here=filtered_here):
        return (
            f"Job `{job.id}` was made without the content filter (in an age-restricted channel); "
            "its images can't be used in this channel."
        )
    return None


def repost_refusal(job: JobRecord, *, presser_id: int, filtered_here: bool) -> str | None:
    """May `presser_id` post `job`'s grid or one of its images into this channel (U buttons, Post here)?

    A private result (member /settings) reaches its owner alone: only the owner may publish it, never a
    server manager (item 2). An unfiltered result never lands where the filter applies.
    """
    if job.private and presser_id != job.user_id:
        return (
            f"Job `{job.id}` is private (its owner asked for private results in /settings): "
            "only they can post it in a channel."
        )
    if unfiltered_here(job, filtered_here=filtered_here):
        return (
            f"Job `{job.id}` was made without the content filter (in an age-restricted channel); "
            "its images can't be posted in this channel."
        )
    return None


def withheld_text(job: JobRecord, *, filtered_now: bool) -> str | None:
    """Item 4: the filter is checked again when the result lands. A job made without the filter whose
    channel is filtered by now (the server switched to "always filtered", or the channel lost its
    age-restricted flag) is not shown there: this sentence replaces the images, and the job stays in
    /history for an age-restricted channel."""
    if job.status != "done" or not unfiltered_here(job, filtered_here=filtered_now):
        return None
    return (
        f"Job `{job.id}` ({shown(job.seed_text, 80)}) was made without the content filter, but this "
        "channel is filtered now (the server's content policy or the channel's age-restricted flag "
        f"changed): its images are not shown here. Open it with `/history job:{job.id}` in an "
        "age-restricted channel."
    )


WITHHELD_REASON = "not shown: made without the content filter, and its channel is filtered now"


def preview_allowed(*, safe_mode: bool, screened_clean: bool | None) -> bool:
    """Item 3: a live preview of a filtered job is shown only when the image classifier passed it
    (`screened_clean` True); without a classifier (None) a filtered job shows its progress as text."""
    return not safe_mode or screened_clean is True


def thumbnail_allowed(job: JobRecord, *, filtered_here: bool) -> bool:
    """/history's thumbnail of a job follows the re-post rule: no unfiltered picture where the filter applies."""
    return not unfiltered_here(job, filtered_here=filtered_here)


def may_delete(job: JobRecord, *, presser_id: int, manages_messages: bool) -> bool:
    """🗑 on a result: its owner, or a moderator (Manage Messages)."""
    return job.user_id == presser_id or manages_messages


def may_view(job: JobRecord, *, viewer_id: int, manages_server: bool) -> bool:
    """/history of one job: its owner, or a server manager (Manage Server)."""
    return job.user_id == viewer_id or manages_server


def buttons_allowed(*, direct_message: bool) -> bool:
    """Item 8: a result delivered by DM carries no buttons (they need the server the job belongs to)."""
    return not direct_message


def in_server_feed(job: JobRecord, *, viewer_id: int, member_of: frozenset[int]) -> bool:
    """The web gallery's server feed: a finished result posted publicly in a server the viewer belongs to.

    Never a private result; never one made without the content filter (it came from an age-restricted
    channel) unless the viewer made it. bot.web.queries writes the same rule in SQL.
    """
    return (
        job.guild_id is not None
        and job.guild_id in member_of
        and not job.private
        and job.delivery == "sent"
        and job.status == "done"
        and (job.safe_mode or job.user_id == viewer_id)
    )


def web_may_view(
    job: JobRecord, *, viewer_id: int, member_of: frozenset[int], manages: frozenset[int]
) -> bool:
    """The web gallery's job page and files: the owner, a manager of the job's server (Manage Server, as
    /history), or a member of that server when the result is in its feed."""
    if job.user_id == viewer_id:
        return True
    if job.guild_id is not None and job.guild_id in manages:
        return True
    return in_server_feed(job, viewer_id=viewer_id, member_of=member_of)


def web_may_delete(job: JobRecord, *, viewer_id: int, manages: frozenset[int]) -> bool:
    """🗑 in the web gallery: the owner, or a manager of the job's server (checked with Discord again)."""
    return job.user_id == viewer_id or (job.guild_id is not None and job.guild_id in manages)
