"""The command line as operators and cron use it: one clear line on bad input, exit codes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import asyncpg
import pytest
import testkit

from shared.config import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    return testkit.env_for(settings)


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    stderr = proc.stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["distribute", "--as-of", "yesterday"], "--as-of"),
        (["distribute", "--batch-size", "0"], "--batch-size"),
        (["distribute", "--shard", "3/2"], "--shard"),
        (["worker", "--concurrency", "many"], "--concurrency"),
        (["status", "abc"], "RUN"),
        (["invoices", "show", "42"], "NUMBER"),
        (["accounts", "list", "--status", "happy"], "--status"),
        (["sandbox-gateway", "--fail-rate", "2"], "fail"),
        (["no-such-command"], "no-such-command"),
    ],
)
def test_a_bad_argument_prints_one_line_and_exits_2(
    env: dict[str, str], args: list[str], needle: str
) -> None:
    proc = testkit.billq(*args, env=env, check=False)
    assert proc.returncode == 2
    one_line_error(proc, needle)


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("BILLQ_MAX_ATTEMPTS", "0", "BILLQ_MAX_ATTEMPTS"),
        ("BILLQ_RETRY_DELAYS", "[5, -1]", "BILLQ_RETRY_DELAYS"),
        ("BILLQ_JOB_LEASE", "1", "BILLQ_JOB_LEASE"),
        ("BILLQ_AMQP_URL", "http://nope", "BILLQ_AMQP_URL"),
    ],
)
def test_a_bad_setting_prints_one_line_naming_it(
    env: dict[str, str], var: str, value: str, needle: str
) -> None:
    proc = testkit.billq("distribute", env={**env, var: value}, check=False)
    assert proc.returncode == 2
    one_line_error(proc, needle)


def test_an_unreachable_database_is_one_line_without_the_password(env: dict[str, str]) -> None:
    url = "postgresql://billq:s3cret-pw@127.0.0.1:1/billq"
    proc = testkit.billq("status", env={**env, "BILLQ_DATABASE_URL": url}, check=False)
    assert proc.returncode == 1
    line = one_line_error(proc, "BILLQ_DATABASE_URL")
    assert "s3cret-pw" not in proc.stderr + proc.stdout, line


def test_an_unreachable_broker_is_one_line_without_the_password(
    env: dict[str, str], db: asyncpg.Connection
) -> None:
    url = "amqp://guest:hunter2@127.0.0.1:1/"
    proc = testkit.billq("distribute", env={**env, "BILLQ_AMQP_URL": url}, check=False)
    assert proc.returncode == 1
    one_line_error(proc, "BILLQ_AMQP_URL", "127.0.0.1:1")
    assert "hunter2" not in proc.stderr + proc.stdout


def test_a_missing_database_says_to_migrate(env: dict[str, str]) -> None:
    url = testkit.db_url(testkit.unique("billq_missing"))
    proc = testkit.billq("status", env={**env, "BILLQ_DATABASE_URL": url}, check=False)
    assert proc.returncode == 2
    one_line_error(proc, "billq migrate")


def test_migrate_is_idempotent_and_creates_a_missing_database(env: dict[str, str]) -> None:
    import asyncio

    name = testkit.unique("billq_fresh")
    e = {**env, "BILLQ_DATABASE_URL": testkit.db_url(name)}
    try:
        first = testkit.billq("migrate", env=e)
        from shared.db.migrations import load_migrations

        assert f"applied {len(load_migrations())} " in first.stdout
        assert "applied 0" in testkit.billq("migrate", env=e).stdout
    finally:
        asyncio.run(testkit.drop_database(name))


def test_distribute_with_nothing_due_and_status_json_shape(env: dict[str, str]) -> None:
    out = testkit.billq("distribute", "--as-of", "2026-01-31", "--json", env=env)
    summary = json.loads(out.stdout)
    assert {"run_id", "due", "published"} <= set(summary)
    assert summary["due"] == 0
    status = json.loads(testkit.billq("status", "--json", env=env).stdout)
    assert set(status) >= {"run_id", "state", "total", "counts"}
    assert status["run_id"] == summary["run_id"] and status["state"] == "completed"
    assert status["total"] == 0 and set(status["counts"]) >= {"pending", "succeeded", "dead"}
    dry = testkit.billq("distribute", "--dry-run", "--as-of", "2026-01-31T12:00:00Z", env=env)
    assert "dry run" in dry.stdout


def test_schema_prints_the_message_json_schema(env: dict[str, str]) -> None:
    schema = json.loads(testkit.billq("schema", env=env).stdout)
    assert "idempotency_key" in schema["properties"]


CSV_GOOD = """id,name,email,amount_cents,currency,billing_interval,billing_anchor_day,next_billing_at,payment_method,gateway_customer
1,Ada,ada@example.com,1500,usd,month,31,2026-01-31T00:00:00Z,pm_card_visa,cus_1
2,Bob,bob@example.com,9900,EUR,year,29,,pm_card_visa,
"""

CSV_BAD = """id,name,email,amount_cents,currency,billing_interval,billing_anchor_day,next_billing_at,payment_method,gateway_customer
1,Ada,ada@example.com,1500,USD,month,31,2026-01-31,pm_card_visa,cus_1
2,Bob,bob@example.com,0,EUR,month,1,,pm_card_visa,
3,Cy,cy@example.com,100,XXX,month,1,,pm_card_visa,
4,Di,not-an-email,100,USD,month,1,,pm_card_visa,
5,Ed,ed@example.com,100,USD,week,1,,pm_card_visa,
1,Ada again,ada@example.com,1500,USD,month,31,,pm_card_visa,
"""


async def test_accounts_import_is_all_or_nothing_and_reimport_keeps_billing_state(
    env: dict[str, str], db: asyncpg.Connection, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(CSV_BAD)
    proc = testkit.billq("accounts", "import", str(bad), env=env, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert any("line 3, column amount_cents:" in ln for ln in lines)
    assert any("line 4, column currency:" in ln for ln in lines)
    assert any("line 5, column email:" in ln for ln in lines)
    assert any("line 6, column billing_interval:" in ln for ln in lines)
    assert any("line 7, column id:" in ln and "repeats line 2" in ln for ln in lines)
    assert await db.fetchval("SELECT count(*) FROM accounts") == 0

    good = tmp_path / "good.csv"
    good.write_text(CSV_GOOD)
    out = testkit.billq("accounts", "import", str(good), env=env).stdout
    assert "inserted=2 updated=0" in out
    row = await testkit.fetchrow(db, "SELECT * FROM accounts WHERE id = 1")
    assert row["currency"] == "USD" and row["billing_anchor_day"] == 31

    # Billing moved on; a re-import with a new price must not touch the billing state.
    await db.execute(
        "UPDATE accounts SET status = 'past_due', next_billing_at = '2026-02-28Z' WHERE id = 1"
    )
    good.write_text(CSV_GOOD.replace("1500,usd", "1700,usd"))
    out = testkit.billq("accounts", "import", str(good), env=env).stdout
    assert "inserted=0 updated=1 unchanged=1 cancelled=0 reactivated=0" in out
    row = await testkit.fetchrow(db, "SELECT * FROM accounts WHERE id = 1")
    assert row["amount_cents"] == 1700 and row["status"] == "past_due"
    assert row["next_billing_at"].isoformat().startswith("2026-02-28")

    listed = json.loads(
        testkit.billq("accounts", "list", "--status", "past_due", "--json", env=env).stdout
    )
    assert [a["id"] for a in listed] == [1]
    csv_out = testkit.billq("accounts", "list", "--csv", env=env).stdout.splitlines()
    assert csv_out[0].startswith("id,name,email") and len(csv_out) == 3
    shown = json.loads(testkit.billq("accounts", "show", "1", "--json", env=env).stdout)
    assert shown["id"] == 1 and shown["events"] == []
