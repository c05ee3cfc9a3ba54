"""Prometheus `/metrics` (prometheus-client's exposition format), read from the database and the bot's
heartbeat at each scrape, served by `bot web` on IMAGINE_WEB_METRICS_BIND."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from bot.store import HistoryStore
from bot.web.queries import GalleryQueries

BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
STATUSES = ("queued", "running", "done", "failed", "cancelled")
HEARTBEAT_MAX_AGE = 90.0


def read_heartbeat(path: Path, now: float | None = None) -> dict[str, Any]:
    """The bot's heartbeat file as a dict, with `fresh` added (False when absent, unreadable or stale)."""
    now = time.time() if now is None else now
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"fresh": False, "connected": False, "runner_ok": False, "runner": "no heartbeat file"}
    if not isinstance(data, dict):
        return {"fresh": False, "connected": False, "runner_ok": False, "runner": "malformed heartbeat"}
    ts = data.get("ts")
    data["fresh"] = isinstance(ts, int | float) and now - ts <= HEARTBEAT_MAX_AGE
    data["age"] = now - ts if isinstance(ts, int | float) else None
    return data


async def _histogram(store: HistoryStore, expression: str) -> tuple[list[tuple[str, float]], float]:
    """Cumulative buckets and the sum of `expression` over finished jobs, counted by SQLite in one pass."""
    counts = ", ".join(f"SUM({expression} <= {bound})" for bound in BUCKETS)
    query = f"""
        SELECT {counts}, COUNT(*), COALESCE(SUM({expression}), 0) FROM jobs
        WHERE status = 'done' AND started_at IS NOT NULL AND finished_at IS NOT NULL
    """
    row = (await store.read(query))[0]
    values = [int(v or 0) for v in tuple(row)[: len(BUCKETS) + 1]]
    buckets = [(str(bound), float(n)) for bound, n in zip(BUCKETS, values, strict=False)]
    buckets.append(("+Inf", float(values[-1])))
    return buckets, float(tuple(row)[-1])


class _Snapshot(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics


async def render_metrics(store: HistoryStore, heartbeat_path: Path) -> bytes:
    """The exposition text: jobs by status, queue wait and render seconds, bot and render backend up."""
    jobs = GaugeMetricFamily("imagine_jobs", "Jobs in the history database by status", labels=["status"])
    counts = await GalleryQueries(store).status_counts()
    for status in STATUSES:
        jobs.add_metric([status], counts.get(status, 0))
    metrics: list[Metric] = [jobs]
    for name, help_text, expression in (
        (
            "imagine_queue_wait_seconds",
            "Seconds a finished job waited in the queue",
            "started_at - created_at",
        ),
        ("imagine_render_seconds", "Seconds a finished job rendered", "finished_at - started_at"),
    ):
        buckets, total = await _histogram(store, expression)
        metrics.append(HistogramMetricFamily(name, help_text, buckets=buckets, sum_value=total))
    heartbeat = read_heartbeat(heartbeat_path)
    bot_up = GaugeMetricFamily("imagine_bot_up", "1 when the bot's heartbeat is fresh and it is connected")
    bot_up.add_metric([], 1.0 if heartbeat["fresh"] and heartbeat.get("connected") else 0.0)
    workers_up = GaugeMetricFamily(
        "imagine_render_backend_up", "1 when the bot reports its dispatcher and GPU workers healthy"
    )
    workers_up.add_metric([], 1.0 if heartbeat["fresh"] and heartbeat.get("runner_ok") else 0.0)
    metrics += [bot_up, workers_up]
    registry = CollectorRegistry()
    registry.register(_Snapshot(metrics))
    return generate_latest(registry)
