"""The HTML pages, their live fragments, login, and the action forms.

Every action is two POSTs: the first (from a list, with the ids the operator ticked)
shows what will happen and asks to confirm; the second (``confirmed=yes``, the same ids)
does it through ``shared.operations`` — the code behind ``billq dlq replay`` and
``billq jobs retry|cancel`` — and shows each id's outcome.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from dashboard import auth
from dashboard.server import STATE, State
from shared.billing.jobs import JOB_STATES, OPEN_STATES, TERMINAL
from shared.errors import BillqError, ConfigError
from shared.messages import INT64_MAX

LETTER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_SELECTED = 500
DEAD_SHOWN = 200  # dead jobs listed on a run page


def state_of(request: web.Request) -> State:
    return request.app[STATE]


def render(request: web.Request, name: str, http_status: int = 200, **ctx: Any) -> web.Response:
    state = state_of(request)
    session: auth.Session | None = request.get("session")
    html = state.templates.get_template(name).render(
        read_only=state.read_only,
        csrf=session.csrf if session else "",
        actor=request.get("actor", ""),
        login_required=state.settings.dashboard_token is not None,
        path=request.path,
        **ctx,
    )
    return web.Response(text=html, status=http_status, content_type="text/html")


def unauthorized(request: web.Request) -> web.StreamResponse:
    if request.path.startswith(("/api/", "/metrics", "/live/")):
        return web.json_response(
            {"error": "unauthorized: BILLQ_DASHBOARD_TOKEN needed"}, status=401
        )
    return render(request, "login.html", http_status=401, error=None, next=request.path_qs)


def _int(value: str | None, name: str, *, high: int | None = INT64_MAX) -> int | None:
    """A positive integer filter; past ``high`` (a bigint's range) a 400 naming it."""
    if value in (None, ""):
        return None
    try:
        n = int(value)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name}: expected a number\n") from None
    if n < 1:
        raise web.HTTPBadRequest(text=f"{name}: expected a positive number\n")
    if high is not None and n > high:
        raise web.HTTPBadRequest(text=f"{name}: expected a number up to {high}\n")
    return n


def _path_id(request: web.Request, name: str) -> int:
    """The path's ``{id}``. Past a bigint's range no row has it: not found, never a 500."""
    n = _int(request.match_info["id"], name, high=None)
    assert n is not None  # the route matched a non-empty segment
    if n > INT64_MAX:
        message = f"{name}: no {name} {n}"
        if request.path.startswith("/api/"):
            raise web.HTTPNotFound(
                text=json.dumps({"error": message}), content_type="application/json"
            )
        raise web.HTTPNotFound(text=message + "\n")
    return n


# --- overview and runs -------------------------------------------------------------------


async def _queues(state: State) -> tuple[list[dict[str, Any]] | None, str | None]:
    """Queue depths, or why the broker could not say."""
    from shared import views

    try:
        return await views.queues(state.pool, await state.broker(), state.settings), None
    except (BillqError, OSError) as exc:
        return None, str(exc)


async def overview_data(state: State) -> dict[str, Any]:
    from shared import views

    # Independent reads at once (the pool has several connections, the broker its own): a
    # first view waits for the slowest of them, not for their sum.
    runs, (queues, broker_error), workers = await asyncio.gather(
        views.runs(state.pool, 20), _queues(state), views.workers(state.pool)
    )
    open_ids = [r["id"] for r in runs if r["state"] in ("running", "published")]
    statuses = await asyncio.gather(*(views.run_status(state.pool, i) for i in open_ids))
    return {
        "runs": runs,
        "live": dict(zip(open_ids, statuses, strict=True)),
        "queues": queues,
        "broker_error": broker_error,
        "live_workers": sum(1 for w in workers if w["status"] == "live"),
        "stale_workers": sum(1 for w in workers if w["status"] == "stale"),
    }


async def _overview(state: State) -> dict[str, Any]:
    data: dict[str, Any] = await state.cache.get("overview", lambda: overview_data(state))
    return data


async def index(request: web.Request) -> web.Response:
    return render(request, "index.html", **await _overview(state_of(request)))


async def overview_live(request: web.Request) -> web.Response:
    return render(request, "_overview.html", **await _overview(state_of(request)))


