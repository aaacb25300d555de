"""The least-privilege roles in deploy/sql/roles.sql: a worker runs under its role and
cannot change the schema; it settles the run and delivers the run hook under it too."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import pytest
import testkit
from aiohttp import web
from testkit import all_terminal, assert_charged_once, distribute, seed

from shared import hooks
from shared.config import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
ROLES_SQL = testkit.ROOT / "deploy" / "sql" / "roles.sql"


async def test_the_worker_runs_under_its_least_privilege_role(
    db: asyncpg.Connection,
    settings: Settings,
    gateway_url: str,
    tmp_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await db.execute(ROLES_SQL.read_text())
    await db.execute(ROLES_SQL.read_text())  # idempotent
    login = testkit.unique("billq_w")
    await db.execute(f"CREATE ROLE {login} LOGIN IN ROLE billq_worker")
    try:
        events: list[tuple[str, bytes]] = []

        async def receive(request: web.Request) -> web.Response:
            events.append((request.headers[hooks.SIGNATURE_HEADER], await request.read()))
            return web.Response()

        app = web.Application()
        app.router.add_post("/hooks", receive)
        runner = web.AppRunner(app)
        await runner.setup()
        port = testkit.free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        worker_env = {
            **tmp_env,
            "BILLQ_DATABASE_URL": tmp_env["BILLQ_DATABASE_URL"].replace("postgres@", f"{login}@"),
            "BILLQ_RUN_WEBHOOK_URL": f"http://127.0.0.1:{port}/hooks",
            "BILLQ_WEBHOOK_SECRET": "whsec_roles",
        }
        conn = await asyncpg.connect(worker_env["BILLQ_DATABASE_URL"])
        try:
            for ddl in (
                "CREATE TABLE evil (x int)",
                "ALTER TABLE accounts ADD COLUMN x int",
                "DROP TABLE charges",
                "DELETE FROM charges",
                "UPDATE accounts SET amount_cents = 1",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(ddl)
        finally:
            await conn.close()

        await seed(db, 15, card=lambda i: "pm_card_chargeDeclined" if i == 3 else "pm_card_visa")
        distribute(tmp_env)
        worker = testkit.spawn("worker", env=worker_env, log=tmp_path / "w.log")
        try:
            await testkit.wait_until(lambda: all_terminal(db), timeout=60)
            # The worker's heartbeat settles the run and posts its hook (under its role).
            await testkit.wait_until(lambda: _true(bool(events)), timeout=30)
        finally:
            assert testkit.stop_process(worker) == 0
            await runner.cleanup()
        signature, body = events[0]
        hooks.verify(body, signature, b"whsec_roles")
        event = json.loads(body)
        assert event["type"] == "run.completed_with_failures"
        assert event["data"]["jobs"] == {"succeeded": 14, "failed": 1}
        await assert_charged_once(db, gateway_url, settings, expect_charged=14)
        assert await db.fetchval("SELECT count(*) FROM invoices") == 15
        log = (tmp_path / "w.log").read_text()
        assert "InsufficientPrivilege" not in log and "permission denied" not in log
    finally:
        await db.execute(f"DROP ROLE IF EXISTS {login}")


async def _true(value: bool) -> bool:
    return value
