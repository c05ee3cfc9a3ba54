"""The gallery's pages: each route parses, asks the queries and the policy, and renders a template."""

from __future__ import annotations

import asyncio
import io
import logging
import shlex
import shutil
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from math import gcd
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web

from bot.forgetting import StillRendering, forget_job
from bot.policy import web_may_delete, web_may_view
from bot.store import HistoryStore, JobRecord
from bot.web.auth import LOGIN_COOKIE, SESSION_COOKIE, Auth, LoginFailed, RateLimiter, Session, safe_next
from bot.web.metrics import read_heartbeat
from bot.web.queries import GalleryQueries, Viewer
from bot.web.search import SYNTAX_HELP, SearchQuery, SearchSyntaxError, parse_search
from bot.web.thumbs import thumbnail

log = logging.getLogger(__name__)

JOB_ID = r"{job_id:[0-9a-f]{10}}"
TILE = r"{idx:[0-9]{1,2}}"


@dataclass(frozen=True)
class WebContext:
    """Everything the routes use, built once in app.py."""

    store: HistoryStore
    queries: GalleryQueries
    auth: Auth
    templates: jinja2.Environment
    images_dir: Path
    thumbs_dir: Path
    data_dir: Path
    heartbeat_path: Path
    admins: frozenset[int]
    login_limiter: RateLimiter
    web_url: str | None


CTX: web.AppKey[WebContext] = web.AppKey("ctx", WebContext)
SESSION: web.RequestKey[Session | None] = web.RequestKey("session", object)  # type: ignore[arg-type]


def _ctx(request: web.Request) -> WebContext:
    return request.app[CTX]


def _client_key(request: web.Request) -> str:
    remote = request.remote or "?"
    forwarded = request.headers.get("X-Forwarded-For")
    if forwarded and remote in ("127.0.0.1", "::1"):
        return forwarded.split(",")[-1].strip()  # the address our own reverse proxy saw
    return remote


async def current_session(request: web.Request, *, force_refresh: bool = False) -> Session | None:
    if SESSION not in request or force_refresh:
        request[SESSION] = await _ctx(request).auth.session_from_cookie(
            request.cookies.get(SESSION_COOKIE), force_refresh=force_refresh
        )
    return request[SESSION]


async def _require(request: web.Request) -> tuple[Session, Viewer]:
    session = await current_session(request)
    if session is None:
        if request.method == "GET" and not request.path.startswith(("/file/", "/thumb/", "/zip/")):
            raise web.HTTPFound("/?" + _query({"next": request.path_qs}))
        raise web.HTTPUnauthorized(text="log in first")
    return session, session.viewer(_ctx(request).admins)


async def _check_csrf(request: web.Request, session: Session) -> None:
    form = await request.post()
    token = form.get("csrf") or request.headers.get("X-CSRF-Token")
    if not _ctx(request).auth.csrf_ok(session, str(token) if token is not None else None):
        raise web.HTTPForbidden(text="the form was stale or came from another site; reload the page")


def _query(params: dict[str, Any]) -> str:
    return urlencode({k: v for k, v in params.items() if v not in (None, "")})


def render(request: web.Request, template: str, *, status: int = 200, **values: Any) -> web.Response:
    session = request.get(SESSION)
    ctx = _ctx(request)
    values.setdefault("title", "Sorry" if template == "error.html" else "Gallery")
    html = ctx.templates.get_template(template).render(
        session=session,
        viewer=session.viewer(ctx.admins) if session else None,
        csrf=session.csrf if session else "",
        path=request.path,
        **values,
    )
    return web.Response(text=html, content_type="text/html", status=status)


# -- logging in ---------------------------------------------------------------------------------------
async def index(request: web.Request) -> web.StreamResponse:
    if await current_session(request) is not None:
        raise web.HTTPFound("/mine")
    return render(request, "login.html", title="Log in", next_path=safe_next(request.query.get("next")))


async def login(request: web.Request) -> web.StreamResponse:
    ctx = _ctx(request)
    if not ctx.login_limiter.allow(_client_key(request)):
        return render(request, "error.html", status=429, message="Too many logins from here; wait a minute.")
    url, login_cookie = ctx.auth.begin_login(safe_next(request.query.get("next")))
    response = web.HTTPFound(url)
    response.set_cookie(
        LOGIN_COOKIE,
        login_cookie,
        max_age=600,
        httponly=True,
        samesite="Lax",
        secure=ctx.auth.secure_cookies,
        path="/callback",
    )
    raise response


