"""The history store: every job in SQLite (aiosqlite, WAL, numbered migrations, BEGIN IMMEDIATE writes)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiosqlite

from bot.engine.model_specs import LoraRef
from bot.engine.validation import normalize_user_text

log = logging.getLogger(__name__)

FINAL_STATES = ("done", "failed", "cancelled")
PENDING_STATES = ("queued", "running")

MIGRATIONS: tuple[str, ...] = (
    # 1: jobs, tiles, meta
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        parent_id TEXT REFERENCES jobs(id) ON DELETE SET NULL,
        action TEXT NOT NULL DEFAULT 'imagine',
        status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
        reason TEXT,
        seed_text TEXT NOT NULL,
        negative TEXT NOT NULL DEFAULT '',
        count INTEGER NOT NULL,
        steps INTEGER NOT NULL,
        guidance REAL NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        job_seed INTEGER NOT NULL,
        expand INTEGER NOT NULL,
        safe_mode INTEGER NOT NULL DEFAULT 1,
        source_tile INTEGER,
        strength REAL,
        given_prompts TEXT,
        given_seeds TEXT,
        init_image TEXT,
        user_id INTEGER,
        guild_id INTEGER,
        channel_id INTEGER,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        owner_pid INTEGER,
        expander_json TEXT,
        render_json TEXT,
        grid_path TEXT,
        delivery TEXT NOT NULL DEFAULT 'pending' CHECK (delivery IN ('pending', 'sending', 'sent', 'none')),
        message_id INTEGER
    );
    CREATE INDEX jobs_user ON jobs (guild_id, user_id, created_at DESC);
    CREATE INDEX jobs_status ON jobs (status, created_at);
    CREATE TABLE tiles (
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        prompt TEXT NOT NULL,
        image_seed INTEGER NOT NULL,
        path TEXT,
        nsfw INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (job_id, idx)
    );
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 2: why a result could not be posted (delivery 'none' with a reason), and when its delivery was
    # claimed (a channel post carries a nonce Discord de-duplicates for a few minutes after that).
    """
    ALTER TABLE jobs ADD COLUMN undelivered_reason TEXT;
    ALTER TABLE jobs ADD COLUMN delivery_claimed_at REAL;
    """,
    # 3: outpaint masks, --chaos, and the action that decides how a reproduction renders
    """
    ALTER TABLE jobs ADD COLUMN mask_image TEXT;
    ALTER TABLE jobs ADD COLUMN chaos INTEGER;
    ALTER TABLE jobs ADD COLUMN render_action TEXT;
    """,
    # 4: /settings (member defaults, server settings, the server's change log); private delivery and the
    # member defaults a job used
    """
    ALTER TABLE jobs ADD COLUMN private INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN from_defaults TEXT NOT NULL DEFAULT '';
    CREATE TABLE member_settings (
        guild_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        settings_json TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (guild_id, user_id)
    );
    CREATE TABLE guild_settings (
        guild_id INTEGER PRIMARY KEY,
        settings_json TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE guild_settings_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        guild_id INTEGER NOT NULL,
        actor_id INTEGER NOT NULL,
        at REAL NOT NULL,
        key TEXT NOT NULL,
        old_value TEXT NOT NULL,
        new_value TEXT NOT NULL
    );
    CREATE INDEX guild_settings_log_guild ON guild_settings_log (guild_id, at DESC);
    """,
    # 5: ownership by lease (a PID means nothing across containers): the running job's owner instance and
    # until when its lease holds. A row a process of the previous version runs gets a lease from now, so a
    # live one has a minute before recovery may take it over.
    """
    ALTER TABLE jobs ADD COLUMN owner_instance TEXT;
    ALTER TABLE jobs ADD COLUMN lease_expires_at REAL;
    UPDATE jobs SET owner_instance = 'pid-' || COALESCE(owner_pid, 0),
        lease_expires_at = CAST(strftime('%s', 'now') AS REAL) + 60
        WHERE status = 'running';
    """,
    # 6: the web gallery (bot/web): likes, indexes for its grids, and full-text search over seed text,
    # prompts, negative and seeds (FTS5), kept in step by triggers on the store's own writes. The search
    # row is keyed by job_search_ids' INTEGER PRIMARY KEY (a jobs rowid could change on VACUUM).
    """
    CREATE TABLE likes (
        user_id INTEGER NOT NULL,
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (user_id, job_id, idx)
    );
    CREATE INDEX likes_job ON likes (job_id, idx);
    CREATE INDEX jobs_user_time ON jobs (user_id, created_at DESC);
    CREATE INDEX jobs_guild_time ON jobs (guild_id, created_at DESC);
    CREATE TABLE job_search_ids (rowid INTEGER PRIMARY KEY, job_id TEXT NOT NULL UNIQUE);
    CREATE VIRTUAL TABLE job_search USING fts5(seed_text, negative, prompts, seeds);
    CREATE TRIGGER job_search_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO job_search_ids (job_id) VALUES (new.id);
        INSERT INTO job_search (rowid, seed_text, negative, prompts, seeds)
            VALUES ((SELECT rowid FROM job_search_ids WHERE job_id = new.id), new.seed_text, new.negative,
                COALESCE((SELECT group_concat(value, ' ') FROM json_each(new.given_prompts)), ''),
                CAST(new.job_seed AS TEXT));
    END;
    CREATE TRIGGER job_search_update AFTER UPDATE OF seed_text, negative, job_seed ON jobs BEGIN
        UPDATE job_search SET seed_text = new.seed_text, negative = new.negative,
            seeds = CAST(new.job_seed AS TEXT) || ' ' ||
                COALESCE((SELECT group_concat(image_seed, ' ') FROM tiles WHERE job_id = new.id), '')
        WHERE rowid = (SELECT rowid FROM job_search_ids WHERE job_id = new.id);
    END;
    CREATE TRIGGER job_search_delete AFTER DELETE ON jobs BEGIN
        DELETE FROM job_search WHERE rowid = (SELECT rowid FROM job_search_ids WHERE job_id = old.id);
        DELETE FROM job_search_ids WHERE job_id = old.id;
    END;
    CREATE TRIGGER job_search_tile AFTER INSERT ON tiles BEGIN
        UPDATE job_search SET
            prompts = (SELECT group_concat(prompt, ' ') FROM tiles WHERE job_id = new.job_id),
            seeds = (SELECT CAST(job_seed AS TEXT) FROM jobs WHERE id = new.job_id) || ' ' ||
                (SELECT group_concat(image_seed, ' ') FROM tiles WHERE job_id = new.job_id)
        WHERE rowid = (SELECT rowid FROM job_search_ids WHERE job_id = new.job_id);
    END;
    INSERT INTO job_search_ids (job_id) SELECT id FROM jobs ORDER BY created_at;
    INSERT INTO job_search (rowid, seed_text, negative, prompts, seeds)
        SELECT m.rowid, j.seed_text, j.negative,
            COALESCE((SELECT group_concat(prompt, ' ') FROM tiles WHERE job_id = j.id), ''),
            CAST(j.job_seed AS TEXT) || ' ' ||
                COALESCE((SELECT group_concat(image_seed, ' ') FROM tiles WHERE job_id = j.id), '')
        FROM job_search_ids m JOIN jobs j ON j.id = m.job_id;
    """,
    # 7: the bias mitigation a job ran with and its parameters (JSON; NULL = off), so Reproduce repeats it
    """
    ALTER TABLE jobs ADD COLUMN mitigation TEXT;
    """,
    # 8: models (README → Models): the registry model a job runs on and its LoRAs (JSON [{"name", "weight"}])
    """
    ALTER TABLE jobs ADD COLUMN model TEXT;
    ALTER TABLE jobs ADD COLUMN loras TEXT;
    """,
    # 9 (issue 22): jobs of one /imagine with `{a, b}` permutations or `--repeat` are siblings (group_id
    # is the first one's id); `--tile` renders seamlessly tiling images.
    """
    ALTER TABLE jobs ADD COLUMN group_id TEXT;
    ALTER TABLE jobs ADD COLUMN tiling INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_group ON jobs (group_id);
    """,
    # 10 (issue 22): the shorter prompts of a /shorten answer, so its Imagine N buttons work after a restart
    # (bot/shortened.py; a member's rows go with /forget).
    """
    CREATE TABLE shortened (
        id TEXT PRIMARY KEY,
        user_id INTEGER,
        guild_id INTEGER,
        prompts TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX shortened_member ON shortened (guild_id, user_id);
    """,
)

#: How long a running job's lease lasts without renewal; its owner renews it every third of that. A dead
#: owner's job is taken over within LEASE + LEASE / 3 (a sweep runs as often as a renewal): 60 s.
DEFAULT_LEASE_SECONDS = 45.0
#: The issue's bound: a lease lasts at most 60 s without renewal.
MAX_LEASE_SECONDS = 60.0


class StoreError(Exception):
    """The history database cannot be opened or written; one line naming the file and what to do."""


def _check_opens(path: Path) -> None:
    """Raise sqlite3.Error if the file cannot be opened, or is not a database (reads its header)."""
    conn = sqlite3.connect(path, timeout=30.0)
    try:
        conn.execute("PRAGMA schema_version").fetchone()
    finally:
        conn.close()


def _explain_open_failure(path: Path, exc: sqlite3.Error) -> str:
    return describe_database_error(path, exc, opening=True)


# Below this much free space a failed write or open is put down to a full disk (SQLite reports a full disk
# as SQLITE_FULL on writes, but as a plain I/O error when it cannot even grow its shared-memory file).
_NEARLY_FULL_BYTES = 1024 * 1024


def describe_database_error(path: Path, exc: sqlite3.Error, *, opening: bool = False) -> str:
    """One line for the user: what went wrong with the history database and what to do about it.

    A full disk is said to be one: only a real sign of damage (SQLITE_CORRUPT, SQLITE_NOTADB) suggests
    restoring a backup, advice that costs a user their history when the file was fine.
    """
    text = str(exc)
    code = getattr(exc, "sqlite_errorname", "") or ""
    if code.startswith("SQLITE_FULL") or "disk is full" in text or _nearly_full(path.parent):
        return (
            f"the disk holding {path} is full ({text}): free some space on it, or set IMAGINE_DATA_DIR "
            "to a folder on another disk; the history itself is fine"
        )
    if (
        code.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
        or "not a database" in text
        or "malformed" in text
    ):
        return (
            f"{path} is not a readable SQLite database ({text}): restore it from a backup, "
            "or move it away to start an empty history"
        )
    if opening or isinstance(exc, sqlite3.OperationalError):
        return (
            f"cannot {'open' if opening else 'use'} the database {path} ({text}): make {path.parent} and "
            "the files in it writable for this user, or set IMAGINE_DATA_DIR to a writable folder"
        )
    return f"{path} is damaged ({text}): restore it from a backup, or move it away to start an empty history"


def _nearly_full(folder: Path) -> bool:
    try:
        usage = os.statvfs(folder)
    except OSError:
        return False
    return usage.f_bavail * usage.f_frsize < _NEARLY_FULL_BYTES


class QueueRefused(Exception):
    """A job was refused by a queue limit; the message is user-facing."""


class QueueFull(QueueRefused):
    """The global queue cap is reached."""


class UserLimit(QueueRefused):
    """The user's pending-job cap is reached."""


class Cooldown(QueueRefused):
    """The user started a job too recently."""


@dataclass(frozen=True)
class Tile:
    """One image of a job."""

    index: int
    prompt: str
    image_seed: int
    path: str | None
    nsfw: bool = False


@dataclass(frozen=True)
class JobSpec:
    """Everything a new job row needs."""

    seed_text: str
    count: int
    steps: int
    guidance: float
    width: int
    height: int
    job_seed: int
    negative: str = ""
    expand: bool = True
    safe_mode: bool = True
    action: str = "imagine"
    parent_id: str | None = None
    source_tile: int | None = None
    strength: float | None = None
    given_prompts: tuple[str, ...] | None = None
    given_seeds: tuple[int, ...] | None = None
    init_image: str | None = None
    user_id: int | None = None
    guild_id: int | None = None
    channel_id: int | None = None
    mask_image: str | None = None
    chaos: int | None = None
    # A reproduction renders like its original (upscale: 2x limit, VAE tiling): the original's action.
    render_action: str | None = None
    # Preallocated id: the job's input images are written into its folder before the row exists.
    id: str | None = None
    #: deliver to the member alone (the ephemeral response, else a DM), never the channel
    private: bool = False
    #: the parameters that came from the member's /settings defaults (shown in the result)
    from_defaults: tuple[str, ...] = ()
    #: the bias mitigation and its parameters (bot/engine/mitigation.py); None = off
    mitigation: dict[str, Any] | None = None
    #: the registry model's name (None: the default model) and the LoRAs on it
    model: str | None = None
    loras: tuple[LoraRef, ...] = ()
    #: issue 22: the first sibling's id when one /imagine queued several jobs (permutations, --repeat)
    group_id: str | None = None
    #: issue 22: `--tile`, seamless tiling (circular padding)
    tiling: bool = False


@dataclass(frozen=True)
class JobRecord:
    """A job row with its tiles."""

    id: str
    parent_id: str | None
    action: str
    status: str
    reason: str | None
    seed_text: str
    negative: str
    count: int
    steps: int
    guidance: float
    width: int
    height: int
    job_seed: int
    expand: bool
    safe_mode: bool
    source_tile: int | None
    strength: float | None
    given_prompts: tuple[str, ...] | None
    given_seeds: tuple[int, ...] | None
    init_image: str | None
    user_id: int | None
    guild_id: int | None
    channel_id: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    expander: dict[str, Any]
    render: dict[str, Any]
    grid_path: str | None
    delivery: str
    message_id: int | None
    tiles: tuple[Tile, ...] = field(default=())
    # Set when Discord refused both the interaction edit and the channel post (delivery is then 'none').
    undelivered_reason: str | None = None
    delivery_claimed_at: float | None = None
    mask_image: str | None = None
    chaos: int | None = None
    render_action: str | None = None
    private: bool = False
    from_defaults: tuple[str, ...] = ()
    mitigation: dict[str, Any] | None = None
    model: str | None = None
    loras: tuple[LoraRef, ...] = ()
    group_id: str | None = None
    tiling: bool = False

    @property
    def prompts(self) -> tuple[str, ...]:
        return tuple(tile.prompt for tile in self.tiles)

    def to_json(self) -> dict[str, Any]:
        """The CLI's JSON shape."""
        return {
            "job_id": self.id,
            "status": self.status,
            "reason": self.reason,
            "action": self.action,
            "parent_id": self.parent_id,
            "seed_text": self.seed_text,
            "negative": self.negative,
            "seed": self.job_seed,
            "count": self.count,
            "steps": self.steps,
            "guidance": self.guidance,
            "width": self.width,
            "height": self.height,
            "expand": self.expand,
            "chaos": self.chaos,
            "strength": self.strength,
            "source_tile": self.source_tile,
            "init_image": self.init_image,
            "mask_image": self.mask_image,
            "prompts": list(self.prompts),
            "image_seeds": [tile.image_seed for tile in self.tiles],
            "images": [tile.path for tile in self.tiles],
            "grid": self.grid_path,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "attempts": self.attempts,
            "expander": self.expander,
            "render": self.render,
            "user_id": self.user_id,
            "guild_id": self.guild_id,
            "channel_id": self.channel_id,
            "mitigation": self.mitigation,
            "group_id": self.group_id,
            "tile": self.tiling,
        }


@dataclass(frozen=True)
class TilePress:
    """A button pressed on tile `tile` of the expanded grid `grid_id`: that prompt over the grid's others."""

    press_id: str
    action: str
    tile: int
    grid_id: str
    guild_id: int | None
    seed_text: str
    job_seed: int
    prompts: tuple[str, ...]
    expander: dict[str, Any]


def new_job_id() -> str:
    """Short, unguessable, URL- and custom_id-safe."""
    return secrets.token_hex(5)


def new_instance_id() -> str:
    """A process's identity as a job owner: random, since PIDs repeat across containers."""
    return secrets.token_hex(8)


class HistoryStore:
    """One connection to `history.sqlite3`; every query of the project lives here.

    A process opens one store, so the store's `instance_id` is the process's identity as a job owner: a
    `running` row names its owner instance and holds a lease the owner renews (`renew_leases`); recovery
    takes over only rows whose lease expired, and only the owner may finish or give back its rows.
    """

    def __init__(
        self, path: Path, *, instance_id: str | None = None, lease_seconds: float = DEFAULT_LEASE_SECONDS
    ) -> None:
        if not 0 < lease_seconds <= MAX_LEASE_SECONDS:
            raise ValueError(f"`lease_seconds` must be in (0, {MAX_LEASE_SECONDS:g}], got {lease_seconds}")
        self.path = path
        self.instance_id = instance_id or new_instance_id()
        self.lease_seconds = lease_seconds
        self._db: aiosqlite.Connection | None = None
        # One connection: a transaction must not interleave with another coroutine's statements, reads
        # included (they would see its uncommitted rows, e.g. a `done` job before its tiles are written).
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> HistoryStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("HistoryStore is not open")
        return self._db

    async def open(self) -> None:
        """Open (creating the folder), set pragmas, run migrations; StoreError names the file and the fix."""
        folder = self.path.parent
        if folder.exists() and not folder.is_dir():
            raise StoreError(f"the data folder {folder} is a file: set IMAGINE_DATA_DIR to a folder")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the data folder {folder} ({exc.strerror or exc}): "
                "set IMAGINE_DATA_DIR to a folder this user can write"
            ) from None
        try:
            # Open once with plain sqlite3 first: when aiosqlite's own connect fails, its thread still
            # finishes later and can print a traceback after our loop has closed (and our one line).
            await asyncio.to_thread(_check_opens, self.path)
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves.
            self._db = await aiosqlite.connect(self.path, isolation_level=None, timeout=30.0)
            self._db.row_factory = aiosqlite.Row
            await self._db.execute("PRAGMA journal_mode=WAL")
            await self._db.execute("PRAGMA synchronous=NORMAL")
            await self._db.execute("PRAGMA foreign_keys=ON")
            await self._db.execute("PRAGMA busy_timeout=30000")
            await self._migrate()
        except BaseException as exc:
            # The connection's thread is not a daemon: left running, it keeps the process alive forever.
            await self._close_quietly()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(_explain_open_failure(self.path, exc)) from None
            raise

    async def _close_quietly(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            try:
                await db.close()
            except Exception:
                log.debug("closing %s after a failed open", self.path, exc_info=True)

    async def close(self) -> None:
        if self._db is not None:
            async with self._lock:  # let a running transaction end first
                if self._db is not None:
                    await self._db.close()
                    self._db = None

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN IMMEDIATE … COMMIT as one unit: it commits whole or rolls back whole, even when cancelled.

        Every statement handed to aiosqlite runs on its thread in order, even if its awaiter is cancelled
        (a cancelled `BEGIN` still begins). So whatever interrupts the body — an error, or a cancellation
        at any await, `BEGIN` included — queues a `ROLLBACK` behind it before the lock is released, and
        the connection never stays inside a transaction. A failed `COMMIT` (disk full) rolls back too.
        """
        db = self.db
        async with self._lock:
            try:
                await db.execute("BEGIN IMMEDIATE")
                yield db
                await db.execute("COMMIT")
            except BaseException:
                await _rollback(db)
                raise

    async def _fetch(self, query: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        """One read, under the lock: it never runs inside another coroutine's open write transaction."""
        async with self._lock:
            return await self._fetch_locked(query, params)

    async def _fetch_locked(self, query: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        """Run a read and fetch every row in one step on the connection's thread (caller holds the lock).

        A cursor left open between awaits keeps a read snapshot; a write of another coroutine on this
        connection then fails at once with "database is locked" (SQLITE_BUSY_SNAPSHOT, no busy wait)
        whenever another process (the CLI) committed in between.
        """
        return list(await self.db.execute_fetchall(query, params))

    async def read(self, query: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        """One read for a module that keeps its own queries over this connection (the web gallery's)."""
        return await self._fetch(query, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN IMMEDIATE … COMMIT as one unit, for a module that keeps its own writes (see `_write`)."""
        async with self._write() as db:
            yield db

    async def _migrate(self) -> None:
        async with self._write() as db:
            cursor = await db.execute("PRAGMA user_version")
            (version,) = await cursor.fetchone()  # type: ignore[misc]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in _statements(script):
                    await db.execute(statement)
                await db.execute(f"PRAGMA user_version = {number}")
                log.info("history database migrated to version %d", number)

    async def schema_version(self) -> int:
        rows = await self._fetch("PRAGMA user_version")
        return int(rows[0][0]) if rows else 0

    async def integrity_check(self) -> str:
        rows = await self._fetch("PRAGMA integrity_check")
        return str(rows[0][0]) if rows else "no answer"

    # -- creating and moving jobs -------------------------------------------------------------------
    async def create_job(
        self,
        spec: JobSpec,
        *,
        max_pending_per_user: int | None = None,
        max_queue: int | None = None,
        cooldown_seconds: float = 0.0,
        now: float | None = None,
    ) -> JobRecord:
        """Write a `queued` row, enforcing the queue limits in the same transaction."""
        now = time.time() if now is None else now
        job_id = spec.id or new_job_id()
        # Stored user text is one plain line: it is echoed in lists, embeds and the CLI's history.
        spec = replace(
            spec, seed_text=normalize_user_text(spec.seed_text), negative=normalize_user_text(spec.negative)
        )
        async with self._write() as db:
            refusal = await self._limit_refusal(
                db, spec.user_id, max_pending_per_user, max_queue, cooldown_seconds, now
            )
            if refusal is not None:
                raise refusal
            query = """
                INSERT INTO jobs (id, parent_id, action, status, seed_text, negative, count, steps, guidance,
                    width, height, job_seed, expand, safe_mode, source_tile, strength, given_prompts,
                    given_seeds, init_image, user_id, guild_id, channel_id, created_at, mask_image, chaos,
                    render_action, private, from_defaults, mitigation, group_id, tiling)
                VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
                    ?, ?, ?)
            """
            await db.execute(
                query,
                (
                    job_id,
                    spec.parent_id,
                    spec.action,
                    spec.seed_text,
                    spec.negative,
                    spec.count,
                    spec.steps,
                    spec.guidance,
                    spec.width,
                    spec.height,
                    spec.job_seed,
                    int(spec.expand),
                    int(spec.safe_mode),
                    spec.source_tile,
                    spec.strength,
                    json.dumps(list(spec.given_prompts)) if spec.given_prompts is not None else None,
                    json.dumps(list(spec.given_seeds)) if spec.given_seeds is not None else None,
                    spec.init_image,
                    spec.user_id,
                    spec.guild_id,
                    spec.channel_id,
                    now,
                    spec.mask_image,
                    spec.chaos,
                    spec.render_action,
                    int(spec.private),
                    ",".join(spec.from_defaults),
                    json.dumps(spec.mitigation) if spec.mitigation is not None else None,
                    spec.group_id,
                    int(spec.tiling),
                ),
            )
            if spec.model is not None or spec.loras:
                query = "UPDATE jobs SET model = ?, loras = ? WHERE id = ?"
                await db.execute(query, (spec.model, _loras_json(spec.loras), job_id))
        job = await self.get_job(job_id)
        assert job is not None
        return job

    async def admission_refusal(
        self,
        user_id: int | None,
        *,
        max_pending_per_user: int | None,
        max_queue: int | None,
        cooldown_seconds: float,
    ) -> QueueRefused | None:
        """Read-only pre-check of the queue limits (create_job re-checks them atomically)."""
        async with self._lock:
            return await self._limit_refusal(
                self.db, user_id, max_pending_per_user, max_queue, cooldown_seconds, time.time()
            )

    @staticmethod
    async def _limit_refusal(
        db: aiosqlite.Connection,
        user_id: int | None,
        max_pending_per_user: int | None,
        max_queue: int | None,
        cooldown_seconds: float,
        now: float,
    ) -> QueueRefused | None:
        if max_queue is not None:
            query = "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')"
            ((pending,),) = await db.execute_fetchall(query)  # type: ignore[misc]
            if pending >= max_queue:
                return QueueFull(f"the queue is full ({pending} jobs); try again in a few minutes")
        if user_id is None:
            return None
        # The cooldown counts from the member's latest job that is still waiting or running: a member
        # whose jobs have all finished can always start the next one at once.
        query = """
            SELECT COUNT(*) FILTER (WHERE status IN ('queued', 'running')),
                MAX(created_at) FILTER (WHERE status IN ('queued', 'running'))
            FROM jobs WHERE user_id = ?
        """
        ((mine, last),) = await db.execute_fetchall(query, (user_id,))  # type: ignore[misc]
        if max_pending_per_user is not None and mine >= max_pending_per_user:
            return UserLimit(
                f"you already have {mine} jobs waiting (the limit is {max_pending_per_user}); "
                "wait for one to finish or `/cancel` one"
            )
        if cooldown_seconds and last is not None and now - last < cooldown_seconds:
            wait = max(1, round(cooldown_seconds - (now - last)))
            return Cooldown(f"you queued a job {now - last:.0f} s ago; please wait {wait} s more")
        return None

    async def mark_running(self, job_id: str) -> bool:
        """queued → running (attempts + 1) under this instance's lease; False if no longer queued."""
        now = time.time()
        async with self._write() as db:
            # owner_pid is kept for the record only (which process, in its own PID namespace).
            query = """
                UPDATE jobs SET status = 'running', started_at = ?, attempts = attempts + 1, owner_pid = ?,
                    owner_instance = ?, lease_expires_at = ?
                WHERE id = ? AND status = 'queued'
            """
            cursor = await db.execute(
                query, (now, os.getpid(), self.instance_id, now + self.lease_seconds, job_id)
            )
            return cursor.rowcount == 1

    async def renew_leases(self, job_ids: Sequence[str]) -> list[str]:
        """Extend the leases of this instance's running jobs; returns the ids it no longer owns."""
        if not job_ids:
            return []
        lost: list[str] = []
        async with self._write() as db:
            query = """
                UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND status = 'running' AND owner_instance = ?
            """
            until = time.time() + self.lease_seconds
            for job_id in job_ids:
                cursor = await db.execute(query, (until, job_id, self.instance_id))
                if cursor.rowcount != 1:
                    lost.append(job_id)
        return lost

    async def next_attempt(self, job_id: str, *, max_attempts: int) -> bool:
        """A running job of this instance starts another attempt in place (attempts + 1, lease renewed).

        The CLI retries inline this way: it has no dispatcher to run a re-queued row. False once the
        attempts are spent, or when the row is no longer this instance's.
        """
        async with self._write() as db:
            query = """
                UPDATE jobs SET attempts = attempts + 1, started_at = ?, lease_expires_at = ?
                WHERE id = ? AND status = 'running' AND owner_instance = ? AND attempts < ?
            """
            now = time.time()
            cursor = await db.execute(
                query, (now, now + self.lease_seconds, job_id, self.instance_id, max_attempts)
            )
            return cursor.rowcount == 1

    async def mark_done(
        self,
        job_id: str,
        *,
        tiles: Sequence[Tile],
        grid_path: str,
        expander: dict[str, Any],
        render: dict[str, Any],
    ) -> bool:
        """running → done with its tiles, in one transaction; only by the row's owner instance."""
        async with self._write() as db:
            query = """
                UPDATE jobs SET status = 'done', reason = NULL, finished_at = ?, grid_path = ?,
                    expander_json = ?, render_json = ?
                WHERE id = ? AND status = 'running' AND owner_instance = ?
            """
            cursor = await db.execute(
                query, (time.time(), grid_path, _dumps(expander), _dumps(render), job_id, self.instance_id)
            )
            if cursor.rowcount != 1:
                return False
            query = "DELETE FROM tiles WHERE job_id = ?"
            await db.execute(query, (job_id,))
            query = (
                "INSERT INTO tiles (job_id, idx, prompt, image_seed, path, nsfw) VALUES (?, ?, ?, ?, ?, ?)"
            )
            await db.executemany(
                query, [(job_id, t.index, t.prompt, t.image_seed, t.path, int(t.nsfw)) for t in tiles]
            )
            return True

    async def mark_failed(self, job_id: str, reason: str, *, status: str = "failed") -> bool:
        """queued, or running here → failed/cancelled with a user-safe reason; False if final or not ours.

        A `running` row another instance owns is left alone: only its owner (or recovery, once the lease
        expired) ends it.
        """
        if status not in ("failed", "cancelled"):
            raise ValueError(f"`status` must be failed or cancelled, got {status!r}")
        async with self._write() as db:
            query = """
                UPDATE jobs SET status = ?, reason = ?, finished_at = ?
                WHERE id = ? AND (status = 'queued' OR (status = 'running' AND owner_instance = ?))
            """
            cursor = await db.execute(query, (status, reason[:500], time.time(), job_id, self.instance_id))
            return cursor.rowcount == 1

    async def release_running(
        self,
        job_id: str,
        *,
        requeue: bool,
        max_attempts: int,
        reason: str = "interrupted",
        spend_attempt: bool = True,
    ) -> str | None:
        """A `running` job this instance gives up (shutdown, a lost worker): back to `queued` while attempts
        remain and `requeue`, else `failed` with `reason`. Returns the new status, None if not its running row.

        With `spend_attempt=False` (a planned shutdown interrupted it) the attempt is handed back, so
        restarts never use up a job's attempts.
        """
        async with self._write() as db:
            query = """
                UPDATE jobs SET status = 'queued', owner_pid = NULL, owner_instance = NULL,
                    lease_expires_at = NULL, attempts = MAX(attempts - ?, 0)
                WHERE id = ? AND status = 'running' AND owner_instance = ? AND ? AND (attempts < ? OR ?)
            """
            refund = int(not spend_attempt)
            cursor = await db.execute(
                query, (refund, job_id, self.instance_id, int(requeue), max_attempts, refund)
            )
            if cursor.rowcount == 1:
                return "queued"
            query = """
                UPDATE jobs SET status = 'failed', reason = ?, finished_at = ?
                WHERE id = ? AND status = 'running' AND owner_instance = ?
            """
            cursor = await db.execute(query, (reason[:500], time.time(), job_id, self.instance_id))
            return "failed" if cursor.rowcount == 1 else None

    async def discard_unstarted(self, job_id: str) -> bool:
        """Delete a job that never reached a worker (the CLI could not connect): no row is left behind."""
        async with self._write() as db:
            query = "DELETE FROM jobs WHERE id = ? AND status IN ('queued', 'running')"
            cursor = await db.execute(query, (job_id,))
            return cursor.rowcount == 1

    async def requeue_unstarted(self, job_id: str) -> bool:
        """A `running` job no worker took (the workers were unreachable): back to `queued`, its attempt refunded."""
        async with self._write() as db:
            query = """
                UPDATE jobs SET status = 'queued', owner_pid = NULL, attempts = MAX(attempts - 1, 0)
                WHERE id = ? AND status = 'running'
            """
            cursor = await db.execute(query, (job_id,))
            return cursor.rowcount == 1

    async def cancel_queued(self, job_id: str) -> bool:
        """queued → cancelled; False when the job already runs somewhere or is final."""
        async with self._write() as db:
            query = """
                UPDATE jobs SET status = 'cancelled', reason = 'cancelled by its owner', finished_at = ?
                WHERE id = ? AND status = 'queued'
            """
            cursor = await db.execute(query, (time.time(), job_id))
            return cursor.rowcount == 1

    async def recover_dead_cli_jobs(self) -> list[str]:
        """CLI jobs (no Discord user) whose owner stopped renewing their lease (SIGKILL): `failed: interrupted`.

        Any CLI command runs this first; nobody would collect a re-queued CLI job. Discord jobs are left to
        the bot's own recovery, which requeues them.
        """
        _, failed = await self._recover_expired(requeue=False, max_attempts=0, cli_only=True)
        if failed:
            log.warning("%d CLI job(s) of a process that died marked interrupted", len(failed))
        return failed

    async def recover_interrupted(self, *, requeue: bool, max_attempts: int) -> tuple[list[str], list[str]]:
        """Rows whose owner's lease expired (it died): requeue (bounded attempts) or fail as `interrupted`.

        A row whose owner still renews its lease — another container's CLI, a bot — is left alone.
        """
        requeued, failed = await self._recover_expired(requeue=requeue, max_attempts=max_attempts)
        if requeued or failed:
            log.warning("recovered interrupted jobs: %d requeued, %d failed", len(requeued), len(failed))
        return requeued, failed

    async def take_over_expired(self, job_id: str, *, max_attempts: int) -> str | None:
        """One job whose owner's lease expired (the bot running a CLI's job died): back to `queued` within
        its attempts, else `failed: interrupted`. Returns the new status; None while its owner is alive."""
        requeued, failed = await self._recover_expired(requeue=True, max_attempts=max_attempts, job_id=job_id)
        return "queued" if requeued else "failed" if failed else None

    async def _recover_expired(
        self, *, requeue: bool, max_attempts: int, cli_only: bool = False, job_id: str | None = None
    ) -> tuple[list[str], list[str]]:
        requeued: list[str] = []
        failed: list[str] = []
        now = time.time()
        async with self._write() as db:
            # This instance's own rows are never "expired" to itself: it is alive, and renews them.
            query = """
                SELECT id, attempts, owner_instance, lease_expires_at FROM jobs
                WHERE status = 'running' AND (lease_expires_at IS NULL OR lease_expires_at < ?)
                    AND owner_instance IS NOT ?
            """
            params: tuple[Any, ...] = (now, self.instance_id)
            if cli_only:
                query += " AND user_id IS NULL AND channel_id IS NULL"
            if job_id is not None:
                query += " AND id = ?"
                params = (*params, job_id)
            for row in await db.execute_fetchall(query, params):
                if requeue and row["attempts"] < max_attempts:
                    query = """
                        UPDATE jobs SET status = 'queued', owner_pid = NULL, owner_instance = NULL,
                            lease_expires_at = NULL
                        WHERE id = ? AND status = 'running' AND owner_instance IS ?
                    """
                    target = requeued
                    params = (row["id"], row["owner_instance"])
                else:
                    query = """
                        UPDATE jobs SET status = 'failed', reason = 'interrupted', finished_at = ?
                        WHERE id = ? AND status = 'running' AND owner_instance IS ?
                    """
                    target = failed
                    params = (now, row["id"], row["owner_instance"])
                cursor = await db.execute(query, params)
                if cursor.rowcount == 1:
                    target.append(row["id"])
                    log.info(
                        "job %s: lease of %s expired %.0f s ago; taken over",
                        row["id"],
                        row["owner_instance"],
                        now - (row["lease_expires_at"] or now),
                    )
        return requeued, failed

    async def claim_delivery(self, job_id: str, *, message_id: int | None = None) -> bool:
        """pending → sending; False if someone already delivered it (at most once).

        `message_id` is the interaction response the result is about to be edited into: recorded before
        the edit, so a restart can look at that one message instead of scanning the channel.
        """
        async with self._write() as db:
            query = """
                UPDATE jobs SET delivery = 'sending', delivery_claimed_at = ?, message_id = ?
                WHERE id = ? AND delivery = 'pending'
            """
            cursor = await db.execute(query, (time.time(), message_id, job_id))
            return cursor.rowcount == 1

    async def mark_delivered(
        self, job_id: str, *, message_id: int | None, channel_id: int | None = None
    ) -> None:
        async with self._write() as db:
            query = """
                UPDATE jobs SET delivery = 'sent', message_id = COALESCE(?, message_id),
                    channel_id = COALESCE(channel_id, ?)
                WHERE id = ?
            """
            await db.execute(query, (message_id, channel_id, job_id))

    async def mark_undelivered(self, job_id: str, reason: str) -> None:
        """Discord refused every way to post the result: final, with the reason, kept in /history."""
        async with self._write() as db:
            query = (
                "UPDATE jobs SET delivery = 'none', message_id = NULL, undelivered_reason = ? WHERE id = ?"
            )
            await db.execute(query, (reason[:500], job_id))

    async def set_delivery_none(self, job_id: str) -> None:
        """Jobs nobody waits for in Discord (the CLI)."""
        async with self._write() as db:
            query = "UPDATE jobs SET delivery = 'none' WHERE id = ?"
            await db.execute(query, (job_id,))

    # -- reading ---------------------------------------------------------------------------------
    async def get_job(self, job_id: str) -> JobRecord | None:
        query = "SELECT * FROM jobs WHERE id = ?"
        async with self._lock:
            rows = await self._fetch_locked(query, (job_id,))
            if not rows:
                return None
            return await self._with_tiles(rows[0])

    async def _with_tiles(self, row: aiosqlite.Row) -> JobRecord:
        """The row with its tiles (caller holds the lock, so row and tiles come from one state)."""
        query = "SELECT idx, prompt, image_seed, path, nsfw FROM tiles WHERE job_id = ? ORDER BY idx"
        tiles = tuple(
            Tile(r["idx"], r["prompt"], r["image_seed"], r["path"], bool(r["nsfw"]))
            for r in await self._fetch_locked(query, (row["id"],))
        )
        return _record(row, tiles)

    async def list_jobs(
        self,
        *,
        user_id: int | None = None,
        guild_id: int | None = None,
        any_user: bool = False,
        limit: int = 10,
        offset: int = 0,
    ) -> list[JobRecord]:
        """Newest first; scoped to one user (and guild) unless `any_user`."""
        clauses, params = self._scope(user_id, guild_id, any_user)
        query = f"SELECT * FROM jobs {clauses} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?"
        async with self._lock:
            rows = await self._fetch_locked(query, (*params, limit, offset))
            return [await self._with_tiles(row) for row in rows]

    async def count_jobs(
        self, *, user_id: int | None = None, guild_id: int | None = None, any_user: bool = False
    ) -> int:
        clauses, params = self._scope(user_id, guild_id, any_user)
        query = f"SELECT COUNT(*) FROM jobs {clauses}"
        rows = await self._fetch(query, params)
        return int(rows[0][0]) if rows else 0

    @staticmethod
    def _scope(user_id: int | None, guild_id: int | None, any_user: bool) -> tuple[str, tuple[Any, ...]]:
        conditions: list[str] = []
        params: list[Any] = []
        if not any_user:
            conditions.append("user_id IS ?")
            params.append(user_id)
        if guild_id is not None:
            conditions.append("guild_id = ?")
            params.append(guild_id)
        return ("WHERE " + " AND ".join(conditions)) if conditions else "", tuple(params)

    async def pending_jobs(self) -> list[JobRecord]:
        """queued and running rows, oldest first."""
        query = "SELECT * FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_at, rowid"
        # Tiles are written only when a job is done, so pending rows have none: one query, not 1 + N.
        return [_record(row, ()) for row in await self._fetch(query)]

    async def undelivered_jobs(self, *, finished_before: float | None = None) -> list[JobRecord]:
        """Final Discord jobs whose result was never confirmed posted (`pending`, or `sending` at a crash)."""
        query = """
            SELECT * FROM jobs WHERE status IN ('done', 'failed', 'cancelled') AND delivery IN ('pending', 'sending')
                AND channel_id IS NOT NULL AND finished_at < ? ORDER BY created_at
        """
        cutoff = finished_before if finished_before is not None else time.time()
        async with self._lock:
            rows = await self._fetch_locked(query, (cutoff,))
            return [await self._with_tiles(row) for row in rows]

    async def reset_delivery(self, job_id: str) -> None:
        """sending → pending: a crash interrupted the post and the channel shows no result."""
        async with self._write() as db:
            query = "UPDATE jobs SET delivery = 'pending' WHERE id = ? AND delivery = 'sending'"
            await db.execute(query, (job_id,))

    async def delete_user_jobs(self, user_id: int, guild_id: int | None) -> list[JobRecord]:
        """Delete a user's final jobs (in a guild, or everywhere); return them so files can go too."""
        jobs = [
            job
            for job in await self.list_jobs(user_id=user_id, guild_id=guild_id, limit=1_000_000)
            if job.status in FINAL_STATES
        ]
        async with self._write() as db:
            query = "DELETE FROM jobs WHERE id = ?"
            await db.executemany(query, [(job.id,) for job in jobs])
        return jobs

    async def jobs_derived_from(self, job_ids: Sequence[str], *, other_than: int) -> list[JobRecord]:
        """Jobs of users other than `other_than` descended (through parent_id, at any depth) from `job_ids`
        that carry input images: copies of those jobs' pictures (a moderator's Reproduce of an upload)."""
        query = """
            WITH RECURSIVE derived(id) AS (
                SELECT id FROM jobs WHERE parent_id IN (SELECT value FROM json_each(?))
                UNION SELECT jobs.id FROM jobs JOIN derived ON jobs.parent_id = derived.id
            )
            SELECT * FROM jobs WHERE id IN (SELECT id FROM derived) AND user_id IS NOT ?
                AND (init_image IS NOT NULL OR mask_image IS NOT NULL)
        """
        async with self._lock:
            rows = await self._fetch_locked(query, (json.dumps(list(job_ids)), other_than))
            return [await self._with_tiles(row) for row in rows]

    # -- likes (⭐ on a tile, from Discord or the web gallery; a preference signal for training) ----------
    async def toggle_like(self, user_id: int, job_id: str, idx: int) -> bool:
        """Star or unstar one tile for this member; whether it is starred now (only existing tiles can be)."""
        async with self._write() as db:
            query = "DELETE FROM likes WHERE user_id = ? AND job_id = ? AND idx = ?"
            cursor = await db.execute(query, (user_id, job_id, idx))
            if cursor.rowcount:
                return False
            query = """
                INSERT INTO likes (user_id, job_id, idx, created_at)
                SELECT ?, job_id, idx, ? FROM tiles WHERE job_id = ? AND idx = ?
            """
            cursor = await db.execute(query, (user_id, time.time(), job_id, idx))
            return cursor.rowcount == 1

    async def delete_jobs(self, job_ids: Sequence[str]) -> None:
        """Delete these rows (and their tiles)."""
        async with self._write() as db:
            query = "DELETE FROM jobs WHERE id = ?"
            await db.executemany(query, [(job_id,) for job_id in job_ids])

    # -- preference presses (bot.train.expander) --------------------------------------------------
    async def tile_presses(self, *, guild_id: int | None, all_guilds: bool) -> list[TilePress]:
        """Every job made by pressing a button on one tile of an expanded grid, with that grid's prompts.

        Only rows that exist: /forget deletes a member's jobs (their presses with them) and the grids they
        made, so a forgotten member's picks never reach training.
        """
        query = """
            SELECT press.id AS press_id, press.action, press.source_tile, press.guild_id AS press_guild,
                grid.id AS grid_id, grid.seed_text, grid.job_seed, grid.guild_id, grid.expander_json
            FROM jobs AS press JOIN jobs AS grid ON press.parent_id = grid.id
            WHERE press.source_tile IS NOT NULL AND grid.status = 'done' AND grid.expand = 1 AND grid.count > 1
                AND (? OR grid.guild_id IS ?)
            ORDER BY press.created_at, press.rowid
        """
        presses: list[TilePress] = []
        async with self._lock:
            for row in await self._fetch_locked(query, (int(all_guilds), guild_id)):
                tiles = await self._fetch_locked(
                    "SELECT prompt FROM tiles WHERE job_id = ? ORDER BY idx", (row["grid_id"],)
                )
                presses.append(
                    TilePress(
                        press_id=row["press_id"],
                        action=row["action"],
                        tile=row["source_tile"],
                        grid_id=row["grid_id"],
                        guild_id=row["guild_id"],
                        seed_text=row["seed_text"],
                        job_seed=row["job_seed"],
                        prompts=tuple(r["prompt"] for r in tiles),
                        expander=json.loads(row["expander_json"]) if row["expander_json"] else {},
                    )
                )
        return presses

    async def sibling_jobs(self, group_id: str) -> list[JobRecord]:
        """The jobs one /imagine queued together (permutations, --repeat), in the order they were queued."""
        query = "SELECT * FROM jobs WHERE group_id = ? ORDER BY created_at, rowid"
        async with self._lock:
            rows = await self._fetch_locked(query, (group_id,))
            return [await self._with_tiles(row) for row in rows]

    # -- meta ----------------------------------------------------------------------------------------
    async def get_meta(self, key: str) -> str | None:
        query = "SELECT value FROM meta WHERE key = ?"
        rows = await self._fetch(query, (key,))
        return str(rows[0][0]) if rows else None

    async def set_meta(self, key: str, value: str) -> None:
        async with self._write() as db:
            query = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            await db.execute(query, (key, value))


def _statements(script: str) -> list[str]:
    """A migration's statements: cut at `;` where a statement ends (a trigger's body holds `;` too)."""
    statements: list[str] = []
    pending = ""
    for part in script.split(";"):
        pending += part + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending.strip())
            pending = ""
    if pending.strip(" \n;"):
        statements.append(pending.strip())
    return statements


async def _rollback(db: aiosqlite.Connection) -> None:
    """Queue a ROLLBACK; shielded, so a second cancellation cannot skip it. "No transaction" is fine."""
    try:
        await asyncio.shield(db.execute("ROLLBACK"))
    except sqlite3.OperationalError:
        pass  # BEGIN itself failed (busy), or COMMIT had already ended the transaction
    except asyncio.CancelledError:
        pass  # the ROLLBACK is queued and will run before any later statement; the caller re-raises


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no Infinity/NaN (scheduler configs carry -inf)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _dumps(value: Any) -> str:
    return json.dumps(_json_safe(value), allow_nan=False)


def _record(row: aiosqlite.Row, tiles: tuple[Tile, ...]) -> JobRecord:
    def loads(value: str | None) -> Any:
        return json.loads(value) if value else None

    given_prompts = loads(row["given_prompts"])
    given_seeds = loads(row["given_seeds"])
    return JobRecord(
        id=row["id"],
        parent_id=row["parent_id"],
        action=row["action"],
        status=row["status"],
        reason=row["reason"],
        seed_text=row["seed_text"],
        negative=row["negative"],
        count=row["count"],
        steps=row["steps"],
        guidance=row["guidance"],
        width=row["width"],
        height=row["height"],
        job_seed=row["job_seed"],
        expand=bool(row["expand"]),
        safe_mode=bool(row["safe_mode"]),
        source_tile=row["source_tile"],
        strength=row["strength"],
        given_prompts=tuple(given_prompts) if given_prompts is not None else None,
        given_seeds=tuple(given_seeds) if given_seeds is not None else None,
        init_image=row["init_image"],
        user_id=row["user_id"],
        guild_id=row["guild_id"],
        channel_id=row["channel_id"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        attempts=row["attempts"],
        expander=loads(row["expander_json"]) or {},
        render=loads(row["render_json"]) or {},
        grid_path=row["grid_path"],
        delivery=row["delivery"],
        message_id=row["message_id"],
        tiles=tiles,
        undelivered_reason=row["undelivered_reason"],
        delivery_claimed_at=row["delivery_claimed_at"],
        mask_image=row["mask_image"],
        chaos=row["chaos"],
        render_action=row["render_action"],
        private=bool(row["private"]),
        from_defaults=tuple(filter(None, row["from_defaults"].split(","))),
        mitigation=loads(row["mitigation"]),
        model=row["model"],
        loras=_loras_from(row["loras"]),
        group_id=row["group_id"],
        tiling=bool(row["tiling"]),
    )


def _loras_json(loras: tuple[LoraRef, ...]) -> str | None:
    return json.dumps([{"name": r.name, "weight": r.weight} for r in loras]) if loras else None


def _loras_from(text: str | None) -> tuple[LoraRef, ...]:
    return tuple(LoraRef(str(r["name"]), float(r["weight"])) for r in json.loads(text)) if text else ()
