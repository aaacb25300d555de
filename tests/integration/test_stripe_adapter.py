"""The Stripe adapter (official ``stripe`` SDK) against the real sandbox gateway over HTTP.

The SDK's API base points at a sandbox server running in this event loop on a free port, so
the code that talks to Stripe is the code under test. Where the sandbox cannot produce an
answer (it never stores a 5xx, so it never replays one), a scripted aiohttp stub answers the
SDK instead, and ``map_stripe_error`` is also checked directly with a synthetic
``stripe.APIError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
import testkit
from aiohttp import web

from sandbox.faults import Faults
from sandbox.server import build_app
from shared.config import load_settings
from shared.errors import GatewayRejected, GatewayUnavailable, OutcomeUnknown
from shared.gateway import test_cards
from shared.gateway.factory import make_gateway
from shared.gateway.port import Charged, ChargeRequest, Declined, PaymentGateway
from shared.gateway.pruned_keys import LOOKUP_AFTER, charge_safely, key_may_be_pruned
from shared.gateway.stripe_gateway import StripeGateway, map_stripe_error

pytestmark = pytest.mark.integration

API_KEY = "sk_test_billq"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
KEY = "acct-1:2026-03"


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, str] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def sandbox(
    ledger: Path, *, seen: list[Seen] | None = None, **faults: Any
) -> AsyncIterator[str]:
    """The sandbox gateway on a free port; ``seen`` collects the requests it answers."""
    app = build_app(ledger=str(ledger), faults=Faults(**faults))
    if seen is not None:
        app.middlewares.append(_recorder(seen))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def _recorder(seen: list[Seen]) -> Any:
    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        seen.append(Seen(request.method, request.path, dict(request.headers), form))
        return await handler(request)

    return record


@contextlib.asynccontextmanager
async def stripe_gateway(
    url: str, *, timeout: float = 5.0, api_key: str = API_KEY
) -> AsyncIterator[StripeGateway]:
    gateway = StripeGateway(url, api_key, timeout=timeout)
    try:
        yield gateway
    finally:
        await gateway.aclose()


def charge(
    key: str = KEY, card: str = "pm_card_visa", amount: int = 1999, **kw: Any
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


async def all_intents(url: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
        page = (await http.get("/v1/payment_intents", params={"limit": 100})).json()
    assert not page["has_more"]
    intents: list[dict[str, Any]] = page["data"]
    return intents


def prune_keys(ledger: Path) -> None:
    """Forget every idempotency key, as Stripe may after 24 h (the sandbox must be stopped)."""
    with contextlib.closing(sqlite3.connect(ledger)) as db, db:
        db.execute("DELETE FROM idempotency_keys")


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite3"


@pytest.fixture
def seen() -> list[Seen]:
    return []


@pytest.fixture
async def url(ledger: Path, seen: list[Seen]) -> AsyncIterator[str]:
    async with sandbox(ledger, seen=seen) as base:
        yield base


@pytest.fixture
async def gateway(url: str) -> AsyncIterator[StripeGateway]:
    async with stripe_gateway(url) as gw:
        yield gw


# -- charging ------------------------------------------------------------------------------


async def test_a_charge_is_a_confirmed_off_session_payment_intent_with_billq_metadata(
    url: str, gateway: StripeGateway, seen: list[Seen]
) -> None:
    outcome = await gateway.charge(charge(account_id=42))

    assert isinstance(outcome, Charged)
    assert outcome.charge_id.startswith("pi_")
    [intent] = await all_intents(url)
    assert intent["id"] == outcome.charge_id
    assert (intent["amount"], intent["currency"], intent["status"]) == (1999, "usd", "succeeded")
    assert (intent["customer"], intent["payment_method"]) == ("cus_billq1", "pm_card_visa")
    assert intent["metadata"] == {
        "billq_job_id": "11",
        "billq_idempotency_key": KEY,
        "billq_account_id": "42",
    }
    [post] = [s for s in seen if s.method == "POST"]
    assert post.path == "/v1/payment_intents"
    assert post.headers["Idempotency-Key"] == KEY
    assert post.headers["Authorization"] == f"Bearer {API_KEY}"
    assert post.headers["Stripe-Version"]  # the SDK pins its API version
    assert post.form == {
        "amount": "1999",
        "currency": "usd",
        "payment_method": "pm_card_visa",
        "confirm": "true",
        "off_session": "true",
        "customer": "cus_billq1",
        "metadata[billq_job_id]": "11",
        "metadata[billq_idempotency_key]": KEY,
        "metadata[billq_account_id]": "42",
    }


async def test_without_a_customer_none_is_sent(gateway: StripeGateway, seen: list[Seen]) -> None:
    assert isinstance(await gateway.charge(charge(customer=None)), Charged)

    [post] = [s for s in seen if s.method == "POST"]
    assert "customer" not in post.form


async def test_billq_metadata_wins_over_caller_metadata(url: str, gateway: StripeGateway) -> None:
    await gateway.charge(charge(metadata={"billq_idempotency_key": "forged", "plan": "pro"}))

    [intent] = await all_intents(url)
    assert intent["metadata"]["billq_idempotency_key"] == KEY
    assert intent["metadata"]["plan"] == "pro"


@pytest.mark.parametrize("card", sorted(test_cards.DECLINING_CARDS))
async def test_each_declining_card_is_declined_with_stripes_codes(
    card: str, url: str, gateway: StripeGateway
) -> None:
    expected = test_cards.DECLINING_CARDS[card]

    outcome = await gateway.charge(charge(card=card))

    assert isinstance(outcome, Declined)
    assert (outcome.code, outcome.decline_code) == (expected.code, expected.decline_code)
    assert outcome.message == expected.message
    [intent] = await all_intents(url)
    assert outcome.charge_id == intent["id"]
    assert intent["status"] == "requires_payment_method"


async def test_the_four_named_decline_cards_carry_the_decline_codes_dunning_needs(
    gateway: StripeGateway,
) -> None:
    cards = {
        "pm_card_chargeDeclined": ("card_declined", "generic_decline"),
        "pm_card_chargeDeclinedInsufficientFunds": ("card_declined", "insufficient_funds"),
        "pm_card_chargeDeclinedExpiredCard": ("expired_card", "expired_card"),
        "pm_card_chargeDeclinedStolenCard": ("card_declined", "stolen_card"),
    }
    for card, codes in cards.items():
        outcome = await gateway.charge(charge(key=card, card=card))
        assert isinstance(outcome, Declined)
        assert (outcome.code, outcome.decline_code) == codes


# -- idempotency ---------------------------------------------------------------------------


async def test_a_repeated_key_replays_the_same_intent_and_the_ledger_holds_one(
    url: str, gateway: StripeGateway, seen: list[Seen]
) -> None:
    first = await gateway.charge(charge())
    second = await gateway.charge(charge())

    assert isinstance(first, Charged)
    assert second == first
    assert [i["id"] for i in await all_intents(url)] == [first.charge_id]
    assert [s.headers["Idempotency-Key"] for s in seen if s.method == "POST"] == [KEY, KEY]


async def test_a_repeated_key_replays_a_decline_without_charging_again(
    url: str, gateway: StripeGateway
) -> None:
    first = await gateway.charge(charge(card="pm_card_chargeDeclined"))
    second = await gateway.charge(charge(card="pm_card_chargeDeclined"))

    assert isinstance(first, Declined)
    assert second == first
    assert len(await all_intents(url)) == 1


async def test_the_same_key_with_another_amount_is_rejected_and_charges_nothing(
    url: str, gateway: StripeGateway
) -> None:
    await gateway.charge(charge(amount=1999))

    with pytest.raises(GatewayRejected, match="idempotency_error"):
        await gateway.charge(charge(amount=2999))
    [intent] = await all_intents(url)
    assert intent["amount"] == 1999


async def test_concurrent_calls_with_one_key_charge_once(tmp_path: Path) -> None:
    async with (
        sandbox(tmp_path / "l.sqlite3", latency_ms=50) as base,
        stripe_gateway(base) as gw,
    ):
        outcomes = await asyncio.gather(*(gw.charge(charge()) for _ in range(20)))

        assert len(set(outcomes)) == 1
        assert isinstance(outcomes[0], Charged)
        assert [i["id"] for i in await all_intents(base)] == [outcomes[0].charge_id]


# -- invalid requests and authentication ---------------------------------------------------


@pytest.mark.parametrize("api_key", ["sk_live_secret123", "rk_test_nope", "sk_test_"])
async def test_a_bad_api_key_is_rejected_without_echoing_it(url: str, api_key: str) -> None:
    async with stripe_gateway(url, api_key=api_key) as gw:
        with pytest.raises(GatewayRejected, match="authentication_error") as caught:
            await gw.charge(charge())
        with pytest.raises(GatewayRejected, match="authentication_error"):
            await gw.find_by_idempotency_key(KEY)

    assert api_key not in str(caught.value)
    assert await all_intents(url) == []


@pytest.mark.parametrize(("amount", "currency"), [(0, "USD"), (100_000_000, "USD"), (100, "XQZ")])
async def test_invalid_parameters_are_rejected_and_charge_nothing(
    amount: int, currency: str, url: str, gateway: StripeGateway
) -> None:
    with pytest.raises(GatewayRejected, match="invalid_request_error"):
        await gateway.charge(charge(amount=amount, currency=currency))

    assert await all_intents(url) == []


async def test_an_unknown_payment_method_is_rejected_without_echoing_it(
    gateway: StripeGateway,
) -> None:
    with pytest.raises(GatewayRejected, match="No such PaymentMethod") as caught:
        await gateway.charge(charge(card="tok_secret_card_4242"))

    assert "tok_secret_card_4242" not in str(caught.value)


# -- faults --------------------------------------------------------------------------------


async def test_fail_rate_one_is_gateway_unavailable_and_a_later_retry_charges(
    ledger: Path,
) -> None:
    async with sandbox(ledger, fail_rate=1) as base:
        async with stripe_gateway(base) as gw:
            with pytest.raises(GatewayUnavailable, match="500"):
                await gw.charge(charge())
        assert await all_intents(base) == []

    async with sandbox(ledger) as base, stripe_gateway(base) as gw:
        outcome = await gw.charge(charge())
        assert isinstance(outcome, Charged)
        assert [i["id"] for i in await all_intents(base)] == [outcome.charge_id]


async def test_a_timeout_is_outcome_unknown_and_the_retry_gets_the_stored_charge(
    ledger: Path,
) -> None:
    async with sandbox(ledger, timeout_rate=1) as base, stripe_gateway(base, timeout=0.3) as gw:
        with pytest.raises(OutcomeUnknown, match="ReadTimeout"):
            await gw.charge(charge())

    # Restarted on the same ledger without faults: the key replays the charge that ran.
    async with sandbox(ledger) as base, stripe_gateway(base) as gw:
        [stored] = await all_intents(base)
        assert stored["status"] == "succeeded"
        assert await gw.charge(charge()) == Charged(charge_id=stored["id"])
        assert len(await all_intents(base)) == 1


async def test_a_connection_dropped_while_waiting_is_outcome_unknown(ledger: Path) -> None:
    async with contextlib.AsyncExitStack() as outlives_the_server:
        async with sandbox(ledger, timeout_rate=1) as base:
            gw = await outlives_the_server.enter_async_context(stripe_gateway(base, timeout=30))
            pending = asyncio.create_task(gw.charge(charge()))

            async def stored() -> bool:  # the charge ran; its answer is being withheld
                return bool(await all_intents(base))

            await testkit.wait_until(stored, timeout=5, interval=0.02)
        # The server stopped and reset the connection: the charge ran, the client cannot know.
        with pytest.raises(OutcomeUnknown):
            await asyncio.wait_for(pending, 5)


async def test_nobody_listening_is_gateway_unavailable() -> None:
    async with stripe_gateway(f"http://127.0.0.1:{testkit.free_port()}") as gw:
        with pytest.raises(GatewayUnavailable, match="ConnectError"):
            await gw.charge(charge())
        with pytest.raises(GatewayUnavailable):
            await gw.find_by_idempotency_key(KEY)


async def test_an_unusable_url_is_gateway_rejected() -> None:
    async with stripe_gateway("ftp://127.0.0.1:1") as gw:
        with pytest.raises(GatewayRejected, match="URL unusable"):
            await gw.charge(charge())


# -- answers the sandbox never gives: a scripted stub behind the real SDK ------------------


@contextlib.asynccontextmanager
async def stub(status: int, body: bytes, headers: dict[str, str]) -> AsyncIterator[str]:
    """A server answering every request with one fixed response."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