async def run_data(state: State, run_id: int) -> dict[str, Any]:
    from shared import views

    status = await views.run_status(state.pool, run_id)  # first: no such run → ConfigError
    # The page lists the first dead jobs; /jobs?state=dead pages through the rest.
    report, dunning, throughput = await asyncio.gather(
        views.report(state.pool, run_id, DEAD_SHOWN),
        views.dunning(state.pool, run_id),
        views.throughput(state.pool, run_id),
    )
    return {
        "status": status,
        "open_jobs": sum(status["counts"][s] for s in OPEN_STATES),
        "done_jobs": sum(status["counts"][s] for s in TERMINAL),
        "report": report,
        "dunning": dunning,
        "throughput": throughput,
    }


async def cached_run_data(state: State, run_id: int) -> dict[str, Any]:
    """``run_data`` through the cache (the run page, its live fragment and its API)."""
    data: dict[str, Any] = await state.cache.get(("run", run_id), lambda: run_data(state, run_id))
    return data


async def _run_or_404(state: State, request: web.Request) -> dict[str, Any]:
    run_id = _path_id(request, "run")
    assert run_id is not None
    try:
        return await cached_run_data(state, run_id)
    except ConfigError:
        raise web.HTTPNotFound(text=f"no billing run {run_id}\n") from None


async def run_page(request: web.Request) -> web.Response:
    data = await _run_or_404(state_of(request), request)
    return render(request, "run.html", **data)


async def run_live(request: web.Request) -> web.Response:
    data = await _run_or_404(state_of(request), request)
    return render(request, "_run.html", **data)


# --- dead letters --------------------------------------------------------------------------


async def dlq_page(request: web.Request) -> web.Response:
    from shared import views

    state = state_of(request)
    wanted = request.query.get("error_class") or None
    letters = await views.dead_letters(await state.broker(), state.settings, 1000)
    classes = sorted({x["error_class"] for x in letters})
    shown = [x for x in letters if wanted is None or x["error_class"] == wanted]
    return render(
        request, "dlq.html", letters=shown, classes=classes, error_class=wanted, total=len(letters)
    )


async def dlq_letter(request: web.Request) -> web.Response:
    from shared import views

    state = state_of(request)
    try:
        letter = await views.dead_letter(
            await state.broker(), state.settings, request.match_info["id"]
        )
    except ConfigError:
        raise web.HTTPNotFound(text=f"no dead letter {request.match_info['id']}\n") from None
    return render(request, "dlq_letter.html", letter=letter)


# --- jobs, accounts, workers ---------------------------------------------------------------


async def jobs_page(request: web.Request) -> web.Response:
    from shared import views

    q = request.query
    job_state = q.get("state") or None
    if job_state is not None and job_state not in JOB_STATES:
        raise web.HTTPBadRequest(text=f"state: one of {', '.join(JOB_STATES)}\n")
    run, account = _int(q.get("run"), "run"), _int(q.get("account"), "account")
    asked = _int(q.get("limit"), "limit")
    limit = min(asked or 100, 1000)
    before = _int(q.get("before"), "before")
    rows = await views.jobs(state_of(request).pool, job_state, run, account, limit, before)
    filters = {"state": job_state or "", "run": run or "", "account": account or ""}
    # Keyset pages: the next one starts after the last job shown (a full page means more),
    # with the page size asked for.
    kept = {k: v for k, v in filters.items() if v} | ({"limit": limit} if asked else {})
    older = "/jobs?" + urlencode({**kept, "before": rows[-1]["id"]}) if len(rows) == limit else None
    return render(request, "jobs.html", jobs=rows, states=JOB_STATES, filters=filters, older=older)


async def account_page(request: web.Request) -> web.Response:
    from shared import views

    state = state_of(request)
    account_id = _path_id(request, "account")
    assert account_id is not None
    try:
        account = await views.account(state.pool, account_id)
    except ConfigError:
        raise web.HTTPNotFound(text=f"no account {account_id}\n") from None
    money = await views.account_money(state.pool, account_id)
    return render(request, "account.html", account=account, **money)


async def workers_page(request: web.Request) -> web.Response:
    from shared import views

    return render(request, "workers.html", workers=await views.workers(state_of(request).pool))


# --- actions -------------------------------------------------------------------------------

ACTIONS = {
    "replay": ("dlq.replay", "Replay dead letters", "/dlq"),
    "retry": ("jobs.retry", "Retry jobs", "/jobs"),
    "cancel": ("jobs.cancel", "Cancel jobs", "/jobs"),
}


