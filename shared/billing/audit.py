"""What the gateway took against what billq recorded, per (account, period) — pure.

A one-off charge has no period: it is matched by its own idempotency key instead, so "a
period" below reads "a one-off charge" for those (``kind`` says which; ``period_start`` is
None for a one-off). The audit's three findings, each a list of plain dicts (the
``billq audit --json`` shape):

- ``taken_not_recorded``: the gateway holds a succeeded charge for a period with no charge row;
- ``recorded_not_taken``: a charge row whose gateway charge the gateway does not list;
- ``double_taken``: more than one succeeded gateway charge for one period.

and two for refunds, matched by the refund's billq key (``billq_refund_…``):

- ``refunded_not_recorded``: the gateway gave money back under a billq key with no ``refunds``
  row (money moved that billq does not know of, as a charge taken but not recorded);
- ``refund_recorded_not_refunded``: a ``refunds`` row whose refund the gateway does not list.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Taken:
    charge_id: str
    account_id: int
    period_start: str | None  # ISO date; None for a one-off (matched by its key)
    idempotency_key: str | None
    amount: int
    currency: str
    kind: str = "period"


@dataclass(frozen=True, slots=True)
class Recorded:
    charge_id: str
    account_id: int
    period_start: str
    idempotency_key: str
    job_id: int
    kind: str = "period"


@dataclass(frozen=True, slots=True)
class Refund:
    """A refund, as the gateway lists it or as ``refunds`` records it."""

    refund_id: str
    idempotency_key: str
    amount: int
    currency: str
    charge_id: str = ""  # the gateway's charge (payment intent) it refunds
    job_id: int | None = None  # recorded side only


FINDINGS = (
    "taken_not_recorded",
    "recorded_not_taken",
    "double_taken",
    "refunded_not_recorded",
    "refund_recorded_not_refunded",
)


@dataclass
class Findings:
    checked: int = 0
    taken_not_recorded: list[dict[str, Any]] = field(default_factory=list)
    recorded_not_taken: list[dict[str, Any]] = field(default_factory=list)
    double_taken: list[dict[str, Any]] = field(default_factory=list)
    refunds_checked: int = 0
    refunded_not_recorded: list[dict[str, Any]] = field(default_factory=list)
    refund_recorded_not_refunded: list[dict[str, Any]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not any(getattr(self, name) for name in FINDINGS)

    def as_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "taken_not_recorded": self.taken_not_recorded,
            "recorded_not_taken": self.recorded_not_taken,
            "double_taken": self.double_taken,
            "refunds_checked": self.refunds_checked,
            "refunded_not_recorded": self.refunded_not_recorded,
            "refund_recorded_not_refunded": self.refund_recorded_not_refunded,
        }


# What is charged once: (kind, account, period) for a period, (kind, account, key) otherwise.
Unit = tuple[str, int, str]


def _unit(kind: str, account_id: int, period_start: str | None, key: str | None) -> Unit:
    return (kind, account_id, (period_start if kind == "period" else key) or "")


def _where(unit: Unit) -> dict[str, Any]:
    kind, account, value = unit
    period = value if kind == "period" else None
    return {"kind": kind, "account_id": account, "period_start": period}


def compare(taken: Iterable[Taken], recorded: Iterable[Recorded]) -> Findings:
    """Group both sides by what is charged once and name every disagreement."""
    by_unit: defaultdict[Unit, list[Taken]] = defaultdict(list)
    for t in taken:
        by_unit[_unit(t.kind, t.account_id, t.period_start, t.idempotency_key)].append(t)
    rows = {_unit(r.kind, r.account_id, r.period_start, r.idempotency_key): r for r in recorded}
    taken_ids = {t.charge_id for ts in by_unit.values() for t in ts}
    out = Findings(checked=len(set(by_unit) | set(rows)))
    for unit, charges in sorted(by_unit.items()):
        row = rows.get(unit)
        if len(charges) > 1:
            out.double_taken.append(
                {
                    **_where(unit),
                    "charge_ids": sorted(c.charge_id for c in charges),
                    "recorded_charge_id": row.charge_id if row else None,
                }
            )
        if row is None:
            first = min(charges, key=lambda c: c.charge_id)
            out.taken_not_recorded.append(
                {
                    **_where(unit),
                    "charge_id": first.charge_id,
                    "idempotency_key": first.idempotency_key,
                    "amount": first.amount,
                    "currency": first.currency,
                }
            )
    for unit, row in sorted(rows.items()):
        if row.charge_id not in taken_ids:
            out.recorded_not_taken.append(
                {**_where(unit), "charge_id": row.charge_id, "job_id": row.job_id}
            )
    return out


def compare_refunds(
    findings: Findings, listed: Iterable[Refund], recorded: Iterable[Refund]
) -> None:
    """Add the refund findings: the gateway's billq refunds against ``refunds``, by key."""
    given = {r.idempotency_key: r for r in listed}
    rows = {r.idempotency_key: r for r in recorded}
    findings.refunds_checked = len(set(given) | set(rows))
    for key, refund in sorted(given.items()):
        if key not in rows:
            findings.refunded_not_recorded.append(
                {
                    "refund_id": refund.refund_id,
                    "charge_id": refund.charge_id,
                    "idempotency_key": key,
                    "amount": refund.amount,
                    "currency": refund.currency,
                }
            )
    for key, row in sorted(rows.items()):
        if key not in given:
            findings.refund_recorded_not_refunded.append(
                {"refund_id": row.refund_id, "idempotency_key": key, "job_id": row.job_id}
            )
