"""What only the in-process gateway does: its charge records; the factory; the port.

Its charging semantics (cards, idempotency, validation) are the sandbox's and Stripe's:
``tests/integration/test_gateway_conformance.py`` checks them for every adapter, this one
included (those cases are marked ``unit``).
"""

from __future__ import annotations

import asyncio

import pytest
from gatewaykit import charge

from shared.config import load_settings
from shared.errors import GatewayRejected
from shared.gateway import test_cards
from shared.gateway.factory import make_gateway
from shared.gateway.inprocess import InProcessGateway
from shared.gateway.port import Charged, Declined, PaymentGateway
from shared.gateway.sandbox import SandboxGateway

pytestmark = pytest.mark.unit


async def test_a_visa_charge_succeeds_and_is_recorded() -> None:
    gw = InProcessGateway()

    outcome = await gw.charge(charge())

    assert isinstance(outcome, Charged)
    [record] = gw.charges
    assert record.charge_id == outcome.charge_id
    assert (record.idempotency_key, record.account_id) == ("acct-1:2026-03", 1)
    assert (record.amount_cents, record.currency, record.customer) == (1999, "usd", "cus_billq1")
    assert record.metadata == {"billq_job_id": "11"}


async def test_a_declined_card_takes_no_money() -> None:
    gw = InProcessGateway()

    for card in test_cards.DECLINING_CARDS:
        assert isinstance(await gw.charge(charge(key=card, card=card)), Declined)
    assert gw.charges == []


def test_the_table_knows_exactly_the_declining_cards() -> None:
    assert test_cards.outcome_for("pm_card_visa") is None
    assert test_cards.outcome_for("pm_card_mastercard") is None
    assert len(test_cards.DECLINING_CARDS) == 6
    assert all(test_cards.outcome_for(card) for card in test_cards.DECLINING_CARDS)


async def test_replays_and_refusals_record_no_further_charge() -> None:
    gw = InProcessGateway()

    await asyncio.gather(*(gw.charge(charge()) for _ in range(50)))
    with pytest.raises(GatewayRejected, match="idempotency_error"):
        await gw.charge(charge(amount=2999))
    with pytest.raises(GatewayRejected, match="invalid_request_error"):
        await gw.charge(charge(key="other", amount=0))
    assert len(gw.charges) == 1


async def test_an_empty_key_is_an_invalid_request() -> None:
    with pytest.raises(GatewayRejected, match="invalid_request_error"):
        await InProcessGateway().charge(charge(key=""))


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
