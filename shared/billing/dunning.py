"""Dunning: what happens after a declined charge (pure, no I/O).

Soft declines (the card may work later) are retried on a schedule counted from the
first decline; hard declines (the card will never work) stop at once. After the last
retry the account is suspended until the customer fixes the card.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Severity = Literal["soft", "hard"]

# Stripe decline codes that mean "this card will not work, whatever the day".
HARD_DECLINES = frozenset(
    {
        "stolen_card",
        "lost_card",
        "expired_card",
        "pickup_card",
        "restricted_card",
        "invalid_account",
        "incorrect_number",
        "invalid_number",
        "fraudulent",
        "card_not_supported",
        "currency_not_supported",
        "do_not_honor_permanently",
        "revocation_of_authorization",
    }
)

DEFAULT_SCHEDULE_DAYS: tuple[float, ...] = (3.0, 5.0, 7.0)


def severity(code: str, decline_code: str | None) -> Severity:
    """Soft unless the decline code (or the error code) names a permanent card problem."""
    return "hard" if (decline_code in HARD_DECLINES or code in HARD_DECLINES) else "soft"


@dataclass(frozen=True, slots=True)
class DeclineDecision:
    """What a decline of dunning attempt ``attempt`` leads to."""

    severity: Severity
    next_attempt: int | None  # the dunning attempt to make next, None: stop
    next_at: dt.datetime | None
    account_status: Literal["past_due", "suspended"]
    invoice_status: Literal["open", "uncollectible"]


def decide(
    *,
    attempt: int,
    code: str,
    decline_code: str | None,
    first_declined_at: dt.datetime,
    schedule_days: Sequence[float] = DEFAULT_SCHEDULE_DAYS,
) -> DeclineDecision:
    """Decide after a decline of ``attempt`` (0 = the regular charge, N = dunning retry N)."""
    sev = severity(code, decline_code)
    if sev == "hard" or attempt >= len(schedule_days):
        return DeclineDecision(sev, None, None, "suspended", "uncollectible")
    nxt = attempt + 1
    return DeclineDecision(
        sev,
        nxt,
        first_declined_at + dt.timedelta(days=schedule_days[attempt]),
        "past_due",
        "open",
    )
