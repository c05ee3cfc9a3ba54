"""The web gallery on a big history: 100,000 synthetic jobs (400,000 tiles) in SQLite.

Builds the database at schema 4 with plain inserts, then opens it with the store, whose migration indexes
every existing row for search (timed). Then the median server time, over `--reps` requests each, of:
a member's "My images" page (60 tiles), the server feed, page 50 of My images, and searches (full text, with
filters), each through the real aiohttp app (routing, session, SQL, template) on loopback, and the SQL alone.
Also the size of a thumbnail of a 768x768 picture full of detail (the worst case for WebP).

    python -m bench.web_gallery                    # 100,000 jobs x 4 tiles, 15 reps
    python -m bench.web_gallery --jobs 20000       # quicker

Reports; does not assert (the issue's goal: each <= 50 ms median on this box; thumbnails <= 15 KB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from bench._common import machine_line

WORDS = [
    "castle",
    "forest",
    "river",
    "mountain",
    "city",
    "night",
    "dawn",
    "dragon",
    "robot",
    "garden",
    "ocean",
    "lighthouse",
    "portrait",
    "cat",
    "fox",
    "desert",
    "temple",
    "neon",
    "rain",
    "snow",
    "harbour",
    "market",
    "bridge",
    "tower",
    "village",
    "storm",
    "galaxy",
    "meadow",
    "canyon",
    "train",
]
STYLES = ("oil painting", "watercolor", "photo, 35mm", "concept art", "ink drawing", "isometric render")
SIZES = ((768, 768), (768, 512), (512, 768), (1024, 576), (576, 1024))


def build_database(path: Path, jobs: int, *, members: int, guilds: int, seed: int = 0) -> None:
    from bot.store import MIGRATIONS, _statements

    rng = random.Random(seed)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    for script in MIGRATIONS[:4]:
        for statement in _statements(script):
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 4")
    now = time.time()
    job_rows = []
    tile_rows = []
    for n in range(jobs + jobs // 20):
        job_id = f"{n:010x}"
        words = rng.sample(WORDS, 3)
        width, height = rng.choice(SIZES)
        # `jobs` finished grids of 4 tiles, and one failed or cancelled job (no tiles) for every 20 of them
        status = "done" if n < jobs else rng.choice(("failed", "cancelled"))
        created = now - rng.random() * jobs * 30.0
        job_rows.append(
            (
                job_id,
                "imagine",
                status,
                " ".join(words),
                rng.choice(("", "", "blurry", "night")),
                4,
                25,
                7.5,
                width,
                height,
                rng.randrange(2**32),
                1,
                int(rng.random() > 0.05),
                rng.randrange(members) + 1,
                rng.randrange(guilds) + 1,
                555,
                created,
                created + 5,
                created + 20,
                "sent" if status == "done" else "none",
                int(rng.random() < 0.1),
            )
        )
        if status == "done":
            for idx in range(1, 5):
                prompt = (
                    f"{' '.join(words)}, {rng.choice(STYLES)}, {rng.choice(WORDS)} light, highly detailed"
                )
                tile_rows.append(
                    (
                        job_id,
                        idx,
                        prompt,
                        rng.randrange(2**32),
                        f"/data/generated_images/{job_id}/{idx}.png",
                        int(rng.random() < 0.01),
                    )
                )
    conn.executemany(
        """INSERT INTO jobs (id, action, status, seed_text, negative, count, steps, guidance, width, height, job_seed,
            expand, safe_mode, user_id, guild_id, channel_id, created_at, started_at, finished_at, delivery, private)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        job_rows,
    )
    conn.executemany(
        "INSERT INTO tiles (job_id, idx, prompt, image_seed, path, nsfw) VALUES (?, ?, ?, ?, ?, ?)", tile_rows
    )
    conn.commit()
    conn.close()


def thumbnail_bytes(folder: Path) -> int:
    from PIL import Image

    from bot.web.thumbs import thumbnail

    rng = random.Random(1)
    image = Image.effect_noise((768, 768), 64).convert("RGB")
    image = Image.merge(
        "RGB",
        [image.getchannel(0).point(lambda v, k=k: (v * (k + 1) + rng.randrange(40)) % 256) for k in range(3)],
    )
    source = folder / "detail.png"
    image.save(source)
    return thumbnail(source, folder / "detail.webp", blur=False).stat().st_size


