"""The operator's console, metrics and health endpoints: one Starlette application (Jinja2 pages, server-drawn SVG
charts, prometheus-client's exposition), served by `fedhaven.server.console.serve` on the operator's side only.

Who gets in: on the operator's Unix socket (a 0700 directory) everyone who can open it, i.e. the operator's
account; on a TCP listener only a caller holding the operator token (a cookie set by the login form, or
`Authorization: Bearer`), except /healthz and /readyz, which say nothing but up/ready. Every action is a POST
with a CSRF token and a same-origin check, asked for on a confirmation page; pages answer only to local host
names (DNS rebinding) and may not be framed (clickjacking).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, Router
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from fedhaven.server.console.actions import ActionError, resume_run, stop_run
from fedhaven.server.console.artifacts import read_explain, read_figure, read_site_quality
from fedhaven.server.console.charts import CHARTS, chart_svg
from fedhaven.server.console.metrics import metrics_registry
from fedhaven.server.console.view import FederationView, read_federation
from fedhaven.server.coordinator import control_for
from fedhaven.server.provision import StateDir
from fedhaven.server.seam.control import ControlError

COOKIE = "fedhaven_operator"
MAX_FORM = 16 * 1024  # bytes of a POSTed form (the token, the CSRF token): uvicorn itself bounds no body
LOCAL_HOSTS = ("localhost", "127.0.0.1")
HEADERS = {"Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
                                      "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
           "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
           "Cache-Control": "no-store"}
templates = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))


@dataclass(frozen=True)
class ConsoleSettings:
    """`token`: the operator token (operator.token); `require_token`: False only on the operator's Unix socket;
    `hosts`: extra host names the pages answer to (the TCP listener's own); `ready`: the coordinator's parts that are
    down (empty: all up)."""

    state: StateDir
    token: str
    require_token: bool
    hosts: tuple[str, ...] = ()
    ready: Callable[[], list[str]] = list

    @property
    def csrf(self) -> str:
        return hmac.new(self.token.encode(), b"fedhaven-console-csrf", hashlib.sha256).hexdigest()

    @property
    def session(self) -> str:
        """The login cookie's value: derived from the token, so that the browser never stores the token itself."""
        return hmac.new(self.token.encode(), b"fedhaven-console-session", hashlib.sha256).hexdigest()

    def authorised(self, request: Request) -> bool:
        if not self.require_token:
            return True
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return hmac.compare_digest(auth[7:].strip().encode(), self.token.encode())
        return hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), self.session.encode())


class _Guard:
    """Security headers on every answer; without the token, /login (pages) or 401 (metrics, POSTs)."""

    def __init__(self, app: ASGIApp, settings: ConsoleSettings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] += [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]
            await send(message)

        request = Request(scope)
        if request.method == "POST":  # a login or an action: a few short fields, whoever sends them
            try:
                length = int(request.headers.get("content-length", ""))
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_FORM:
                return await PlainTextResponse(f"a form of at most {MAX_FORM} bytes, with its Content-Length\n",
                                               status_code=413)(scope, receive, with_headers)
            receive = _bounded(receive, MAX_FORM)
        if scope["path"] != "/login" and not self.settings.authorised(request):
            if request.method == "GET" and scope["path"] != "/metrics":
                return await RedirectResponse("/login", status_code=303)(scope, receive, with_headers)
            return await PlainTextResponse("the operator token is required\n", status_code=401,
                                           headers={"WWW-Authenticate": "Bearer"})(scope, receive, with_headers)
        await self.app(scope, receive, with_headers)


def _bounded(receive: Receive, limit: int) -> Receive:
    """The request body as sent, cut off (the request fails) past `limit` bytes, whatever Content-Length said."""
    seen = 0

    async def inner() -> MutableMapping[str, Any]:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise ValueError(f"request body above {limit} bytes")
        return message

    return inner


def _page(request: Request, template: str, settings: ConsoleSettings, status_code: int = 200,
          **context: Any) -> Response:
    refresh = request.query_params.get("refresh") != "0"  # ?refresh=0: the page does not reload itself
    return templates.TemplateResponse(request, template, {"csrf": settings.csrf, "fmt": _fmt, "refresh": refresh,
                                                          **context},
                                      status_code=status_code)


