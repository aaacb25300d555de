"""Amounts as the gateway expects them (Stripe's rules), from billq's ISO 4217 minor units.

Stripe takes an integer ``amount`` in what it calls the currency's smallest unit, which is
not always ISO 4217's minor unit (https://docs.stripe.com/currencies):

- zero-decimal currencies (below) are sent as the whole amount: ¥500 is ``500``. ISO agrees
  for all of them except MGA (ISO: 2 decimals), whose minor amount must be whole ariary;
- three-decimal currencies (BHD JOD KWD OMR TND) are sent in thousandths, and the last digit
  must be 0 (Stripe's partners round to hundredths): 5.120 KWD is ``5120``, 5.124 is refused;
- ISK has 0 decimals in ISO but Stripe keeps it two-decimal with whole krónur only: 5 ISK is
  ``500``;
- every other currency (HUF and TWD included) is two-decimal on both sides.

billq never rounds money: an amount that cannot be sent exactly is refused (at import, and
by the adapters as a permanent ``GatewayRejected``).
"""

from __future__ import annotations

from shared.billing.money import minor_units
from shared.gateway import test_cards

_ZERO = "BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF"
_THREE = "BHD JOD KWD OMR TND"
STRIPE_ZERO_DECIMAL = frozenset(_ZERO.split())
STRIPE_THREE_DECIMAL = frozenset(_THREE.split())
_POWERS = (1, 10, 100, 1000)


def stripe_decimals(currency: str) -> int:
    code = currency.upper()
    if code in STRIPE_ZERO_DECIMAL:
        return 0
    if code in STRIPE_THREE_DECIMAL:
        return 3
    return 2


def to_gateway_units(minor: int, currency: str) -> int:
    """The ``amount`` to send for ``minor`` ISO minor units of ``currency``, exactly.

    Currencies the gateway does not know pass through unchanged: it refuses them itself.

    Raises:
        ValueError: the amount cannot be sent exactly (a fraction of the gateway's unit, or a
            three-decimal amount not ending in 0).
    """
    code = currency.upper()
    iso, sent = minor_units(code), stripe_decimals(code)
    if sent >= iso:
        amount = minor * _POWERS[sent - iso]
    else:
        step = _POWERS[iso - sent]
        if minor % step:
            raise ValueError(
                f"{code} is charged in whole units: amount_cents must be a multiple of {step}"
            )
        amount = minor // step
    if sent == 3 and amount % 10:
        raise ValueError(
            f"{code} amounts must end in 0 (the gateway charges whole hundredths), got {minor}"
        )
    return amount


def from_gateway_units(amount: int, currency: str) -> int:
    """The inverse of ``to_gateway_units``: a listed charge's amount in billq's ISO minor units.

    Stripe only takes ISK in whole krónur, so the division is exact for every amount it holds.
    """
    code = currency.upper()
    iso, sent = minor_units(code), stripe_decimals(code)
    if sent >= iso:
        return amount // _POWERS[sent - iso]
    return amount * _POWERS[iso - sent]


def accepted_currencies() -> frozenset[str]:
    """Lower-case codes the gateway charges in (the sandbox's table is Stripe's)."""
    return test_cards.CURRENCIES


def check_chargeable(minor: int, currency: str) -> int:
    """What import checks: the gateway takes this currency and this exact amount.

    Raises:
        ValueError: naming the currency or the amount's problem.
    """
    code = currency.upper()
    if code.lower() not in test_cards.CURRENCIES:
        raise ValueError(f"currency {code} is not accepted by the payment gateway")
    amount = to_gateway_units(minor, code)
    if not 1 <= amount <= test_cards.MAX_AMOUNT:
        raise ValueError(
            f"amount_cents {minor} is outside the gateway's range "
            f"(sent as {amount}; at most {test_cards.MAX_AMOUNT})"
        )
    return amount