async def measure(path: Path, reps: int, members: int, guilds: int) -> list[tuple[str, float, float]]:
    from aiohttp.test_utils import TestClient, TestServer

    from bot.settings import Settings
    from bot.store import HistoryStore
    from bot.web.app import build_app
    from bot.web.auth import SESSION_COOKIE, Session
    from bot.web.queries import Viewer
    from bot.web.routes import CTX
    from bot.web.search import parse_search

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        data_dir=path.parent,
        web_client_id="1",
        web_client_secret="bench-secret",
        web_session_secret="bench-session-secret-0123456789",
    )
    results = []
    async with HistoryStore(path) as store:
        app = build_app(settings, store)
        ctx = app[CTX]
        user = 7
        member_of = frozenset(range(1, guilds + 1))
        session = Session(
            "bench", user, "bench", member_of, frozenset(), "token", "csrf", time.time(), time.time() + 1e9
        )
        ctx.auth._sessions[session.id] = session
        ctx.auth.refresh_seconds = 1e12
        viewer = Viewer(user, "bench", member_of, frozenset())
        cases = [
            ("My images, page 1", "/mine", "mine", "", 0),
            ("Server feed, page 1", "/feed", "feed", "", 0),
            ("My images, page 5", "/mine?page=5", "mine", "", 5),
            ("Search feed: castle", "/feed?q=castle", "feed", "castle", 0),
            (
                "Search mine: castle aspect:16:9 -night",
                "/mine?q=castle+aspect%3A16%3A9+-night",
                "mine",
                "castle aspect:16:9 -night",
                0,
            ),
            ("Search feed: seed number", None, "feed", "", 0),
            (
                "Search feed: castle before: after: (a week)",
                "/feed?q=castle+after%3A2000-01-01+before%3A2100-01-01",
                "feed",
                "castle after:2000-01-01 before:2100-01-01",
                0,
            ),
        ]
        seed_row = await store.read(
            "SELECT job_seed FROM jobs WHERE status = 'done' AND private = 0 ORDER BY rowid DESC LIMIT 1"
        )
        seed_q = str(seed_row[0][0])
        async with TestClient(TestServer(app)) as client:
            client.session.cookie_jar.update_cookies(
                {SESSION_COOKIE: ctx.auth.cookie_value(session)}, client.make_url("/")
            )
            for label, url, scope, q, page in cases:
                if url is None:
                    url, q = f"/feed?q={seed_q}", seed_q
                sql_times, http_times = [], []
                query = parse_search(q)
                for _ in range(reps):
                    t0 = time.perf_counter()
                    items, _ = await ctx.queries.grid(viewer, scope=scope, query=query, page=page)
                    sql_times.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    response = await client.get(url)
                    await response.read()
                    http_times.append(time.perf_counter() - t0)
                    assert response.status == 200
                results.append(
                    (
                        f"{label} ({len(items)} tiles)",
                        statistics.median(sql_times) * 1000,
                        statistics.median(http_times) * 1000,
                    )
                )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--members", type=int, default=200, help="distinct members who made the jobs")
    parser.add_argument("--guilds", type=int, default=3, help="servers (the bench member belongs to all)")
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        path = Path(tmp) / "history.sqlite3"
        t0 = time.perf_counter()
        build_database(path, args.jobs, members=args.members, guilds=args.guilds)
        built = time.perf_counter() - t0
        conn = sqlite3.connect(path)
        (tiles,) = conn.execute("SELECT COUNT(*) FROM tiles").fetchone()
        conn.close()
        print(f"built {args.jobs:,} jobs, {tiles:,} tiles in {built:.1f} s")
        from bot.store import HistoryStore

        async def migrate() -> float:
            t = time.perf_counter()
            async with HistoryStore(path):
                pass
            return time.perf_counter() - t

        print(f"migration 5 (indexes every existing row for search): {asyncio.run(migrate()):.1f} s")
        results = asyncio.run(measure(path, args.reps, args.members, args.guilds))
        print(f"\n{'case':60} {'SQL ms':>8} {'HTTP ms':>8}   (medians of {args.reps})")
        for label, sql_ms, http_ms in results:
            print(f"{label:60} {sql_ms:8.1f} {http_ms:8.1f}")
        print(
            f"\nthumbnail of a 768x768 picture of pure detail (noise): {thumbnail_bytes(Path(tmp)):,} bytes (goal <= 15,360)"
        )
        print(json.dumps({"jobs": args.jobs, "tiles": tiles}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