JSON = {"Content-Type": "application/json"}
REPLAYED = {"Idempotent-Replayed": "true"}
API_ERROR = b'{"error": {"type": "api_error", "message": "boom"}}'
HTML = b"<html>bad gateway</html>"


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        # The sandbox stores no 5xx, so it never replays one: Stripe does (its first answer).
        (500, API_ERROR, {**JSON, **REPLAYED}, OutcomeUnknown),
        (502, HTML, REPLAYED, OutcomeUnknown),  # the SDK cannot parse it; the header survives
        (500, API_ERROR, JSON, GatewayUnavailable),
        (503, HTML, {}, GatewayUnavailable),
        (
            429,
            b'{"error": {"type": "invalid_request_error", "code": "rate_limit"}}',
            JSON,
            GatewayUnavailable,
        ),
        (
            409,
            b'{"error": {"type": "invalid_request_error", "code": "lock_timeout"}}',
            JSON,
            GatewayUnavailable,
        ),
        (
            403,
            b'{"error": {"type": "invalid_request_error", "message": "no"}}',
            JSON,
            GatewayRejected,
        ),
        (
            404,
            b'{"error": {"type": "invalid_request_error", "message": "gone"}}',
            JSON,
            GatewayRejected,
        ),
        (200, HTML, {}, OutcomeUnknown),  # it ran, but the answer is unreadable
        (200, b'{"object": "payment_intent"}', JSON, OutcomeUnknown),  # no id
        (
            200,
            b'{"id": "pi_1", "object": "payment_intent", "status": "processing"}',
            JSON,
            GatewayRejected,
        ),
    ],
)
async def test_answers_map_to_the_error_tree_through_the_sdk(
    status: int, body: bytes, headers: dict[str, str], expected: type[Exception]
) -> None:
    async with stub(status, body, headers) as base, stripe_gateway(base) as gw:
        with pytest.raises(expected):
            await gw.charge(charge())


