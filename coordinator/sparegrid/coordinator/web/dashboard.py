"""The read-only dashboard (`coordinator serve --web-port`): one page per role.

- Operator (an admin account): jobs, nodes and owners with their standing, disputes with
  their evidence, the ledger check, recent events.
- Volunteer (an account owning nodes): its nodes, their earnings per day, why a node is
  paused, quarantined or banned.
- Client (any account): its jobs with live progress and ETA, frame thumbnails, the failed
  tasks' reasons. A client sees its own jobs only: another's job is "not found".

Server-rendered HTML (Jinja2, every value escaped), no JavaScript: a page of running jobs
reloads itself with a meta refresh. Sign-in is in sessions.py. Every response forbids
framing, scripts and caching.
"""

import asyncio
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from sparegrid.coordinator.app import App
from sparegrid.coordinator.domain import Account, Job, JobState
from sparegrid.coordinator.errors import CoordinatorError
from sparegrid.coordinator.services.accounts import hash_key
from sparegrid.coordinator.web import views
from sparegrid.coordinator.web.sessions import Sessions, cookie_name

TEMPLATES = Path(__file__).parent / "templates"
MAX_FORM_BYTES = 4096
REFRESH_SECONDS = 5
THUMBS_KEPT = 256
THREADS = 2  # the dashboard's own, for pages and thumbnails
T = TypeVar("T")
STYLE = (TEMPLATES / "style.css").read_text()
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # no-referrer would make a browser send Origin: null
    "Cache-Control": "no-store",
}


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "-"


