"""The dashboard's web application (Starlette): pages, their JSON feeds and the live job feed
(server-sent events). Every read goes to the storage with the logged-in user's credentials."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orbweaver import __version__, errors
from orbweaver.dashboard.layout import MAX_DRAWN_TASKS, layout
from orbweaver.dashboard.sessions import Session, SessionStore
from orbweaver.dashboard.storage import StorageReader
from orbweaver.states import JobState

__all__ = ["COOKIE", "DashboardSettings", "create_app", "parse_error"]

HERE = Path(__file__).resolve().parent
COOKIE = "orbweaver_session"
PAGE_SIZE = 50
# The most unfinished tasks a job page lists.
MAX_TABLE_ROWS = 1000
# How often the live job feed asks the storage (seconds).
FEED_INTERVAL_S = 0.5
# A live feed ends after this long; the page's EventSource reconnects by itself.
FEED_MAX_S = 300.0
_STATE_NAMES = [s.name for s in JobState]
_TERMINAL = {s.name for s in JobState if s.is_terminal}
_FAILED_HEAD = re.compile(r"^(?P<task>[^\n(]+?) \((?P<func>[^)\n]*)\) failed: ")
_TASK_AGAIN = re.compile(r"^[\w.]+ \(job \d+, [^)]*\): ")
_EXC_TYPE = re.compile(r"[A-Za-z_][\w.]*")


@dataclass(frozen=True, slots=True)
class DashboardSettings:
    read_only: bool = False
    https: bool = False
    session_idle_s: float = 8 * 3600


def parse_error(message: str) -> dict[str, str]:
    """A failed job's message, "task 3 (pkg.f) failed: ValueError: bad\\n<traceback>", split
    into the task, the exception type, its message and the traceback (what is not recognised
    stays in `message`)."""
    task = func = ""
    body = message
    head = _FAILED_HEAD.match(message)
    if head:
        task, func, body = head["task"], head["func"], message[head.end() :]
        # The execution manager names the task again: "pkg.f (job 2, task 1): ".
        again = _TASK_AGAIN.match(body)
        if again:
            body = body[again.end() :]
    at = body.find("Traceback (most recent call last)")
    if at >= 0:
        first, traceback = body[:at].rstrip("\n"), body[at:]
    else:
        first, _, traceback = body.partition("\n")
    etype, sep, text = first.partition(": ")
    if not sep or not _EXC_TYPE.fullmatch(etype):
        etype, text = "", first
    return {"task": task, "func": func, "type": etype, "message": text, "traceback": traceback}


class _SecurityHeaders:
    """Every response: no framing, no inline script, no referrer to other sites, nothing
    cached (pages)."""

    HEADERS: ClassVar[list[tuple[bytes, bytes]]] = [
        (
            b"content-security-policy",
            b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            b"connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
    ]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += self.HEADERS
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


_Handler = Callable[[Request, Session], Awaitable[Response]]


class RateHistory:
    """Finished-task totals the operator's overviews saw, shared by every operator session so
    the chart has the last minutes as soon as a page opens: (storage time ms, tasks finished),
    at most one a second, for `window_ms`; a new storage session starts a new history."""

    def __init__(self, window_ms: int = 5 * 60 * 1000) -> None:
        self._window = window_ms
        self._session = 0
        self._samples: deque[tuple[int, int]] = deque()
        self._lock = threading.Lock()

    def note(self, status: dict[str, Any]) -> list[tuple[int, int]]:
        now, finished = int(status["server_time_ms"]), int(status["tasks_finished"])
        with self._lock:
            if status["session_id"] != self._session:
                self._session = status["session_id"]
                self._samples.clear()
            if not self._samples or now - self._samples[-1][0] >= 1000:
                self._samples.append((now, finished))
            while self._samples and self._samples[0][0] < now - self._window:
                self._samples.popleft()
            return list(self._samples)


def _status_for(exc: errors.OrbweaverError) -> int:
    """The HTTP status of a storage's answer."""
    if isinstance(exc, errors.NotFound):
        return 404
    if isinstance(exc, errors.PermissionDenied):
        return 403
    if isinstance(exc, errors.Unauthenticated):
        return 401
    if isinstance(exc, (errors.InvalidArgument, errors.FailedPrecondition)):
        return 400
    return 503


def _ms(value: int) -> str:
    if not value:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value / 1000))


