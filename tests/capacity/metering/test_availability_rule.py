"""One availability rule (DESIGN "Metering"): figures are 0-100 %, count only minutes
inside the period and already measurable, and are absent while nothing is measurable.
Each test reproduces a figure the old code showed (issue 13, item 12)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine

from capacity.metering.availability import excluded_maintenance
from capacity.metering.models import GpuAvailabilityDay, NodePollState
from capacity.metering.pool_availability import refresh_pool_availability
from capacity.metering.selectors import node_availability, offer_availability
from capacity.models import GpuDevice, MaintenanceWindow, Node
from marketplace.search import SearchFilters, offer_search
from tests.marketplace.test_search import NOW, _offer

pytestmark = pytest.mark.django_db

FULL_DAY = "1" * 1440


def _always_observed(offer, *, enrolled_at: datetime) -> list[Node]:
    """Every GPU of the offer's pool observed available every minute of every day up to
    NOW (12:00 on March 10), including the parts of days outside a 30-day window."""
    nodes = list(Node.objects.filter(site=offer.site))
    Node.objects.filter(site=offer.site).update(enrolled_at=enrolled_at)
    for node in nodes:
        NodePollState.objects.update_or_create(node=node, defaults={"last_poll_at": NOW})
    gpus = GpuDevice.objects.filter(node__site=offer.site)
    gpus.update(created_at=enrolled_at)
    day = (enrolled_at - timedelta(days=1)).date()
    while day <= NOW.date():
        bits = FULL_DAY if day < NOW.date() else "1" * 720 + "0" * 720
        GpuAvailabilityDay.objects.bulk_create(
            GpuAvailabilityDay(gpu=gpu, day=day, minutes=bits) for gpu in gpus
        )
        day += timedelta(days=1)
    return nodes


def _search_figure(now: datetime) -> Decimal | None:
    (offer,) = offer_search(filters=SearchFilters(starts_at=NOW), now=now)
    return offer.availability_percent


def test_search_never_shows_more_than_100_percent_and_agrees_with_the_offer_page(partner_org):
    # The old SQL counted the bits of whole days from the window's first day (12 hours
    # before it) over the minutes of the window: 30.5 days observed in 30 (101.67 %).
    offer = _offer(partner_org, name="Texas", gpus=4)
    _always_observed(offer, enrolled_at=NOW - timedelta(days=40))
    assert _search_figure(NOW) == Decimal("100.00")
    refresh_pool_availability(now=NOW)
    assert _search_figure(NOW) == Decimal("100.00")
    assert offer_availability(offer=offer, now=NOW).percent == Decimal("100.00")


def test_minutes_before_enrollment_are_not_counted_available(partner_org):
    # Enrolled at 06:00 today, observed all day (the agent ran before enrollment): the old
    # SQL counted every observed bit of yesterday and today over the 360 minutes since
    # enrollment: 600.00 %.
    offer = _offer(partner_org, name="Texas", gpus=4)
    _always_observed(offer, enrolled_at=NOW - timedelta(hours=6))
    figure = offer_availability(offer=offer, now=NOW)
    assert (figure.available_minutes, figure.counted_minutes) == (4 * 360, 4 * 360)
    assert _search_figure(NOW) == Decimal("100.00")


def test_search_excludes_announced_maintenance_as_the_offer_page_does(partner_org):
    # Down for 8 hours of maintenance announced a month ahead (the month's allowance): the
    # offer page excluded it (100.00 %), search counted it as down.
    offer = _offer(partner_org, name="Texas", gpus=4)
    nodes = _always_observed(offer, enrolled_at=NOW - timedelta(days=40))
    GpuAvailabilityDay.objects.filter(day=date(2025, 3, 1)).update(minutes="0" * 480 + "1" * 960)
    for node in nodes:
        MaintenanceWindow.objects.create(
            node=node,
            period=(datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 3, 1, 8, tzinfo=UTC)),
            announced_at=datetime(2025, 1, 1, tzinfo=UTC),
        )
    assert offer_availability(offer=offer, now=NOW).percent == Decimal("100.00")
    assert _search_figure(NOW) == Decimal("100.00")
    refresh_pool_availability(now=NOW)
    assert _search_figure(NOW) == Decimal("100.00")


ENROLLED = datetime(2026, 11, 10, 12, 0, 30, tzinfo=UTC)


def _fresh_node(node) -> None:
    node.enrolled_at = ENROLLED
    node.save(update_fields=["enrolled_at"])
    node.gpus.update(created_at=ENROLLED)


def test_a_freshly_enrolled_node_has_no_figure_until_metering_could_measure(node):
    # 50 s after enrollment, never polled: the old rule counted minute 12:00 as down and
    # showed 0.00 %.
    _fresh_node(node)
    figure = node_availability(node=node, now=ENROLLED + timedelta(seconds=50))
    assert (figure.available_minutes, figure.counted_minutes, figure.percent) == (0, 0, None)


def test_a_freshly_enrolled_node_counts_what_its_first_poll_measured(node):
    # Polled at 12:01:10 (records from 12:00:40): minute 12:00 observed; 12:01 is still
    # being measured and does not count.
    _fresh_node(node)
    NodePollState.objects.update_or_create(
        node=node, defaults={"last_poll_at": ENROLLED + timedelta(seconds=40)}
    )
    for gpu in node.gpus.all():
        GpuAvailabilityDay.objects.create(
            gpu=gpu, day=ENROLLED.date(), minutes="0" * 720 + "11" + "0" * 718
        )
    figure = node_availability(node=node, now=ENROLLED + timedelta(seconds=50))
    assert (figure.available_minutes, figure.counted_minutes) == (2, 2)
    assert figure.percent == Decimal("100.00")


@time_machine.travel(ENROLLED + timedelta(seconds=50), tick=False)
def test_the_node_page_shows_no_figure_for_a_freshly_enrolled_node(partner_client, node):
    _fresh_node(node)
    page = partner_client.get(f"/partner/nodes/{node.pk}/").content.decode()
    assert "not measured yet" in page
    assert "0.00 %" not in page


def _at(month: int, day: int, hour: int = 0) -> datetime:
    return datetime(2025, month, day, hour, tzinfo=UTC)


@pytest.mark.parametrize(
    ("windows", "since", "until", "excluded"),
    [
        # 2025-03-10 to 2099: 8 hours of each month, nothing more.
        (
            [(_at(3, 10), datetime(2099, 1, 1, tzinfo=UTC))],
            _at(3, 1),
            _at(6, 1),
            [(_at(3, 10), _at(3, 10, 8)), (_at(4, 1), _at(4, 1, 8)), (_at(5, 1), _at(5, 1, 8))],
        ),
        # A window before ``since`` in the same month uses the allowance first.
        (
            [(_at(3, 2), _at(3, 2, 5)), (_at(3, 20), _at(3, 20, 10))],
            _at(3, 15),
            _at(4, 1),
            [(_at(3, 20), _at(3, 20, 3))],
        ),
        # Across a month's end: each month's part draws on that month.
        (
            [(_at(3, 31, 20), _at(4, 1, 10))],
            _at(3, 1),
            _at(5, 1),
            [(_at(3, 31, 20), _at(4, 1)), (_at(4, 1), _at(4, 1, 8))],
        ),
        # Clipped to the period read.
        (
            [(_at(3, 10), _at(3, 10, 12))],
            _at(3, 10, 4),
            _at(3, 10, 6),
            [(_at(3, 10, 4), _at(3, 10, 6))],
        ),
        ([(_at(3, 10), _at(3, 10, 12))], _at(3, 10, 9), _at(3, 11), []),
    ],
)
def test_excluded_maintenance_is_capped_per_calendar_month(windows, since, until, excluded):
    assert (
        excluded_maintenance(windows, since=since, until=until, allowance=timedelta(hours=8))
        == excluded
    )


def test_no_allowance_excludes_nothing():
    window = [(_at(3, 10), _at(3, 10, 12))]
    assert (
        excluded_maintenance(window, since=_at(3, 1), until=_at(4, 1), allowance=timedelta(0)) == []
    )
