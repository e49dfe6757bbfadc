"""Money: the one rounding rule and the arithmetic of time-based charges.

Amounts are computed in exact ``Decimal`` and rounded once, half-up, to the cent; stored
money is integer minor units. Billing reuses these functions so a quote and the invoice
for the same hours agree to the cent. Never ``float``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

# Minor units per major unit for the currencies we sell in (USD, EUR: cents).
MINOR_UNITS_PER_MAJOR = 100
SECONDS_PER_HOUR = Decimal(3600)
TOKENS_PER_MILLION = Decimal(1_000_000)


def round_money(amount: Decimal) -> int:
    """``amount`` in major units (exact) → integer minor units, rounded half-up once."""
    if not isinstance(amount, Decimal):
        raise TypeError(f"round_money takes a Decimal, not {type(amount).__name__}")
    cents = (amount * MINOR_UNITS_PER_MAJOR).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return int(cents)


def minor_to_major(amount_minor: int) -> Decimal:
    """Integer minor units → Decimal major units with two places (for display and JSON)."""
    return (Decimal(amount_minor) / MINOR_UNITS_PER_MAJOR).quantize(Decimal("0.01"))


def hours_between(start: datetime, end: datetime) -> Decimal:
    """Exact hours in ``[start, end)``, to the microsecond."""
    delta: timedelta = end - start
    microseconds = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return Decimal(microseconds) / Decimal(3_600_000_000)


def reserved_charge(*, gpu_count: int, start: datetime, end: datetime, rate: Decimal) -> Decimal:
    """GPUs x hours in ``[start, end)`` x rate per GPU-hour, exact (round with round_money)."""
    return Decimal(gpu_count) * hours_between(start, end) * rate


def busy_gpu_charge(*, busy_ms: int, rate: Decimal) -> Decimal:
    """Busy GPU-milliseconds at a rate per GPU-hour, exact."""
    return Decimal(busy_ms) / Decimal(3_600_000) * rate


def token_charge(*, tokens: int, price_per_million: Decimal) -> Decimal:
    """Tokens at a price per million tokens, exact."""
    return Decimal(tokens) / TOKENS_PER_MILLION * price_per_million
