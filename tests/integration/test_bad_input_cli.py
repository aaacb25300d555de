"""Bad input through the real command line: one clear line, a defined exit code, nothing half
done. URLs, settings, closed pipes, imports (with status changes), CSV exports, money."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog
import testkit

from shared.amqp.connection import connect_with_retry
from shared.backoff import Backoff
from shared.config import Settings
from shared.errors import GatewayRejected
from shared.gateway.port import Charged, ChargeRequest
from shared.gateway.sandbox import SandboxGateway

pytestmark = pytest.mark.integration

HEADER = (
    "id,name,email,amount_cents,currency,billing_interval,billing_anchor_day,"
    "next_billing_at,payment_method,gateway_customer"
)


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    return testkit.env_for(settings)


def one_line(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "unexpected" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def with_url(env: dict[str, str], **urls: str) -> dict[str, str]:
    return {**env, **{f"BILLQ_{k.upper()}": v for k, v in urls.items()}}


def test_bad_database_urls_are_one_line_exit_2(env: dict[str, str]) -> None:
    good = env["BILLQ_DATABASE_URL"]
    host = good.split("@", 1)[1].split("/", 1)[0]
    for url, needle in (
        (good.replace(host, "127.0.0.1:abc"), "port must be a number"),
        (good.replace(host, "127.0.0.1:99999"), "port must be a number"),
        (good + "?foo=bar", 'unrecognized configuration parameter "foo"'),
        (good + "?statement_timeout=soon", "statement_timeout"),
        (good + "?sslmode=bogus", "sslmode must be one of"),
    ):
        proc = testkit.billq("runs", env=with_url(env, database_url=url), check=False)
        one_line(proc, 2, "BILLQ_DATABASE_URL", needle)


def test_bad_amqp_urls_and_a_missing_vhost_are_one_line_exit_2(env: dict[str, str]) -> None:
    amqp = env["BILLQ_AMQP_URL"].rstrip("/")
    port = amqp.rsplit(":", 1)[1]
    proc = testkit.billq(
        "topology", env=with_url(env, amqp_url=amqp.replace(port, "abc")), check=False
    )
    one_line(proc, 2, "BILLQ_AMQP_URL", "port must be a number")
    missing = testkit.unique("no_such_vhost")
    proc = testkit.billq("topology", env=with_url(env, amqp_url=f"{amqp}/{missing}"), check=False)
    one_line(proc, 2, "BILLQ_AMQP_URL", f"virtual host '{missing}'", "does not exist")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RETRY_DELAYS", "[NaN]"),
        ("RETRY_DELAYS", "[Infinity]"),
        ("RETRY_DELAYS", "[1e30]"),
        ("SHUTDOWN_GRACE", "inf"),
        ("DUNNING_SCHEDULE", "[1e400]"),
        ("PUBLISH_TIMEOUT", "nan"),
    ],
)
def test_non_finite_settings_are_refused_at_start(
    env: dict[str, str], name: str, value: str
) -> None:
    proc = testkit.billq("runs", env={**env, f"BILLQ_{name}": value}, check=False)
    one_line(proc, 2, f"BILLQ_{name}")


def run_into_closed_pipe(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run billq with its stdout reader already gone, as `billq ... | head` ends up."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "billq", *args],
            env=env,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            cwd=testkit.ROOT,
            check=False,
        )
    finally:
        os.close(write_end)
    return proc.returncode, proc.stderr


async def test_a_closed_stdout_exits_quietly_like_a_unix_tool(
    env: dict[str, str], db: asyncpg.Connection
) -> None:
    await testkit.seed(db, 50)
    for args in (("accounts", "list"), ("accounts", "list", "--csv"), ("runs",), ("schema",)):
        code, stderr = await asyncio.to_thread(run_into_closed_pipe, env, *args)
        assert (code, stderr) == (141, ""), args


def import_file(tmp_path: Path, env: dict[str, str], name: str, text: str) -> tuple[int, str, str]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    proc = testkit.billq("accounts", "import", str(path), env=env, check=False)
    return proc.returncode, proc.stdout, proc.stderr


async def test_a_bad_row_names_line_and_column_and_imports_nothing(
    env: dict[str, str], db: asyncpg.Connection, tmp_path: Path
) -> None:
    rows = (
        '{"id": 1, "name": "Ada", "email": "a@example.com", "amount_cents": 100, '
        '"currency": "USD", "billing_interval": "month", "billing_anchor_day": 1, '
        '"payment_method": "pm_card_visa"}\n'
        '{"id": 99999999999999999999, "name": "Big", "email": "b@example.com", '
        '"amount_cents": 100, "currency": "USD", "billing_interval": "month", '
        '"billing_anchor_day": 1, "payment_method": "pm_card_visa"}\n'
        '{"id": 3, "name": "N\\u0000L", "email": "n@example.com", "amount_cents": 100, '
        '"currency": "USD", "billing_interval": "month", "billing_anchor_day": 1, '
        '"payment_method": "pm_card_visa"}\n'
        '{"id": 4, "name": {"first": "Ob"}, "email": "o@example.com", "amount_cents": 100, '
        '"currency": "USD", "billing_interval": "month", "billing_anchor_day": 1, '
        '"payment_method": "pm_card_visa"}\n'
    )
    code, _, stderr = import_file(tmp_path, env, "a.jsonl", rows)
    assert code == 1
    assert "line 2, column id: must be 1..9223372036854775807" in stderr
    assert "line 3, column name: contains a NUL character" in stderr
    assert "line 4, column name: expected text, got an object" in stderr
    assert "unexpected" not in stderr and "Traceback" not in stderr
    assert await db.fetchval("SELECT count(*) FROM accounts") == 0


async def test_import_cancels_and_reactivates_but_never_overrides_dunning_states(
    env: dict[str, str], db: asyncpg.Connection, tmp_path: Path
) -> None:
    header = HEADER + ",status"
    base = [
        f"{i},C{i},c{i}@example.com,1000,USD,month,1,2026-03-01,pm_card_visa,," for i in range(1, 5)
    ]
    code, out, err = import_file(tmp_path, env, "a.csv", "\n".join([header, *base]) + "\n")
    assert code == 0, err
    assert "inserted=4 updated=0 unchanged=0 cancelled=0 reactivated=0" in out
    await db.execute("UPDATE accounts SET status = 'past_due', dunning_attempt = 1 WHERE id = 2")

    rows = [
        base[0] + "cancelled",  # active → cancelled
        base[1] + "active",  # past_due is billq's: stays past_due
        base[2] + "cancelled",
        base[3],  # no status: untouched
        "5,New,n@example.com,1000,USD,month,1,2026-03-01,pm_card_visa,,cancelled",
    ]
    code, out, err = import_file(tmp_path, env, "b.csv", "\n".join([header, *rows]) + "\n")
    assert code == 0, err
    assert "5 rows: inserted=1 updated=0 unchanged=2 cancelled=2 reactivated=0" in out
    status = {r[0]: r[1] for r in await db.fetch("SELECT id, status FROM accounts ORDER BY id")}
    assert status == {1: "cancelled", 2: "past_due", 3: "cancelled", 4: "active", 5: "cancelled"}
    assert (
        await db.fetchval(
            "SELECT count(*) FROM accounts WHERE status = 'cancelled' AND cancelled_at IS NOT NULL"
        )
        == 3
    )

    # Importing the same file again changes nothing; reactivating account 1 moves its next
    # billing date to today's or a later anchor: the cancelled months are never billed.
    code, out, _ = import_file(tmp_path, env, "b.csv", "\n".join([header, *rows]) + "\n")
    assert "inserted=0 updated=0 unchanged=5 cancelled=0 reactivated=0" in out
    code, out, _ = import_file(tmp_path, env, "c.csv", f"{header}\n{base[0]}active\n")
    assert "inserted=0 updated=0 unchanged=0 cancelled=0 reactivated=1" in out
    row = await testkit.fetchrow(db, "SELECT * FROM accounts WHERE id = 1")
    assert (row["status"], row["cancelled_at"]) == ("active", None)
    assert row["next_billing_at"] >= await db.fetchval("SELECT date_trunc('day', now())")
    events = await db.fetch(
        "SELECT account_id, kind, from_status, to_status FROM account_events ORDER BY id"
    )
    assert [tuple(e) for e in events] == [
        (1, "cancelled", "active", "cancelled"),
        (3, "cancelled", "active", "cancelled"),
        (1, "reactivated", "cancelled", "active"),
    ]


async def test_csv_exports_neutralise_formulas_and_amounts_show_minor_units(
    env: dict[str, str], db: asyncpg.Connection, tmp_path: Path
) -> None:
    rows = [
        '1,"=HYPERLINK(""http://x"")",+a@example.com,465830,JPY,month,1,,pm_card_visa,',
        '2,"Multi\nLine",b@example.com,489730,KWD,month,1,,pm_card_visa,',
    ]
    code, _, err = import_file(tmp_path, env, "a.csv", "\n".join([HEADER, *rows]) + "\n")
    assert code == 0, err
    listed = testkit.billq("accounts", "list", "--csv", env=env).stdout
    assert "'=HYPERLINK" in listed and ",'+a@example.com," in listed and '"Multi\nLine"' in listed
    assert await db.fetchval("SELECT name FROM accounts WHERE id = 2") == "Multi\nLine"

    await db.execute(
        "INSERT INTO invoices (number, account_id, period_start, period_end, amount_cents,"
        " currency, status) VALUES ('2026-000001', 1, '2026-03-01', '2026-04-01', 465830, 'JPY', 'open'),"
        " ('2026-000002', 2, '2026-03-01', '2026-04-01', 489730, 'KWD', 'open')"
    )
    shown = testkit.billq("invoices", "show", "2026-000001", env=env).stdout
    assert "465,830 JPY" in shown
    shown = testkit.billq("invoices", "show", "2026-000002", env=env).stdout
    assert "489.730 KWD" in shown


async def test_a_worker_waiting_for_a_broker_says_so_at_warning_level_with_backoff() -> None:
    url = f"amqp://guest:guest@127.0.0.1:{testkit.free_port()}/"
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(
            connect_with_retry([url], stop=stop, backoff=Backoff(cap=0.5, jitter=0.0))
        )
        waits: list[Any] = []
        try:
            async with asyncio.timeout(60):  # a bound for a silent worker, not a speed check
                while len(waits) < 3:
                    await asyncio.sleep(0.05)
                    waits = [e for e in logs if e["event"] == "broker.waiting"]
        finally:
            stop.set()
        assert await task is None
    assert all(e["log_level"] == "warning" for e in waits)
    assert "no broker answered" in str(waits[0]["reason"])
    assert [e["retry_in_s"] for e in waits[:3]] == [0.25, 0.5, 0.5]


@pytest.mark.parametrize(
    ("minor", "currency", "sent"),
    [(465830, "JPY", 465830), (5, "ISK", 500), (5120, "KWD", 5120), (1999, "USD", 1999)],
)
async def test_the_gateway_receives_stripes_units_for_each_currency(
    gateway_url: str, minor: int, currency: str, sent: int
) -> None:
    gateway = SandboxGateway(gateway_url, "sk_test_billq", timeout=5.0)
    try:
        outcome = await gateway.charge(
            ChargeRequest(f"billq_1_{currency}", 1, minor, currency, "pm_card_visa")
        )
    finally:
        await gateway.aclose()
    assert isinstance(outcome, Charged)
    [intent] = testkit.ledger(gateway_url)
    assert (intent["amount"], intent["currency"]) == (sent, currency.lower())


async def test_an_amount_the_gateway_would_round_is_refused_and_nothing_is_charged(
    gateway_url: str,
) -> None:
    gateway = SandboxGateway(gateway_url, "sk_test_billq", timeout=5.0)
    try:
        for minor, currency in ((5124, "KWD"), (550, "MGA")):
            with pytest.raises(GatewayRejected, match="Invalid amount"):
                await gateway.charge(
                    ChargeRequest(f"billq_1_{currency}", 1, minor, currency, "pm_card_visa")
                )
    finally:
        await gateway.aclose()
    assert testkit.ledger(gateway_url) == []
