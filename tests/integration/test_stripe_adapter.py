"""The Stripe adapter (official ``stripe`` SDK): what only it does.

What every adapter must do runs against this one too, in ``test_gateway_conformance.py``.
Here: the SDK's own headers, its exception classes mapped directly (synthetic
``stripe.APIError``s), searches, and the pruned-key lookup (``charge_safely``) against the
real sandbox gateway over HTTP with the SDK's API base pointing at it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import stripe
from gatewaykit import KEY, Seen, all_intents, charge, prune_keys, sandbox, stub

from shared.config import load_settings
from shared.errors import GatewayRateLimited, GatewayRejected, GatewayUnavailable, OutcomeUnknown
from shared.gateway.factory import make_gateway
from shared.gateway.port import Charged, Declined, PaymentGateway
from shared.gateway.pruned_keys import LOOKUP_AFTER, charge_safely, key_may_be_pruned
from shared.gateway.stripe_gateway import StripeGateway, map_stripe_error

pytestmark = pytest.mark.integration

API_KEY = "sk_test_billq"


@contextlib.asynccontextmanager
async def stripe_gateway(url: str) -> AsyncIterator[StripeGateway]:
    gateway = StripeGateway(url, API_KEY, timeout=5.0)
    try:
        yield gateway
    finally:
        await gateway.aclose()


@pytest.fixture
async def gateway(url: str) -> AsyncIterator[StripeGateway]:
    async with stripe_gateway(url) as gw:
        yield gw


async def test_the_sdk_pins_its_api_version(gateway: StripeGateway, seen: list[Seen]) -> None:
    assert isinstance(await gateway.charge(charge()), Charged)

    [post] = [s for s in seen if s.method == "POST"]
    assert post.headers["Stripe-Version"]


# -- answers the sandbox never gives: a scripted stub behind the real SDK ------------------

JSON = {"Content-Type": "application/json"}
REPLAYED = {"Idempotent-Replayed": "true"}
API_ERROR = b'{"error": {"type": "api_error", "message": "boom"}}'
HTML = b"<html>bad gateway</html>"


async def test_a_search_failure_is_only_ever_gateway_unavailable() -> None:
    # A search changes nothing: even a "replayed" 5xx or a timeout just means ask again.
    async with stub(500, API_ERROR, {**JSON, **REPLAYED}) as base, stripe_gateway(base) as gw:
        with pytest.raises(GatewayUnavailable):
            await gw.find_by_idempotency_key(KEY)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Idempotent-Replayed": "true"}, OutcomeUnknown),
        ({"idempotent-replayed": "true"}, OutcomeUnknown),
        ({}, GatewayUnavailable),
        ({"Idempotent-Replayed": "false"}, GatewayUnavailable),
    ],
)
def test_a_synthetic_replayed_5xx_maps_to_outcome_unknown(
    headers: dict[str, str], expected: type[Exception]
) -> None:
    exc = stripe.APIError("boom", http_status=500, json_body={"error": {}}, headers=headers)

    assert isinstance(map_stripe_error(exc), expected)


def test_the_sdks_exception_classes_map_as_documented() -> None:
    def card_error() -> stripe.CardError:
        body = {
            "error": {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": "insufficient_funds",
                "message": "Your card has insufficient funds.",
                "payment_intent": {"id": "pi_9", "object": "payment_intent"},
            }
        }
        return stripe.CardError(  # type: ignore[no-untyped-call]  # unannotated in stripe
            "Your card has insufficient funds.", None, "card_declined", json_body=body
        )

    assert map_stripe_error(card_error()) == Declined(
        "card_declined", "insufficient_funds", "Your card has insufficient funds.", "pi_9"
    )
    rejected = [
        stripe.AuthenticationError("bad key", http_status=401),
        stripe.PermissionError("restricted key", http_status=403),
        stripe.InvalidRequestError("bad param", "amount", http_status=400),  # type: ignore[no-untyped-call]
        stripe.IdempotencyError("other params", http_status=400),
    ]
    for exc in rejected:
        assert isinstance(map_stripe_error(exc), GatewayRejected), exc
    limited = map_stripe_error(stripe.RateLimitError("slow down", http_status=429))
    assert isinstance(limited, GatewayRateLimited) and limited.retry_after_s is None
    with_wait = map_stripe_error(
        stripe.RateLimitError("slow down", http_status=429, headers={"Retry-After": "2"})
    )
    assert isinstance(with_wait, GatewayRateLimited) and with_wait.retry_after_s == 2.0
    no_cause = stripe.APIConnectionError("no cause")  # type: ignore[no-untyped-call]
    assert isinstance(map_stripe_error(no_cause), OutcomeUnknown)


# -- pruned idempotency keys ---------------------------------------------------------------

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


async def test_a_pruned_key_sent_again_charges_twice_which_is_why_we_look_first(
    ledger: Path,
) -> None:
    async with sandbox(ledger) as base, stripe_gateway(base) as gw:
        first = await gw.charge(charge())
    prune_keys(ledger)
    async with sandbox(ledger) as base, stripe_gateway(base) as gw:
        second = await gw.charge(charge())
        assert second != first
        assert len(await all_intents(base)) == 2


async def test_charge_safely_after_25_hours_finds_the_charge_and_charges_nothing(
    ledger: Path,
) -> None:
    async with sandbox(ledger) as base, stripe_gateway(base) as gw:
        first = await gw.charge(charge())
    prune_keys(ledger)
    seen: list[Seen] = []
    async with sandbox(ledger, seen=seen) as base, stripe_gateway(base) as gw:
        outcome = await charge_safely(
            gw, charge(), first_attempt_at=NOW - timedelta(hours=25), now=NOW
        )

        assert outcome == first
        assert len(await all_intents(base)) == 1
    assert [(s.method, s.path) for s in seen] == [
        ("GET", "/v1/payment_intents/search"),
        ("GET", "/v1/payment_intents"),  # all_intents
    ]


async def test_charge_safely_after_25_hours_returns_a_found_decline_without_charging(
    ledger: Path,
) -> None:
    async with sandbox(ledger) as base, stripe_gateway(base) as gw:
        declined = await gw.charge(charge(card="pm_card_chargeDeclinedInsufficientFunds"))
    prune_keys(ledger)
    async with sandbox(ledger) as base, stripe_gateway(base) as gw:
        outcome = await charge_safely(
            gw,
            charge(card="pm_card_chargeDeclinedInsufficientFunds"),
            first_attempt_at=NOW - timedelta(hours=25),
            now=NOW,
        )

        assert isinstance(declined, Declined)
        assert outcome == declined
        assert len(await all_intents(base)) == 1


async def test_charge_safely_after_25_hours_with_nothing_found_charges(
    url: str, gateway: StripeGateway, seen: list[Seen]
) -> None:
    outcome = await charge_safely(
        gateway, charge(), first_attempt_at=NOW - timedelta(hours=25), now=NOW
    )

    assert isinstance(outcome, Charged)
    assert [i["id"] for i in await all_intents(url)] == [outcome.charge_id]
    assert [s.method for s in seen][:2] == ["GET", "POST"]


@pytest.mark.parametrize("first_attempt_at", [None, NOW - timedelta(minutes=5)])
async def test_charge_safely_with_a_recent_or_no_first_attempt_just_charges(
    first_attempt_at: datetime | None, url: str, gateway: StripeGateway, seen: list[Seen]
) -> None:
    outcome = await charge_safely(gateway, charge(), first_attempt_at=first_attempt_at, now=NOW)

    assert isinstance(outcome, Charged)
    assert [(s.method, s.path) for s in seen] == [("POST", "/v1/payment_intents")]
    assert len(await all_intents(url)) == 1


async def test_charge_safely_charges_nothing_when_the_lookup_fails() -> None:
    async with stub(503, HTML, {}) as base, stripe_gateway(base) as gw:
        with pytest.raises(GatewayUnavailable, match="search"):
            await charge_safely(gw, charge(), first_attempt_at=NOW - timedelta(days=2), now=NOW)


def test_key_may_be_pruned_from_an_hour_before_stripes_24_hours() -> None:
    assert timedelta(hours=23) == LOOKUP_AFTER
    assert not key_may_be_pruned(None, NOW)
    assert not key_may_be_pruned(NOW - LOOKUP_AFTER + timedelta(seconds=1), NOW)
    assert key_may_be_pruned(NOW - LOOKUP_AFTER, NOW)
    assert key_may_be_pruned(NOW - timedelta(hours=25), NOW)
    with pytest.raises(ValueError, match="timezone"):
        key_may_be_pruned(datetime(2026, 3, 1), NOW)


# -- wiring --------------------------------------------------------------------------------


async def test_the_factory_builds_the_stripe_adapter_on_the_configured_url(
    url: str,
) -> None:
    gw = make_gateway(load_settings(gateway="stripe", gateway_url=url, gateway_timeout=3.0))
    try:
        assert isinstance(gw, StripeGateway)
        assert isinstance(gw, PaymentGateway)
        assert isinstance(await gw.charge(charge()), Charged)
    finally:
        await gw.aclose()
