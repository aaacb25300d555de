"""Signed messages, and no secret in any log line of a run with faults."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import pytest
import testkit
from testkit import all_terminal, assert_charged_once, distribute, seed

from shared.config import Settings
from shared.signing import SIGNATURE_HEADER, sign

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


async def test_with_signing_on_forged_and_unsigned_messages_are_dead_lettered_never_charged(
    db: asyncpg.Connection,
    settings: Settings,
    gateway_url: str,
    tmp_env: dict[str, str],
    tmp_path: Path,
) -> None:
    await seed(db, 5)
    # Rotation: the distributor still signs with the old key; workers accept new and old.
    distribute({**tmp_env, "BILLQ_SIGNING_KEYS": "old-key-2025"})
    job = await testkit.fetchrow(db, "SELECT * FROM billing_jobs WHERE account_id = 1")
    body = json.dumps(
        {
            "schema_version": 1,
            "job_id": job["id"],
            "account_id": 1,
            "period_start": "2026-03-01",
            "idempotency_key": job["idempotency_key"],
        }
    ).encode()
    await testkit.publish_raw(settings, body)  # unsigned
    await testkit.publish_raw(settings, body, headers={SIGNATURE_HEADER: sign(body, b"guess")})
    worker = testkit.spawn(
        "worker",
        env={**tmp_env, "BILLQ_SIGNING_KEYS": "new-key-2026,old-key-2025"},
        log=tmp_path / "w.log",
    )
    try:
        await testkit.wait_until(lambda: all_terminal(db), timeout=60)

        async def two_dead() -> bool:
            return (await testkit.queue_depths(settings))[f"{settings.queue_prefix}.charge.dead"][
                0
            ] == 2

        await testkit.wait_until(two_dead, timeout=20)
    finally:
        testkit.stop_process(worker)
    dead = await testkit.get_dead_letters(settings)
    assert sorted(str(m.headers["x-billq-error"]) for m in dead) == [
        "message is not signed",
        "message signature does not verify",
    ]
    await assert_charged_once(db, gateway_url, settings, expect_charged=5)
    assert await db.fetchval("SELECT max(attempts) FROM billing_jobs") == 1


async def test_no_secret_appears_in_the_logs_of_a_run_with_faults(
    db: asyncpg.Connection, settings: Settings, tmp_path: Path
) -> None:
    secret_key = "sk-signing-Zq93xT"
    db_password = "pw-Kd82nQ"
    await db.execute(f"CREATE ROLE billq_sec_test LOGIN PASSWORD '{db_password}' SUPERUSER")
    try:
        with testkit.sandbox_gateway(tmp_path, "--fail-rate", "0.3", "--seed", "5") as url:
            env = testkit.env_for(settings.model_copy(update={"gateway_url": url}))
            dsn = env["BILLQ_DATABASE_URL"].replace("postgres@", f"billq_sec_test:{db_password}@")
            env.update(
                BILLQ_SIGNING_KEYS=secret_key,
                BILLQ_DATABASE_URL=dsn,
                BILLQ_GATEWAY_API_KEY="sk_test_SECRETapikey",
                BILLQ_LOG_LEVEL="debug",
            )
            await seed(
                db, 20, card=lambda i: "pm_card_chargeDeclined" if i % 7 == 0 else "pm_card_visa"
            )
            out = testkit.billq("distribute", "--as-of", testkit.AS_OF, env=env)
            worker = testkit.spawn("worker", env=env, log=tmp_path / "worker.log")
            try:
                await testkit.wait_until(lambda: all_terminal(db), timeout=90)
            finally:
                testkit.stop_process(worker)
            bad = testkit.billq(
                "status",
                env={**env, "BILLQ_AMQP_URL": "amqp://u:amqp-pw-77@127.0.0.1:1/"},
                check=False,
            )
            bad_db = testkit.billq(
                "status",
                env={**env, "BILLQ_DATABASE_URL": "postgresql://x:db-pw-55@127.0.0.1:1/x"},
                check=False,
            )
    finally:
        await db.execute("DROP ROLE IF EXISTS billq_sec_test")
    logs = (tmp_path / "worker.log").read_text() + out.stdout + out.stderr
    logs += bad.stdout + bad.stderr + bad_db.stdout + bad_db.stderr
    assert "job.charged" in logs and "job.retry_scheduled" in logs  # the run really had faults
    for secret in (
        secret_key,
        db_password,
        "sk_test_SECRETapikey",
        "amqp-pw-77",
        "db-pw-55",
        "guest:guest",
        "pm_card_visa",
        "pm_card_chargeDeclined",
    ):
        assert secret not in logs, secret
