"""One date format across the app (config.formats): ISO dates, UTC times that say so."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

from django.template import Context, Template

from config.formats import utc_date, utc_datetime


def test_a_time_is_written_in_utc_and_says_so():
    at = datetime(2026, 12, 4, 17, 30, 59, tzinfo=UTC)
    assert utc_datetime(at) == "2026-12-04 17:30 UTC"
    rome = timezone(timedelta(hours=1))
    assert utc_datetime(datetime(2026, 12, 5, 0, 15, tzinfo=rome)) == "2026-12-04 23:15 UTC"
    assert utc_datetime(None) == "" and utc_datetime("") == ""  # type: ignore[arg-type]


def test_a_date_is_iso_and_a_datetime_gives_its_utc_day():
    assert utc_date(date(2026, 12, 4)) == "2026-12-04"
    rome = timezone(timedelta(hours=1))
    assert utc_date(datetime(2026, 12, 5, 0, 15, tzinfo=rome)) == "2026-12-04"
    assert utc_date(None) == ""


def test_every_template_has_the_filters_without_loading_them():
    template = Template("{{ at|utc_datetime }} · {{ at|utc_date }}")
    at = datetime(2026, 12, 4, 17, 30, tzinfo=UTC)
    assert template.render(Context({"at": at})) == "2026-12-04 17:30 UTC · 2026-12-04"