async def callback(request: web.Request) -> web.StreamResponse:
    # Not rate-limited itself: /login is, and a callback needs the `state` that /login gave this browser.
    ctx = _ctx(request)
    code, state = request.query.get("code"), request.query.get("state")
    if not code or not state:
        reason = request.query.get("error_description") or "Discord sent no login code"
        return render(request, "error.html", status=400, message=f"Login failed: {reason[:200]}")
    try:
        session, next_path = await ctx.auth.finish_login(
            code=code, state=state, login_cookie=request.cookies.get(LOGIN_COOKIE)
        )
    except LoginFailed as exc:
        return render(request, "error.html", status=400, message=f"Login failed: {exc}")
    # A session from before the login (anyone's) is dropped: the member gets a new id (no fixation).
    old = await current_session(request)
    if old is not None:
        ctx.auth.logout(old)
    response = web.HTTPFound(next_path)
    response.set_cookie(
        SESSION_COOKIE,
        ctx.auth.cookie_value(session),
        max_age=7 * 24 * 3600,
        httponly=True,
        samesite="Lax",
        secure=ctx.auth.secure_cookies,
        path="/",
    )
    response.del_cookie(LOGIN_COOKIE, path="/callback")
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    session, _ = await _require(request)
    await _check_csrf(request, session)
    _ctx(request).auth.logout(session)
    response = web.HTTPSeeOther("/")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


# -- grids ---------------------------------------------------------------------------------------------
async def _grid_page(
    request: web.Request, *, scope: str, title: str, guild_id: int | None = None
) -> web.Response:
    _, viewer = await _require(request)
    text = request.query.get("q", "")
    try:
        query = parse_search(text)
        problem = None
    except SearchSyntaxError as exc:
        query, problem = SearchQuery(), str(exc)
    try:
        page = max(0, min(int(request.query.get("page", "0")), 10_000))
    except ValueError:
        page = 0
    items, more = await _ctx(request).queries.grid(
        viewer, scope=scope, query=query, page=page, guild_id=guild_id
    )
    return render(
        request,
        "grid.html",
        title=title,
        scope=scope,
        items=items,
        page=page,
        more=more,
        q=text,
        problem=problem,
        syntax=SYNTAX_HELP,
        when=_when,
    )


async def mine(request: web.Request) -> web.Response:
    return await _grid_page(request, scope="mine", title="My images")


async def feed(request: web.Request) -> web.Response:
    return await _grid_page(request, scope="feed", title="Server feed")


async def manage(request: web.Request) -> web.Response:
    guild_id = int(request.match_info["guild_id"])
    session = await current_session(request, force_refresh=True)  # Manage Server, asked of Discord now
    if session is None:
        raise web.HTTPFound("/?" + _query({"next": request.path_qs}))
    if guild_id not in session.manages:
        raise web.HTTPNotFound(text="no such server among those you manage")
    name = session.server_names.get(guild_id, str(guild_id))
    return await _grid_page(request, scope="manage", title=f"Every job of {name}", guild_id=guild_id)


# -- one job -------------------------------------------------------------------------------------------
async def _visible_job(request: web.Request, viewer: Viewer) -> JobRecord:
    """The job if this viewer may see it; 404 otherwise (the same answer as for an id that does not exist)."""
    job = await _ctx(request).store.get_job(request.match_info["job_id"])
    if job is None or not web_may_view(
        job, viewer_id=viewer.user_id, member_of=viewer.member_of, manages=viewer.manages
    ):
        raise web.HTTPNotFound(text="no such job")
    return job


def imagine_command(job: JobRecord) -> str:
    """The /imagine that repeats this job's recipe."""
    ratio = ""
    if job.width != job.height:
        d = gcd(job.width, job.height)
        ratio = f" --ar {job.width // d}:{job.height // d}"
    parts = [f"/imagine seed:{job.seed_text}{ratio}", f"seed_number:{job.job_seed}", f"count:{job.count}"]
    parts += [f"steps:{job.steps}", f"guidance:{job.guidance:g}", f"expand:{job.expand}"]
    if job.negative:
        parts.append(f"negative:{job.negative}")
    return " ".join(parts)


