"""Sites and nodes refuse impossible figures with a plain message, from the pages and the
API alike, and store nothing (issue 13, item 11)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from capacity.countries import COUNTRY_REGIONS, ISO_3166_ALPHA2
from capacity.models import Node, Offer, Region, Site
from tests.capacity.test_api import SITE_BODY
from tests.capacity.test_views import SITE_POST
from tests.factories import catalog_gpu

pytestmark = pytest.mark.django_db

HUGE = "99999999999999"


def _site_page(client, **changes):
    return client.post(reverse("capacity:site_create"), {**SITE_POST, **changes})


def _site_api(client, **changes):
    return client.post("/api/v1/sites", {**SITE_BODY, **changes}, format="json")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("power_capacity_kw", HUGE, "Power capacity must be between 1 and 1,000,000 kW."),
        ("latitude", "200", "Latitude must be between -90 and 90 degrees."),
        ("longitude", "-200.5", "Longitude must be between -180 and 180 degrees."),
        ("energy_price_per_kwh", "123456", "The energy price must be between 0 and 100 per kWh."),
        ("energy_price_per_kwh", "-0.01", "The energy price must be between 0 and 100 per kWh."),
    ],
)
def test_site_figures_out_of_range(partner_client, partner_api, field, value, message):
    page = _site_page(partner_client, **{field: value})
    api = _site_api(partner_api, **{field: value})

    assert page.status_code == 200
    assert page.context["form"].errors == {field: [message]}
    assert (api.status_code, api.json()) == (400, {field: [message]})
    assert Site.objects.count() == 0


@pytest.mark.parametrize("value", ["1e400", "-1e400", "1" * 40])
def test_absurd_coordinates_are_refused_with_a_message(partner_client, partner_api, value):
    page = _site_page(partner_client, latitude=value)
    api = _site_api(partner_api, latitude=value)

    # The range, in words, not a count of digits (issue 13, item 11).
    message = "Latitude must be between -90 and 90 degrees."
    assert page.context["form"].errors == {"latitude": [message]}
    assert (api.status_code, api.json()) == (400, {"latitude": [message]})
    assert Site.objects.count() == 0


def test_site_region_must_match_its_country(partner_client, partner_api):
    page = _site_page(partner_client, country="US", region=Region.EAST_AFRICA)
    api = _site_api(partner_api, country="US", region=Region.EAST_AFRICA)

    message = "A site in US is in North America, not East Africa."
    assert page.context["form"].errors == {"region": [message]}
    assert (api.status_code, api.json()) == (400, {"region": [message]})
    assert Site.objects.count() == 0


def test_a_country_on_two_regions_accepts_either(partner_api):
    in_europe = _site_api(partner_api, name="Istanbul", country="TR", region=Region.EUROPE)
    in_middle_east = _site_api(partner_api, name="Adana", country="TR", region=Region.MIDDLE_EAST)
    in_asia = _site_api(partner_api, name="Ankara", country="TR", region=Region.ASIA_PACIFIC)

    assert (in_europe.status_code, in_middle_east.status_code) == (201, 201)
    assert in_asia.json() == {
        "region": ["A site in TR is in Europe or Middle East, not Asia Pacific."]
    }


def test_site_update_is_held_to_the_same_bounds(partner_api):
    site_id = _site_api(partner_api).json()["id"]

    refused = partner_api.patch(
        f"/api/v1/sites/{site_id}", {"power_capacity_kw": HUGE}, format="json"
    )

    assert (refused.status_code, refused.json()) == (
        400,
        {"power_capacity_kw": ["Power capacity must be between 1 and 1,000,000 kW."]},
    )
    assert Site.objects.get(pk=site_id).power_capacity_kw == 5000


def test_every_country_has_a_region():
    assert sorted(country for country, regions in COUNTRY_REGIONS.items() if not regions) == []
    assert set(COUNTRY_REGIONS) == ISO_3166_ALPHA2
    assert COUNTRY_REGIONS["US"] == {Region.NORTH_AMERICA}
    assert COUNTRY_REGIONS["KE"] == {Region.EAST_AFRICA}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("ram_gib", HUGE, "A node has between 1 and 65,536 GiB of RAM."),
        ("cpu_cores", "99999", "A node has between 1 and 4,096 CPU cores."),
    ],
)
def test_node_figures_out_of_range(partner_client, partner_api, site, field, value, message):
    body = {"name": "n-01", "gpu_count": 8, "cpu_cores": 64, "ram_gib": 1024, field: value}

    page = partner_client.post(
        reverse("capacity:node_create"), {**body, "site": site.pk, "gpu_model": catalog_gpu().pk}
    )
    api = partner_api.post(
        "/api/v1/nodes",
        {**body, "site": site.pk, "gpu_model": "H100 SXM 80GB"},
        format="json",
    )

    assert page.status_code == 200
    assert page.context["form"].errors == {field: [message]}
    assert (api.status_code, api.json()) == (400, {field: [message]})
    assert Node.objects.count() == 0


BOUND = "A price per GPU-hour is at most 1000.0000; check the decimal point."
DECIMALS = "A price per GPU-hour has at most 4 decimals, e.g. 2.1250."


@pytest.mark.parametrize(
    ("value", "page_message", "api_message"),
    [
        # Each refused once, in words, never as Django's or DRF's count of digits.
        (HUGE, BOUND, BOUND),
        ("1e400", BOUND, BOUND),
        ("12345678901.5", BOUND, BOUND),
        ("1000.0001", BOUND, BOUND),
        ("2.12345", DECIMALS, DECIMALS),
        ("-1", "A price per GPU-hour must be greater than zero.", None),
    ],
)
def test_offer_prices_out_of_range(
    partner_client, partner_api, site, value, page_message, api_message
):
    """Issue 13 #11: offer prices get a plain message, from the page and the API alike."""
    from tests.factories import NodeFactory

    NodeFactory(site=site, gpu_count=4)
    prices = {
        "on_demand_price_per_gpu_hour": "2.5000",
        "reserved_price_1m_per_gpu_hour": "2.0000",
        "reserved_price_3m_per_gpu_hour": "1.9000",
        "reserved_price_6m_per_gpu_hour": "1.8000",
        "reserved_price_12m_per_gpu_hour": value,
    }
    page = partner_client.post(
        reverse("capacity:offer_create"),
        {
            "site": site.pk,
            "gpu_model": catalog_gpu().pk,
            "gpu_count": 2,
            "currency": "USD",
            **prices,
        },
    )
    api = partner_api.post(
        "/api/v1/offers",
        {"site": site.pk, "gpu_model": "H100 SXM 80GB", "gpu_count": 2, **prices},
        format="json",
    )

    assert page.status_code == 200
    assert page.context["form"].errors == {"reserved_price_12m_per_gpu_hour": [page_message]}
    # The API lets a negative price through to the service, which says the same in words.
    expected = api_message or "The 12-month reserved price must be greater than zero."
    assert (api.status_code, api.json()) == (400, {"reserved_price_12m_per_gpu_hour": [expected]})
    assert Offer.objects.count() == 0
