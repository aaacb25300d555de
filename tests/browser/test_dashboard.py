"""The dashboard in headless Chromium against a real run: pages, live progress, actions
with confirmation, the API's shapes against the CLI's --json, auth, CSRF and read-only."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any
from unittest import mock

import asyncpg
import httpx
import pytest
import testkit
from testkit import all_terminal, assert_charged_once, distribute, seed

from shared.config import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

TOKEN = "s3cret-dashboard-token"


async def cli_json(env: dict[str, str], *args: str) -> Any:
    """``billq ARGS --json`` run in this process (a thread: it calls asyncio.run), which
    saves a Python start-up per comparison."""
    from billq.main import main

    def call() -> str:
        out = io.StringIO()
        with mock.patch.dict(os.environ, env, clear=True), contextlib.redirect_stdout(out):
            assert main([*args, "--json"]) == 0
        return out.getvalue()

    return json.loads(await asyncio.to_thread(call))


def api(d: Any, path: str, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {TOKEN}", **kw.pop("headers", {})}
    return httpx.request(kw.pop("method", "GET"), d.base + path, headers=headers, timeout=20, **kw)


async def dlq_depth(settings: Settings) -> int:
    return (await testkit.queue_depths(settings))[f"{settings.queue_prefix}.charge.dead"][0]


async def login(page: Any, d: Any, name: str) -> None:
    await page.goto(d.base + "/login")
    await page.fill("input[name=name]", name)
    await page.fill("input[name=token]", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_url(d.base + "/")


async def confirm(page: Any, button: str) -> list[str]:
    """Click an action button, check the confirmation lists the ids, confirm; the outcomes."""
    await page.click(button)
    await page.wait_for_selector("#confirm")
    ids = [t.strip() for t in await page.locator("ul.ids code").all_inner_texts()]
    await page.click("#confirm")
    await page.wait_for_selector("#outcomes")
    rows: list[str] = await page.locator("#outcomes tr").all_inner_texts()
    assert len(rows) == len(ids)
    return rows


async def test_the_dashboard_follows_a_run_live_and_acts_through_the_cli_code(
    db: asyncpg.Connection,
    settings: Settings,
    gateway_url: str,
    tmp_env: dict[str, str],
    tmp_path: Path,
    page: Any,
    shots: Any,
    dashboard_factory: Any,
) -> None:
    await seed(db, 200, card=lambda i: "pm_card_chargeDeclined" if i % 40 == 0 else "pm_card_visa")
    run_id = distribute(tmp_env)["run_id"]
    # Cancelled before their jobs run: each job dies with a dead letter that names it.
    await db.execute("UPDATE accounts SET status = 'cancelled' WHERE id IN (7, 8)")
    await testkit.publish_raw(settings, b"garbage")
    env = {**tmp_env, "BILLQ_DASHBOARD_TOKEN": TOKEN}
    d = dashboard_factory(env)

    # Logged out: the login form, with 401.
    response = await page.goto(d.base + f"/runs/{run_id}")
    assert response.status == 401 and await page.locator("input[name=token]").count() == 1
    await login(page, d, "alice")

    await page.goto(d.base + f"/runs/{run_id}")
    assert await page.inner_text("#progress") == "0 / 200"
    await page.evaluate("window.notReloaded = true")
    worker = testkit.spawn("worker", env=tmp_env, log=tmp_path / "w1.log")
    try:
        # The page updates itself while the worker charges: no reload, the count moves.
        await page.wait_for_function(
            "document.querySelector('#progress').innerText === '200 / 200'", timeout=60_000
        )
        assert await page.evaluate("window.notReloaded") is True
        await testkit.wait_until(lambda: all_terminal(db), timeout=60)
        await testkit.wait_until(lambda: _eq(dlq_depth(settings), 3), timeout=30)
        await page.wait_for_function(
            "document.querySelector('[data-count=succeeded]').innerText === '193'"
        )
        billed = await page.inner_text("td.money")
        assert (
            billed
            == f"{sum(1000 + i for i in range(1, 201) if i % 40 and i not in (7, 8)) / 100:,.2f} USD"
        )
        await shots.take(page, "run")

        await page.goto(d.base + "/")
        await page.wait_for_selector(f"tr[data-run='{run_id}']")
        # Figures may be a poll old (dashboard/cache.py); the poll brings the live worker.
        await page.wait_for_function("document.querySelector('#live-workers').innerText === '1'")
        await shots.take(page, "overview")
        await page.goto(d.base + "/workers")
        assert "live" in await page.inner_text("table")
        await shots.take(page, "workers")
    finally:
        assert testkit.stop_process(worker) == 0

    # The API answers what the CLI's --json prints.
    assert api(d, "/api/runs").json() == await cli_json(tmp_env, "runs")
    assert api(d, f"/api/report/{run_id}").json() == await cli_json(tmp_env, "report", str(run_id))
    assert api(d, f"/api/jobs?run={run_id}&limit=500").json() == await cli_json(
        tmp_env, "jobs", "--run", str(run_id), "--limit", "500"
    )
    status, cli_status = (
        api(d, f"/api/status?run={run_id}").json(),
        await cli_json(tmp_env, "status"),
    )
    assert {k: v for k, v in status.items() if k not in ("rate_per_s", "eta_s")} == {
        k: v for k, v in cli_status.items() if k not in ("rate_per_s", "eta_s")
    }
    assert api(d, "/api/dlq").json() == await cli_json(tmp_env, "dlq", "list")
    account = api(d, "/api/accounts/7").json()
    cli_account = await cli_json(tmp_env, "accounts", "show", "7")
    assert {k: account[k] for k in cli_account} == cli_account
    assert api(d, "/api/workers").json() == await cli_json(tmp_env, "workers") == []

    # Dead letters: filter by class, inspect one, replay exactly the one selected.
    await page.goto(d.base + "/dlq")
    assert await page.locator("tr[data-letter]").count() == 3
    await page.select_option("select[name=error_class]", "AccountNotBillable")
    await page.wait_for_url(re.compile(r"error_class=AccountNotBillable"))
    assert await page.locator("tr[data-letter]").count() == 2
    job7 = await db.fetchval("SELECT id FROM billing_jobs WHERE account_id = 7")
    letter = await page.locator(f"tr[data-job='{job7}']").get_attribute("data-letter")
    await shots.take(page, "dlq")
    await page.click(f"a[href='/dlq/{letter}']")
    assert "AccountNotBillable" in await page.inner_text("main")
    await db.execute("UPDATE accounts SET status = 'active' WHERE id = 7")
    await page.goto(d.base + "/dlq")
    await page.check(f"input[value='{letter}']")
    await page.click("#replay-selected")
    await page.wait_for_selector("#confirm")
    await shots.take(page, "confirm")
    assert await page.locator("ul.ids code").all_inner_texts() == [letter]
    await page.click("#confirm")
    await page.wait_for_selector("#outcomes")
    assert "replayed" in await page.inner_text("#outcomes")
    assert await dlq_depth(settings) == 2  # the letters not selected are still there
    row = await db.fetchrow("SELECT state, replays FROM billing_jobs WHERE id = $1", job7)
    assert row is not None and row["state"] == "published" and row["replays"] == 1

    # A second run nobody consumes yet: cancel one of its jobs (ticked).
    await seed(db, 3, start=1001)
    run2 = distribute(tmp_env)["run_id"]
    await page.goto(d.base + f"/jobs?run={run2}&state=published")
    ids = await page.locator("tr[data-job]").evaluate_all("rs => rs.map(r => r.dataset.job)")
    assert len(ids) == 3
    victim = ids[0]
    await page.check(f"input[value='{victim}']")
    assert await confirm(page, "#cancel-selected") == [f"{victim}\tcancelled"]
    assert await db.fetchval("SELECT state FROM billing_jobs WHERE id = $1", int(victim)) == "dead"
    await page.goto(d.base + f"/jobs?run={run2}")
    await shots.take(page, "jobs")
    # Retry the dead job of account 8 (its row's button) once the account is billable again.
    await db.execute("UPDATE accounts SET status = 'active' WHERE id = 8")
    job8 = await db.fetchval("SELECT id FROM billing_jobs WHERE account_id = 8")
    await page.goto(d.base + f"/jobs?run={run_id}&state=dead")
    outcome = await confirm(page, f"tr[data-job='{job8}'] >> text=Retry…")
    assert outcome == [f"{job8}\trepublished (was dead)"]
    # A cancelled job stays cancelled: the money gate refuses its retry, the page says why.
    await page.goto(d.base + f"/jobs?run={run2}&state=dead")
    refused = await confirm(page, f"tr[data-job='{victim}'] >> text=Retry…")
    assert refused == [f"{victim}\tjob {victim} was cancelled by an operator; not retried"]

    metrics = api(d, "/metrics").text
    gauge = re.search(r'^billq_workers_needed\{deadline="([^"]+)"\} (\S+)$', metrics, re.M)
    assert gauge and float(gauge.group(2)) >= 1, metrics
    assert re.search(r"^billq_open_jobs 4\.0$", metrics, re.M), metrics

    await page.goto(d.base + "/accounts/40")
    assert "declined" in await page.inner_text("ol.timeline")
    await shots.take(page, "account")

    worker = testkit.spawn("worker", env=tmp_env, log=tmp_path / "w2.log")
    try:
        await testkit.wait_until(lambda: _jobs_settled(db), timeout=60)
        # The retried job had two messages (its own and the republished one): both must go.
        await testkit.wait_until(lambda: _work_queue_empty(settings), timeout=30)
    finally:
        testkit.stop_process(worker)
    # 193 + accounts 7 (replayed) and 8 (retried) + the 2 jobs of run 2 not cancelled.
    await assert_charged_once(db, gateway_url, settings, expect_charged=197)
    actions = await db.fetch(
        "SELECT actor, action, target, outcome FROM operator_actions ORDER BY id"
    )
    assert [(a["actor"], a["action"], a["target"]) for a in actions] == [
        ("dashboard:alice", "dlq.replay", letter),
        ("dashboard:alice", "jobs.cancel", victim),
        ("dashboard:alice", "jobs.retry", str(job8)),
    ]


async def _eq(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def _work_queue_empty(settings: Settings) -> bool:
    """Nothing ready on the work queue nor waiting in a retry tier (a copy a worker found
    busy elsewhere comes back from a retry tier and is then acked as a duplicate)."""
    depths = await testkit.queue_depths(settings)
    return all(ready == 0 for name, (ready, _) in depths.items() if not name.endswith(".dead"))


async def _jobs_settled(db: asyncpg.Connection) -> bool:
    return bool(
        await db.fetchval(
            "SELECT count(*) FROM billing_jobs WHERE state IN ('pending','published','processing','retrying')"
        )
        == 0
    )


async def test_auth_csrf_and_read_only_refuse_what_they_should(
    db: asyncpg.Connection,
    settings: Settings,
    tmp_env: dict[str, str],
    page: Any,
    shots: Any,
    dashboard_factory: Any,
) -> None:
    await seed(db, 2)
    run_id = distribute(tmp_env)["run_id"]
    job = await db.fetchval("SELECT min(id) FROM billing_jobs")
    env = {**tmp_env, "BILLQ_DASHBOARD_TOKEN": TOKEN}
    rw = dashboard_factory(env)
    ro = dashboard_factory(env, "--read-only")

    # No token, a wrong one, a forged cookie: 401 on pages, API and metrics alike.
    for path in ("/", f"/runs/{run_id}", "/jobs", "/api/runs", "/api/dlq", "/metrics"):
        assert httpx.get(rw.base + path).status_code == 401, path
        bad = {"Authorization": "Bearer nope"}
        assert httpx.get(rw.base + path, headers=bad).status_code == 401, path
        forged = {"Cookie": "billq_session=made-up"}
        assert httpx.get(rw.base + path, headers=forged).status_code == 401, path
    assert api(rw, "/api/runs").status_code == 200
    assert httpx.post(rw.base + f"/api/jobs/{job}/cancel").status_code == 401

    # The login form: a wrong token is refused, the right one opens the pages.
    await page.goto(rw.base + "/login")
    await page.fill("input[name=token]", "wrong")
    await page.click("button[type=submit]")
    assert "wrong token" in await page.inner_text("[role=alert]")
    await login(page, rw, "bob")

    # CSRF: a logged-in browser's POST without the form's token, or with another, is 403.
    cookies = {c["name"]: c["value"] for c in await page.context.cookies()}
    jar = {"billq_session": cookies["billq_session"]}
    for form in (
        {"id": str(job), "confirmed": "yes"},
        {"id": str(job), "confirmed": "yes", "csrf": "x"},
    ):
        r = httpx.post(rw.base + "/actions/cancel", data=form, cookies=jar)
        assert r.status_code == 403 and "CSRF" in r.text
        r = httpx.post(rw.base + f"/api/jobs/{job}/cancel", cookies=jar)
        assert r.status_code == 403
    assert await db.fetchval("SELECT state FROM billing_jobs WHERE id = $1", job) == "published"
    assert await db.fetchval("SELECT count(*) FROM operator_actions") == 0

    # Read-only: no action buttons, and the actions answer 403 even with a valid CSRF token.
    await login(page, ro, "carol")
    await page.goto(ro.base + "/jobs")
    assert await page.locator("tr[data-job]").count() == 2
    assert await page.locator("button:has-text('Retry'), button:has-text('Cancel')").count() == 0
    assert await page.locator(".badge.ro").count() == 1
    await shots.take(page, "read-only")
    csrf = await page.evaluate(
        'fetch(\'/jobs\').then(r => r.text()).then(t => t.match(/name="csrf" value="([^"]+)"/)[1])'
    )
    status = await page.evaluate(
        """([csrf, job]) => fetch('/actions/cancel', {method: 'POST',
              headers: {'Content-Type': 'application/x-www-form-urlencoded'},
              body: 'confirmed=yes&id=' + job + '&csrf=' + encodeURIComponent(csrf)}).then(r => r.status)""",
        [csrf, job],
    )
    assert status == 403
    assert api(ro, f"/api/jobs/{job}/cancel", method="POST").status_code == 403
    assert api(ro, "/api/dlq/replay", method="POST", json={"ids": ["abc"]}).status_code == 403
    assert await db.fetchval("SELECT state FROM billing_jobs WHERE id = $1", job) == "published"

    # With a valid session and its CSRF token, the same POST works on the read-write one.
    await login(page, rw, "bob")
    status = await page.evaluate(
        """(job) => fetch('/jobs').then(r => r.text()).then(t => {
              const csrf = t.match(/name="csrf" value="([^"]+)"/)[1];
              return fetch('/api/jobs/' + job + '/cancel', {method: 'POST',
                  headers: {'X-CSRF-Token': csrf}}).then(r => r.status); })""",
        job,
    )
    assert status == 200
    assert await db.fetchval("SELECT state FROM billing_jobs WHERE id = $1", job) == "dead"
    assert await db.fetchval("SELECT actor FROM operator_actions") == "dashboard:bob"


def test_the_dashboard_refuses_to_listen_off_loopback_without_a_token() -> None:
    env = testkit.env_for(testkit.make_settings("unused", "unused"))
    proc = testkit.billq("dashboard", "--host", "0.0.0.0", env=env, check=False, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "billq: error: BILLQ_DASHBOARD_TOKEN: required when --host is not a loopback address (0.0.0.0)"
    ]
