"""ISO-4217 minor-unit exponents, so amounts in minor units become comparable major units."""

from __future__ import annotations

# The currencies a payment network commonly settles; unknown codes are rejected, not guessed.
_EXPONENTS: dict[str, int] = {
    "AED": 2, "AUD": 2, "BHD": 3, "BRL": 2, "CAD": 2, "CHF": 2, "CLP": 0, "CNY": 2,
    "CZK": 2, "DKK": 2, "EUR": 2, "GBP": 2, "HKD": 2, "HUF": 2, "IDR": 2, "ILS": 2,
    "INR": 2, "ISK": 0, "JOD": 3, "JPY": 0, "KRW": 0, "KWD": 3, "MXN": 2, "MYR": 2,
    "NOK": 2, "NZD": 2, "OMR": 3, "PHP": 2, "PLN": 2, "RON": 2, "SAR": 2, "SEK": 2,
    "SGD": 2, "THB": 2, "TND": 3, "TRY": 2, "TWD": 2, "UAH": 2, "USD": 2, "VND": 0,
    "ZAR": 2,
}  # fmt: skip


class UnknownCurrency(ValueError):
    pass


def is_known(code: str) -> bool:
    return code in _EXPONENTS


def to_major(amount_minor: int, currency: str) -> float:
    """Minor units to major units (1999 EUR cents -> 19.99)."""
    try:
        exponent = _EXPONENTS[currency]
    except KeyError:
        raise UnknownCurrency(f"unknown currency {currency!r}") from None
    return amount_minor / (10**exponent)


def to_minor(amount_major: float, currency: str) -> int:
    try:
        exponent = _EXPONENTS[currency]
    except KeyError:
        raise UnknownCurrency(f"unknown currency {currency!r}") from None
    return round(amount_major * (10**exponent))
