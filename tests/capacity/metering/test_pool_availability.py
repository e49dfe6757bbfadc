"""The pool availability rollup: exact figures, idempotent refresh, and search serving
the stored figure only while it is fresh (the same results as the live rule)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from capacity.metering.models import PoolAvailability
from capacity.metering.pool_availability import FRESH_FOR, refresh_pool_availability
from marketplace.search import SearchFilters, offer_search
from tests.marketplace.test_search import NOW, _observe, _offer

pytestmark = pytest.mark.django_db


@pytest.fixture
def pools(partner_org):
    pools = {
        "texas": _offer(partner_org, name="Texas", price="2.0000"),
        "oman": _offer(partner_org, name="Oman", country="OM", price="1.5000"),
        "paraguay": _offer(partner_org, name="Paraguay", country="PY", price="1.8000"),
    }
    _observe(pools["texas"], available_days=30)  # the whole 30 days
    _observe(pools["oman"], available_days=15)  # half of them
    return pools  # paraguay: never measured


def _stored():
    return {
        (row.site.name, row.percent, row.computed_at)
        for row in PoolAvailability.objects.select_related("site")
    }


def _search(now, **filters):
    return [
        (offer.site.name, offer.availability_percent)
        for offer in offer_search(
            filters=SearchFilters(starts_at=NOW, sort="availability", **filters), now=now
        )
    ]


def test_refresh_figures_are_exact_and_idempotent(pools):
    assert refresh_pool_availability(now=NOW) == 3
    expected = {
        ("Texas", Decimal("100.00"), NOW),
        ("Oman", Decimal("50.00"), NOW),
        ("Paraguay", None, NOW),
    }
    assert _stored() == expected
    assert refresh_pool_availability(now=NOW) == 3
    assert _stored() == expected
    assert PoolAvailability.objects.count() == 3


def test_refresh_moves_forward_only_and_drops_pools_no_longer_offered(pools):
    later = NOW + timedelta(minutes=5)
    refresh_pool_availability(now=later)
    refresh_pool_availability(now=NOW)  # an older run finishing late changes nothing
    assert {computed_at for _, _, computed_at in _stored()} == {later}

    pools["paraguay"].is_active = False
    pools["paraguay"].save()
    assert refresh_pool_availability(now=later + timedelta(minutes=5)) == 2
    assert {name for name, _, _ in _stored()} == {"Texas", "Oman"}


def test_search_returns_the_same_with_and_without_the_rollup(pools):
    live = _search(NOW)
    assert live == [("Texas", Decimal("100.00")), ("Oman", Decimal("50.00")), ("Paraguay", None)]
    refresh_pool_availability(now=NOW)
    assert _search(NOW) == live
    assert _search(NOW, min_availability=Decimal("60")) == [("Texas", Decimal("100.00"))]


def test_search_serves_a_stored_figure_only_while_fresh(pools):
    refresh_pool_availability(now=NOW)
    # Mark the stored figure so the test can tell it from the live one.
    PoolAvailability.objects.filter(site=pools["oman"].site).update(percent=Decimal("99.00"))
    assert _search(NOW)[1] == ("Oman", Decimal("99.00"))
    assert _search(NOW + FRESH_FOR - timedelta(seconds=1))[1] == ("Oman", Decimal("99.00"))
    # Too old, or computed after the instant asked about: the live rule.
    assert _search(NOW + FRESH_FOR)[1] == ("Oman", Decimal("50.00"))
    assert _search(NOW - timedelta(minutes=1))[1] == ("Oman", Decimal("50.00"))
