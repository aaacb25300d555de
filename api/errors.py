"""Every failure as one JSON shape, Stripe's: ``{"error": {"type", "code", "message", "param"}}``.

Classified at this edge, once: a ``RequestRefused`` carries its HTTP status, type, code and
param; aiohttp's own refusals (no such route, wrong method, body too large) keep their
status; a transient failure (database, broker) is a 503 the caller may retry with the same
Idempotency-Key; anything else is a 500 without internals (logged with its traceback).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from shared.errors import RequestRefused, TransientError

log = structlog.get_logger("billq.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Stripe's codes for the HTTP refusals aiohttp raises before a handler runs.
_HTTP_CODES = {
    404: "resource_missing",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def error_response(
    status: int,
    type_: str,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
) -> web.Response:
    body = {"error": {"type": type_, "code": code, "message": message, "param": param}}
    return web.json_response(body, status=status)


def unauthorized(message: str) -> web.Response:
    response = error_response(401, "authentication_error", message, code="invalid_api_key")
    response.headers["WWW-Authenticate"] = 'Bearer realm="billq"'
    return response


def middleware() -> Middleware:
    @web.middleware
    async def shape(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except RequestRefused as exc:
            return error_response(exc.status, exc.type, exc.message, code=exc.code, param=exc.param)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error_response(
                exc.status,
                "invalid_request_error",
                exc.reason if exc.status != 404 else f"unrecognized request URL: {request.path}",
                code=_HTTP_CODES.get(exc.status),
            )
        except TransientError as exc:
            log.warning("api.unavailable", path=request.path, error=str(exc))
            return error_response(503, "api_error", f"{exc}; retry with the same key", code=None)
        except Exception:
            log.exception("api.unexpected_error", path=request.path)
            return error_response(500, "api_error", "internal error (logged)")

    return shape
