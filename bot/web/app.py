"""`python -m bot web`: build the gallery's resources once, serve it and Prometheus' /metrics."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import jinja2
from aiohttp import web

from bot.settings import Settings, SettingsError
from bot.store import HistoryStore
from bot.web.auth import Auth, RateLimiter
from bot.web.metrics import render_metrics
from bot.web.queries import GalleryQueries
from bot.web.routes import CTX, WebContext, add_routes, current_session, render

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
# No inline script or style anywhere: the page's own files only; images from us alone.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status in (401, 403, 404, 405) and exc.content_type == "text/plain":
            await current_session(request)
            response = render(request, "error.html", status=exc.status, message=exc.text or exc.reason)
            response.headers.update(SECURITY_HEADERS)
            return response
        exc.headers.update(SECURITY_HEADERS)
        raise
    except Exception:
        log.exception("web: unexpected error on %s %s", request.method, request.path)
        response = web.Response(text="Something went wrong on our side.", status=500)
    response.headers.update(SECURITY_HEADERS)
    return response


def _redirect_base(settings: Settings) -> str:
    if settings.web_url:
        return settings.web_url
    host, _, port = settings.web_bind.rpartition(":")
    return f"http://{host}:{port}"


def check_web_settings(settings: Settings) -> tuple[str, str, str]:
    """(client id, client secret, session secret); SettingsError naming the first one missing."""
    missing = [
        name
        for name, value in (
            ("IMAGINE_WEB_CLIENT_ID", settings.web_client_id),
            ("IMAGINE_WEB_CLIENT_SECRET", settings.web_client_secret),
            ("IMAGINE_WEB_SESSION_SECRET", settings.web_session_secret),
        )
        if not value
    ]
    if missing:
        raise SettingsError(
            f"`bot web` needs {missing[0]} (or {missing[0]}_FILE): README → Web gallery says where to get it"
        )
    assert settings.web_client_id and settings.web_client_secret and settings.web_session_secret
    session_secret = settings.web_session_secret.get_secret_value()
    if len(session_secret) < 16:
        raise SettingsError(
            "IMAGINE_WEB_SESSION_SECRET must be at least 16 characters (32 random bytes is good)"
        )
    return settings.web_client_id, settings.web_client_secret.get_secret_value(), session_secret


def build_app(
    settings: Settings,
    store: HistoryStore,
    *,
    refresh_seconds: float = 300.0,
    login_limit: int = 10,
) -> web.Application:
    """The gallery as an aiohttp application over an open store (tests call this with the fake Discord)."""
    client_id, client_secret, session_secret = check_web_settings(settings)
    base = _redirect_base(settings)
    auth = Auth(
        discord_url=settings.web_discord_url,
        client_id=client_id,
        client_secret=client_secret,
        session_secret=session_secret,
        redirect_uri=f"{base}/callback",
        secure_cookies=base.startswith("https://"),
        refresh_seconds=refresh_seconds,
    )
    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(("html",)),
        undefined=jinja2.StrictUndefined,
    )
    app = web.Application(middlewares=[security_headers], client_max_size=64 * 1024)
    app[CTX] = WebContext(
        store=store,
        queries=GalleryQueries(store),
        auth=auth,
        templates=templates,
        images_dir=settings.images_dir,
        thumbs_dir=settings.data_dir / "web-thumbnails",
        data_dir=settings.data_dir,
        heartbeat_path=settings.heartbeat_path,
        admins=frozenset(settings.web_admins),
        login_limiter=RateLimiter(login_limit, 60.0),
        web_url=settings.web_url,
    )
    add_routes(app)
    app.router.add_static("/static", HERE / "static", append_version=True)

    async def close_auth(_: web.Application) -> None:
        await auth.close()

    app.on_cleanup.append(close_auth)
    return app


def build_metrics_app(settings: Settings, store: HistoryStore) -> web.Application:
    """Prometheus' /metrics alone, on its own address (keep it off the public one)."""

    async def metrics(_: web.Request) -> web.Response:
        body = await render_metrics(store, settings.heartbeat_path)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


def _split_bind(bind: str) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    return host.strip("[]"), int(port)


async def serve(settings: Settings) -> None:
    """Run the gallery and /metrics until SIGINT or SIGTERM."""
    check_web_settings(settings)
    async with HistoryStore(settings.db_path) as store:
        runners: list[web.AppRunner] = []
        try:
            for app, bind in (
                (build_app(settings, store), settings.web_bind),
                (build_metrics_app(settings, store), settings.web_metrics_bind),
            ):
                runner = web.AppRunner(app, access_log=None)
                await runner.setup()
                runners.append(runner)
                host, port = _split_bind(bind)
                try:
                    await web.TCPSite(runner, host, port).start()
                except OSError as exc:
                    raise SettingsError(f"cannot listen on {bind} ({exc.strerror or exc})") from None
            log.info(
                "web gallery on http://%s, metrics on http://%s/metrics",
                settings.web_bind,
                settings.web_metrics_bind,
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        finally:
            for runner in reversed(runners):
                await runner.cleanup()
