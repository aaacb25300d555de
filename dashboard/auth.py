"""Who may look and who may act: the token, sessions, CSRF, read-only.

With ``BILLQ_DASHBOARD_TOKEN`` set, a request needs ``Authorization: Bearer TOKEN`` or the
session cookie the login form hands out; otherwise 401. Without it (loopback only) every
browser still gets a session, because the session carries the CSRF token: a POST from a
session must send that token back (form field ``csrf`` or header ``X-CSRF-Token``), or it
is refused with 403. Bearer requests need no CSRF token: browsers never add that header
on their own, so another site cannot forge one.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

COOKIE = "billq_session"
MAX_SESSIONS = 10_000  # oldest dropped first: a client without cookies cannot grow memory
OPEN_PATHS = ("/login", "/healthz")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Session:
    actor: str
    csrf: str


class Sessions:
    """In-memory sessions (one dashboard process; a restart logs everyone out)."""

    def __init__(self) -> None:
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def new(self, actor: str) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        session = Session(actor=actor, csrf=secrets.token_urlsafe(32))
        self._by_id[sid] = session
        while len(self._by_id) > MAX_SESSIONS:
            self._by_id.popitem(last=False)
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        return self._by_id.get(sid) if sid else None

    def drop(self, sid: str | None) -> None:
        if sid:
            self._by_id.pop(sid, None)


def same(given: str, expected: str) -> bool:
    """Constant-time comparison (no timing hint about the token)."""
    return hmac.compare_digest(given.encode(), expected.encode())


def set_cookie(response: web.StreamResponse, sid: str, secure: bool) -> None:
    response.set_cookie(COOKIE, sid, httponly=True, samesite="Strict", secure=secure, path="/")


def middleware(
    token: str | None,
    sessions: Sessions,
    unauthorized: Callable[[web.Request], web.StreamResponse],
) -> Middleware:
    """The aiohttp middleware enforcing the rules in this module's docstring."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS or request.path.startswith("/static/"):
            return await handler(request)
        sid = request.cookies.get(COOKIE)
        session = sessions.get(sid)
        header = request.headers.get("Authorization", "")
        new_sid: str | None = None
        if header.startswith("Bearer "):
            if token is None or not same(header.removeprefix("Bearer "), token):
                return unauthorized(request)
            request["actor"] = "api:bearer"
            request["bearer"] = True
        elif session is not None:
            request["actor"] = session.actor
        elif token is not None:
            return unauthorized(request)
        else:
            peer = request.remote or "local"
            new_sid, session = sessions.new(f"dashboard:anonymous@{peer}")
            request["actor"] = session.actor
        request["session"] = session
        if request.method == "POST" and not request.get("bearer"):
            form = await request.post()
            sent = str(form.get("csrf") or request.headers.get("X-CSRF-Token") or "")
            if session is None or not sent or not same(sent, session.csrf):
                raise web.HTTPForbidden(text="CSRF token missing or wrong; reload the page\n")
        response = await handler(request)
        if new_sid is not None:
            set_cookie(response, new_sid, request.secure)
        return response

    return check
