"""Calendar arithmetic of terms: a term of N months ends on the same day N months later."""

from __future__ import annotations

import calendar
from datetime import datetime


def add_months(moment: datetime, months: int) -> datetime:
    """``moment`` plus ``months`` calendar months, the day clamped to the month's length
    (31 January + 1 month = 28 or 29 February)."""
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def month_start(moment: datetime) -> datetime:
    """First instant of ``moment``'s calendar month (same time zone: UTC in this project)."""
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