def rerun_command(job: JobRecord) -> str:
    return f"python -m bot rerun {shlex.quote(job.id)}"


async def job_page(request: web.Request) -> web.Response:
    _, viewer = await _require(request)
    job = await _visible_job(request, viewer)
    ctx = _ctx(request)
    ancestors, descendants = await ctx.queries.lineage(job)

    def visible(other: JobRecord) -> bool:
        return web_may_view(
            other, viewer_id=viewer.user_id, member_of=viewer.member_of, manages=viewer.manages
        )

    return render(
        request,
        "job.html",
        title=f"Job {job.id}",
        job=job,
        ancestors=[j for j in ancestors if visible(j)],
        descendants=[j for j in descendants if visible(j)],
        liked=await ctx.queries.liked_tiles(viewer.user_id, job.id),
        like_counts=await ctx.queries.like_counts(job.id),
        imagine=imagine_command(job),
        rerun=rerun_command(job),
        may_delete=web_may_delete(job, viewer_id=viewer.user_id, manages=viewer.manages),
        when=_when,
        params=_params(job),
    )


def _params(job: JobRecord) -> list[tuple[str, str]]:
    render_info = job.render or {}
    rows = [
        ("Status", job.status + (f" ({job.reason})" if job.reason else "")),
        ("Action", job.action),
        ("Seed text", job.seed_text),
        ("Negative", job.negative or "—"),
        ("Seed", str(job.job_seed)),
        ("Size", f"{job.width}×{job.height}"),
        ("Steps", str(job.steps)),
        ("Guidance", f"{job.guidance:g}"),
        ("Images", str(job.count)),
        ("Prompt expansion", "on" if job.expand else "off"),
        ("Content filter", "on" if job.safe_mode else "off (age-restricted channel)"),
    ]
    if job.chaos is not None:
        rows.append(("Chaos", str(job.chaos)))
    if job.strength is not None:
        rows.append(("Strength", f"{job.strength:g}"))
    for key in ("model", "sd_model", "revision", "scheduler", "dtype", "device"):
        value = render_info.get(key)
        if isinstance(value, str | int | float) and value != "":
            rows.append((key.replace("_", " ").capitalize(), str(value)))
    rows.append(("Made", _when(job.created_at)))
    return rows


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "—"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _inside(path: str | None, root: Path) -> Path | None:
    """A stored path, only when it resolves inside the images folder (no traversal, no symlink out)."""
    if not path:
        return None
    resolved = Path(path).resolve()
    if root.resolve() not in resolved.parents or not resolved.is_file():
        return None
    return resolved


async def file(request: web.Request) -> web.StreamResponse:
    _, viewer = await _require(request)
    job = await _visible_job(request, viewer)
    name = request.match_info["name"]
    if name == "grid":
        path = job.grid_path
    else:
        index = int(name)
        path = next((t.path for t in job.tiles if t.index == index), None)
    resolved = _inside(path, _ctx(request).images_dir)
    if resolved is None:
        raise web.HTTPNotFound(text="no such image")
    headers = {"Cache-Control": "private, max-age=3600"}
    if request.query.get("download"):
        headers["Content-Disposition"] = f'attachment; filename="{job.id}-{name}.png"'
    return web.FileResponse(resolved, headers=headers)


async def thumb(request: web.Request) -> web.StreamResponse:
    _, viewer = await _require(request)
    job = await _visible_job(request, viewer)
    index = int(request.match_info["idx"])
    tile = next((t for t in job.tiles if t.index == index), None)
    ctx = _ctx(request)
    source = _inside(tile.path if tile else None, ctx.images_dir)
    if tile is None or source is None:
        raise web.HTTPNotFound(text="no such image")
    target = ctx.thumbs_dir / job.id / f"{index}{'-blur' if tile.nsfw else ''}.webp"
    made = await asyncio.to_thread(thumbnail, source, target, blur=tile.nsfw)
    return web.FileResponse(made, headers={"Cache-Control": "private, max-age=86400"})


