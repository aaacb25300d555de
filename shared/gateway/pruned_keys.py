"""Charging again after the gateway may have forgotten the idempotency key.

Stripe keeps an idempotency key for at least 24 hours and may prune it after that; a pruned
key sent again creates a **new** charge. So a job whose first gateway call is older than that
asks the gateway for the charge (by the ``billq_idempotency_key`` metadata billq attaches)
before it may charge again. Within the window the key itself protects the charge: a retry
replays the stored answer, which also covers a charge too new for Stripe's eventually
consistent search.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from shared.gateway.port import ChargeOutcome, ChargeRequest, PaymentGateway

# Stripe: keys "can be removed once they're at least 24 hours old".
KEY_RETENTION = timedelta(hours=24)
# Ask from an hour earlier: billq's clock and Stripe's need not agree, and a search is cheap.
LOOKUP_AFTER = KEY_RETENTION - timedelta(hours=1)


def key_may_be_pruned(
    first_attempt_at: datetime | None, now: datetime, *, lookup_after: timedelta = LOOKUP_AFTER
) -> bool:
    """Whether the gateway may have forgotten a key first sent at ``first_attempt_at``.

    Raises:
        ValueError: a naive datetime (the comparison needs time zones).
    """
    if first_attempt_at is None:
        return False  # never sent: the key is new to the gateway
    if first_attempt_at.tzinfo is None or now.tzinfo is None:
        raise ValueError("first_attempt_at and now must be timezone-aware")
    return now - first_attempt_at >= lookup_after


async def charge_safely(
    gateway: PaymentGateway,
    request: ChargeRequest,
    *,
    first_attempt_at: datetime | None,
    now: datetime,
    lookup_after: timedelta = LOOKUP_AFTER,
) -> ChargeOutcome:
    """Charge, unless a key the gateway may have pruned already has a charge there.

    ``first_attempt_at`` is when this key was first sent to the gateway (None: never). Once
    that is ``lookup_after`` ago, the charge is looked up first and a found outcome is
    returned as the replay would have returned it: ``Charged``, or the ``Declined`` this key
    already got (a new attempt after a decline takes a new key). Only when nothing is found
    is the request sent.

    Raises:
        GatewayUnavailable: the lookup could not be answered now (nothing is charged then),
            or as ``PaymentGateway.charge``.
        OutcomeUnknown, GatewayRejected: as ``PaymentGateway.charge``.
        ValueError: a naive datetime.
    """
    if key_may_be_pruned(first_attempt_at, now, lookup_after=lookup_after):
        found = await gateway.find_by_idempotency_key(request.idempotency_key)
        if found is not None:
            return found
    return await gateway.charge(request)