class _Headers(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response


class Dashboard:
    def __init__(self, app: App) -> None:
        self.app = app
        self.sessions = Sessions()
        self.env = Environment(
            loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True)
        )
        self.env.filters.update(when=_when, duration=views.duration)
        self._thumbs: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        # pages and thumbnails are made on threads of their own: any signed-in account
        # asking for many large frames at once waits on these, not on the threads that
        # uploads and the coordinator's own work wait for
        self._threads = ThreadPoolExecutor(THREADS, thread_name_prefix="dashboard")
        self.asgi = Starlette(
            routes=[
                Route("/", self.home),
                Route("/login", self.login_form, methods=["GET"]),
                Route("/login", self.login, methods=["POST"]),
                Route("/logout", self.logout, methods=["POST"]),
                Route("/style.css", self.style),
                Route("/operator", self.operator),
                Route("/operator/ledger", self.ledger),
                Route("/volunteer", self.volunteer),
                Route("/client", self.client),
                Route("/jobs/{job_id}", self.job),
                Route("/jobs/{job_id}/frames/{index:int}.png", self.thumbnail),
            ],
            middleware=[Middleware(_Headers)],
        )

    async def _off(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, work)

    # rendering and who is asking

    async def _page(
        self, name: str, request: Request, status: int = 200, **values: Any
    ) -> Response:
        """Renders in a worker thread: a page of a thousand rows takes tens of milliseconds
        the event loop need not wait. The values are copies the loop no longer touches."""
        template = self.env.get_template(name)
        values.setdefault("refresh", 0)
        values["account"] = self._account(request)
        html = await self._off(partial(template.render, **values))
        return HTMLResponse(html, status_code=status)

    def _account(self, request: Request) -> Account | None:
        session = self.sessions.get(request.cookies.get(cookie_name(request.url.scheme), ""))
        if session is None:
            return None
        account = self.app.store.get_account(session.account_id)
        if (
            account is None
            or account.disabled
            or not hmac.compare_digest(account.key_hash, session.key_hash)
        ):
            self.sessions.close(request.cookies.get(cookie_name(request.url.scheme), ""))
            return None  # disabled, or its key was rotated or revoked since
        return account

    async def _not_found(self, request: Request, what: str) -> Response:
        return await self._page("message.html", request, 404, title="Not found", message=what)

    def _job(self, request: Request, account: Account) -> Job | None:
        """The job named in the path, if this account may see it (its own, or any for an
        admin); None otherwise, the same for a job that does not exist."""
        job_id = str(request.path_params["job_id"])
        job = self.app.store.get_job(job_id) if 0 < len(job_id) <= 64 else None
        if job is None or job.state == JobState.SUBMITTING:
            return None
        if job.account_id != account.id and not account.is_admin:
            return None
        return job

    # sign-in

    async def home(self, request: Request) -> Response:
        account = self._account(request)
        if account is None:
            return RedirectResponse("/login", 303)
        if account.is_admin:
            return RedirectResponse("/operator", 303)
        if views.owned_nodes(self.app, account):
            return RedirectResponse("/volunteer", 303)
        return RedirectResponse("/client", 303)

    async def login_form(self, request: Request) -> Response:
        return await self._page("login.html", request, error="")

    async def login(self, request: Request) -> Response:
        if _from_another_site(request):
            return _another_site(request, "sign-in")
        address = request.client.host if request.client else "?"
        if self.sessions.limited(address):
            return await self._page(
                "login.html", request, 429, error="Too many failed sign-ins: wait a minute."
            )
        body = await _body(request)
        key = (parse_qs(body.decode("utf-8", "replace")).get("api_key") or [""])[0].strip()
        try:
            account = self.app.accounts.authenticate(key)
        except CoordinatorError:
            account = None
        if account is None or not hmac.compare_digest(account.key_hash, hash_key(key)):
            self.sessions.failed(address)
            error = "That API key is not known to this coordinator."
            return await self._page("login.html", request, 401, error=error)
        token = self.sessions.open(account.id, account.key_hash)
        response = RedirectResponse("/", 303)
        response.set_cookie(
            cookie_name(request.url.scheme),
            token,
            max_age=int(self.sessions.ttl),
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        if _from_another_site(request):  # another site's form must not sign anyone out
            return _another_site(request, "sign-out")
        self.sessions.close(request.cookies.get(cookie_name(request.url.scheme), ""))
        response = RedirectResponse("/login", 303)
        response.delete_cookie(
            cookie_name(request.url.scheme),
            path="/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    async def style(self, request: Request) -> Response:
        return Response(STYLE, media_type="text/css")

    # the role pages

    async def operator(self, request: Request) -> Response:
        account = self._account(request)
        if account is None:
            return RedirectResponse("/login", 303)
        if not account.is_admin:
            return await self._page(
                "message.html",
                request,
                403,
                title="Operators only",
                message="This page is for the coordinator's admin accounts.",
            )
        data = views.operator(self.app)
        return await self._page("operator.html", request, op=data)

    async def ledger(self, request: Request) -> Response:
        account = self._account(request)
        if account is None:
            return RedirectResponse("/login", 303)
        if not account.is_admin:
            return await self._not_found(request, "No such page.")
        return await self._page("ledger.html", request, report=views.ledger_check(self.app))

    async def volunteer(self, request: Request) -> Response:
        account = self._account(request)
        if account is None:
            return RedirectResponse("/login", 303)
        nodes = views.owned_nodes(self.app, account)
        rows = views.node_rows(self.app, nodes)
        events = self.app.store.list_events(
            limit=views.EVENTS_SHOWN, newest=True, node_ids=[n.id for n in nodes][:500]
        )[::-1]
        return await self._page(
            "volunteer.html",
            request,
            nodes=rows,
            earnings=views.earnings(self.app, nodes),
            events=events,
        )

    async def client(self, request: Request) -> Response:
        account = self._account(request)
        if account is None:
            return RedirectResponse("/login", 303)
        jobs = views.client_jobs(self.app, account)
        live = any(not row.finished for row in jobs)
        return await self._page(
            "client.html",
            request,
            jobs=jobs,
            balance=self.app.accounts.balance(account),
            refresh=REFRESH_SECONDS if live else 0,
        )

    async def job(self, request: Request) -> Response:
        account = self._account(request)
        if account is None:
            return RedirectResponse("/login", 303)
        job = self._job(request, account)
        if job is None:
            return await self._not_found(request, "No such job in your account.")
        owner = self.app.store.get_account(job.account_id)
        page = views.job_page(self.app, job, owner.name if owner else "?")
        return await self._page(
            "job.html", request, page=page, refresh=0 if page.row.finished else REFRESH_SECONDS
        )

    async def thumbnail(self, request: Request) -> Response:
        account = self._account(request)
        job = self._job(request, account) if account is not None else None
        if job is None:
            return PlainTextResponse("not found", 404)
        index = int(request.path_params["index"])
        key = (job.id, index)
        thumb = self._thumbs.get(key)
        if thumb is None:
            found = views.thumbnail_source(self.app, job, index)
            digest, source = found if found is not None else ("", None)
            if found is not None and source is None:
                source = await self._off(partial(views.read_blob, self.app.blobs, digest))
            if source is None:
                return PlainTextResponse("not found", 404)
            try:
                thumb = await self._off(partial(views.make_thumbnail, source))
            except ValueError:
                return PlainTextResponse("this frame does not decode as a PNG", 404)
            self._thumbs[key] = thumb
            while len(self._thumbs) > THUMBS_KEPT:
                self._thumbs.popitem(last=False)
        return Response(thumb, media_type="image/png")


def _from_another_site(request: Request) -> bool:
    """A form posted from another site's page (its Origin names that site)."""
    origin = request.headers.get("origin")
    return origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}"


def _another_site(request: Request, what: str) -> Response:
    """The refusal, naming both addresses: behind a proxy that passes on neither the Host
    header nor the scheme, the dashboard's own form looks as if posted from elsewhere."""
    return PlainTextResponse(
        f"{what} from another site is refused: the form was posted from "
        f"{request.headers.get('origin')}, and this dashboard is "
        f"{request.url.scheme}://{request.url.netloc}. Behind a proxy, pass on the Host "
        "header and the scheme (nginx: proxy_set_header Host $host; proxy_set_header "
        "X-Forwarded-Proto $scheme)",
        403,
    )


async def _body(request: Request) -> bytes:
    """The request body, at most MAX_FORM_BYTES of it."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            break
    return body[:MAX_FORM_BYTES]
