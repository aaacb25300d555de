"""The in-process gateway keeps the sandbox's semantics; every adapter matches the port."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shared.config import load_settings
from shared.errors import GatewayRejected
from shared.gateway import test_cards
from shared.gateway.factory import make_gateway
from shared.gateway.inprocess import InProcessGateway
from shared.gateway.port import Charged, ChargeRequest, Declined, PaymentGateway
from shared.gateway.sandbox import SandboxGateway

pytestmark = pytest.mark.unit


def charge(
    key: str = "acct-1:2026-03", card: str = "pm_card_visa", amount: int = 1999, **kw: Any
) -> ChargeRequest:
    return ChargeRequest(
        idempotency_key=key,
        account_id=kw.pop("account_id", 1),
        amount_cents=amount,
        currency=kw.pop("currency", "USD"),
        payment_method=card,
        customer=kw.pop("customer", "cus_billq1"),
        metadata=kw.pop("metadata", {"billq_job_id": "11"}),
    )


async def test_a_visa_charge_succeeds_and_is_recorded() -> None:
    gw = InProcessGateway()

    outcome = await gw.charge(charge())

    assert isinstance(outcome, Charged)
    [record] = gw.charges
    assert record.charge_id == outcome.charge_id
    assert (record.idempotency_key, record.account_id) == ("acct-1:2026-03", 1)
    assert (record.amount_cents, record.currency, record.customer) == (1999, "usd", "cus_billq1")
    assert record.metadata == {"billq_job_id": "11"}


async def test_a_pm_token_outside_the_table_succeeds() -> None:
    assert isinstance(await InProcessGateway().charge(charge(card="pm_card_mastercard")), Charged)


@pytest.mark.parametrize(
    ("card", "code", "decline_code"),
    [
        ("pm_card_chargeDeclined", "card_declined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card", "expired_card"),
        ("pm_card_chargeDeclinedStolenCard", "card_declined", "stolen_card"),
        ("pm_card_chargeDeclinedLostCard", "card_declined", "lost_card"),
        ("pm_card_chargeDeclinedProcessingError", "processing_error", None),
    ],
)
async def test_each_declining_card_is_declined_and_takes_no_money(
    card: str, code: str, decline_code: str | None
) -> None:
    gw = InProcessGateway()

    outcome = await gw.charge(charge(card=card))

    assert isinstance(outcome, Declined)
    assert (outcome.code, outcome.decline_code) == (code, decline_code)
    assert outcome.message
    assert outcome.charge_id is not None
    assert gw.charges == []


def test_the_table_knows_exactly_the_declining_cards() -> None:
    assert test_cards.outcome_for("pm_card_visa") is None
    assert test_cards.outcome_for("pm_card_mastercard") is None
    assert len(test_cards.DECLINING_CARDS) == 6
    assert all(test_cards.outcome_for(card) for card in test_cards.DECLINING_CARDS)


async def test_a_repeated_key_replays_the_first_outcome_and_charges_once() -> None:
    gw = InProcessGateway()

    first = await gw.charge(charge())
    second = await gw.charge(charge())

    assert first == second
    assert len(gw.charges) == 1


async def test_a_repeated_key_replays_a_decline() -> None:
    gw = InProcessGateway()

    first = await gw.charge(charge(card="pm_card_chargeDeclined"))

    assert await gw.charge(charge(card="pm_card_chargeDeclined")) == first


@pytest.mark.parametrize(
    "changed",
    [
        {"amount": 2999},
        {"currency": "EUR"},
        {"card": "pm_card_mastercard"},
        {"customer": "cus_other"},
        {"account_id": 2},
        {"metadata": {"billq_job_id": "12"}},
    ],
)
async def test_the_same_key_with_other_parameters_is_rejected(changed: dict[str, Any]) -> None:
    gw = InProcessGateway()
    await gw.charge(charge())

    with pytest.raises(GatewayRejected, match="idempotency_error"):
        await gw.charge(charge(**changed))
    assert len(gw.charges) == 1


async def test_fifty_concurrent_calls_with_one_key_charge_once() -> None:
    gw = InProcessGateway()

    outcomes = await asyncio.gather(*(gw.charge(charge()) for _ in range(50)))

    assert len(set(outcomes)) == 1
    assert len(gw.charges) == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"amount": 0},
        {"amount": 100_000_000},
        {"currency": "XQZ"},
        {"card": "tok_visa"},
        {"key": ""},
    ],
)
async def test_invalid_requests_are_rejected_and_leave_the_key_free(bad: dict[str, Any]) -> None:
    gw = InProcessGateway()

    with pytest.raises(GatewayRejected, match="invalid_request_error"):
        await gw.charge(charge(**bad))
    assert gw.charges == []
    if "key" not in bad:
        assert isinstance(await gw.charge(charge()), Charged)


async def test_find_by_idempotency_key_returns_charged_declined_or_none() -> None:
    gw = InProcessGateway()
    charged = await gw.charge(charge(key="a"))
    declined = await gw.charge(charge(key="b", card="pm_card_chargeDeclinedExpiredCard"))

    assert await gw.find_by_idempotency_key("a") == charged
    assert await gw.find_by_idempotency_key("b") == declined
    assert await gw.find_by_idempotency_key("c") is None


async def test_every_adapter_satisfies_the_payment_gateway_port() -> None:
    sandbox = SandboxGateway("http://127.0.0.1:1", "sk_test_x")
    try:
        assert isinstance(InProcessGateway(), PaymentGateway)
        assert isinstance(sandbox, PaymentGateway)
    finally:
        await sandbox.aclose()


async def test_the_factory_builds_the_named_adapter() -> None:
    sandbox = make_gateway(load_settings(gateway="sandbox"))
    try:
        assert isinstance(sandbox, SandboxGateway)
        assert isinstance(make_gateway(load_settings(gateway="inprocess")), InProcessGateway)
    finally:
        await sandbox.aclose()


async def test_the_factory_builds_the_stripe_adapter() -> None:
    from shared.gateway.stripe_gateway import StripeGateway

    gw = make_gateway(load_settings(gateway="stripe"))
    try:
        assert isinstance(gw, StripeGateway) and isinstance(gw, PaymentGateway)
    finally:
        await gw.aclose()


async def test_the_workers_inprocess_gateway_keeps_only_its_idempotency_ledger() -> None:
    gw = make_gateway(load_settings(gateway="inprocess"))
    assert isinstance(gw, InProcessGateway)

    first = await gw.charge(charge())
    again = await gw.charge(charge())

    assert isinstance(first, Charged) and again == first  # replayed, not charged twice
    assert gw.charges == []  # no growing list of charge records inside a worker
    assert await gw.find_by_idempotency_key("acct-1:2026-03") == first
    with pytest.raises(GatewayRejected, match="same parameters"):
        await gw.charge(charge(amount=2000))
