"""The payment gateway port: what billq needs from any gateway.

Adapters (sandbox over HTTP, in-process, Stripe) implement ``PaymentGateway``.
``charge`` returns a business outcome (``Charged`` or ``Declined``) and raises
only ``shared.errors.TransientError`` (``GatewayUnavailable``, ``OutcomeUnknown``)
or ``shared.errors.FatalError`` (``GatewayRejected``). ``refund`` gives money of a charge
back under its own idempotency key, with the same classification; a refund of more than
the charge has left is ``RefundRefused`` (a ``GatewayRejected``), as Stripe refuses it.
``find_refund`` looks a refund up by its key among the charge's refunds (Stripe has no search
over refunds: its refund list filtered by ``payment_intent``, matched on the metadata).
``ForwardingGateway`` is the base of wrappers that change a few calls (the worker's breaker
and rate limiter) and pass the rest through.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    """One charge; retries of the same attempt must send identical fields."""

    idempotency_key: str
    account_id: int
    amount_cents: int
    currency: str  # ISO 4217, upper case
    payment_method: str
    customer: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def charge_metadata(period_start: date, attempt: int, kind: str = "period") -> dict[str, str]:
    """The metadata billq attaches to a charge besides its key and account (which the adapters
    add): derived from the account, period and attempt only, so every call under one key —
    after a card update, a retry or a database restore — sends identical parameters, and the
    audit can group the gateway's charges by (account, period). A one-off charge carries its
    kind instead of a period (``billq_kind``): the audit matches it by its key."""
    if kind != "period":
        return {"billq_kind": kind, "billq_attempt": str(attempt)}
    return {"billq_period": period_start.isoformat(), "billq_attempt": str(attempt)}


@dataclass(frozen=True, slots=True)
class Charged:
    """The gateway took the money."""

    charge_id: str


@dataclass(frozen=True, slots=True)
class Declined:
    """The card was declined; ``decline_code`` follows Stripe's codes."""

    code: str
    decline_code: str | None
    message: str
    charge_id: str | None = None


ChargeOutcome = Charged | Declined


@dataclass(frozen=True, slots=True)
class GatewayCharge:
    """A succeeded charge as the gateway lists it, with the billq metadata it carries."""

    charge_id: str
    created: datetime
    amount: int
    currency: str
    idempotency_key: str | None  # None: not made by billq
    account_id: int | None
    period_start: str | None  # ISO date, from billq_period (absent on charges before it)
    kind: str = "period"  # billq_kind: "oneoff" for a one-off charge (no period)


@dataclass(frozen=True, slots=True)
class RefundRequest:
    """One refund of (part of) a charge; retries of the same refund send identical fields."""

    idempotency_key: str
    charge_id: str  # the gateway's id of the charge (payment intent) to refund
    amount_cents: int  # ISO 4217 minor units, like ChargeRequest
    currency: str  # the charge's currency, upper case
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Refunded:
    """The gateway gave the money back."""

    refund_id: str
    amount_cents: int


@dataclass(frozen=True, slots=True)
class GatewayRefund:
    """A succeeded refund as the gateway lists it, with the billq key it carries."""

    refund_id: str
    charge_id: str
    created: datetime
    amount: int  # ISO minor units
    currency: str
    idempotency_key: str | None  # None: not made by billq


