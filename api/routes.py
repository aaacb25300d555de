"""The API's endpoints (the contract is ``api/openapi.json``, checked against them in tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from api.auth import ACTOR
from api.server import STATE
from shared import oneoff, refunds
from shared.db import oneoff_repo
from shared.errors import BillqError, InvalidRequest, NotFound
from shared.messages import INT64_MAX, INT64_MIN
from shared.query import bounded_int

log = structlog.get_logger("billq.api")

OPENAPI = Path(__file__).resolve().parent / "openapi.json"
REPLAYED = "Idempotent-Replayed"
MAX_LIMIT = 100


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_post("/v1/charges", create_charge)
    app.router.add_post("/v1/refunds", create_refund)
    app.router.add_get("/v1/refunds/{id}", get_refund)
    app.router.add_get("/v1/jobs/{id}", get_job)
    app.router.add_get("/v1/accounts/{id}/charges", account_charges)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=OPENAPI.read_bytes(), content_type="application/json")


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidRequest(
            "the request body must be JSON (Content-Type: application/json)"
        ) from None


async def create_charge(request: web.Request) -> web.Response:
    """POST /v1/charges: a one-off charge job, idempotent by the caller's key."""
    state = request.app[STATE]
    key = oneoff.check_key(request.headers.get("Idempotency-Key"))
    charge = oneoff.parse(await _json_body(request))
    created = await oneoff.create(state.pool, charge, key)
    return await _created(request, created, "/v1/jobs")


async def create_refund(request: web.Request) -> web.Response:
    """POST /v1/refunds: a refund job of a charge, idempotent by the caller's key."""
    state = request.app[STATE]
    key = oneoff.check_key(request.headers.get("Idempotency-Key"))
    ask = refunds.parse(await _json_body(request))
    created = await refunds.create(state.pool, ask, key)
    return await _created(request, created, "/v1/refunds")


async def _created(request: web.Request, created: oneoff.Created, where: str) -> web.Response:
    """The answer to a create: a new job is published now (the outbox repair publishes it if
    the broker cannot take it now); a replay answers as the first request did."""
    state = request.app[STATE]
    headers = {REPLAYED: "true"} if created.replayed else {}
    if created.job_id is not None:
        log.info("api.job_created", job_id=created.job_id, path=where, actor=request.get(ACTOR))
        try:
            publisher = await state.publisher()
        except BillqError as exc:  # the job is committed: the outbox repair publishes it
            log.warning("api.broker_unavailable", job_id=created.job_id, error=str(exc))
        else:
            await oneoff.publish(state.pool, publisher, state.settings, created.job_id)
    body = created.body  # as it was created: a replay answers the very same
    response = web.json_response(body, status=created.status, headers=headers)
    if isinstance(body, dict) and "id" in body:
        response.headers["Location"] = f"{where}/{body['id']}"
    return response


async def get_refund(request: web.Request) -> web.Response:
    """GET /v1/refunds/{id}: a refund job, with its gateway refund and credit note once made."""
    state = request.app[STATE]
    job_id = _path_id(request, "refund", 1)
    body = await refunds.get(state.pool, job_id)
    if body is None:
        raise NotFound(f"no such refund: {job_id}", param="id")
    return web.json_response(body)


def _path_id(request: web.Request, what: str, low: int) -> int:
    text = request.match_info["id"]
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= INT64_MAX:
        raise NotFound(f"no such {what}: {text[:64]}", param="id")
    return value


async def get_job(request: web.Request) -> web.Response:
    """GET /v1/jobs/{id}: any job (period or one-off), with its charge once charged."""
    state = request.app[STATE]
    job_id = _path_id(request, "job", 1)
    row = await oneoff_repo.get_job(state.pool, job_id)
    if row is None:
        raise NotFound(f"no such job: {job_id}", param="id")
    return web.json_response(oneoff.job_object(row))


async def account_charges(request: web.Request) -> web.Response:
    """GET /v1/accounts/{id}/charges: the account's charges, newest first (Stripe's list)."""
    state = request.app[STATE]
    account_id = _path_id(request, "account", INT64_MIN)
    limit = bounded_int(request.query.get("limit"), "limit", 1, MAX_LIMIT, 10)
    cursor = request.query.get("starting_after")
    before = None if cursor is None else bounded_int(cursor, "starting_after", 1, INT64_MAX, 0)
    rows = await oneoff_repo.account_charges(state.pool, account_id, before, limit + 1)
    if not rows and before is None and not await oneoff_repo.account_exists(state.pool, account_id):
        raise NotFound(f"no such account: {account_id}", param="id")
    return web.json_response(
        {
            "object": "list",
            "url": f"/v1/accounts/{account_id}/charges",
            "has_more": len(rows) > limit,
            "data": [oneoff.charge_object(r) for r in rows[:limit]],
        }
    )
