"""One conformance suite for the payment gateway port, run against every adapter.

``rig`` runs a scenario against each adapter: the in-process gateway (no network, so those
cases are ``unit``), the sandbox client over aiohttp's and httpx's transports, and the
Stripe SDK adapter, the last three against the sandbox server in this event loop. ``adapter``
runs a scenario against the HTTP adapters only: the wire format, authentication, faults and
answers only a server can give. A scenario only one adapter has stays in its own module
(``test_sandbox_gateway.py``, ``test_stripe_adapter.py``, ``unit/test_inprocess_gateway.py``).

To extend: a scenario every adapter must pass takes ``rig``; a new HTTP adapter is one entry
in ``gatewaykit.HTTP_ADAPTERS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import testkit
from gatewaykit import (
    API_KEY,
    HTTP_ADAPTERS,
    KEY,
    Seen,
    all_intents,
    all_refunds,
    charge,
    connect,
    prune_keys,
    refund,
    sandbox,
    stub,
)

from shared.errors import (
    GatewayRateLimited,
    GatewayRejected,
    GatewayUnavailable,
    OutcomeUnknown,
    RefundRefused,
)
from shared.gateway import test_cards
from shared.gateway.inprocess import InProcessGateway
from shared.gateway.port import (
    Charged,
    ChargeOutcome,
    ChargeRequest,
    Declined,
    GatewayCharge,
    GatewayRefund,
    PaymentGateway,
    Refunded,
    RefundRequest,
)


@dataclass(frozen=True, slots=True)
class Held:
    """One charge a gateway holds, in the terms every adapter can show."""

    charge_id: str
    status: str  # "succeeded", or "requires_payment_method" once declined
    amount: int
    currency: str
    customer: str | None
    payment_method: str
    decline_code: str | None


@dataclass(frozen=True, slots=True)
class Rig:
    """An adapter and a view of what its gateway holds (newest first)."""

    gateway: PaymentGateway
    held: Callable[[], Awaitable[list[Held]]]


class _ObservedInProcess:
    """The in-process gateway, with what it answered kept as its ledger.

    It has no ledger to read (it keeps succeeded charges only, and only for its own unit
    tests); every charge it made was answered through ``charge``, so the answers are one.
    """

    def __init__(self) -> None:
        self._gateway = InProcessGateway()
        self._held: dict[str, Held] = {}

    async def charge(self, request: ChargeRequest) -> ChargeOutcome:
        outcome = await self._gateway.charge(request)
        if outcome.charge_id is not None and outcome.charge_id not in self._held:
            declined = isinstance(outcome, Declined)
            self._held[outcome.charge_id] = Held(
                charge_id=outcome.charge_id,
                status="requires_payment_method" if declined else "succeeded",
                amount=request.amount_cents,
                currency=request.currency.lower(),
                customer=request.customer,
                payment_method=request.payment_method,
                decline_code=outcome.decline_code if isinstance(outcome, Declined) else None,
            )
        return outcome

    async def find_by_idempotency_key(self, idempotency_key: str) -> ChargeOutcome | None:
        return await self._gateway.find_by_idempotency_key(idempotency_key)

    def list_charges(self, since: datetime | None) -> AsyncIterator[GatewayCharge]:
        return self._gateway.list_charges(since)

    async def refund(self, request: RefundRequest) -> Refunded:
        return await self._gateway.refund(request)

    async def find_refund(self, charge_id: str, idempotency_key: str) -> Refunded | None:
        return await self._gateway.find_refund(charge_id, idempotency_key)

    def list_refunds(self, since: datetime | None) -> AsyncIterator[GatewayRefund]:
        return self._gateway.list_refunds(since)

    async def aclose(self) -> None:
        await self._gateway.aclose()

    async def held(self) -> list[Held]:
        return list(reversed(self._held.values()))


async def _sandbox_held(url: str) -> list[Held]:
    return [
        Held(
            charge_id=i["id"],
            status=i["status"],
            amount=i["amount"],
            currency=i["currency"],
            customer=i["customer"],
            payment_method=i["payment_method"],
            decline_code=(i["last_payment_error"] or {}).get("decline_code"),
        )
        for i in await all_intents(url)
    ]


@contextlib.asynccontextmanager
async def open_rig(name: str, ledger: Path, **faults: Any) -> AsyncIterator[Rig]:
    """The named adapter; an HTTP one on a fresh sandbox with these faults."""
    if name == "inprocess":
        observed = _ObservedInProcess()
        yield Rig(observed, observed.held)
        return
    async with sandbox(ledger, **faults) as url, connect(name, url) as gateway:
        yield Rig(gateway, lambda: _sandbox_held(url))


RIGS = [
    pytest.param("inprocess", marks=pytest.mark.unit),
    *(pytest.param(name, marks=pytest.mark.integration) for name in HTTP_ADAPTERS),
]
HTTP = [pytest.param(name, marks=pytest.mark.integration) for name in HTTP_ADAPTERS]


@pytest.fixture(params=RIGS)
def rig_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def rig(rig_name: str, tmp_path: Path) -> AsyncIterator[Rig]:
    async with open_rig(rig_name, tmp_path / "ledger.sqlite3") as opened:
        yield opened


@pytest.fixture(params=HTTP)
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def gateway(adapter: str, url: str) -> AsyncIterator[PaymentGateway]:
    async with connect(adapter, url) as gw:
        yield gw


# == every adapter =========================================================================

# -- charging ------------------------------------------------------------------------------


async def test_a_visa_charge_succeeds_and_the_gateway_holds_it(rig: Rig) -> None:
    outcome = await rig.gateway.charge(charge())

    assert isinstance(outcome, Charged)
    assert outcome.charge_id.startswith("pi_")
    [held] = await rig.held()
    assert held.charge_id == outcome.charge_id
    assert (held.amount, held.currency, held.status) == (1999, "usd", "succeeded")
    assert (held.customer, held.payment_method) == ("cus_billq1", "pm_card_visa")


async def test_a_pm_token_outside_the_table_succeeds(rig: Rig) -> None:
    assert isinstance(await rig.gateway.charge(charge(card="pm_card_mastercard")), Charged)


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
async def test_each_declining_card_is_declined_with_the_codes_dunning_needs(
    card: str, code: str, decline_code: str | None, rig: Rig
) -> None:
    outcome = await rig.gateway.charge(charge(card=card))

    assert isinstance(outcome, Declined)
    assert (outcome.code, outcome.decline_code) == (code, decline_code)
    assert outcome.message == test_cards.DECLINING_CARDS[card].message
    [held] = await rig.held()
    assert outcome.charge_id == held.charge_id
    assert held.status == "requires_payment_method"
    assert held.decline_code == decline_code


# -- idempotency ---------------------------------------------------------------------------


async def test_a_repeated_key_replays_the_same_charge_and_the_gateway_holds_one(
    rig: Rig,
) -> None:
    first = await rig.gateway.charge(charge())
    second = await rig.gateway.charge(charge())

    assert isinstance(first, Charged)
    assert second == first
    assert [h.charge_id for h in await rig.held()] == [first.charge_id]


async def test_a_repeated_key_replays_a_decline_without_charging_again(rig: Rig) -> None:
    first = await rig.gateway.charge(charge(card="pm_card_chargeDeclined"))
    second = await rig.gateway.charge(charge(card="pm_card_chargeDeclined"))

    assert isinstance(first, Declined)
    assert second == first
    assert len(await rig.held()) == 1


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
async def test_the_same_key_with_other_parameters_is_rejected_and_charges_nothing(
    changed: dict[str, Any], rig: Rig
) -> None:
    await rig.gateway.charge(charge(amount=1999))

    with pytest.raises(GatewayRejected, match="idempotency_error"):
        await rig.gateway.charge(charge(**changed))
    [held] = await rig.held()
    assert held.amount == 1999


async def test_fifty_concurrent_calls_with_one_key_charge_once(
    rig_name: str, tmp_path: Path
) -> None:
    # Latency keeps all fifty in flight together.
    async with open_rig(rig_name, tmp_path / "l.sqlite3", latency_ms=50) as rig:
        outcomes = await asyncio.gather(*(rig.gateway.charge(charge()) for _ in range(50)))

        assert len(set(outcomes)) == 1
        assert isinstance(outcomes[0], Charged)
        assert [h.charge_id for h in await rig.held()] == [outcomes[0].charge_id]


# -- invalid requests ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"amount": 0},
        {"amount": -5},
        {"amount": 100_000_000},
        {"currency": "XQZ"},
        {"card": "tok_visa"},
    ],
)
async def test_invalid_parameters_are_rejected_and_leave_the_key_free(
    bad: dict[str, Any], rig: Rig
) -> None:
    with pytest.raises(GatewayRejected, match="invalid_request_error"):
        await rig.gateway.charge(charge(**bad))

    assert await rig.held() == []
    # Validation failures never started, so the key is still free (as with Stripe).
    assert isinstance(await rig.gateway.charge(charge()), Charged)


async def test_an_unknown_payment_method_is_rejected_without_echoing_it(rig: Rig) -> None:
    with pytest.raises(GatewayRejected, match="No such PaymentMethod") as caught:
        await rig.gateway.charge(charge(card="tok_secret_card_4242"))

    assert "tok_secret_card_4242" not in str(caught.value)


# -- looking a charge up -------------------------------------------------------------------


async def test_find_by_idempotency_key_returns_charged_declined_or_none(rig: Rig) -> None:
    charged = await rig.gateway.charge(charge(key="it's-a-key"))
    declined = await rig.gateway.charge(charge(key="k-d", card="pm_card_chargeDeclinedLostCard"))

    assert await rig.gateway.find_by_idempotency_key("it's-a-key") == charged
    assert await rig.gateway.find_by_idempotency_key("k-d") == declined
    assert await rig.gateway.find_by_idempotency_key("never-used") is None


async def test_list_charges_lists_the_succeeded_charges_newest_first_with_billq_metadata(
    rig: Rig,
) -> None:
    period = {"billq_period": "2026-03-01", "billq_attempt": "1"}
    older = await rig.gateway.charge(charge(key="k1", account_id=7, metadata=period))
    await rig.gateway.charge(charge(key="k2", card="pm_card_chargeDeclined"))
    newer = await rig.gateway.charge(charge(key="k3", amount=500, currency="eur"))

    listed = [c async for c in rig.gateway.list_charges(None)]
    since = datetime.now(UTC) - timedelta(hours=1)
    recent = [c.charge_id async for c in rig.gateway.list_charges(since)]
    future = [c async for c in rig.gateway.list_charges(datetime.now(UTC) + timedelta(hours=1))]

    assert isinstance(older, Charged) and isinstance(newer, Charged)
    assert [c.charge_id for c in listed] == [newer.charge_id, older.charge_id]
    last, first = listed
    assert (first.idempotency_key, first.account_id, first.period_start) == ("k1", 7, "2026-03-01")
    assert (first.amount, first.currency) == (1999, "USD")
    assert (last.idempotency_key, last.account_id, last.period_start) == ("k3", 1, None)
    assert (last.amount, last.currency) == (500, "EUR")
    assert recent == [newer.charge_id, older.charge_id]
    assert future == []


# -- refunding -----------------------------------------------------------------------------


async def _charged(rig: Rig, amount: int = 1999, key: str = KEY) -> str:
    outcome = await rig.gateway.charge(charge(key=key, amount=amount))
    assert isinstance(outcome, Charged)
    return outcome.charge_id


async def _refunds(gateway: PaymentGateway) -> list[GatewayRefund]:
    return [r async for r in gateway.list_refunds(None)]


async def test_a_full_refund_gives_the_whole_charge_back_and_is_listed_with_its_key(
    rig: Rig,
) -> None:
    charge_id = await _charged(rig)

    refunded = await rig.gateway.refund(refund(charge_id, 1999, key="billq_refund_7_1"))

    assert refunded.amount_cents == 1999
    assert refunded.refund_id.startswith("re_")
    [listed] = await _refunds(rig.gateway)
    assert (listed.refund_id, listed.charge_id) == (refunded.refund_id, charge_id)
    assert (listed.amount, listed.currency, listed.idempotency_key) == (
        1999,
        "USD",
        "billq_refund_7_1",
    )


async def test_partial_refunds_add_up_to_the_charge_and_not_a_cent_more(rig: Rig) -> None:
    charge_id = await _charged(rig)

    first = await rig.gateway.refund(refund(charge_id, 500, key="r1"))
    second = await rig.gateway.refund(refund(charge_id, 1499, key="r2"))
    with pytest.raises(RefundRefused, match="charge_already_refunded"):
        await rig.gateway.refund(refund(charge_id, 1, key="r3"))

    assert (first.amount_cents, second.amount_cents) == (500, 1499)
    assert [r.refund_id for r in await _refunds(rig.gateway)] == [
        second.refund_id,
        first.refund_id,
    ]


async def test_a_refund_of_more_than_is_left_is_refused_and_refunds_nothing(rig: Rig) -> None:
    charge_id = await _charged(rig)
    await rig.gateway.refund(refund(charge_id, 1000, key="r1"))

    with pytest.raises(RefundRefused, match="amount_too_large"):
        await rig.gateway.refund(refund(charge_id, 1000, key="r2"))

    assert [r.amount for r in await _refunds(rig.gateway)] == [1000]
    # Refused before it ran: the key is free for the amount that is left.
    assert (await rig.gateway.refund(refund(charge_id, 999, key="r2"))).amount_cents == 999


async def test_a_repeated_refund_key_replays_the_same_refund_and_refunds_once(rig: Rig) -> None:
    charge_id = await _charged(rig)

    first = await rig.gateway.refund(refund(charge_id, 700))
    second = await rig.gateway.refund(refund(charge_id, 700))

    assert second == first
    assert len(await _refunds(rig.gateway)) == 1


async def test_find_refund_finds_a_refund_by_its_key_among_the_charges_refunds_or_none(
    rig: Rig,
) -> None:
    charge_id = await _charged(rig)
    other_charge = await _charged(rig, key="acct-2:2026-03")
    first = await rig.gateway.refund(refund(charge_id, 300, key="billq_refund_7_1"))
    second = await rig.gateway.refund(refund(charge_id, 200, key="billq_refund_7_2"))
    await rig.gateway.refund(refund(other_charge, 100, key="billq_refund_8_1"))

    assert await rig.gateway.find_refund(charge_id, "billq_refund_7_1") == first
    assert await rig.gateway.find_refund(charge_id, "billq_refund_7_2") == second
    # A key is looked up among that charge's refunds only; an unknown key finds nothing.
    assert await rig.gateway.find_refund(charge_id, "billq_refund_8_1") is None
    assert await rig.gateway.find_refund(charge_id, "billq_refund_7_3") is None
    assert await rig.gateway.find_refund(other_charge, "billq_refund_7_1") is None


async def test_find_refund_reads_past_the_first_page_of_a_charges_refunds(rig: Rig) -> None:
    charge_id = await _charged(rig)
    first = await rig.gateway.refund(refund(charge_id, 1, key="billq_refund_7_1"))
    for n in range(2, 106):  # newest first: the first refund is on the second page of 100
        await rig.gateway.refund(refund(charge_id, 1, key=f"billq_refund_7_{n}"))

    assert await rig.gateway.find_refund(charge_id, "billq_refund_7_1") == first


async def test_find_refund_does_not_find_a_refund_that_was_refused(rig: Rig) -> None:
    charge_id = await _charged(rig)
    with pytest.raises(RefundRefused):
        await rig.gateway.refund(refund(charge_id, 5000, key="billq_refund_7_1"))

    assert await rig.gateway.find_refund(charge_id, "billq_refund_7_1") is None


@pytest.mark.parametrize("changed", [{"amount": 701}, {"metadata": {"billq_charge_id": "2"}}])
async def test_a_refund_key_reused_with_other_parameters_is_rejected(
    changed: dict[str, Any], rig: Rig
) -> None:
    charge_id = await _charged(rig)
    await rig.gateway.refund(refund(charge_id, 700))

    with pytest.raises(GatewayRejected, match="idempotency_error") as caught:
        await rig.gateway.refund(refund(charge_id, **{"amount": 700, **changed}))

    assert not isinstance(caught.value, RefundRefused)
    assert len(await _refunds(rig.gateway)) == 1


async def test_a_charge_key_reused_for_a_refund_is_rejected(rig: Rig) -> None:
    charge_id = await _charged(rig)

    with pytest.raises(GatewayRejected, match="idempotency_error"):
        await rig.gateway.refund(refund(charge_id, 100, key=KEY))

    assert await _refunds(rig.gateway) == []


async def test_a_refund_of_an_unknown_or_declined_charge_is_rejected(rig: Rig) -> None:
    declined = await rig.gateway.charge(charge(key="k-d", card="pm_card_chargeDeclined"))
    assert isinstance(declined, Declined) and declined.charge_id is not None

    for charge_id in ("pi_nosuchintent000000000", declined.charge_id):
        with pytest.raises(GatewayRejected, match="invalid_request_error") as caught:
            await rig.gateway.refund(refund(charge_id, 100, key=f"r-{charge_id}"))
        assert not isinstance(caught.value, RefundRefused)
    assert await _refunds(rig.gateway) == []


async def test_concurrent_partial_refunds_beyond_the_charge_refund_only_what_was_charged(
    rig_name: str, tmp_path: Path
) -> None:
    async with open_rig(rig_name, tmp_path / "l.sqlite3", latency_ms=50) as rig:
        charge_id = await _charged(rig)
        answers = await asyncio.gather(
            *(rig.gateway.refund(refund(charge_id, 800, key=f"r{i}")) for i in range(3)),
            return_exceptions=True,
        )

        assert sorted(type(a).__name__ for a in answers) == [
            "RefundRefused",
            "Refunded",
            "Refunded",
        ]
        assert sum(r.amount for r in await _refunds(rig.gateway)) == 1600


async def test_a_refund_of_a_zero_decimal_currency_is_sent_in_whole_units(rig: Rig) -> None:
    outcome = await rig.gateway.charge(charge(amount=5000, currency="JPY"))
    assert isinstance(outcome, Charged)

    refunded = await rig.gateway.refund(refund(outcome.charge_id, 1200, currency="JPY"))

    assert refunded.amount_cents == 1200
    [listed] = await _refunds(rig.gateway)
    assert (listed.amount, listed.currency) == (1200, "JPY")


# == the HTTP adapters =====================================================================

# -- the wire format -----------------------------------------------------------------------


async def test_a_charge_is_a_confirmed_off_session_payment_intent_with_billq_metadata(
    url: str, gateway: PaymentGateway, seen: list[Seen]
) -> None:
    outcome = await gateway.charge(charge(account_id=42))

    assert isinstance(outcome, Charged)
    [intent] = await all_intents(url)
    assert intent["id"] == outcome.charge_id
    assert intent["object"] == "payment_intent"
    assert intent["last_payment_error"] is None
    assert isinstance(intent["created"], int)
    assert intent["metadata"] == {
        "billq_job_id": "11",
        "billq_idempotency_key": KEY,
        "billq_account_id": "42",
    }
    [post] = [s for s in seen if s.method == "POST"]
    assert post.path == "/v1/payment_intents"
    assert post.headers["Idempotency-Key"] == KEY
    assert post.headers["Authorization"] == f"Bearer {API_KEY}"
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


async def test_without_a_customer_none_is_sent(gateway: PaymentGateway, seen: list[Seen]) -> None:
    assert isinstance(await gateway.charge(charge(customer=None)), Charged)

    [post] = [s for s in seen if s.method == "POST"]
    assert "customer" not in post.form


async def test_billq_metadata_wins_over_caller_metadata(url: str, gateway: PaymentGateway) -> None:
    await gateway.charge(charge(metadata={"billq_idempotency_key": "forged", "plan": "pro"}))

    [intent] = await all_intents(url)
    assert intent["metadata"]["billq_idempotency_key"] == KEY
    assert intent["metadata"]["plan"] == "pro"


async def test_a_repeated_key_sends_the_same_idempotency_key_each_time(
    gateway: PaymentGateway, seen: list[Seen]
) -> None:
    await gateway.charge(charge())
    await gateway.charge(charge())

    assert [s.headers["Idempotency-Key"] for s in seen if s.method == "POST"] == [KEY, KEY]


async def test_find_prefers_the_success_over_an_earlier_decline_under_one_key(
    adapter: str, ledger: Path
) -> None:
    async with sandbox(ledger) as base, connect(adapter, base) as gw:
        await gw.charge(charge(card="pm_card_chargeDeclined"))
    prune_keys(ledger)
    async with sandbox(ledger) as base, connect(adapter, base) as gw:
        paid = await gw.charge(charge())  # the pruned key ran again, this time paid
        assert len(await all_intents(base)) == 2
        assert isinstance(paid, Charged)
        assert await gw.find_by_idempotency_key(KEY) == paid


async def test_a_refund_is_a_stripe_refund_of_the_intent_under_its_own_key(
    url: str, gateway: PaymentGateway, seen: list[Seen]
) -> None:
    charged = await gateway.charge(charge())
    assert isinstance(charged, Charged)

    refunded = await gateway.refund(refund(charged.charge_id, 500, key="billq_refund_3_1"))

    [stored] = await all_refunds(url)
    assert stored["id"] == refunded.refund_id
    assert (stored["object"], stored["status"]) == ("refund", "succeeded")
    assert (stored["payment_intent"], stored["amount"], stored["currency"]) == (
        charged.charge_id,
        500,
        "usd",
    )
    assert stored["metadata"] == {
        "billq_charge_id": "1",
        "billq_idempotency_key": "billq_refund_3_1",
    }
    [post] = [s for s in seen if s.method == "POST" and s.path == "/v1/refunds"]
    assert post.headers["Idempotency-Key"] == "billq_refund_3_1"
    assert post.form == {
        "payment_intent": charged.charge_id,
        "amount": "500",
        "metadata[billq_charge_id]": "1",
        "metadata[billq_idempotency_key]": "billq_refund_3_1",
    }


async def test_a_refund_by_charge_id_and_a_refund_without_amount_take_what_is_left(
    url: str, gateway: PaymentGateway
) -> None:
    charged = await gateway.charge(charge())
    assert isinstance(charged, Charged)
    await gateway.refund(refund(charged.charge_id, 500))
    [intent] = await all_intents(url)

    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}) as h:
        answer = await h.post("/v1/refunds", data={"charge": intent["latest_charge"]})
        again = await h.post("/v1/refunds", data={"payment_intent": charged.charge_id})

    assert answer.status_code == 200
    assert (answer.json()["amount"], answer.json()["payment_intent"]) == (1499, charged.charge_id)
    assert again.status_code == 400
    assert again.json()["error"]["type"] == "invalid_request_error"
    assert again.json()["error"]["code"] == "charge_already_refunded"


async def _charged_on(adapter: str, ledger: Path) -> Charged:
    """A charge made on a sandbox over ``ledger``, which is then stopped."""
    async with sandbox(ledger) as base, connect(adapter, base) as gw:
        charged = await gw.charge(charge())
    assert isinstance(charged, Charged)
    return charged


async def test_a_refund_timeout_is_outcome_unknown_and_the_retry_gets_the_stored_refund(
    adapter: str, ledger: Path
) -> None:
    charged = await _charged_on(adapter, ledger)
    async with sandbox(ledger, timeout_rate=1) as base, connect(adapter, base, timeout=0.3) as gw:
        with pytest.raises(OutcomeUnknown, match="ReadTimeout"):
            await gw.refund(refund(charged.charge_id, 600))

    async with sandbox(ledger) as base, connect(adapter, base) as gw:
        [stored] = await all_refunds(base)
        replayed = await gw.refund(refund(charged.charge_id, 600))
        assert replayed == Refunded(refund_id=stored["id"], amount_cents=600)
        assert len(await all_refunds(base)) == 1


async def test_a_refund_under_fail_rate_one_is_gateway_unavailable_and_refunds_nothing(
    adapter: str, ledger: Path
) -> None:
    charged = await _charged_on(adapter, ledger)
    async with sandbox(ledger, fail_rate=1) as base, connect(adapter, base) as gw:
        with pytest.raises(GatewayUnavailable, match="500"):
            await gw.refund(refund(charged.charge_id, 600))
        assert await all_refunds(base) == []


# -- authentication ------------------------------------------------------------------------


@pytest.mark.parametrize("api_key", ["sk_live_secret123", "rk_test_nope", "sk_test_"])
async def test_a_bad_api_key_is_rejected_without_echoing_it(
    adapter: str, url: str, api_key: str
) -> None:
    async with connect(adapter, url, api_key=api_key) as gw:
        with pytest.raises(GatewayRejected, match="authentication_error") as caught:
            await gw.charge(charge())
        with pytest.raises(GatewayRejected, match="authentication_error"):
            await gw.find_by_idempotency_key(KEY)

    assert api_key not in str(caught.value)
    assert await all_intents(url) == []


# -- faults --------------------------------------------------------------------------------


async def test_fail_rate_one_is_gateway_unavailable_and_a_later_retry_charges(
    adapter: str, ledger: Path
) -> None:
    async with sandbox(ledger, fail_rate=1) as base:
        async with connect(adapter, base) as gw:
            with pytest.raises(GatewayUnavailable, match="500"):
                await gw.charge(charge())
        assert await all_intents(base) == []

    async with sandbox(ledger) as base, connect(adapter, base) as gw:
        outcome = await gw.charge(charge())
        assert isinstance(outcome, Charged)
        assert [i["id"] for i in await all_intents(base)] == [outcome.charge_id]


async def test_past_the_sandboxs_rate_limit_a_charge_is_rate_limited_and_runs_nothing(
    adapter: str, ledger: Path
) -> None:
    async with sandbox(ledger, rate_limit=2) as base, connect(adapter, base) as gw:
        answers = await asyncio.gather(
            *(gw.charge(charge(f"burst-{i}", account_id=i)) for i in range(6)),
            return_exceptions=True,
        )
        limited = [a for a in answers if isinstance(a, GatewayRateLimited)]
        assert limited, answers  # one second's window takes 2; a slow machine may see 2 windows
        assert all(isinstance(a, Charged | GatewayRateLimited) for a in answers), answers
        # Retry-After names the seconds to the sandbox's next window (whole seconds).
        assert {a.retry_after_s for a in limited} == {1.0}
        charged = [a for a in answers if isinstance(a, Charged)]
        assert len(await all_intents(base)) == len(charged)
        async with httpx.AsyncClient() as client:
            stats = (await client.get(f"{base}/_sandbox/stats")).json()
        assert stats == {"rate_limited": len(limited)}


@pytest.mark.parametrize(("header", "expected"), [("7", 7.0), ("0.25", 0.25), (None, None)])
async def test_a_429_carries_the_retry_after_the_gateway_sent(
    adapter: str, header: str | None, expected: float | None
) -> None:
    headers = JSON | ({"Retry-After": header} if header is not None else {})
    body = _error("invalid_request_error", code="rate_limit")
    async with stub(429, body, headers) as base, connect(adapter, base) as gw:
        with pytest.raises(GatewayRateLimited) as caught:
            await gw.charge(charge())

    assert caught.value.retry_after_s == expected
    assert isinstance(caught.value, GatewayUnavailable)  # every existing route still applies


async def test_a_timeout_is_outcome_unknown_and_the_retry_gets_the_stored_charge(
    adapter: str, ledger: Path
) -> None:
    async with sandbox(ledger, timeout_rate=1) as base:
        async with connect(adapter, base, timeout=0.3) as gw:
            with pytest.raises(OutcomeUnknown, match="ReadTimeout"):
                await gw.charge(charge())
        stopping = time.monotonic()
    # A silent request must not hold the server's shutdown.
    assert time.monotonic() - stopping < 3

    # Restarted on the same ledger without faults: the key replays the charge that ran.
    async with sandbox(ledger) as base, connect(adapter, base) as gw:
        [stored] = await all_intents(base)
        assert stored["status"] == "succeeded"
        assert await gw.charge(charge()) == Charged(charge_id=stored["id"])
        assert len(await all_intents(base)) == 1


async def test_a_connection_dropped_while_waiting_is_outcome_unknown(
    adapter: str, ledger: Path
) -> None:
    async with contextlib.AsyncExitStack() as outlives_the_server:
        async with sandbox(ledger, timeout_rate=1) as base:
            gw = await outlives_the_server.enter_async_context(connect(adapter, base, timeout=30))
            pending = asyncio.create_task(gw.charge(charge()))

            async def stored() -> bool:  # the charge ran; its answer is being withheld
                return bool(await all_intents(base))

            await testkit.wait_until(stored, timeout=5, interval=0.02)
        # The server stopped and reset the connection: the charge ran, the client cannot know.
        with pytest.raises(OutcomeUnknown):
            await asyncio.wait_for(pending, 5)


async def test_nobody_listening_is_gateway_unavailable(adapter: str) -> None:
    async with connect(adapter, f"http://127.0.0.1:{testkit.free_port()}") as gw:
        with pytest.raises(GatewayUnavailable, match=r"ConnectError|ClientConnectorError"):
            await gw.charge(charge())
        with pytest.raises(GatewayUnavailable):
            await gw.find_by_idempotency_key(KEY)


async def test_an_unusable_url_is_gateway_rejected(adapter: str) -> None:
    async with connect(adapter, "ftp://127.0.0.1:1") as gw:
        with pytest.raises(GatewayRejected, match="URL unusable"):
            await gw.charge(charge())


# -- answers the sandbox never gives: a scripted stub --------------------------------------

JSON = {"Content-Type": "application/json"}
REPLAYED = {"Idempotent-Replayed": "true"}
API_ERROR = b'{"error": {"type": "api_error", "message": "boom"}}'
HTML = b"<html>bad gateway</html>"


def _error(kind: str, **fields: str) -> bytes:
    body = ", ".join(f'"{k}": "{v}"' for k, v in {"type": kind, **fields}.items())
    return f'{{"error": {{{body}}}}}'.encode()


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        # The sandbox stores no 5xx, so it never replays one: Stripe does (its first answer).
        (500, API_ERROR, {**JSON, **REPLAYED}, OutcomeUnknown),
        (502, HTML, REPLAYED, OutcomeUnknown),  # an unreadable body; the header still counts
        (500, API_ERROR, JSON, GatewayUnavailable),
        (503, HTML, {}, GatewayUnavailable),
        (429, _error("invalid_request_error", code="rate_limit"), JSON, GatewayRateLimited),
        (409, _error("invalid_request_error", code="lock_timeout"), JSON, GatewayUnavailable),
        (400, API_ERROR, JSON, GatewayRejected),
        (401, API_ERROR, JSON, GatewayRejected),
        (403, _error("invalid_request_error", message="no"), JSON, GatewayRejected),
        (404, _error("invalid_request_error", message="gone"), JSON, GatewayRejected),
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
async def test_answers_map_to_the_error_tree(
    adapter: str, status: int, body: bytes, headers: dict[str, str], expected: type[Exception]
) -> None:
    async with stub(status, body, headers) as base, connect(adapter, base) as gw:
        with pytest.raises(expected):
            await gw.charge(charge())


REFUND = b'{"id": "re_1", "object": "refund", "amount": 100, "currency": "usd", "status": "%s"}'


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (500, API_ERROR, {**JSON, **REPLAYED}, OutcomeUnknown),
        (500, API_ERROR, JSON, GatewayUnavailable),
        (503, HTML, {}, GatewayUnavailable),
        (429, _error("invalid_request_error", code="rate_limit"), JSON, GatewayRateLimited),
        (409, _error("invalid_request_error", code="lock_timeout"), JSON, GatewayUnavailable),
        (400, _error("invalid_request_error", code="amount_too_large"), JSON, RefundRefused),
        (400, _error("invalid_request_error", code="charge_already_refunded"), JSON, RefundRefused),
        (400, _error("invalid_request_error", code="resource_missing"), JSON, GatewayRejected),
        (401, API_ERROR, JSON, GatewayRejected),
        (200, HTML, {}, OutcomeUnknown),
        (200, b'{"object": "refund"}', JSON, OutcomeUnknown),
        (200, REFUND % b"pending", JSON, GatewayRejected),
    ],
)
async def test_refund_answers_map_to_the_error_tree(
    adapter: str, status: int, body: bytes, headers: dict[str, str], expected: type[Exception]
) -> None:
    async with stub(status, body, headers) as base, connect(adapter, base) as gw:
        with pytest.raises(expected) as caught:
            await gw.refund(refund("pi_1", 100))

    if expected is GatewayRejected:
        assert not isinstance(caught.value, RefundRefused)


async def test_error_messages_never_carry_the_card_or_the_api_key(adapter: str) -> None:
    card = "pm_card_very_secret_token"
    echo = _error("invalid_request_error", message=f"bad {card} for {API_KEY}")
    async with stub(400, echo, JSON) as base, connect(adapter, base) as gw:
        with pytest.raises(GatewayRejected) as caught:
            await gw.charge(charge(card=card))

    assert "invalid_request_error" in str(caught.value)
    assert card not in str(caught.value)
    assert API_KEY not in str(caught.value)


async def test_charges_reuse_keep_alive_connections_instead_of_opening_one_each(
    adapter: str, gateway: PaymentGateway, seen: list[Seen]
) -> None:
    # Three rounds of 8 charges in flight: a client that opened a connection per call (or a
    # client object per call) would show 24 peers; a keep-alive pool shows at most 8.
    for round_ in range(3):
        outcomes = await asyncio.gather(
            *(gateway.charge(charge(f"reuse-{round_}-{i}", account_id=i)) for i in range(8))
        )
        assert all(isinstance(o, Charged) for o in outcomes)

    posts = [s for s in seen if s.method == "POST"]
    assert len(posts) == 24
    assert len({s.peer for s in posts}) <= 8
