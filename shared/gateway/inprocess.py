"""``InProcessGateway``: answers at once, inside the worker, like the sandbox would.

Same test cards and idempotency semantics as the sandbox server, no network: benchmarks
with it measure billq's own cost (broker, database, handler), not a gateway's.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

from shared.errors import GatewayRejected, RefundRefused
from shared.gateway import test_cards
from shared.gateway.amounts import to_gateway_units
from shared.gateway.port import (
    Charged,
    ChargeOutcome,
    ChargeRequest,
    Declined,
    GatewayCharge,
    GatewayRefund,
    Refunded,
    RefundRequest,
    gateway_charge,
    gateway_refund,
)


@dataclass(frozen=True, slots=True)
class InProcessCharge:
    """One succeeded charge, as tests inspect it."""

    charge_id: str
    idempotency_key: str
    account_id: int
    amount_cents: int
    currency: str
    customer: str | None
    metadata: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.time)


class InProcessGateway:
    """A PaymentGateway held in memory; nothing survives the process."""

    def __init__(self, *, keep_charges: bool = True) -> None:
        # A worker running this gateway (benchmarks) keeps no charge list: only the
        # idempotency ledger, so its memory is the worker's, not a growing fake ledger.
        self._keep_charges = keep_charges
        self.charges: list[InProcessCharge] = []
        # key → (the first request's parameters, its outcome): a repeat replays, a changed
        # request is refused.
        self._by_key: dict[str, tuple[tuple[object, ...], ChargeOutcome]] = {}
        self._ids = itertools.count(1)
        self._amounts: dict[str, int] = {}  # succeeded charge id → amount (minor units)
        self._refunded: dict[str, int] = {}  # charge id → amount refunded so far
        self._refund_keys: dict[str, tuple[tuple[object, ...], Refunded]] = {}
        self.refunds: list[GatewayRefund] = []  # newest last

    async def charge(self, request: ChargeRequest) -> ChargeOutcome:
        """Charge once per idempotency key; a repeated key replays the first outcome.

        Raises:
            GatewayRejected: the key was used with other parameters, or the request is invalid.
        """
        # No await below: check-then-store is atomic on the event loop, so concurrent
        # calls with one key cannot both charge.
        stored = self._by_key.get(request.idempotency_key)
        params = _parameters(request)
        if stored is not None:
            first, replayed = stored
            if first != params:
                raise GatewayRejected(
                    "gateway 400 idempotency_error: Keys for idempotent requests can only be "
                    "used with the same parameters they were first used with."
                )
            return replayed
        _validate(request)
        charge_id = f"pi_inproc{next(self._ids):015d}"
        decline = test_cards.outcome_for(request.payment_method)
        outcome: ChargeOutcome
        if decline is None:
            outcome = Charged(charge_id=charge_id)
        else:
            outcome = Declined(decline.code, decline.decline_code, decline.message, charge_id)
        if decline is None:
            self._amounts[charge_id] = request.amount_cents
        if decline is None and self._keep_charges:
            self.charges.append(
                InProcessCharge(
                    charge_id=charge_id,
                    idempotency_key=request.idempotency_key,
                    account_id=request.account_id,
                    amount_cents=request.amount_cents,
                    currency=request.currency.lower(),
                    customer=request.customer,
                    metadata=dict(request.metadata),
                )
            )
        self._by_key[request.idempotency_key] = (params, outcome)
        return outcome

    async def find_by_idempotency_key(self, idempotency_key: str) -> ChargeOutcome | None:
        stored = self._by_key.get(idempotency_key)
        return None if stored is None else stored[1]

    async def list_charges(self, since: datetime | None) -> AsyncIterator[GatewayCharge]:
        """What this process charged (kept only with ``keep_charges``), newest first."""
        for c in reversed(self.charges):
            charge = gateway_charge(
                c.charge_id,
                int(c.created),
                c.amount_cents,
                c.currency,
                {
                    **c.metadata,
                    "billq_idempotency_key": c.idempotency_key,
                    "billq_account_id": str(c.account_id),
                },
            )
            if since is not None and charge.created < since:
                return
            yield charge

    async def refund(self, request: RefundRequest) -> Refunded:
        """Refund once per key, never more than the charge has left (as the sandbox).

        Raises:
            RefundRefused: more than the charge has left.
            GatewayRejected: an unknown charge, a bad amount, or the key used otherwise.
        """
        params = (
            request.charge_id,
            request.amount_cents,
            request.currency,
            tuple(sorted(request.metadata.items())),
        )
        stored = self._refund_keys.get(request.idempotency_key)
        if stored is not None or request.idempotency_key in self._by_key:
            if stored is None or stored[0] != params:
                raise GatewayRejected(
                    "gateway 400 idempotency_error: Keys for idempotent requests can only be "
                    "used with the same parameters they were first used with."
                )
            return stored[1]
        charged = self._amounts.get(request.charge_id)
        if charged is None:
            raise GatewayRejected(
                f"gateway 400 invalid_request_error: No such payment_intent: {request.charge_id}"
            )
        if request.amount_cents <= 0:
            raise GatewayRejected("gateway 400 invalid_request_error: Invalid amount.")
        left = charged - self._refunded.get(request.charge_id, 0)
        if left <= 0:
            raise RefundRefused("gateway 400 charge_already_refunded: already refunded")
        if request.amount_cents > left:
            raise RefundRefused(
                f"gateway 400 amount_too_large: Refund amount ({request.amount_cents}) is "
                f"greater than unrefunded amount on charge ({left})."
            )
        refunded = Refunded(f"re_inproc{next(self._ids):015d}", request.amount_cents)
        self._refunded[request.charge_id] = charged - left + request.amount_cents
        self._refund_keys[request.idempotency_key] = (params, refunded)
        self.refunds.append(
            gateway_refund(
                refunded.refund_id,
                request.charge_id,
                int(time.time()),
                request.amount_cents,
                request.currency,
                request.idempotency_key,
            )
        )
        return refunded

    async def find_refund(self, charge_id: str, idempotency_key: str) -> Refunded | None:
        stored = self._refund_keys.get(idempotency_key)
        if stored is None or stored[0][0] != charge_id:
            return None
        return stored[1]

    async def list_refunds(self, since: datetime | None) -> AsyncIterator[GatewayRefund]:
        """What this process refunded, newest first."""
        for refund in reversed(self.refunds):
            if since is not None and refund.created < since:
                return
            yield refund

    async def aclose(self) -> None:
        return None


def _parameters(request: ChargeRequest) -> tuple[object, ...]:
    """What must match for a key's replay (Stripe compares the request's parameters)."""
    return (
        request.account_id,
        request.amount_cents,
        request.currency,
        request.payment_method,
        request.customer,
        tuple(sorted(request.metadata.items())),
    )


def _validate(request: ChargeRequest) -> None:
    # The sandbox server refuses these with 400 invalid_request_error; keep the fakes alike.
    try:
        # The amount as the sandbox server would receive it (JPY whole yen, ISK in hundredths, ...).
        amount = to_gateway_units(request.amount_cents, request.currency)
    except ValueError as exc:
        raise GatewayRejected(f"gateway 400 invalid_request_error: Invalid amount: {exc}") from None
    if not 1 <= amount <= test_cards.MAX_AMOUNT:
        raise GatewayRejected("gateway 400 invalid_request_error: Invalid amount.")
    if request.currency.lower() not in test_cards.CURRENCIES:
        raise GatewayRejected(
            f"gateway 400 invalid_request_error: Invalid currency: {request.currency}."
        )
    if not test_cards.is_payment_method(request.payment_method):
        raise GatewayRejected("gateway 400 invalid_request_error: No such PaymentMethod.")
    if not 0 < len(request.idempotency_key) <= 255:
        raise GatewayRejected("gateway 400 invalid_request_error: Idempotency-Key length.")
