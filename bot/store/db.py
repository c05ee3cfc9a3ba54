"""The connection to `history.sqlite3`: opening, pragmas, migrations, one lock, BEGIN IMMEDIATE writes."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Self

import aiosqlite

from bot.store.schema import MIGRATIONS, _statements

log = logging.getLogger(__name__)

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


def new_instance_id() -> str:
    """A process's identity as a job owner: random, since PIDs repeat across containers."""
    return secrets.token_hex(8)


class Database:
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

    async def __aenter__(self) -> Self:
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

    # -- meta ----------------------------------------------------------------------------------------
    async def get_meta(self, key: str) -> str | None:
        query = "SELECT value FROM meta WHERE key = ?"
        rows = await self._fetch(query, (key,))
        return str(rows[0][0]) if rows else None

    async def set_meta(self, key: str, value: str) -> None:
        async with self._write() as db:
            query = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            await db.execute(query, (key, value))


async def _rollback(db: aiosqlite.Connection) -> None:
    """Queue a ROLLBACK; shielded, so a second cancellation cannot skip it. "No transaction" is fine."""
    try:
        await asyncio.shield(db.execute("ROLLBACK"))
    except sqlite3.OperationalError:
        pass  # BEGIN itself failed (busy), or COMMIT had already ended the transaction
    except asyncio.CancelledError:
        pass  # the ROLLBACK is queued and will run before any later statement; the caller re-raises
