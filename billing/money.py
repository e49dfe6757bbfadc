"""Money for billing: the project's one rounding rule, plus display.

The rounding itself lives in ``contracts.money`` (a quote and the invoice for the same
hours must agree to the cent, so both apps use the same function); billing imports it
from there and adds nothing but formatting. Amounts are exact ``Decimal`` until
``round_money`` turns a line's amount into integer minor units, once, half-up.
"""

from __future__ import annotations

from decimal import Decimal

from contracts.money import (
    MINOR_UNITS_PER_MAJOR,
    SECONDS_PER_HOUR,
    TOKENS_PER_MILLION,
    minor_to_major,
    round_money,
)

__all__ = [
    "MINOR_UNITS_PER_MAJOR",
    "SECONDS_PER_HOUR",
    "TOKENS_PER_MILLION",
    "format_money",
    "minor_to_major",
    "round_money",
]

CURRENCY_SYMBOLS = {"USD": "$", "EUR": "€"}


def format_money(amount_minor: int, currency: str) -> str:
    """``-68544, "USD"`` → ``"-$685.44"``; unknown currencies get their code as a suffix."""
    major: Decimal = minor_to_major(abs(amount_minor))
    sign = "-" if amount_minor < 0 else ""
    symbol = CURRENCY_SYMBOLS.get(currency.upper())
    if symbol is None:
        return f"{sign}{major:,} {currency.upper()}"
    return f"{sign}{symbol}{major:,}"
