"""``billq audit``: compare what the gateway took with what billq recorded; repair by recording.

The gateway is the only place that knows what money moved, so the audit lists its succeeded
charges (by billq's metadata: account, period, key) and compares them with ``charges`` per
(account, period) — a one-off charge (``billq_kind``) per its key; and its refunds made under
billq's refund keys with ``refunds``. ``repair`` records what was taken through the normal
record path (charge row, paid invoice, job succeeded, account advanced for a period) and what
was given back through the refund's (refund row, credit note, job succeeded). It never
charges and never refunds.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, cast

import asyncpg
import structlog

from shared.billing.audit import Findings, Refund, Taken, compare, compare_refunds
from shared.billing.periods import Interval, period_end
from shared.db import audit_repo, jobs_repo, refunds_repo
from shared.errors import ActionRefused
from shared.gateway.port import PaymentGateway

log = structlog.get_logger("billq.audit")


@dataclass
class AuditReport:
    findings: Findings
    repaired: list[dict[str, Any]] = field(default_factory=list)
    not_repaired: list[dict[str, Any]] = field(default_factory=list)

    def settle(self, item: dict[str, Any], why: str | None) -> None:
        """File a finding the repair recorded (``why`` None) or could not."""
        if why is None:
            self.repaired.append(item)
        else:
            self.not_repaired.append({**item, "reason": why})

    def as_dict(self, *, repair: bool) -> dict[str, Any]:
        out = self.findings.as_dict()
        if repair:
            out["repaired"] = self.repaired
            out["not_repaired"] = self.not_repaired
        return out


async def audit(
    pool: asyncpg.Pool, gateway: PaymentGateway, *, since: dt.datetime | None, repair: bool
) -> AuditReport:
    """Raises what the gateway's listing raises (``GatewayUnavailable``, ``GatewayRejected``)."""
    taken = [
        Taken(
            charge_id=c.charge_id,
            account_id=c.account_id,
            period_start=c.period_start,
            idempotency_key=c.idempotency_key,
            amount=c.amount,
            currency=c.currency,
            kind=c.kind,
        )
        async for c in gateway.list_charges(since)
        if c.account_id is not None
        and (c.period_start if c.kind == "period" else c.idempotency_key) is not None
    ]
    report = AuditReport(compare(taken, await audit_repo.recorded(pool, since)))
    given = [
        Refund(r.refund_id, r.idempotency_key, r.amount, r.currency, r.charge_id)
        async for r in gateway.list_refunds(since)
        if r.idempotency_key is not None and r.idempotency_key.startswith("billq_refund_")
    ]
    compare_refunds(report.findings, given, await refunds_repo.recorded(pool, since))
    if repair:
        for item in report.findings.taken_not_recorded:
            report.settle(item, await _record(pool, item))
        for item in report.findings.refunded_not_recorded:
            report.settle(item, await _record_refund(pool, item))
    log.info(
        "audit.done",
        checked=report.findings.checked,
        taken_not_recorded=len(report.findings.taken_not_recorded),
        recorded_not_taken=len(report.findings.recorded_not_taken),
        double_taken=len(report.findings.double_taken),
        refunded_not_recorded=len(report.findings.refunded_not_recorded),
        refund_recorded_not_refunded=len(report.findings.refund_recorded_not_refunded),
        repaired=len(report.repaired),
    )
    return report


async def _record(pool: asyncpg.Pool, item: dict[str, Any]) -> str | None:
    """Record one taken charge; the reason when it cannot be."""
    key = item["idempotency_key"]
    if not key:
        return "the charge carries no billq idempotency key"
    held = await audit_repo.take_by_key(pool, key)
    if held is None and item["kind"] != "period":
        held = await audit_repo.adopt_oneoff(
            pool, item["account_id"], key, item["amount"], item["currency"]
        )
        if held is None:
            return f"account {item['account_id']} does not exist, or {key} is in flight"
    if held is None:
        shape = await audit_repo.account_period(pool, item["account_id"])
        if shape is None:
            return f"account {item['account_id']} does not exist"
        start = dt.date.fromisoformat(item["period_start"])
        end = period_end(start, cast(Interval, shape[0]), shape[1])
        held = await audit_repo.adopt(
            pool, item["account_id"], start, end, key, item["amount"], item["currency"]
        )
        if held is None:
            return f"job for {key} is in flight or already succeeded; run the audit again"
    landed = await jobs_repo.record_successes(pool, [(held[0], held[1], item["charge_id"])])
    if not landed.get(held[0]):
        return "another charge was recorded for the period meanwhile (see double_taken)"
    log.warning("audit.recorded", job_id=held[0], charge_id=item["charge_id"], key=key)
    return None


async def _record_refund(pool: asyncpg.Pool, item: dict[str, Any]) -> str | None:
    """Record one refund the gateway made under a billq key; the reason when it cannot be."""
    key = item["idempotency_key"]
    held = await audit_repo.take_by_key(pool, key)
    if held is None:
        return f"no refund job holds {key} that is not in flight or already recorded"
    try:
        landed = await refunds_repo.record_refund(pool, held[0], held[1], item["refund_id"])
    except ActionRefused as exc:
        return str(exc)
    if not landed:
        return f"job {held[0]} of {key} is not a refund job, or was taken meanwhile"
    log.warning("audit.refund_recorded", job_id=held[0], refund_id=item["refund_id"], key=key)
    return None
