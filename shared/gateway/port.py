"""The payment gateway port: what billq needs from any gateway.

Adapters (sandbox over HTTP, in-process, Stripe) implement ``PaymentGateway``.
``charge`` returns a business outcome (``Charged`` or ``Declined``) and raises
only ``shared.errors.TransientError`` (``GatewayUnavailable``, ``OutcomeUnknown``)
or ``shared.errors.FatalError`` (``GatewayRejected``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
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

    async def aclose(self) -> None:
        """Release connections."""
        ...
