"""`python -m bot workers`: deploy the worker application through the Ray dashboard's REST API, no driver.

Why REST and not Ray's Jobs API or a driver: a driver must be a Ray node (a container or host that is not one
fails with "No node info found"), and a Jobs API submission runs a driver on the head that must stay alive; a
`PUT /api/serve/applications/` is what `serve deploy` does, needs only HTTP to the dashboard, and leaves
nothing running. The PUT is declarative and replaces every application on the cluster, so we GET what is
deployed and put it back alongside ours. No secret goes into the config: the workers read their token and
settings on their own node. Imports no Ray.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.engine.workers.protocol import (
    APP_NAME,
    DEPLOYMENT_NAME,
    ROUTE_PREFIX,
    STATUS_APP_NAME,
    STATUS_ROUTE_PREFIX,
)

REQUEST_TIMEOUT_SECONDS = 30.0
POLL_SECONDS = 1.0
IMPORT_PATH = "bot.engine.workers.serve_app:build_app"
STATUS_IMPORT_PATH = "bot.engine.workers.serve_app:build_status_app"
OURS = (APP_NAME, STATUS_APP_NAME)


class DeployError(Exception):
    """The deploy cannot go on; the message is one line for an operator."""


@dataclass(frozen=True)
class DeployTarget:
    """Where and what to deploy."""

    dashboard: str
    replicas: int | None
    gpus_per_replica: str | float
    port: int
    ray_token: str | None = None
    # Extra engine arguments for the replicas (bench/scaleout.py: `preview_every`); never secrets.
    engine_args: dict[str, Any] = field(default_factory=dict)


def ray_token(mode: str | None, token: str | None, token_path: Path | None) -> str | None:
    """The Ray cluster's auth token when RAY_AUTH_MODE=token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray)."""
    if (mode or "").strip().lower() != "token":
        return None
    if token:
        return token.strip()
    path = token_path or Path.home() / ".ray" / "auth_token"
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise DeployError(
            f"RAY_AUTH_MODE=token but the Ray token cannot be read from {path} ({exc.strerror}): "
            "set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH to the cluster's token"
        ) from None
    if not text:
        raise DeployError(f"RAY_AUTH_MODE=token but {path} is empty")
    return text


