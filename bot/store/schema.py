"""The history database's schema: numbered migrations, applied in order (PRAGMA user_version)."""

from __future__ import annotations

import sqlite3

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
