"""An operator's cancel is sticky: a re-import saying `active` never bills a customer who
cancelled with `billq accounts cancel`; only `billq accounts reactivate` undoes it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import asyncpg
import pytest
import testkit

from shared.config import Settings

pytestmark = pytest.mark.integration

HEADER = (
    "id,name,email,amount_cents,currency,billing_interval,billing_anchor_day,payment_method,status"
)


def _file(tmp_path: Path, status: str) -> str:
    path = tmp_path / f"{status}.csv"
    path.write_text(f"{HEADER}\n1,Ada,ada@example.com,1500,USD,month,1,pm_card_visa,{status}\n")
    return str(path)


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    return testkit.env_for(settings)


def _import(env: dict[str, str], path: str) -> tuple[str, str]:
    proc = testkit.billq("accounts", "import", path, env=env)
    return proc.stdout, proc.stderr


@pytest.fixture
def cancelled_by_operator(env: dict[str, str], tmp_path: Path) -> str:
    """Account 1 imported active, then cancelled with `billq accounts cancel`; the file."""
    active = _file(tmp_path, "active")
    _import(env, active)
    testkit.billq("accounts", "cancel", "1", env=env)
    return active


async def test_a_nightly_import_saying_active_leaves_an_operator_cancel_in_place(
    env: dict[str, str], db: asyncpg.Connection, cancelled_by_operator: str
) -> None:
    out, err = _import(env, cancelled_by_operator)

    assert "cancelled=0 reactivated=0 kept_cancelled=1" in out
    assert "account 1: status active ignored: cancelled by cli:" in err
    assert "billq accounts reactivate 1" in err
    row = await testkit.fetchrow(db, "SELECT status, cancelled_at FROM accounts WHERE id = 1")
    assert row["status"] == "cancelled" and row["cancelled_at"] is not None
    action = await testkit.fetchrow(db, "SELECT actor, action, target FROM operator_actions")
    assert action["actor"].startswith("cli:")
    assert (action["action"], action["target"]) == ("accounts cancel", "account 1")


async def test_an_import_still_reactivates_what_an_import_cancelled(
    env: dict[str, str], db: asyncpg.Connection, tmp_path: Path
) -> None:
    _import(env, _file(tmp_path, "active"))
    assert "cancelled=1" in _import(env, _file(tmp_path, "cancelled"))[0]

    out, err = _import(env, _file(tmp_path, "active"))

    assert "reactivated=1 kept_cancelled=0" in out and err == ""
    assert await db.fetchval("SELECT status FROM accounts WHERE id = 1") == "active"


async def test_reactivate_undoes_an_operator_cancel_and_is_recorded_with_who(
    env: dict[str, str], db: asyncpg.Connection, cancelled_by_operator: str
) -> None:
    out = testkit.billq("accounts", "reactivate", "1", env=env).stdout

    assert "account 1: reactivated; status active" in out
    row = await testkit.fetchrow(
        db, "SELECT status, cancelled_at, cancelled_by, next_billing_at FROM accounts"
    )
    assert (row["status"], row["cancelled_at"], row["cancelled_by"]) == ("active", None, None)
    # Billed again from its next anchored date, never for the time it was cancelled.
    today = dt.datetime.now(dt.UTC).date()
    assert row["next_billing_at"].date() >= today and row["next_billing_at"].day == 1
    actions = await db.fetch("SELECT action, outcome FROM operator_actions ORDER BY id")
    assert [(a["action"], a["outcome"]) for a in actions][-1] == (
        "accounts reactivate",
        "cancelled → active",
    )
    event = await db.fetchval(
        "SELECT reason FROM account_events WHERE kind = 'reactivated' ORDER BY id DESC LIMIT 1"
    )
    assert event.startswith("reactivated by operator cli:")
    assert "unchanged=1" in _import(env, cancelled_by_operator)[0]


async def test_reactivate_withdraws_a_scheduled_cancel_and_says_when_there_is_nothing_to_undo(
    env: dict[str, str], db: asyncpg.Connection, tmp_path: Path
) -> None:
    _import(env, _file(tmp_path, "active"))
    testkit.billq("accounts", "cancel", "1", "--at", "2099-01-01", env=env)

    testkit.billq("accounts", "reactivate", "1", env=env)

    row = await testkit.fetchrow(db, "SELECT status, cancelled_at FROM accounts WHERE id = 1")
    assert (row["status"], row["cancelled_at"]) == ("active", None)
    again = testkit.billq("accounts", "reactivate", "1", env=env)
    assert again.returncode == 0 and "nothing to undo" in again.stdout
    missing = testkit.billq("accounts", "reactivate", "99", env=env, check=False)
    assert missing.returncode == 2 and "no account 99" in missing.stderr
