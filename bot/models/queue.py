"""Model-aware queueing: prefer a job for a model already loaded over a swap, within a bound.

The bound (README → Models): the fair pick is passed over at most once (MAX_PASSES) for a job whose model
is resident, so no member waits more than one extra job for the preference; the job that went ahead is
the next one in the fair order that runs on a resident model, from a member not already rendering.
"""

from __future__ import annotations

from collections.abc import Iterable

from bot.store import JobRecord

MAX_PASSES = 1


def prefer_resident(
    pick: JobRecord,
    order: Iterable[JobRecord],
    resident: tuple[str, ...],
    passed_over: dict[str, int],
    busy_users: set[int | None] = frozenset(),  # type: ignore[assignment]
) -> JobRecord:
    """`pick` (the fair choice), or a later job whose model is loaded when `pick` would swap models.

    `passed_over` counts, per job id, how often a job was passed over; the caller keeps it between picks.
    """
    if not resident or (pick.model or "") in resident or passed_over.get(pick.id, 0) >= MAX_PASSES:
        return pick
    for job in order:
        if job.id == pick.id or (job.user_id is not None and job.user_id in busy_users):
            continue
        if (job.model or "") in resident:
            passed_over[pick.id] = passed_over.get(pick.id, 0) + 1
            return job
    return pick
