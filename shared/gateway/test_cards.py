"""Stripe's test-mode facts that both fakes share: test payment methods and currencies.

Pure data: the sandbox server and the in-process gateway decide outcomes from this one
table, so a fake never disagrees with the other about what a card does.
"""

from __future__ import annotations

from dataclasses import dataclass

# This module's name starts with ``test_``; it is data, not a test module.
__test__ = False


@dataclass(frozen=True, slots=True)
class CardDecline:
    """How Stripe declines a test payment method (``code``/``decline_code`` as Stripe sends)."""

    code: str
    decline_code: str | None
    message: str


_DECLINED = "Your card was declined."

# https://docs.stripe.com/testing#declined-payments
DECLINING_CARDS: dict[str, CardDecline] = {
    "pm_card_chargeDeclined": CardDecline("card_declined", "generic_decline", _DECLINED),
    "pm_card_chargeDeclinedInsufficientFunds": CardDecline(
        "card_declined", "insufficient_funds", "Your card has insufficient funds."
    ),
    "pm_card_chargeDeclinedExpiredCard": CardDecline(
        "expired_card", "expired_card", "Your card has expired."
    ),
    "pm_card_chargeDeclinedStolenCard": CardDecline("card_declined", "stolen_card", _DECLINED),
    "pm_card_chargeDeclinedLostCard": CardDecline("card_declined", "lost_card", _DECLINED),
    "pm_card_chargeDeclinedProcessingError": CardDecline(
        "processing_error",
        None,
        "An error occurred while processing your card. Try again in a little bit.",
    ),
}

# Lower-case ISO 4217 codes Stripe settles in; anything else is an invalid request.
_CURRENCY_CODES = """
    usd aed afn all amd ang aoa ars aud awg azn bam bbd bdt bgn bhd bif bmd bnd bob brl bsd
    bwp byn bzd cad cdf chf clp cny cop crc cve czk djf dkk dop dzd egp etb eur fjd fkp gbp
    gel gip gmd gnf gtq gyd hkd hnl htg huf idr ils inr isk jmd jod jpy kes kgs khr kmf krw
    kwd kyd kzt lak lbp lkr lrd lsl mad mdl mga mkd mmk mnt mop mur mvr mwk mxn myr mzn nad
    ngn nio nok npr nzd omr pab pen pgk php pkr pln pyg qar ron rsd rub rwf sar sbd scr sek
    sgd shp sle sos srd std szl thb tjs tnd top try ttd twd tzs uah ugx uyu uzs vnd vuv wst
    xaf xcd xof xpf yer zar zmw
"""
CURRENCIES = frozenset(_CURRENCY_CODES.split())

# Stripe caps a single charge at 99,999,999 in the smallest currency unit.
MAX_AMOUNT = 99_999_999


def is_payment_method(token: str) -> bool:
    """Whether ``token`` looks like a PaymentMethod id; anything else is "No such PaymentMethod"."""
    return token.startswith("pm_") and len(token) > 3


def outcome_for(payment_method: str) -> CardDecline | None:
    """The decline this test payment method produces, or None: every other ``pm_`` succeeds."""
    return DECLINING_CARDS.get(payment_method)