async def test_a_search_failure_is_only_ever_gateway_unavailable() -> None:
    # A search changes nothing: even a "replayed" 5xx or a timeout just means ask again.
    async with stub(500, API_ERROR, {**JSON, **REPLAYED}) as base, stripe_gateway(base) as gw:
        with pytest.raises(GatewayUnavailable):
            await gw.find_by_idempotency_key(KEY)


async def test_error_messages_never_carry_the_card_or_the_api_key() -> None:
    card = "pm_card_very_secret_token"
    echo = (
        f'{{"error": {{"type": "invalid_request_error", "message": "bad {card} for {API_KEY}"}}}}'
    )
    async with stub(400, echo.encode(), JSON) as base, stripe_gateway(base) as gw:
        with pytest.raises(GatewayRejected) as caught:
            await gw.charge(charge(card=card))

    assert "invalid_request_error" in str(caught.value)
    assert card not in str(caught.value)
    assert API_KEY not in str(caught.value)


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
        return stripe.CardError(
            "Your card has insufficient funds.", None, "card_declined", json_body=body
        )

    assert map_stripe_error(card_error()) == Declined(
        "card_declined", "insufficient_funds", "Your card has insufficient funds.", "pi_9"
    )
    rejected = [
        stripe.AuthenticationError("bad key", http_status=401),
        stripe.PermissionError("restricted key", http_status=403),
        stripe.InvalidRequestError("bad param", "amount", http_status=400),
        stripe.IdempotencyError("other params", http_status=400),
    ]
    for exc in rejected:
        assert isinstance(map_stripe_error(exc), GatewayRejected), exc
    assert isinstance(
        map_stripe_error(stripe.RateLimitError("slow down", http_status=429)), GatewayUnavailable
    )
    assert isinstance(map_stripe_error(stripe.APIConnectionError("no cause")), OutcomeUnknown)


# -- looking a charge up -------------------------------------------------------------------


async def test_find_by_idempotency_key_returns_charged_declined_or_none(
    gateway: StripeGateway,
) -> None:
    charged = await gateway.charge(charge(key="it's-a-key"))
    declined = await gateway.charge(charge(key="k-d", card="pm_card_chargeDeclinedLostCard"))

    assert await gateway.find_by_idempotency_key("it's-a-key") == charged
    assert await gateway.find_by_idempotency_key("k-d") == declined
    assert await gateway.find_by_idempotency_key("never-used") is None


async def test_find_prefers_the_success_over_an_earlier_decline_under_one_key(
    ledger: Path,
) -> None:
    async with sandbox(ledger) as base, stripe_gateway(base) as gw:
        await gw.charge(charge(card="pm_card_chargeDeclined"))
    prune_keys(ledger)
    async with sandbox(ledger) as base, stripe_gateway(base) as gw:
        paid = await gw.charge(charge())  # the pruned key ran again, this time paid
        assert len(await all_intents(base)) == 2
        assert isinstance(paid, Charged)
        assert await gw.find_by_idempotency_key(KEY) == paid


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
