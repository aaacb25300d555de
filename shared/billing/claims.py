"""A claimed job and THE GATE: whether money may move for it (pure, no I/O).

Every path that could charge — a first delivery, a retry, a redelivery, a dead-letter replay, an
operator's retry, dunning, the reconciler's republish — reaches the gateway only through a
claim. The claim (``billq_claim``, migrations/0021_claim_function.sql) gathers the facts
below under the account's row lock, and ``ClaimedJob.gate`` decides; the worker charges only
when it says yes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    job_id: int
    account_id: int
    idempotency_key: str
    redelivered: bool
    handoff: int | None


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    job_id: int
    account_id: int
    period_start: dt.date
    period_end: dt.date
    idempotency_key: str
    amount_cents: int
    currency: str
    attempts: int  # the fencing token
    account_status: str | None  # None: the account no longer exists
    payment_method: str | None
    gateway_customer: str | None
    dunning_attempt: int = 0
    first_declined_at: dt.datetime | None = None
    attempt_base: int = 0  # attempts already spent before an operator's replay
    started_at: dt.datetime | None = None  # first claim: the first gateway call's time
    cancelled_before: bool = False  # the account was cancelled before this period started
    paid_by: str | None = None  # gateway charge id of the period's recorded charge
    busy_with: int | None = None  # another job of these days that holds a live claim
    # Gateway charge id of another period's recorded charge that covers some of these days.
    overlaps_paid: str | None = None
    # A refund job (kind 'refund'): the billq charge it refunds, that charge's gateway id
    # (None: the charge row is gone), and the gateway refund already recorded under its key.
    refund_of: int | None = None
    refund_charge: str | None = None
    refunded_by: str | None = None
    kind: str = "period"  # shared.billing.kinds: what the job charges for

    @property
    def may_have_called_gateway(self) -> bool:
        """An earlier claim of this job may have sent its key: its outcome must be resolved
        with the gateway before the job may end without a charge."""
        return self.attempts > 1

    def gate(self) -> str | None:
        """THE GATE: None when money may move for this job, else why not.

        Every path that could charge (first delivery, retry, redelivery, dead-letter replay,
        operator retry, dunning, reconciler) reaches the gateway only through a claim, and
        the claim statement computes these facts under the account's row lock. A period is
        paid by its own charge (``already_paid``) or, after an anchor or interval change, by
        another period's charge that covers some of its days (``overlaps_paid``; the
        database's exclusion constraint on ``charges`` refuses such a row too).

        A refund gives money back, so the account's status does not matter; it needs its
        charge, and must not be recorded already.
        """
        if self.refund_of is not None:
            if self.refund_charge is None:
                return "charge_missing"
            if self.refunded_by is not None:
                return "already_refunded"
            return None
        if self.account_status is None:
            return "account_missing"
        if self.paid_by is not None:
            return "already_paid"
        if self.overlaps_paid is not None:
            return "overlaps_paid"
        if self.account_status not in ("active", "past_due") or self.cancelled_before:
            return "not_billable"
        if self.busy_with is not None:
            return "period_busy"
        return None


@dataclass(frozen=True, slots=True)
class JobSnapshot:
    job_id: int
    account_id: int
    idempotency_key: str
    state: str
    attempts: int