def _fmt(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "-"
    return "not private" if x == float("inf") else f"{x:.{digits}f}"


async def _checked_form(request: Request, settings: ConsoleSettings) -> None:
    """A POST must carry the page's CSRF token and, when the browser says where it comes from, this very origin."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise PermissionError(f"cross-origin request from {origin} refused")
    form = await request.form()
    if not hmac.compare_digest(str(form.get("csrf", "")).encode(), settings.csrf.encode()):
        raise PermissionError("missing or wrong CSRF token: reload the page and try again")


def build_app(settings: ConsoleSettings) -> Starlette:
    """The operator's application: /healthz and /readyz for probes, the console and /metrics behind the guard."""
    registry = metrics_registry(lambda: read_federation(settings.state))

    def view() -> FederationView:
        return read_federation(settings.state)

    def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    def readyz(request: Request) -> Response:
        down = settings.ready()
        if not down:
            try:
                control = control_for(settings.state)
                try:
                    control.nodes()
                finally:
                    control.close()
            except ControlError as exc:
                down = [f"Control API: {exc}"]
        return PlainTextResponse("ready\n" if not down else "not ready: " + "; ".join(down) + "\n",
                                 status_code=200 if not down else 503)

    def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def index(request: Request) -> Response:
        return _page(request, "index.html", settings, fed=view(), state_dir=str(settings.state.root), charts=CHARTS)

    def run_page(request: Request) -> Response:
        fed = view()
        run = fed.run(request.path_params["name"])
        if run is None:
            return _page(request, "message.html", settings, status_code=404, title="No such run",
                         message=f"{request.path_params['name']} is not a run of this coordinator")
        run_dir = settings.state.runs / run.name
        return _page(request, "run.html", settings, fed=fed, run=run, charts=CHARTS, explain=read_explain(run_dir),
                     quality=read_site_quality(run_dir, sorted(run.site_epsilon)))

    def figure(request: Request) -> Response:
        """An explanation figure of a run: only a PNG directly in RUN_DIR/explain (see `read_figure`)."""
        data = read_figure(settings.state.runs, run=request.path_params["name"], file=request.path_params["file"])
        if data is None:
            return PlainTextResponse("not found\n", status_code=404)
        return Response(data, media_type="image/png")

    def chart(request: Request) -> Response:
        run = view().run(request.path_params["name"])
        if run is None or request.path_params["chart"] not in CHARTS:
            return PlainTextResponse("not found\n", status_code=404)
        return Response(chart_svg(run=run, which=request.path_params["chart"]), media_type="image/svg+xml")

    async def action(request: Request) -> Response:
        name, verb = request.path_params["name"], request.path_params["verb"]
        if verb not in ("stop", "resume"):
            return PlainTextResponse("not found\n", status_code=404)
        if request.method == "GET":  # the confirmation page; only its POST acts
            return _page(request, "confirm.html", settings, name=name, verb=verb)
        try:
            await _checked_form(request, settings)
        except PermissionError as exc:
            return _page(request, "message.html", settings, status_code=403, title="Refused", message=str(exc))
        try:
            if verb == "stop":
                message = await _in_thread(lambda: stop_run(state=settings.state, name=name))
            else:
                message = await _in_thread(lambda: resume_run(state=settings.state, name=name))
        except ActionError as exc:
            return _page(request, "message.html", settings, status_code=409, title=f"Could not {verb} {name}",
                         message=str(exc))
        return _page(request, "message.html", settings, title=f"{verb.capitalize()}: {name}", message=message)

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return _page(request, "login.html", settings, error=None)
        form = await request.form()
        if not hmac.compare_digest(str(form.get("token", "")).strip().encode(), settings.token.encode()):
            return _page(request, "login.html", settings, status_code=401, error="wrong token")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, settings.session, httponly=True, samesite="strict", path="/")
        return response

    console = Router(routes=[
        Route("/", index), Route("/metrics", metrics), Route("/login", login, methods=["GET", "POST"]),
        Route("/runs/{name}", run_page), Route("/runs/{name}/{chart}.svg", chart),
        Route("/runs/{name}/explain/{file}", figure),
        Route("/runs/{name}/{verb}", action, methods=["GET", "POST"])])
    hosts = [*LOCAL_HOSTS, *settings.hosts]
    guarded = TrustedHostMiddleware(_Guard(console, settings), allowed_hosts=hosts)
    return Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz), Mount("/", app=guarded)])


async def _in_thread(fn: Callable[[], str]) -> str:
    from starlette.concurrency import run_in_threadpool

    result: Awaitable[str] = run_in_threadpool(fn)
    return await result
