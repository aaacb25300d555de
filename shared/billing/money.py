"""Currencies billq accepts (ISO 4217 active codes), their minor units, and amount checks.

billq stores every amount as an integer number of the currency's ISO 4217 minor unit
(``amount_cents`` is a historical name): 465830 JPY is ¥465,830, 489733 KWD is 489.733 KWD.
"""

from __future__ import annotations

from decimal import Decimal

# A code table reads best as a block of text.
_CODES = """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN
    BWP BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD
    FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY
    KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP
    MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR
    RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT
    TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VES VND VUV WST XAF XCD XOF XPF YER ZAR ZMW
    ZWL
"""
ISO_4217 = frozenset(_CODES.split())

# ISO 4217 minor units (decimal places) where they are not 2; every other code has 2.
_ZERO = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX VND VUV XAF XOF XPF"
_THREE = "BHD IQD JOD KWD LYD OMR TND"
ZERO_DECIMAL = frozenset(_ZERO.split())
THREE_DECIMAL = frozenset(_THREE.split())

MAX_AMOUNT_CENTS = 99_999_999  # Stripe's per-charge ceiling in the smallest unit


def check_currency(code: str) -> str:
    """Upper-cased code.

    Raises:
        ValueError: not an ISO 4217 code.
    """
    upper = code.strip().upper()
    if upper not in ISO_4217:
        raise ValueError(f"unknown currency {code!r} (expected an ISO 4217 code such as USD)")
    return upper


def minor_units(currency: str) -> int:
    """Decimal places of the currency's minor unit (ISO 4217): JPY 0, USD 2, KWD 3."""
    code = currency.upper()
    if code in ZERO_DECIMAL:
        return 0
    if code in THREE_DECIMAL:
        return 3
    return 2


def format_amount(minor: int, currency: str) -> str:
    """``465830, "JPY"`` → ``"465,830 JPY"``; ``489733, "KWD"`` → ``"489.733 KWD"``."""
    places = minor_units(currency)
    major = Decimal(minor).scaleb(-places)
    return f"{major:,.{places}f} {currency.upper()}"


def check_amount(cents: int) -> int:
    """Raises ValueError unless 0 < cents <= MAX_AMOUNT_CENTS."""
    if not 0 < cents <= MAX_AMOUNT_CENTS:
        raise ValueError(f"amount_cents must be between 1 and {MAX_AMOUNT_CENTS}, got {cents}")
    return cents
