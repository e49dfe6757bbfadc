"""One way to write a date and a time across the app: ISO dates, times in UTC said so.

``{{ value|utc_datetime }}`` → ``2026-12-04 17:30 UTC``; ``{{ value|utc_date }}`` →
``2026-12-04``. Loaded in every template (``TEMPLATES["OPTIONS"]["builtins"]``), so pages
do not each pick a format of their own. Aware datetimes are converted to UTC first,
whatever the active time zone; a missing value renders as nothing.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from django import template

register = template.Library()

DATE_FORMAT = "%Y-%m-%d"
DATETIME_FORMAT = "%Y-%m-%d %H:%M UTC"


def format_utc_datetime(value: datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime(DATETIME_FORMAT)


@register.filter
def utc_datetime(value: datetime | None) -> str:
    if not isinstance(value, datetime):
        return ""
    return format_utc_datetime(value)


@register.filter
def utc_date(value: date | None) -> str:
    if isinstance(value, datetime):
        value = value.astimezone(UTC).date() if value.tzinfo is not None else value.date()
    if not isinstance(value, date):
        return ""
    return value.strftime(DATE_FORMAT)