@runtime_checkable
class PaymentGateway(Protocol):
    """What billq needs from a payment gateway."""

    async def charge(self, request: ChargeRequest) -> ChargeOutcome:
        """Charge once per idempotency key; a repeated key replays the stored outcome.

        Raises:
            GatewayUnavailable: 5xx, timeout, connection error, rate limit.
            OutcomeUnknown: the gateway may have charged; retry with the same key.
            GatewayRejected: invalid request or authentication failure.
        """
        ...

    async def find_by_idempotency_key(self, idempotency_key: str) -> ChargeOutcome | None:
        """Look a charge up by the billq key in its metadata; None if the gateway has none."""
        ...

    def list_charges(self, since: datetime | None) -> AsyncIterator[GatewayCharge]:
        """Every succeeded charge created at or after ``since`` (all when None), newest first.

        Raises:
            GatewayUnavailable: the listing could not be answered now.
            GatewayRejected: the listing was refused (authentication).
        """
        ...

    async def refund(self, request: RefundRequest) -> Refunded:
        """Refund once per idempotency key; a repeated key replays the stored refund.

        Raises:
            GatewayUnavailable: 5xx, timeout before sending, connection error, rate limit.
            OutcomeUnknown: the gateway may have refunded; retry with the same key.
            RefundRefused: more than the charge has left to refund (nothing was refunded).
            GatewayRejected: invalid request (unknown charge, bad amount) or authentication.
        """
        ...

    async def find_refund(self, charge_id: str, idempotency_key: str) -> Refunded | None:
        """The succeeded refund of gateway charge ``charge_id`` made under ``idempotency_key``
        (billq's key in its metadata), or None if the gateway holds none.

        What a refund whose outcome is unknown (a timeout, a crash after the call) asks before
        it may be retried, given up or cancelled: money returned is recorded, never hidden.

        Raises:
            GatewayUnavailable: the lookup could not be answered now.
            GatewayRejected: the lookup was refused (authentication, unknown charge).
        """
        ...

    def list_refunds(self, since: datetime | None) -> AsyncIterator[GatewayRefund]:
        """Every succeeded refund created at or after ``since`` (all when None), newest first.

        Raises:
            GatewayUnavailable: the listing could not be answered now.
            GatewayRejected: the listing was refused (authentication).
        """
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class ForwardingGateway:
    """A ``PaymentGateway`` passing every call to ``inner``; subclasses override a few."""

    def __init__(self, inner: PaymentGateway) -> None:
        self._inner = inner

    async def charge(self, request: ChargeRequest) -> ChargeOutcome:
        return await self._inner.charge(request)

    async def find_by_idempotency_key(self, idempotency_key: str) -> ChargeOutcome | None:
        return await self._inner.find_by_idempotency_key(idempotency_key)

    def list_charges(self, since: datetime | None) -> AsyncIterator[GatewayCharge]:
        return self._inner.list_charges(since)

    async def refund(self, request: RefundRequest) -> Refunded:
        return await self._inner.refund(request)

    async def find_refund(self, charge_id: str, idempotency_key: str) -> Refunded | None:
        return await self._inner.find_refund(charge_id, idempotency_key)

    def list_refunds(self, since: datetime | None) -> AsyncIterator[GatewayRefund]:
        return self._inner.list_refunds(since)

    async def aclose(self) -> None:
        await self._inner.aclose()


def gateway_charge(
    charge_id: str, created: int, amount: int, currency: str, metadata: dict[str, str]
) -> GatewayCharge:
    """A listed intent's fields as a ``GatewayCharge`` (the adapters share the metadata rules)."""
    account = metadata.get("billq_account_id")
    return GatewayCharge(
        charge_id=charge_id,
        created=datetime.fromtimestamp(created).astimezone(),
        amount=amount,
        currency=currency.upper(),
        idempotency_key=metadata.get("billq_idempotency_key"),
        account_id=int(account) if account and account.isdigit() else None,
        period_start=metadata.get("billq_period"),
        kind=metadata.get("billq_kind") or "period",
    )


def gateway_refund(
    refund_id: str, charge_id: str, created: int, amount: int, currency: str, key: str | None
) -> GatewayRefund:
    """A listed refund's fields as a ``GatewayRefund``."""
    return GatewayRefund(
        refund_id=refund_id,
        charge_id=charge_id,
        created=datetime.fromtimestamp(created).astimezone(),
        amount=amount,
        currency=currency.upper(),
        idempotency_key=key,
    )