def _refuse_if_read_only(request: web.Request) -> None:
    if state_of(request).read_only:
        raise web.HTTPForbidden(text="the dashboard runs --read-only: actions are off\n")


async def _selected(request: web.Request, kind: str) -> list[str]:
    form = await request.post()
    ids = [str(v) for v in form.getall("id", [])]
    if not ids:
        raise web.HTTPBadRequest(text="nothing selected\n")
    if len(ids) > MAX_SELECTED:
        raise web.HTTPBadRequest(text=f"at most {MAX_SELECTED} items at once\n")
    for value in ids:
        ok = LETTER_ID.match(value) if kind == "replay" else value.isdigit() and int(value) > 0
        if not ok:
            raise web.HTTPBadRequest(text=f"not an id: {value[:80]!r}\n")
    return list(dict.fromkeys(ids))  # each id once, in the order shown


async def action(request: web.Request) -> web.Response:
    from shared import operations

    _refuse_if_read_only(request)
    kind = request.match_info["kind"]
    if kind not in ACTIONS:
        raise web.HTTPNotFound()
    _, title, back = ACTIONS[kind]
    ids = await _selected(request, kind)
    form = await request.post()
    if form.get("confirmed") != "yes":
        return render(request, "confirm.html", kind=kind, title=title, ids=ids, back=back)
    state, actor = state_of(request), str(request["actor"])
    state.cache.clear()
    outcomes: list[tuple[str, str, bool]] = []
    if kind == "replay":
        result = await operations.replay_dead_letters(
            state.pool, await state.broker(), state.settings, set(ids), actor
        )
        for i in ids:
            if i not in result["replayed"]:
                outcomes.append((i, "not in the dead-letter queue", False))
            elif i in result["jobs_not_revived"]:
                why = result["jobs_not_revived"][i]
                outcomes.append((i, f"replayed; job not revived: {why}", True))
            else:
                outcomes.append((i, "replayed", True))
    else:
        for i in ids:
            try:
                if kind == "retry":
                    was = await operations.retry_job(
                        state.pool, await state.broker(), state.settings, int(i), actor
                    )
                    outcomes.append((i, f"republished (was {was})", True))
                else:
                    await operations.cancel_job(
                        state.pool, await state.broker(), state.settings, int(i), actor
                    )
                    outcomes.append((i, "cancelled", True))
            except BillqError as exc:
                outcomes.append((i, str(exc), False))
    state.cache.clear()  # and again: a refresh that started meanwhile saw the old state
    return render(request, "done.html", title=title, outcomes=outcomes, back=back)


# --- login and plumbing ----------------------------------------------------------------------


async def login_form(request: web.Request) -> web.Response:
    if state_of(request).settings.dashboard_token is None:
        raise web.HTTPFound("/")
    return render(request, "login.html", error=None, next=request.query.get("next", "/"))


async def login(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    token = state.settings.dashboard_token
    if token is None:
        raise web.HTTPFound("/")
    form = await request.post()
    nxt = str(form.get("next") or "/")
    if not nxt.startswith("/") or nxt.startswith("//"):
        nxt = "/"  # never an open redirect to another site
    if not auth.same(str(form.get("token") or ""), token.get_secret_value()):
        return render(request, "login.html", http_status=401, error="wrong token", next=nxt)
    name = re.sub(r"[^\w.@-]", "", str(form.get("name") or ""))[:64] or "operator"
    sid, _ = state.sessions.new(f"dashboard:{name}")
    response = web.HTTPSeeOther(nxt)
    auth.set_cookie(response, sid, request.secure)
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    state_of(request).sessions.drop(request.cookies.get(auth.COOKIE))
    response = web.HTTPSeeOther("/login")
    response.del_cookie(auth.COOKIE, path="/")
    raise response


async def metrics(request: web.Request) -> web.Response:
    from dashboard.metrics import render as render_metrics

    state = state_of(request)
    body = await state.cache.get(
        "metrics", lambda: render_metrics(state.pool, state.finish_within_s)
    )
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/live/overview", overview_live)
    app.router.add_get("/runs/{id}", run_page)
    app.router.add_get("/live/runs/{id}", run_live)
    app.router.add_get("/dlq", dlq_page)
    app.router.add_get("/dlq/{id}", dlq_letter)
    app.router.add_get("/jobs", jobs_page)
    app.router.add_get("/accounts/{id}", account_page)
    app.router.add_get("/workers", workers_page)
    app.router.add_post("/actions/{kind}", action)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
