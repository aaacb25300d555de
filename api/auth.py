"""Token auth: ``Authorization: Bearer TOKEN`` with any token in ``BILLQ_API_TOKENS``.

Several tokens are accepted at once so they rotate without downtime: add the new one,
move the callers, drop the old one. Without tokens (only allowed on loopback) every caller
is let in. The OpenAPI document and the health check need no token. Tokens are compared in
constant time; which token was used is logged by its position, never by its value.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from aiohttp import web
from aiohttp.typedefs import Middleware

from api.errors import Handler, unauthorized

OPEN_PATHS = frozenset({"/healthz", "/openapi.json"})
# Who called: "api" without tokens, else "api:tokenN" (N: the token's place in the list).
ACTOR = web.RequestKey("actor", str)


def presented(header: str) -> str | None:
    """The token in an Authorization header: ``Bearer TOKEN``, or Basic with the token as
    user name and an empty password (``curl -u TOKEN:``, as with Stripe's keys)."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    if scheme.lower() == "basic" and value:
        try:
            user, _, _ = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user or None
    return None


def which(token: str, tokens: list[str]) -> int | None:
    """The position of ``token`` among ``tokens`` (every one compared: no timing hint)."""
    found = None
    for i, candidate in enumerate(tokens):
        if hmac.compare_digest(token.encode(), candidate.encode()):
            found = i
    return found


def middleware(tokens: list[str]) -> Middleware:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not tokens or request.path in OPEN_PATHS:
            request[ACTOR] = "api"
            return await handler(request)
        token = presented(request.headers.get("Authorization", ""))
        if token is None:
            return unauthorized("no API token: send 'Authorization: Bearer TOKEN'")
        index = which(token, tokens)
        if index is None:
            return unauthorized("invalid API token")
        request[ACTOR] = f"api:token{index + 1}"
        return await handler(request)

    return check