def create_app(reader: StorageReader, settings: DashboardSettings | None = None) -> ASGIApp:
    settings = settings or DashboardSettings()
    sessions = SessionStore(settings.session_idle_s)
    history = RateHistory()
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["ms"] = _ms

    def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        session: Session | None = getattr(request.state, "session", None)
        page = env.get_template(name).render(
            session=session,
            who=session.credentials.who if session else "",
            is_operator=bool(session and session.credentials.is_operator),
            read_only=settings.read_only,
            version=__version__,
            storage=reader.address,
            **context,
        )
        return HTMLResponse(page, status_code=status_code)

    def session_of(request: Request) -> Session | None:
        session = sessions.get(request.cookies.get(COOKIE))
        request.state.session = session
        return session

    def error_page(request: Request, exc: errors.OrbweaverError) -> Response:
        if isinstance(exc, errors.Unauthenticated) and not isinstance(exc, errors.PermissionDenied):
            # The credentials stopped working (a changed password): log in again.
            sessions.drop(request.cookies.get(COOKIE))
            return RedirectResponse("/login", status_code=303)
        return render(request, "error.html", _status_for(exc), message=str(exc))

    def page(handler: _Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session = session_of(request)
            if session is None:
                if request.url.path.startswith("/api/"):
                    return JSONResponse({"error": "not logged in"}, status_code=401)
                return RedirectResponse("/login", status_code=303)
            try:
                return await handler(request, session)
            except errors.OrbweaverError as exc:
                if request.url.path.startswith("/api/"):
                    if _status_for(exc) == 401:  # the credentials stopped working
                        sessions.drop(session.id)
                    return JSONResponse(
                        {"error": str(exc), "kind": type(exc).__name__},
                        status_code=_status_for(exc),
                    )
                return error_page(request, exc)

        return endpoint

    def same_origin(request: Request) -> bool:
        """A POST from another site is refused even before its CSRF token is looked at."""
        origin = request.headers.get("origin")
        if origin is None:  # not a browser's cross-site form (those carry an Origin)
            return True
        host = request.headers.get("host", "")
        return origin.split("://", 1)[-1] == host

    # -- login ----------------------------------------------------------------------------------

    async def login_form(request: Request) -> Response:
        session_of(request)
        return render(request, "login.html", error="")

    async def login(request: Request) -> Response:
        if not same_origin(request):
            return render(request, "login.html", 403, error="cross-site login refused")
        form = await request.form()
        kind = str(form.get("kind") or "operator")
        try:
            if kind == "operator":
                token = str(form.get("token") or "")
                if not token:
                    raise errors.Unauthenticated("enter the operator token")
                creds = await run_in_threadpool(reader.login_operator, token)
            else:
                group = str(form.get("group") or "").strip()
                password = str(form.get("password") or "").encode()
                if not group or not password:
                    raise errors.Unauthenticated("enter the resource group and its password")
                creds = await run_in_threadpool(reader.login_group, group, password)
        except errors.Unauthenticated as exc:
            return render(request, "login.html", 401, error=f"login refused: {exc}")
        except errors.OrbweaverError as exc:
            return render(request, "login.html", 503, error=f"the storage: {exc}")
        old = request.cookies.get(COOKIE)
        sessions.drop(old)  # a fresh id at every login
        session = sessions.create(creds)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE,
            session.id,
            httponly=True,
            secure=settings.https,
            samesite="strict",
            path="/",
        )
        return response

    async def logout(request: Request) -> Response:
        session = session_of(request)
        form = await request.form()
        if session is not None and session.csrf_ok(str(form.get("csrf_token") or "")):
            sessions.drop(session.id)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # -- overview -------------------------------------------------------------------------------

    async def overview(request: Request, session: Session) -> Response:
        status = await run_in_threadpool(reader.cluster_status, session.credentials)
        return render(request, "overview.html", status=status, states=_STATE_NAMES)

    async def api_overview(request: Request, session: Session) -> Response:
        status = await run_in_threadpool(reader.cluster_status, session.credentials)
        if status["cluster_wide"]:
            status["history"] = history.note(status)
        return JSONResponse(status)

    # -- jobs -----------------------------------------------------------------------------------

    async def jobs(request: Request, session: Session) -> Response:
        q = request.query_params
        search = q.get("q", "").strip()
        if search:
            if not search.isdigit():
                return render(request, "error.html", 400, message=f"not a job id: {search!r}")
            return RedirectResponse(f"/jobs/{int(search)}", status_code=303)
        state_name = q.get("state", "")
        states = [JobState[state_name]] if state_name in _STATE_NAMES else []
        group = int(q["group"]) if q.get("group", "").isdigit() else 0
        before = int(q["before"]) if q.get("before", "").isdigit() else 0
        started = time.perf_counter()
        rows = await run_in_threadpool(
            lambda: reader.list_jobs(
                session.credentials,
                states=states,
                resource_group_id=group,
                before_job_id=before,
                limit=PAGE_SIZE + 1,
            )
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        # The operator picks a group by name (a group sees only itself: no choice to make).
        groups = (
            await run_in_threadpool(reader.resource_groups, session.credentials)
            if session.credentials.is_operator
            else []
        )
        return render(
            request,
            "jobs.html",
            jobs=rows,
            states=_STATE_NAMES,
            state=state_name if states else "",
            group=group,
            groups=groups,
            before=before,
            next_before=rows[-1]["id"] if more and rows else 0,
            elapsed_ms=elapsed_ms,
        )

    async def job(request: Request, session: Session) -> Response:
        job_id = int(request.path_params["job_id"])
        data = await run_in_threadpool(_job_view, session, job_id)
        drawing = layout(data["graph"])
        return render(
            request,
            "job.html",
            data=data,
            job=data["job"],
            drawing=drawing,
            max_drawn=MAX_DRAWN_TASKS,
            max_rows=MAX_TABLE_ROWS,
            terminal=data["job"]["state"] in _TERMINAL,
            csrf_token=session.csrf_token,
        )

    def _job_view(session: Session, job_id: int) -> dict[str, Any]:
        data = reader.job_graph(session.credentials, job_id)
        job_ = data["job"]
        data["error"] = parse_error(job_["error_message"]) if job_["error_message"] else None
        data["outputs"] = None
        if job_["state"] == "SUCCEEDED":
            try:
                data["outputs"] = reader.outputs_preview(session.credentials, job_id)
            except errors.OrbweaverError as exc:
                data["outputs"] = f"(the outputs cannot be shown: {exc})"
        return data

    async def api_job(request: Request, session: Session) -> Response:
        data = await run_in_threadpool(_job_view, session, int(request.path_params["job_id"]))
        data.pop("graph")
        return JSONResponse(data)

    async def job_events(request: Request, session: Session) -> Response:
        job_id = int(request.path_params["job_id"])
        first = await run_in_threadpool(_job_view, session, job_id)  # errors answer at once

        async def feed() -> AsyncIterator[str]:
            data: dict[str, Any] | None = first
            last = ""
            until = time.monotonic() + FEED_MAX_S
            while time.monotonic() < until:
                if data is None:
                    try:
                        data = await run_in_threadpool(_job_view, session, job_id)
                    except errors.OrbweaverError as exc:
                        yield f"event: problem\ndata: {json.dumps(str(exc))}\n\n"
                        await asyncio.sleep(2.0)
                        continue
                data.pop("graph", None)
                text = json.dumps(data, separators=(",", ":"))
                if text != last:
                    yield f"data: {text}\n\n"
                    last = text
                else:
                    yield ": still here\n\n"  # proxies keep the stream open
                if data["job"]["state"] in _TERMINAL:
                    yield "event: end\ndata: {}\n\n"
                    return
                # Big graphs make big messages: they are sent less often.
                interval = FEED_INTERVAL_S * (1 if len(data["tasks"]) <= 500 else 4)
                data = None
                if await request.is_disconnected():
                    return
                await asyncio.sleep(interval)

        return StreamingResponse(
            feed(),
            media_type="text/event-stream",
            headers={"x-accel-buffering": "no"},
        )

    async def cancel(request: Request) -> Response:
        session = session_of(request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        if settings.read_only:
            return render(request, "error.html", 403, message="this dashboard is read-only")
        form = await request.form()
        if not same_origin(request) or not session.csrf_ok(str(form.get("csrf_token") or "")):
            return render(request, "error.html", 403, message="the form has expired; reload")
        job_id = int(request.path_params["job_id"])
        try:
            await run_in_threadpool(reader.cancel, session.credentials, job_id)
        except errors.OrbweaverError as exc:
            return error_page(request, exc)
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    # -- resource groups ------------------------------------------------------------------------

    async def groups(request: Request, session: Session) -> Response:
        rows = await run_in_threadpool(reader.resource_groups, session.credentials)
        return render(request, "groups.html", groups=rows)

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[
            Route("/", page(overview)),
            Route("/login", login_form, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/jobs", page(jobs)),
            Route("/jobs/{job_id:int}", page(job)),
            Route("/jobs/{job_id:int}/cancel", cancel, methods=["POST"]),
            Route("/groups", page(groups)),
            Route("/api/overview", page(api_overview)),
            Route("/api/jobs/{job_id:int}", page(api_job)),
            Route("/api/jobs/{job_id:int}/events", page(job_events)),
            Route("/healthz", health),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
    )
    return _SecurityHeaders(app)
