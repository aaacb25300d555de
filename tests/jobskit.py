"""An in-memory ``JobsRepo`` for unit tests: the Postgres repository's rules without Postgres.

It keeps what the claim and record statements of ``shared.db.jobs_repo`` decide (claimable
states, hand-off tokens, leases, the fence, the gate's facts, the period's one charge) and
nothing the worker cannot see (invoices, events). ``tests/integration/test_jobs_repo_contract.py``
runs the same scenarios against both, so the fake cannot drift from the real one unnoticed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from copy import copy
from dataclasses import dataclass, field, replace

from shared.billing.claims import ClaimedJob, ClaimRequest, JobSnapshot
from shared.billing.dunning import DeclineDecision
from shared.errors import BillqError

UTC = dt.UTC
OPEN_FOR_CLAIM = ("pending", "published")
FINAL_FOR_DEAD = ("succeeded", "failed", "dead")  # what RECORD_DEAD leaves alone


@dataclass
class FakeAccount:
    account_id: int
    status: str = "active"
    payment_method: str = "pm_card_visa"
    gateway_customer: str | None = None
    cancelled_at: dt.datetime | None = None
    first_declined_at: dt.datetime | None = None
    dunning_attempt: int = 0
    dunning_next_at: dt.datetime | None = None


@dataclass
class FakeJob:
    job_id: int
    account_id: int
    period_start: dt.date
    period_end: dt.date
    idempotency_key: str
    amount_cents: int = 1999
    currency: str = "USD"
    state: str = "published"
    attempts: int = 0
    dunning_attempt: int = 0
    attempt_base: int = 0
    started_at: dt.datetime | None = None
    locked_by: str | None = None
    locked_until: dt.datetime | None = None
    payment_method: str | None = None  # frozen at distribution (None: the account's)
    gateway_customer: str | None = None
    last_error: str | None = None
    decline_code: str | None = None
    refund_of: int | None = None  # a refund job: the billq charge it refunds
    refund_charge: str | None = None  # ... and that charge's gateway id


@dataclass(frozen=True)
class FakeCharge:
    job_id: int
    idempotency_key: str
    charge_id: str
    period_end: dt.date = dt.date.max


def _overlap(a_start: dt.date, a_end: dt.date, b_start: dt.date, b_end: dt.date) -> bool:
    """Whether [a_start, a_end) and [b_start, b_end) share a day (Postgres's ``&&``)."""
    return a_start < b_end and b_start < a_end


@dataclass
class FakeJobsRepo:
    """``JobsRepo`` in memory. ``fail[method] = error`` makes that method's next call raise."""

    worker_id: str = "w1"
    lease_s: float = 30.0
    accounts: dict[int, FakeAccount] = field(default_factory=dict)
    jobs: dict[int, FakeJob] = field(default_factory=dict)
    charges: dict[tuple[int, dt.date], FakeCharge] = field(default_factory=dict)
    refunds: dict[int, str] = field(default_factory=dict)  # refund job id → gateway refund id
    live_workers: set[str] = field(default_factory=set)  # holders with a fresh heartbeat
    fail: dict[str, BillqError] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    # -- arranging ---------------------------------------------------------------------------

    def add_account(
        self,
        account_id: int,
        *,
        status: str = "active",
        cancelled_at: dt.datetime | None = None,
    ) -> FakeAccount:
        account = FakeAccount(account_id, status=status, cancelled_at=cancelled_at)
        self.accounts[account_id] = account
        return account

    def add_job(
        self,
        job_id: int,
        account_id: int,
        period_start: dt.date = dt.date(2026, 3, 1),
        *,
        dunning_attempt: int = 0,
        state: str = "published",
        period_end: dt.date | None = None,
    ) -> FakeJob:
        """A job as the distributor leaves it (its key as ``plan_job`` makes it)."""
        key = f"billq_{account_id}_{period_start.isoformat()}"
        job = FakeJob(
            job_id,
            account_id,
            period_start,
            period_end or _next_month(period_start),
            key + (f"_d{dunning_attempt}" if dunning_attempt else ""),
            state=state,
            dunning_attempt=dunning_attempt,
        )
        self.jobs[job_id] = job
        return job

    def add_refund_job(
        self, job_id: int, account_id: int, charge_id: int, gateway_charge: str, amount: int
    ) -> FakeJob:
        """A refund job as ``billq refund`` leaves it (published), on gateway charge
        ``gateway_charge`` (billq charge ``charge_id``)."""
        job = self.add_job(job_id, account_id)
        job.idempotency_key = f"billq_refund_{charge_id}_1"
        job.amount_cents, job.refund_of, job.refund_charge = amount, charge_id, gateway_charge
        return job

    # -- the port ----------------------------------------------------------------------------

    async def claim_many(self, requests: Sequence[ClaimRequest]) -> dict[int, ClaimedJob]:
        self._call("claim_many")
        now = dt.datetime.now(UTC)
        # One statement: its subqueries see the jobs and charges as they were before it.
        before = {job_id: copy(job) for job_id, job in self.jobs.items()}
        charges = dict(self.charges)
        claimed: dict[int, ClaimedJob] = {}
        for ord_, request in enumerate(requests):
            job = self.jobs.get(request.job_id)
            if job is None or any(c.job_id == job.job_id for c in claimed.values()):
                continue
            if (job.account_id, job.idempotency_key) != (
                request.account_id,
                request.idempotency_key,
            ):
                continue
            if not self._claimable(job, request, now):
                continue
            job.state, job.attempts = "processing", job.attempts + 1
            job.locked_by, job.locked_until = (
                self.worker_id,
                now + dt.timedelta(seconds=self.lease_s),
            )
            job.started_at = job.started_at or now
            claimed[ord_] = self._as_claimed(job, before, charges, now)
        # Jobs of overlapping periods claimed together: only the lowest id may charge.
        for ord_, c in claimed.items():
            lower = [
                o.job_id
                for o in claimed.values()
                if o.account_id == c.account_id
                and o.job_id < c.job_id
                and _overlap(o.period_start, o.period_end, c.period_start, c.period_end)
            ]
            if c.busy_with is None and lower:
                claimed[ord_] = replace(c, busy_with=min(lower))
        return claimed

    async def lookup_many(self, job_ids: Sequence[int]) -> dict[int, JobSnapshot]:
        self._call("lookup_many")
        return {
            j.job_id: JobSnapshot(j.job_id, j.account_id, j.idempotency_key, j.state, j.attempts)
            for j in (self.jobs.get(i) for i in job_ids)
            if j is not None
        }

    async def record_successes(self, charged: Sequence[tuple[ClaimedJob, str]]) -> dict[int, bool]:
        self._call("record_successes")
        landed: dict[int, bool] = {}
        for claim, charge_id in charged:
            job = self._held(claim.job_id, claim.attempts)
            if job is None:
                continue
            period = (job.account_id, job.period_start)
            paid = [
                c
                for (account_id, start), c in self.charges.items()
                if account_id == job.account_id
                and _overlap(start, c.period_end, job.period_start, job.period_end)
                and c.idempotency_key != job.idempotency_key
            ]
            self._release(job)
            if paid:
                job.state = "already_paid"
                job.last_error = (
                    f"double charge at the gateway: {charge_id} took money for a period "
                    "already paid; refund it"
                )
                landed[job.job_id] = False
                continue
            job.state, job.last_error = "succeeded", None
            self.charges.setdefault(
                period, FakeCharge(job.job_id, job.idempotency_key, charge_id, job.period_end)
            )
            account = self.accounts.get(job.account_id)
            if account is not None:
                if account.status in ("past_due", "suspended"):
                    account.status = "active"
                account.dunning_attempt, account.dunning_next_at = 0, None
                account.first_declined_at = None
            landed[job.job_id] = True
        return landed

    async def record_decline(
        self, job: ClaimedJob, reason: str, decline_code: str | None, decision: DeclineDecision
    ) -> bool:
        self._call("record_decline")
        held = self._held(job.job_id, job.attempts)
        if held is None:
            return False
        self._release(held)
        held.state, held.last_error, held.decline_code = "failed", reason, decline_code
        account = self.accounts.get(held.account_id)
        if account is not None:
            if account.status != "cancelled":
                account.status = decision.account_status
            if decision.next_attempt is not None:
                account.dunning_attempt = decision.next_attempt
            account.dunning_next_at = decision.next_at
            account.first_declined_at = account.first_declined_at or dt.datetime.now(UTC)
        return True

    async def record_retry(self, job: ClaimedJob, reason: str) -> bool:
        self._call("record_retry")
        return self._finish(job, "retrying", reason)

    async def record_already_paid(self, job: ClaimedJob, reason: str) -> bool:
        self._call("record_already_paid")
        return self._finish(job, "already_paid", reason[:1000])

    async def record_refund(self, job: ClaimedJob, refund_id: str) -> bool:
        self._call("record_refund")
        if not self._finish(job, "succeeded", ""):
            return False
        self.refunds[job.job_id] = refund_id
        return True

    async def record_dead(self, job_id: int, attempts: int | None, reason: str) -> bool:
        self._call("record_dead")
        job = self.jobs.get(job_id)
        if job is None or job.state in FINAL_FOR_DEAD:
            return False
        if attempts is not None and job.attempts != attempts:
            return False
        self._release(job)
        job.state, job.last_error = "dead", reason[:1000]
        return True

    # -- the rules ---------------------------------------------------------------------------

    def _call(self, method: str) -> None:
        self.calls.append(method)
        error = self.fail.pop(method, None)
        if error is not None:
            raise error

    def _claimable(self, job: FakeJob, request: ClaimRequest, now: dt.datetime) -> bool:
        if job.state in OPEN_FOR_CLAIM:
            return True
        if job.state == "retrying":
            return job.attempts == request.handoff
        if job.state == "processing":
            return (
                job.locked_until is None
                or job.locked_until < now
                or request.redelivered
                or job.attempts == request.handoff
                or job.locked_by not in self.live_workers
            )
        return False

    def _as_claimed(
        self,
        job: FakeJob,
        before: dict[int, FakeJob],
        charges: dict[tuple[int, dt.date], FakeCharge],
        now: dt.datetime,
    ) -> ClaimedJob:
        account = self.accounts.get(job.account_id)
        frozen = job.payment_method is not None
        starts = dt.datetime.combine(job.period_start, dt.time(), UTC)
        paid = charges.get((job.account_id, job.period_start))
        overlapping = [
            c.charge_id
            for (account_id, start), c in charges.items()
            if account_id == job.account_id
            and start != job.period_start
            and _overlap(start, c.period_end, job.period_start, job.period_end)
        ]
        busy = [
            o.job_id
            for o in before.values()
            if o.account_id == job.account_id
            and _overlap(o.period_start, o.period_end, job.period_start, job.period_end)
            and o.job_id != job.job_id
            and o.state == "processing"
            and o.locked_until is not None
            and o.locked_until > now
        ]
        return ClaimedJob(
            job_id=job.job_id,
            account_id=job.account_id,
            period_start=job.period_start,
            period_end=job.period_end,
            idempotency_key=job.idempotency_key,
            amount_cents=job.amount_cents,
            currency=job.currency,
            attempts=job.attempts,
            account_status=account.status if account else None,
            payment_method=job.payment_method
            if frozen or account is None
            else account.payment_method,
            gateway_customer=job.gateway_customer
            if frozen or account is None
            else account.gateway_customer,
            dunning_attempt=job.dunning_attempt,
            first_declined_at=account.first_declined_at if account else None,
            attempt_base=job.attempt_base,
            started_at=job.started_at,
            cancelled_before=bool(
                account and account.cancelled_at and starts >= account.cancelled_at
            ),
            paid_by=paid.charge_id if paid else None,
            overlaps_paid=overlapping[0] if overlapping else None,
            busy_with=busy[0] if busy else None,
            refund_of=job.refund_of,
            refund_charge=job.refund_charge,
            refunded_by=self.refunds.get(job.job_id),
        )

    def _held(self, job_id: int, attempts: int) -> FakeJob | None:
        """The job if this claim still holds it (the fence every record checks)."""
        job = self.jobs.get(job_id)
        if job is None or job.attempts != attempts or job.state != "processing":
            return None
        return job

    def _finish(self, claim: ClaimedJob, state: str, reason: str) -> bool:
        job = self._held(claim.job_id, claim.attempts)
        if job is None:
            return False
        self._release(job)
        job.state, job.last_error = state, reason
        return True

    @staticmethod
    def _release(job: FakeJob) -> None:
        job.locked_by = job.locked_until = None


def _next_month(day: dt.date) -> dt.date:
    return dt.date(day.year + day.month // 12, day.month % 12 + 1, min(day.day, 28))
