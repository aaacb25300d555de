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
