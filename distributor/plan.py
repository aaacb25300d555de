"""Pure planning: which job each due account gets (no I/O)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import cast

from shared.billing.periods import Interval, idempotency_key, period_for


@dataclass(frozen=True, slots=True)
class DueAccount:
    account_id: int
    next_billing_at: dt.datetime
    billing_interval: str
    billing_anchor_day: int
    amount_cents: int
    currency: str
    dunning_attempt: int = 0
    payment_method: str = ""
    gateway_customer: str | None = None


@dataclass(frozen=True, slots=True)
class PlannedJob:
    account_id: int
    period_start: dt.date
    period_end: dt.date
    idempotency_key: str
    amount_cents: int
    currency: str
    dunning_attempt: int = 0
    # Frozen with the job: every call under its key sends the same card and customer, and a
    # card update applies to the next attempt (a new job, a new key).
    payment_method: str = ""
    gateway_customer: str | None = None


def plan_job(account: DueAccount) -> PlannedJob:
    """The oldest unbilled period only: an account behind by several periods catches up
    one period per run, never with a burst of back-charges."""
    interval = cast(Interval, account.billing_interval)
    period = period_for(account.next_billing_at, interval, account.billing_anchor_day)
    return PlannedJob(
        account_id=account.account_id,
        period_start=period.start,
        period_end=period.end,
        # Each dunning retry gets its own key: the gateway would replay the earlier decline.
        idempotency_key=idempotency_key(account.account_id, period.start, account.dunning_attempt),
        amount_cents=account.amount_cents,
        currency=account.currency,
        dunning_attempt=account.dunning_attempt,
        payment_method=account.payment_method,
        gateway_customer=account.gateway_customer,
    )


def paced(
    period_start: dt.date,
    last_period_start: dt.date | None,
    last_period_at: dt.datetime | None,
    now: dt.datetime,
    min_gap_s: float,
) -> bool:
    """Catch-up pacing: a new period for an account billed a new period less than
    ``min_gap_s`` of wall clock ago waits, however often distribute runs. The same period
    again (a redelivery, a dunning retry) is never paced."""
    if last_period_start is None or last_period_at is None or min_gap_s <= 0:
        return False
    if period_start <= last_period_start:
        return False
    return (now - last_period_at).total_seconds() < min_gap_s


def blocked_reason(job_id: int, state: str, last_error: str | None) -> str:
    """Why a due account got no job: its period's job has ended, and what to do about it."""
    what = {
        "dead": f"job {job_id} for this period is dead ({last_error or 'no reason'}); "
        f"`billq jobs retry {job_id}` after fixing the cause",
        "failed": f"job {job_id} for this period was declined; dunning or a card update retries it",
        "succeeded": f"job {job_id} charged this period but the account did not advance; "
        "run `billq audit`",
        "already_paid": f"job {job_id}: the period is already paid; run `billq audit`",
    }
    return what.get(state, f"job {job_id} is {state}")


Shard = tuple[int, int]  # (k, n): this distributor takes ids with id % n == k


def parse_shard(text: str) -> Shard:
    """``K/N`` with 0 <= K < N.

    Raises:
        ValueError: not of that form.
    """
    try:
        k_text, n_text = text.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise ValueError(f"--shard: expected K/N such as 0/4, got {text!r}") from None
    if not (n >= 1 and 0 <= k < n):
        raise ValueError(f"--shard: need 0 <= K < N, got {text!r}")
    return (k, n)