class Dashboard:
    """A tiny JSON client for the Ray dashboard (plain urllib: the CLI needs nothing more)."""

    def __init__(self, base: str, token: str | None) -> None:
        self.base = base.rstrip("/")
        if "://" not in self.base:
            self.base = "http://" + self.base
        self.token = token

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        request.add_header("Accept", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        # The dashboard answers on a private address: never through an HTTP proxy from the environment.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            text = " ".join(exc.read().decode("utf-8", "replace").split())[:400]
            if exc.code in (401, 403):
                raise DeployError(
                    f"the Ray dashboard at {self.base} refused the request ({exc.code}): "
                    "set RAY_AUTH_MODE=token and the cluster's RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH)"
                ) from None
            raise DeployError(f"the Ray dashboard at {self.base} answered {exc.code}: {text}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            reason = getattr(reason, "strerror", None) or str(reason)
            raise DeployError(
                f"cannot reach the Ray dashboard at {self.base}: {reason} (RAY_DASHBOARD_ADDRESS)"
            ) from None
        return json.loads(raw) if raw.strip() else None


def _cluster_gpus(dashboard: Dashboard) -> float:
    """GPUs across alive nodes (the state API); 0 when it cannot tell."""
    try:
        data = dashboard.call("GET", "/api/v0/nodes?limit=1000&detail=true")
        nodes = data["data"]["result"]["result"]
    except (DeployError, KeyError, TypeError):
        return 0.0
    return sum(
        float((node.get("resources_total") or {}).get("GPU", 0.0))
        for node in nodes
        if node.get("state") == "ALIVE"
    )


def build_config(current: dict[str, Any], applications: list[dict[str, Any]], port: int) -> dict[str, Any]:
    """The full Serve config: every application deployed now (theirs unchanged) plus ours, replaced."""
    others = [
        app["deployed_app_config"]
        for name, app in (current.get("applications") or {}).items()
        if name not in OURS and app.get("deployed_app_config")
    ]
    http = current.get("http_options") or {}
    return {
        "proxy_location": current.get("proxy_location") or "HeadOnly",
        # Serve cannot move a running proxy: keep its host/port when one runs, else ours.
        "http_options": {"host": http.get("host") or "0.0.0.0", "port": http.get("port") or port}
        if others
        else {"host": "0.0.0.0", "port": port},
        "applications": [*others, *applications],
    }


def status_application_config() -> dict[str, Any]:
    """The status application: the replica count, answered apart from the busy render replicas."""
    return {"name": STATUS_APP_NAME, "route_prefix": STATUS_ROUTE_PREFIX, "import_path": STATUS_IMPORT_PATH}


def application_config(
    replicas: int, gpus: float, engine_args: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Our render application: no environment, no secrets (the nodes have the settings)."""
    cpu_only = gpus == 0
    args: dict[str, Any] = {"device": "cpu", "torch_threads": 1} if cpu_only else {}
    return {
        "name": APP_NAME,
        "route_prefix": ROUTE_PREFIX,
        "import_path": IMPORT_PATH,
        "args": {**args, **(engine_args or {})},
        "deployments": [
            {
                "name": DEPLOYMENT_NAME,
                "num_replicas": replicas,
                "max_ongoing_requests": 1,
                # On a CPU-only box every replica takes one CPU and pins torch to one thread.
                "ray_actor_options": {"num_gpus": gpus, "num_cpus": 1 if cpu_only else 0},
            }
        ],
    }


def replica_counts(current: dict[str, Any]) -> tuple[str, int, int, str]:
    """(status, running, target, message) of our worker deployment in a GET answer."""
    app = (current.get("applications") or {}).get(APP_NAME)
    if app is None:
        return "NOT_DEPLOYED", 0, 0, ""
    deployment = (app.get("deployments") or {}).get(DEPLOYMENT_NAME) or {}
    replicas = deployment.get("replicas") or []
    running = sum(1 for replica in replicas if replica.get("state") == "RUNNING")
    target = int(deployment.get("target_num_replicas") or 0)
    message = " ".join(str(deployment.get("message") or app.get("message") or "").split())
    status = str(app.get("status") or "UNKNOWN")
    if status == "RUNNING" and deployment.get("status") not in (None, "HEALTHY"):
        status = str(deployment.get("status"))
    return status, running, target, message


def workers_url(dashboard: str, port: int) -> str:
    """The Serve proxy's base URL on the dashboard's host (what the bot's IMAGINE_WORKERS_URL should be)."""
    base = dashboard if "://" in dashboard else "http://" + dashboard
    host = urllib.parse.urlsplit(base).hostname or "127.0.0.1"
    return f"http://{host}:{port}"


def deploy_workers(
    target: DeployTarget, *, timeout: float = 900.0, say: Callable[[str], None] = print
) -> str:
    """Deploy or update the application and wait until every replica runs; returns the workers' URL."""
    dashboard = Dashboard(target.dashboard, target.ray_token)
    current = dashboard.call("GET", "/api/serve/applications/") or {}
    gpus_setting = target.gpus_per_replica
    cluster_gpus = _cluster_gpus(dashboard) if gpus_setting == "auto" or target.replicas is None else 0.0
    gpus = (1.0 if cluster_gpus >= 1 else 0.0) if gpus_setting == "auto" else float(gpus_setting)
    replicas = target.replicas
    if replicas is None:
        replicas = max(1, int(cluster_gpus // gpus)) if gpus > 0 else 1
    if replicas < 1:
        raise DeployError(f"`--replicas` must be >= 1, got {replicas}")
    ours = [application_config(replicas, gpus, target.engine_args), status_application_config()]
    config = build_config(current, ours, target.port)
    port = int(config["http_options"]["port"])
    url = workers_url(target.dashboard, port)
    kept = [app["name"] for app in config["applications"] if app["name"] not in OURS]
    say(
        f"deploying {replicas} worker replica(s) ({gpus:g} GPU each) through {dashboard.base}"
        + (f", keeping the application(s) {', '.join(kept)}" if kept else "")
    )
    dashboard.call("PUT", "/api/serve/applications/", config)
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        time.sleep(POLL_SECONDS)
        answer = dashboard.call("GET", "/api/serve/applications/") or {}
        status, running, wanted, message = replica_counts(answer)
        status_app = str(((answer.get("applications") or {}).get(STATUS_APP_NAME) or {}).get("status"))
        line = f"  {status}: {running}/{replicas} replica(s) running" + (f" — {message}" if message else "")
        if line != last:
            say(line[:300])
            last = line
        if status == "RUNNING" and running >= replicas and wanted == replicas and status_app == "RUNNING":
            break
        if status == "DEPLOY_FAILED":
            raise DeployError(f"the worker replicas failed to start: {message[:400]}")
        if time.monotonic() > deadline:
            raise DeployError(f"the worker replicas were not ready within {timeout:.0f} s ({status})")
    say(f"ready: {running} worker replica(s) running; give the bot IMAGINE_WORKERS_URL={url}")
    return url
