"""``/api/...``: each page as JSON, in the shapes of the CLI's ``--json``.

=============================  ==========================================
``GET /api/status[?run=N]``    ``billq status [N] --json``
``GET /api/runs``              ``billq runs --json``
``GET /api/runs/{id}``         ``{"status", "report", "dunning", "throughput"}``
``GET /api/report/{id}?limit&after``  ``billq report ID --json``, its dead jobs paged
``GET /api/queues``            ``billq queues --json``
``GET /api/dlq[?error_class]`` ``billq dlq list --json``
``GET /api/dlq/{id}``          ``billq dlq show ID --json``
``GET /api/jobs?state&run&account&limit&before``  ``billq jobs --json``
``GET /api/accounts/{id}``     ``billq accounts show ID --json`` + charges, invoices
``GET /api/workers``           ``billq workers --json``
``GET /api/scale-hint?deadline=ISO[&window=S]``  ``billq scale-hint --json``
``POST /api/dlq/replay``       ``{"ids": [...]}`` → ``billq dlq replay --json``
``POST /api/jobs/{id}/retry``  ``billq jobs retry ID``
``POST /api/jobs/{id}/cancel`` ``billq jobs cancel ID``
=============================  ==========================================

Errors are ``{"error": "..."}``: 400 bad input, 404 not found, 409 refused by the job's state.

A run's dead jobs may be a million: ``/api/report/{id}`` lists ``limit`` of them (default
100, at most 1000) by id, after the job ``after`` (a keyset cursor); ``dead_next`` is the
``after`` of the next page (null on the last), ``dead_total`` how many the run has.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from dashboard.pages import (
    LETTER_ID,
    MAX_SELECTED,
    _int,
    _path_id,
    _refuse_if_read_only,
    state_of,
)
from shared import views
from shared.billing.jobs import JOB_STATES
from shared.errors import ActionRefused, BillqError, ConfigError, InvalidRequest
from shared.messages import INT64_MAX
from shared.query import bounded_int


def reply(data: Any, status: int = 200) -> web.Response:
    return web.json_response(views.plain(data), status=status, dumps=json.dumps)


def fail(status: int, message: str) -> web.Response:
    return reply({"error": message}, status)


async def status(request: web.Request) -> web.Response:
    try:
        return reply(
            await views.run_status(state_of(request).pool, _int(request.query.get("run"), "run"))
        )
    except ConfigError as exc:
        return fail(404, str(exc))


async def runs(request: web.Request) -> web.Response:
    limit = min(_int(request.query.get("limit"), "limit") or 20, 1000)
    return reply(views.rows_to_dicts(await views.runs(state_of(request).pool, limit)))


async def run(request: web.Request) -> web.Response:
    from dashboard.pages import cached_run_data

    run_id = _path_id(request, "run")
    try:
        data = await cached_run_data(state_of(request), run_id)
    except ConfigError as exc:
        return fail(404, str(exc))
    return reply({k: data[k] for k in ("status", "report", "dunning", "throughput")})


REPORT_DEAD_LIMIT, REPORT_DEAD_MAX = 100, 1000


async def report(request: web.Request) -> web.Response:
    run_id = _int(request.match_info["id"], "run", high=None)
    assert run_id is not None
    q = request.query
    try:
        limit = bounded_int(q.get("limit"), "limit", 1, REPORT_DEAD_MAX, REPORT_DEAD_LIMIT)
        after = bounded_int(q.get("after"), "after", 0, INT64_MAX, 0)  # a dead job's id
    except InvalidRequest as exc:
        return fail(400, str(exc))
    if run_id > INT64_MAX:
        return fail(404, f"RUN: no billing run {run_id}")
    try:
        return reply(await views.report(state_of(request).pool, run_id, limit, after))
    except ConfigError as exc:
        return fail(404, str(exc))


async def queues(request: web.Request) -> web.Response:
    state = state_of(request)
    return reply(await views.queues(state.pool, await state.broker(), state.settings))


async def dlq(request: web.Request) -> web.Response:
    state = state_of(request)
    limit = min(_int(request.query.get("limit"), "limit") or 100, 100_000)
    letters = await views.dead_letters(await state.broker(), state.settings, limit)
    wanted = request.query.get("error_class")
    return reply([x for x in letters if not wanted or x["error_class"] == wanted])


async def dlq_one(request: web.Request) -> web.Response:
    state = state_of(request)
    try:
        return reply(
            await views.dead_letter(await state.broker(), state.settings, request.match_info["id"])
        )
    except ConfigError as exc:
        return fail(404, str(exc))


async def jobs(request: web.Request) -> web.Response:
    q = request.query
    job_state = q.get("state") or None
    if job_state is not None and job_state not in JOB_STATES:
        return fail(400, f"state: one of {', '.join(JOB_STATES)}")
    rows = await views.jobs(
        state_of(request).pool,
        job_state,
        _int(q.get("run"), "run"),
        _int(q.get("account"), "account"),
        min(_int(q.get("limit"), "limit") or 100, 10_000),
        _int(q.get("before"), "before"),
    )
    return reply(views.rows_to_dicts(rows))


async def account(request: web.Request) -> web.Response:
    pool = state_of(request).pool
    account_id = _path_id(request, "account")
    try:
        data = await views.account(pool, account_id)
    except ConfigError as exc:
        return fail(404, str(exc))
    return reply({**data, **await views.account_money(pool, account_id)})


async def workers(request: web.Request) -> web.Response:
    return reply(views.rows_to_dicts(await views.workers(state_of(request).pool)))


async def scale_hint(request: web.Request) -> web.Response:
    from shared.billing.periods import parse_as_of

    try:
        deadline = parse_as_of(request.query.get("deadline", ""))
    except ValueError:
        return fail(400, "deadline: an ISO 8601 time, e.g. 2026-03-01T18:00:00Z")
    window = _int(request.query.get("window"), "window") or 60
    return reply(await views.scale_hint_at(state_of(request).pool, deadline, window))


async def replay(request: web.Request) -> web.Response:
    from shared import operations

    _refuse_if_read_only(request)
    try:
        body = await request.json()
    except ValueError:
        return fail(400, 'expected JSON {"ids": ["..."]}')
    ids = body.get("ids") if isinstance(body, dict) else None
    if (
        not isinstance(ids, list)
        or not ids
        or len(ids) > MAX_SELECTED
        or not all(isinstance(i, str) and LETTER_ID.match(i) for i in ids)
    ):
        return fail(400, f'expected JSON {{"ids": [...]}}: 1 to {MAX_SELECTED} dead-letter ids')
    state = state_of(request)
    state.cache.clear()
    result = await operations.replay_dead_letters(
        state.pool, await state.broker(), state.settings, set(ids), str(request["actor"])
    )
    missing = sorted(set(ids) - set(result["replayed"]))
    return reply({**result, "missing": missing}, 200 if not missing else 409)


async def job_action(request: web.Request) -> web.Response:
    from shared import operations

    _refuse_if_read_only(request)
    job_id = _path_id(request, "job")
    state, actor = state_of(request), str(request["actor"])
    state.cache.clear()
    try:
        if request.match_info["verb"] == "retry":
            was = await operations.retry_job(
                state.pool, await state.broker(), state.settings, job_id, actor
            )
            return reply({"job_id": job_id, "was": was, "outcome": "republished"})
        await operations.cancel_job(state.pool, await state.broker(), state.settings, job_id, actor)
        return reply({"job_id": job_id, "outcome": "cancelled"})
    except ConfigError as exc:
        return fail(404, str(exc))
    except ActionRefused as exc:
        return fail(409, str(exc))
    except BillqError as exc:
        return fail(503, str(exc))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/runs", runs)
    app.router.add_get("/api/runs/{id}", run)
    app.router.add_get("/api/report/{id}", report)
    app.router.add_get("/api/queues", queues)
    app.router.add_get("/api/dlq", dlq)
    app.router.add_get("/api/dlq/{id}", dlq_one)
    app.router.add_get("/api/jobs", jobs)
    app.router.add_get("/api/accounts/{id}", account)
    app.router.add_get("/api/workers", workers)
    app.router.add_get("/api/scale-hint", scale_hint)
    app.router.add_post("/api/dlq/replay", replay)
    app.router.add_post("/api/jobs/{id}/{verb:retry|cancel}", job_action)
