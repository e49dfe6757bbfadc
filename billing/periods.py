"""Billing periods: calendar months in UTC, and when each step of closing one is due."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from django.conf import settings

DEFAULT_GRACE_DAYS = 3


def parse_month(text: str) -> date:
    """``"2026-10"`` → ``date(2026, 10, 1)``; ValueError otherwise."""
    parsed = datetime.strptime(text, "%Y-%m")  # noqa: DTZ007 (a calendar month, no time)
    return date(parsed.year, parsed.month, 1)


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def previous_month(month: date) -> date:
    return date(month.year - (month.month == 1), (month.month - 2) % 12 + 1, 1)


def month_bounds(month: date) -> tuple[datetime, datetime]:
    """``[first instant, first instant of the next month)`` in UTC."""
    following = next_month(month)
    return (
        datetime(month.year, month.month, 1, tzinfo=UTC),
        datetime(following.year, following.month, 1, tzinfo=UTC),
    )


def month_of(moment: datetime) -> date:
    moment = moment.astimezone(UTC)
    return date(moment.year, moment.month, 1)


def grace_window() -> timedelta:
    """How long after a month ends late usage still lands on its invoice."""
    return timedelta(days=getattr(settings, "BILLING_GRACE_DAYS", DEFAULT_GRACE_DAYS))


def finalizable_at(month: date) -> datetime:
    """When the month's invoices may be finalized: its end plus the grace window."""
    return month_bounds(month)[1] + grace_window()
