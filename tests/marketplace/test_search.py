"""Marketplace search: every filter, free GPUs over the window, sorting, no N+1."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.apps import apps
from django.urls import reverse

from capacity.models import EnergySource, NodeStatus, Region
from contracts.checkout import reservation_checkout
from marketplace.search import SearchFilters, offer_search
from tests.factories import OfferFactory, SiteFactory, catalog_gpu, gpu_pool

NOW = datetime(2025, 3, 10, 12, tzinfo=UTC)
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def payment_method(settings):
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = True


def _offer(
    partner,
    *,
    name,
    gpus=4,
    region=Region.NORTH_AMERICA,
    country="US",
    energy=EnergySource.FLARE_GAS,
    model=None,
    price="2.0000",
):
    site = SiteFactory(
        organization=partner, name=name, region=region, country=country, energy_source=energy
    )
    gpu_model = model or catalog_gpu()
    gpu_pool(site=site, gpus=gpus, gpu_model=gpu_model)
    return OfferFactory(
        site=site,
        gpu_model=gpu_model,
        gpu_count=gpus,
        available_from=EPOCH,
        reserved_price_1m_per_gpu_hour=Decimal(price),
        reserved_price_3m_per_gpu_hour=Decimal(price) - Decimal("0.1"),
    )


@pytest.fixture
def offers(partner_org):
    return {
        "texas": _offer(partner_org, name="Texas", price="2.0000"),
        "oman": _offer(
            partner_org,
            name="Oman",
            region=Region.MIDDLE_EAST,
            country="OM",
            energy=EnergySource.SOLAR,
            price="1.5000",
        ),
        "paraguay": _offer(
            partner_org,
            name="Paraguay",
            region=Region.SOUTH_AMERICA,
            country="PY",
            energy=EnergySource.HYDRO,
            price="1.8000",
            gpus=8,
            model=catalog_gpu("A100 80GB"),
        ),
    }


def names(queryset):
    return [offer.site.name for offer in queryset]


def search(**filters):
    return offer_search(filters=SearchFilters(starts_at=NOW, **filters), now=NOW)


def test_sorted_by_price_by_default(offers):
    assert names(search()) == ["Oman", "Paraguay", "Texas"]
    assert names(search(sort="-price")) == ["Texas", "Paraguay", "Oman"]


def test_price_follows_the_term(offers):
    result = search(term_months=3)
    assert [o.price_per_gpu_hour for o in result] == [
        Decimal("1.4"),
        Decimal("1.7"),
        Decimal("1.9"),
    ]
    assert names(search(term_months=3, max_price=Decimal("1.7"))) == ["Oman", "Paraguay"]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"region": Region.MIDDLE_EAST}, ["Oman"]),
        ({"country": "py"}, ["Paraguay"]),
        ({"energy_source": EnergySource.FLARE_GAS}, ["Texas"]),
        ({"max_price": Decimal("1.8")}, ["Oman", "Paraguay"]),
        ({"gpu_count": 5}, ["Paraguay"]),
        ({"gpu_count": 9}, []),
    ],
)
def test_filters(offers, filters, expected):
    assert names(search(**filters)) == expected


def test_gpu_model_filter(offers):
    assert names(search(gpu_model_id=catalog_gpu("A100 80GB").pk)) == ["Paraguay"]


def test_free_gpus_counts_allocations_over_the_window(offers, buyer_org):
    reservation_checkout(
        buyer=buyer_org,
        offer=offers["texas"],
        gpu_count=3,
        starts_at=NOW,
        term_months=1,
        actor=None,
        now=NOW,
    )
    texas = search(region=Region.NORTH_AMERICA).get()
    assert texas.free_gpus == 1
    assert names(search(gpu_count=2, region=Region.NORTH_AMERICA)) == []
    # After the reservation ends the GPUs are free again.
    later = offer_search(
        filters=SearchFilters(starts_at=NOW + timedelta(days=31), region=Region.NORTH_AMERICA),
        now=NOW,
    ).get()
    assert later.free_gpus == 4


def test_retired_nodes_do_not_count(offers):
    node = offers["paraguay"].site.nodes.first()
    node.status = NodeStatus.RETIRED
    node.save()
    # Its one node held all 8 GPUs: nothing left to sell, so the offer drops out.
    assert names(search(country="PY")) == []


def test_free_gpus_capped_at_what_the_offer_lists(offers):
    gpu_pool(site=offers["oman"].site, gpus=4)  # more GPUs at the site than listed
    assert search(country="OM").get().free_gpus == 4


def test_offer_window_and_inactive_offers(offers):
    offers["oman"].available_until = NOW + timedelta(days=20)
    offers["oman"].save()
    offers["texas"].is_active = False
    offers["texas"].save()
    assert names(search()) == ["Paraguay"]


def _observe(offer, *, available_days: int):
    """The offer's GPUs, enrolled 40 days before NOW and polled at NOW, observed available
    over the ``available_days`` days before NOW (to the minute)."""
    GpuAvailabilityDay = apps.get_model("metering", "GpuAvailabilityDay")
    NodePollState = apps.get_model("metering", "NodePollState")
    first = NOW - timedelta(days=available_days)
    for gpu in [g for node in offer.site.nodes.all() for g in node.gpus.all()]:
        gpu.created_at = NOW - timedelta(days=40)
        gpu.save()
        gpu.node.enrolled_at = NOW - timedelta(days=40)
        gpu.node.save()
        NodePollState.objects.update_or_create(node=gpu.node, defaults={"last_poll_at": NOW})
        day = first.date()
        while day <= NOW.date():
            day_start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            begin = max(0, int((first - day_start).total_seconds() // 60))
            end = min(1440, int((NOW - day_start).total_seconds() // 60))
            GpuAvailabilityDay.objects.create(
                gpu=gpu, day=day, minutes="0" * begin + "1" * (end - begin) + "0" * (1440 - end)
            )
            day += timedelta(days=1)


def test_availability_filter_and_sort(offers):
    if not apps.is_installed("capacity.metering"):
        pytest.fail("Run with --ds=tests.metering_settings (metering installed)", pytrace=False)
    _observe(offers["texas"], available_days=30)  # whole 30 days (the current day is empty)
    _observe(offers["oman"], available_days=15)
    # 30 days back from 12:00 on the 10th: 43200 minutes, texas observed all of them.
    result = search(sort="availability")
    assert names(result) == ["Texas", "Oman", "Paraguay"]
    assert [o.availability_percent for o in result] == [Decimal("100.00"), Decimal("50.00"), None]
    assert names(search(min_availability=Decimal("60"))) == ["Texas"]


def test_search_page_queries_do_not_grow_with_results(
    partner_org, buyer_client, django_assert_max_num_queries
):
    """Session, user, memberships, the form's model and region choices, the free GPUs per
    pool, the pools without a fresh stored availability and the five reads that compute
    theirs (no beat here), the count and one page: the same 17 queries for 1 result as for
    12 (the session save included)."""
    _offer(partner_org, name="Site first", gpus=2)
    with django_assert_max_num_queries(17):
        one = buyer_client.get(reverse("marketplace:search"), {"term_months": 1})
    for number in range(11):
        _offer(partner_org, name=f"Site {number}", gpus=2)
    with django_assert_max_num_queries(17):
        twelve = buyer_client.get(reverse("marketplace:search"), {"term_months": 1})
    assert one.content.count(b"data-offer=") == 1
    assert twelve.content.count(b"data-offer=") == 12


def test_search_page_filters_and_paginates(offers, partner_org, buyer_client):
    for number in range(25):
        _offer(partner_org, name=f"Extra {number}", gpus=1)
    page = buyer_client.get(reverse("marketplace:search"), {"region": Region.MIDDLE_EAST})
    assert page.content.count(b"data-offer=") == 1
    first = buyer_client.get(reverse("marketplace:search"))
    second = buyer_client.get(reverse("marketplace:search"), {"page": 2})
    assert first.content.count(b"data-offer=") == 20
    assert second.content.count(b"data-offer=") == 8


def test_partners_browse_the_marketplace_too(partner_client):
    """Offers are public (issue 16, point 1): a partner-only organization sees them."""
    assert partner_client.get(reverse("marketplace:search")).status_code == 200
