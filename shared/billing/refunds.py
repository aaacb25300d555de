"""Refunds: how much of a charge may still be given back, and each refund's identity (pure).

A refund is a job of kind ``refund`` (``shared.billing.kinds``) on one recorded charge. Its
amount is fixed when the job is created — all that is left, or the part asked for — and never
more than the charge minus every refund already made or still in flight for it (the
database holds the charge's row lock while it checks, and a constraint on
``charges.refunded_cents`` holds the line at record time).

Its gateway key is ``billq_refund_{charge}_{n}``: the billq charge row's id and the refund's
ordinal on that charge (1, 2, …), both fixed at creation, never the clock; every retry,
redelivery and replay of the refund sends the gateway that same key.
"""

from __future__ import annotations

from dataclasses import dataclass

# Stripe's codes for a refund the charge cannot cover (the API answers with them too).
AMOUNT_TOO_LARGE = "amount_too_large"
ALREADY_REFUNDED = "charge_already_refunded"
INVALID_AMOUNT = "parameter_invalid_integer"


def refund_idempotency_key(charge_id: int, ordinal: int) -> str:
    """The gateway idempotency key of the ``ordinal``-th refund of billq charge ``charge_id``."""
    return f"billq_refund_{charge_id}_{ordinal}"


def refund_metadata(charge_id: int, account_id: int) -> dict[str, str]:
    """What billq attaches to a refund besides its key: derived from the charge only, so every
    call under one key sends identical parameters."""
    return {"billq_charge_id": str(charge_id), "billq_account_id": str(account_id)}


def refundable(charged: int, refunded: int) -> int:
    """What is left to refund of a charge of ``charged`` after ``refunded``; never negative."""
    return max(0, charged - refunded)


@dataclass(frozen=True, slots=True)
class RefundRefusal:
    """Why a refund cannot be made, in Stripe's terms (``code``, ``param``, ``message``)."""

    code: str
    message: str
    param: str | None = "amount"


def decide_amount(requested: int | None, charged: int, refunded: int) -> int | RefundRefusal:
    """The refund's amount (all that is left when ``requested`` is None), or why not.

    ``refunded`` counts every refund of the charge that succeeded or may still succeed.
    """
    left = refundable(charged, refunded)
    if requested is not None and requested <= 0:
        return RefundRefusal(INVALID_AMOUNT, "Invalid amount: must be a positive integer.")
    if left == 0:
        return RefundRefusal(ALREADY_REFUNDED, "The charge has already been refunded.", None)
    amount = left if requested is None else requested
    if amount > left:
        return RefundRefusal(
            AMOUNT_TOO_LARGE,
            f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left}).",
        )
    return amount
