"""The gallery's SQL: grids, search, likes, lineage and the operator's figures, over the history store's one
connection. Who may see what is decided by `bot.policy` (`web_may_view`, `in_server_feed`); the WHERE clauses
here are the same rules written for SQLite, and tests/web/test_web_policy.py checks that the two agree."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bot.store import HistoryStore, JobRecord
from bot.web.search import SearchQuery

PAGE_SIZE = 60

# bot.policy.in_server_feed, in SQL: a result posted in a server's channel (never private), finished, made
# with the content filter unless the viewer made it (unfiltered results come from age-restricted channels).
_FEED_SQL = (
    "j.guild_id IN (SELECT value FROM json_each(?)) AND j.private = 0 AND j.delivery = 'sent' "
    "AND j.status = 'done' AND (j.safe_mode = 1 OR j.user_id = ?)"
)
_MATCH_SQL = (
    "SELECT m.job_id FROM job_search s JOIN job_search_ids m ON m.rowid = s.rowid WHERE job_search MATCH ?"
)
# Does job j match? (the index looked up by the job's own search row)
_MATCHES_JOB_SQL = (
    "EXISTS (SELECT 1 FROM job_search_ids m JOIN job_search s ON s.rowid = m.rowid "
    "WHERE m.job_id = j.id AND job_search MATCH ?)"
)
_DENSE_HITS = 2000
_GRID_ACTIONS = ("imagine", "rerender", "reexpand", "reproduce", "rerun")
_ACTION_SQL = {
    "grid": f"j.action IN ({', '.join(repr(a) for a in _GRID_ACTIONS)}) AND j.init_image IS NULL",
    "upscale": "j.action LIKE 'upscale-%'",
    "vary": "(j.action LIKE 'vary-%' OR j.action = 'variation')",
    "zoom": "j.action LIKE 'zoom-%'",
    "pan": "j.action LIKE 'pan-%'",
    "remix": "j.action = 'remix'",
    "image": "(j.action = 'image' OR (j.init_image IS NOT NULL AND j.action IN ('imagine', 'rerun')))",
}


@dataclass(frozen=True)
class Viewer:
    """A logged-in member as the gallery knows them: their servers (from Discord at login and refresh)."""

    user_id: int
    name: str
    member_of: frozenset[int]
    manages: frozenset[int]
    admin: bool = False
    #: server names as Discord gave them at login (for display only)
    server_names: dict[int, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class GridItem:
    """One tile in a grid (or, for a job with no images yet or ever, the job itself: `idx` None)."""

    job_id: str
    idx: int | None
    prompt: str
    nsfw: bool
    liked: bool
    seed_text: str
    status: str
    action: str
    created_at: float
    width: int
    height: int
    user_id: int | None
    guild_id: int | None


class GalleryQueries:
    """The gallery's reads and writes; every statement runs on the history store's connection and lock."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store

    async def grid(
        self, viewer: Viewer, *, scope: str, query: SearchQuery, page: int, guild_id: int | None = None
    ) -> tuple[list[GridItem], bool]:
        """One page of tiles, newest first: `mine`, the server `feed`, or a managed server's every job."""
        conditions: list[str] = []
        params: list[Any] = [viewer.user_id]
        if scope == "mine":
            conditions.append("j.user_id = ?")
            params.append(viewer.user_id)
        elif scope == "feed":
            conditions.append(_FEED_SQL)
            params += [_json_ids(viewer.member_of), viewer.user_id]
        elif scope == "manage" and guild_id is not None and guild_id in viewer.manages:
            conditions.append("j.guild_id = ?")
            params.append(guild_id)
        else:
            return [], False
        self._filters(query, viewer, conditions, params)
        # Words drive the query from the full-text index: a rare word (a seed) then reads a handful of rows
        # instead of walking every job of the scope newest first to test each against the matches.
        # A common word instead walks the scope newest first and asks the index about each job until the page
        # is full (few rows to test when matches are dense).
        head, source, head_params = "", "jobs j", []
        if query.words:
            expression = query.match_expression(query.words)
            count_sql = "SELECT COUNT(*) FROM (SELECT 1 FROM job_search WHERE job_search MATCH ? LIMIT ?)"
            hits = (await self.store.read(count_sql, (expression, _DENSE_HITS)))[0][0]
            if hits < _DENSE_HITS:
                head = f"WITH hits AS MATERIALIZED ({_MATCH_SQL}) "
                source = "hits JOIN jobs j ON j.id = hits.job_id"
                head_params = [expression]
            else:
                conditions.append(_MATCHES_JOB_SQL)
                params.append(expression)
        query_sql = f"""
            {head}SELECT j.id AS job_id, t.idx, COALESCE(t.prompt, j.seed_text) AS prompt, COALESCE(t.nsfw, 0) AS nsfw,
                EXISTS (SELECT 1 FROM likes l WHERE l.user_id = ? AND l.job_id = j.id AND l.idx = t.idx) AS liked,
                j.seed_text, j.status, j.action, j.created_at, j.width, j.height, j.user_id, j.guild_id
            FROM {source} LEFT JOIN tiles t ON t.job_id = j.id
            WHERE {" AND ".join(conditions)}
            ORDER BY j.created_at DESC, j.id, t.idx
            LIMIT ? OFFSET ?
        """
        params += [PAGE_SIZE + 1, max(0, page) * PAGE_SIZE]
        rows = await self.store.read(query_sql, [*head_params, *params])
        items = [
            GridItem(
                job_id=r["job_id"],
                idx=r["idx"],
                prompt=r["prompt"],
                nsfw=bool(r["nsfw"]),
                liked=bool(r["liked"]),
                seed_text=r["seed_text"],
                status=r["status"],
                action=r["action"],
                created_at=r["created_at"],
                width=r["width"],
                height=r["height"],
                user_id=r["user_id"],
                guild_id=r["guild_id"],
            )
            for r in rows
        ]
        return items[:PAGE_SIZE], len(items) > PAGE_SIZE

    @staticmethod
    def _filters(query: SearchQuery, viewer: Viewer, conditions: list[str], params: list[Any]) -> None:
        if query.excluded:
            conditions.append(f"NOT {_MATCHES_JOB_SQL}")
            params.append(" OR ".join(query.match_expression((word,)) for word in query.excluded))
        if query.aspect is not None:
            w, h = query.aspect
            # --ar keeps the ratio within 2 % (sizes are multiples of 8): within 3 % here.
            conditions.append("ABS(j.width * ? - j.height * ?) <= 0.03 * j.height * ?")
            params += [h, w, w]
        if query.action is not None:
            conditions.append(_ACTION_SQL[query.action])
        if query.status is not None:
            conditions.append("j.status = ?")
            params.append(query.status)
        if query.liked:
            conditions.append(
                "EXISTS (SELECT 1 FROM likes l2 WHERE l2.user_id = ? AND l2.job_id = j.id AND l2.idx = t.idx)"
            )
            params.append(viewer.user_id)
        if query.before is not None:
            conditions.append("j.created_at < ?")
            params.append(query.before)
        if query.after is not None:
            conditions.append("j.created_at >= ?")
            params.append(query.after)
        if query.server is not None:
            conditions.append("j.guild_id = ?")
            params.append(query.server)

    async def tile_path(self, job_id: str, idx: int) -> str | None:
        query = "SELECT path FROM tiles WHERE job_id = ? AND idx = ?"
        rows = await self.store.read(query, (job_id, idx))
        return rows[0]["path"] if rows else None

    async def liked_tiles(self, user_id: int, job_id: str) -> set[int]:
        query = "SELECT idx FROM likes WHERE user_id = ? AND job_id = ?"
        return {int(r["idx"]) for r in await self.store.read(query, (user_id, job_id))}

    async def like_counts(self, job_id: str) -> dict[int, int]:
        query = "SELECT idx, COUNT(*) AS n FROM likes WHERE job_id = ? GROUP BY idx"
        return {int(r["idx"]): int(r["n"]) for r in await self.store.read(query, (job_id,))}

    async def toggle_like(self, user_id: int, job_id: str, idx: int) -> bool:
        """Star or unstar one tile; returns whether it is starred now (only existing tiles can be)."""
        return await self.store.toggle_like(user_id, job_id, idx)

    async def lineage(self, job: JobRecord) -> tuple[list[JobRecord], list[JobRecord]]:
        """The job's ancestors (oldest first) and every descendant (at any depth, oldest first)."""
        query = """
            WITH RECURSIVE up(id, parent_id, depth) AS (
                SELECT id, parent_id, 0 FROM jobs WHERE id = ?
                UNION ALL SELECT jobs.id, jobs.parent_id, up.depth + 1 FROM jobs JOIN up ON jobs.id = up.parent_id
                WHERE up.depth < 50
            )
            SELECT id FROM up WHERE depth > 0 ORDER BY depth DESC
        """
        up_ids = [r["id"] for r in await self.store.read(query, (job.id,))]
        query = """
            WITH RECURSIVE down(id, depth) AS (
                SELECT id, 0 FROM jobs WHERE id = ?
                UNION ALL SELECT jobs.id, down.depth + 1 FROM jobs JOIN down ON jobs.parent_id = down.id
                WHERE down.depth < 50
            )
            SELECT down.id FROM down JOIN jobs ON jobs.id = down.id WHERE depth > 0 ORDER BY jobs.created_at
            LIMIT 200
        """
        down_ids = [r["id"] for r in await self.store.read(query, (job.id,))]
        ancestors = [j for j in [await self.store.get_job(i) for i in up_ids] if j is not None]
        descendants = [j for j in [await self.store.get_job(i) for i in down_ids] if j is not None]
        return ancestors, descendants

    async def status_counts(self) -> dict[str, int]:
        query = "SELECT status, COUNT(*) AS n FROM jobs GROUP BY status"
        return {r["status"]: int(r["n"]) for r in await self.store.read(query)}

    async def recent_failures(self, limit: int = 20) -> list[dict[str, Any]]:
        query = """
            SELECT id, reason, finished_at, user_id, guild_id, action FROM jobs
            WHERE status = 'failed' ORDER BY finished_at DESC LIMIT ?
        """
        return [dict(r) for r in await self.store.read(query, (limit,))]

    async def running(self) -> list[dict[str, Any]]:
        query = """
            SELECT id, started_at, owner_pid, user_id, guild_id, action, attempts FROM jobs
            WHERE status = 'running' ORDER BY started_at
        """
        return [dict(r) for r in await self.store.read(query)]


def _json_ids(ids: frozenset[int]) -> str:
    return "[" + ",".join(str(int(i)) for i in sorted(ids)) + "]"
