"""The refund rules of ``shared.billing.refunds``: amounts and keys (pure)."""

from __future__ import annotations

import pytest

from shared.billing.refunds import (
    ALREADY_REFUNDED,
    AMOUNT_TOO_LARGE,
    INVALID_AMOUNT,
    RefundRefusal,
    decide_amount,
    refund_idempotency_key,
    refundable,
)

pytestmark = pytest.mark.unit


def test_refundable_is_the_charge_minus_its_refunds_and_never_negative() -> None:
    assert refundable(1999, 0) == 1999
    assert refundable(1999, 500) == 1499
    assert refundable(1999, 1999) == 0
    assert refundable(1999, 2500) == 0


def test_without_an_amount_a_refund_takes_all_that_is_left() -> None:
    assert decide_amount(None, 1999, 0) == 1999
    assert decide_amount(None, 1999, 499) == 1500


def test_a_partial_refund_within_what_is_left_is_its_own_amount() -> None:
    assert decide_amount(500, 1999, 0) == 500
    assert decide_amount(1499, 1999, 500) == 1499


@pytest.mark.parametrize(
    ("requested", "refunded", "code"),
    [
        (2000, 0, AMOUNT_TOO_LARGE),
        (1500, 500, AMOUNT_TOO_LARGE),
        (1, 1999, ALREADY_REFUNDED),
        (None, 1999, ALREADY_REFUNDED),
        (0, 0, INVALID_AMOUNT),
        (-5, 0, INVALID_AMOUNT),
    ],
)
def test_a_refund_beyond_the_charge_is_refused_with_stripes_code(
    requested: int | None, refunded: int, code: str
) -> None:
    refusal = decide_amount(requested, 1999, refunded)

    assert isinstance(refusal, RefundRefusal)
    assert refusal.code == code


def test_refund_keys_come_from_the_charge_and_the_ordinal_only() -> None:
    assert refund_idempotency_key(42, 1) == "billq_refund_42_1"
    assert refund_idempotency_key(42, 2) == "billq_refund_42_2"
    assert refund_idempotency_key(42, 1) == refund_idempotency_key(42, 1)