async def job_zip(request: web.Request) -> web.StreamResponse:
    _, viewer = await _require(request)
    job = await _visible_job(request, viewer)
    root = _ctx(request).images_dir
    files = [(f"{job.id}-grid.png", _inside(job.grid_path, root))]
    files += [(f"{job.id}-{t.index}.png", _inside(t.path, root)) for t in job.tiles]
    recipe = (
        "\n".join(f"{k}: {v}" for k, v in _params(job))
        + f"\n\n{imagine_command(job)}\n{rerun_command(job)}\n"
    )

    def build() -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            for arcname, path in files:
                if path is not None:
                    archive.write(path, arcname)
            archive.writestr(f"{job.id}-recipe.txt", recipe)
        return buffer.getvalue()

    body = await asyncio.to_thread(build)
    return web.Response(
        body=body,
        content_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{job.id}.zip"'},
    )


async def like(request: web.Request) -> web.StreamResponse:
    session, viewer = await _require(request)
    await _check_csrf(request, session)
    job = await _visible_job(request, viewer)
    starred = await _ctx(request).queries.toggle_like(viewer.user_id, job.id, int(request.match_info["idx"]))
    if request.headers.get("Accept") == "application/json":
        return web.json_response({"liked": starred})
    back = safe_next(str((await request.post()).get("next") or f"/job/{job.id}"))
    raise web.HTTPSeeOther(back)


async def delete(request: web.Request) -> web.StreamResponse:
    session, viewer = await _require(request)
    await _check_csrf(request, session)
    job = await _visible_job(request, viewer)
    if job.user_id != viewer.user_id:
        # A manager's delete: their Manage Server is asked of Discord again, now.
        session = await current_session(request, force_refresh=True) or session
        viewer = session.viewer(_ctx(request).admins)
    if not web_may_delete(job, viewer_id=viewer.user_id, manages=viewer.manages):
        raise web.HTTPForbidden(text="only its owner or a manager of its server can delete this job")
    ctx = _ctx(request)
    try:
        copies = await forget_job(store=ctx.store, images_dir=ctx.images_dir, job=job)
    except StillRendering as exc:
        return render(request, "error.html", status=409, message=str(exc))
    await asyncio.to_thread(shutil.rmtree, ctx.thumbs_dir / job.id, True)
    log.info("web: job %s deleted by %s (%d copies too)", job.id, viewer.user_id, copies)
    raise web.HTTPSeeOther("/mine")


# -- operators -----------------------------------------------------------------------------------------
async def admin(request: web.Request) -> web.Response:
    _, viewer = await _require(request)
    if not viewer.admin:
        raise web.HTTPNotFound(text="no such page")
    ctx = _ctx(request)
    usage = await asyncio.to_thread(shutil.disk_usage, ctx.data_dir)
    images_bytes = await asyncio.to_thread(_folder_bytes, ctx.images_dir)
    return render(
        request,
        "admin.html",
        title="Operator dashboard",
        counts=await ctx.queries.status_counts(),
        running=await ctx.queries.running(),
        failures=await ctx.queries.recent_failures(),
        heartbeat=read_heartbeat(ctx.heartbeat_path),
        disk={"images": images_bytes, "free": usage.free, "total": usage.total},
        when=_when,
    )


def _folder_bytes(root: Path) -> int:
    total = 0
    if root.is_dir():
        for path in root.rglob("*"):
            try:
                if path.is_file():
                    total += path.stat().st_size
            except OSError:
                continue
    return total


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/login", login)
    app.router.add_get("/callback", callback)
    app.router.add_post("/logout", logout)
    app.router.add_get("/mine", mine)
    app.router.add_get("/feed", feed)
    app.router.add_get(r"/server/{guild_id:[0-9]{1,20}}", manage)
    app.router.add_get(f"/job/{JOB_ID}", job_page)
    app.router.add_get(rf"/file/{JOB_ID}/{{name:grid|[0-9]{{1,2}}}}.png", file)
    app.router.add_get(f"/thumb/{JOB_ID}/{TILE}.webp", thumb)
    app.router.add_get(f"/zip/{JOB_ID}.zip", job_zip)
    app.router.add_post(f"/job/{JOB_ID}/like/{TILE}", like)
    app.router.add_post(f"/job/{JOB_ID}/delete", delete)
    app.router.add_get("/admin", admin)
