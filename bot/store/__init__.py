"""The history store: every job in SQLite (aiosqlite, WAL, numbered migrations, BEGIN IMMEDIATE writes).

`HistoryStore` is one connection (`db.Database`) with the query groups over it, one module each:
`jobs` (rows: create under the limits, read, list, delete), `lifecycle` (leases, attempts, recovery),
`delivery` (whether a result reached Discord), `likes` (⭐ and tile presses). What they read and write is
in `records`; the schema in `schema`. Modules with queries of their own (the web gallery, preferences)
use `read` / `transaction` on the same connection.
"""

from __future__ import annotations

from bot.store.db import (
    DEFAULT_LEASE_SECONDS,
    MAX_LEASE_SECONDS,
    StoreError,
    describe_database_error,
    new_instance_id,
)
from bot.store.delivery import DeliveryQueries
from bot.store.lifecycle import LifecycleQueries
from bot.store.likes import LikeQueries
from bot.store.records import (
    Cooldown,
    JobRecord,
    JobSpec,
    QueueFull,
    QueueRefused,
    Tile,
    TilePress,
    UserLimit,
    new_job_id,
)
from bot.store.schema import FINAL_STATES, MIGRATIONS, PENDING_STATES, _statements

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "FINAL_STATES",
    "MAX_LEASE_SECONDS",
    "MIGRATIONS",
    "PENDING_STATES",
    "Cooldown",
    "HistoryStore",
    "JobRecord",
    "JobSpec",
    "QueueFull",
    "QueueRefused",
    "StoreError",
    "Tile",
    "TilePress",
    "UserLimit",
    "_statements",
    "describe_database_error",
    "new_instance_id",
    "new_job_id",
]


class HistoryStore(LifecycleQueries, DeliveryQueries, LikeQueries):
    """One connection to `history.sqlite3` and every query of the jobs over it.

    A process opens one store, so the store's `instance_id` is the process's identity as a job owner: a
    `running` row names its owner instance and holds a lease the owner renews (`renew_leases`); recovery
    takes over only rows whose lease expired, and only the owner may finish or give back its rows.
    """
