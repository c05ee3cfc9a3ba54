"""Model-aware queueing: run a job for a model already loaded before a swap, within a bound.

The bound (README → Models): when the fair pick would swap models and the runner-up in the fair order runs
on a loaded model, the two trade places — once per job (a job that was passed over runs next). When the
passed-over job then starts, the two members' round-robin turns are swapped back (`settle_pass`), so the
rest of the queue runs exactly as the plain fair order would: every job starts at most one job later than
it would have without the preference, and no member's later jobs pay for it again.
"""

from __future__ import annotations

from collections.abc import Iterable

from bot.store import JobRecord


def prefer_resident(
    pick: JobRecord,
    order: Iterable[JobRecord],
    resident: tuple[str, ...],
    passed_over: dict[str, int | None],
    busy_users: frozenset[int | None] | set[int | None] = frozenset(),
) -> JobRecord:
    """`pick` (the fair choice), or the runner-up in `order` when only the runner-up's model is loaded.

    `passed_over` maps a passed-over job's id to the member who went ahead of it; the caller keeps it
    between picks and hands it to `settle_pass` when that job starts.
    """
    if not resident or (pick.model or "") in resident or pick.id in passed_over:
        return pick
    runner_up = next(
        (j for j in order if j.id != pick.id and (j.user_id is None or j.user_id not in busy_users)), None
    )
    if runner_up is None or (runner_up.model or "") not in resident or runner_up.id in passed_over:
        return pick
    passed_over[pick.id] = runner_up.user_id
    return runner_up


def settle_pass(
    job: JobRecord, last_served: dict[int | None, float], passed_over: dict[str, int | None]
) -> None:
    """Call right after `job` started (its member's turn recorded): if it had been passed over, give the two
    members the turns the plain fair order would have left them."""
    if job.id not in passed_over:
        return
    ahead = passed_over.pop(job.id)
    if ahead != job.user_id and ahead in last_served and job.user_id in last_served:
        last_served[ahead], last_served[job.user_id] = last_served[job.user_id], last_served[ahead]
