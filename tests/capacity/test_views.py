"""Partner pages: flows, one-time code display, tenant isolation, pagination, queries."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.urls import reverse
from django.utils import timezone

from accounts.models import Role
from capacity.models import (
    EnrollmentCode,
    Node,
    NodeStatus,
    NodeWindow,
    Offer,
    Site,
    hash_enrollment_code,
)
from tests.factories import (
    MembershipFactory,
    NodeFactory,
    NodeWindowFactory,
    OfferFactory,
    SiteFactory,
    catalog_gpu,
)
from tests.fixtures import client_for
from tests.http_headers import NO_STORE, cache_headers
from tests.tenancy import assert_hidden_from

SITE_POST = {
    "name": "Duqm Solar",
    "country": "om",
    "region": "middle-east",
    "latitude": "19.661900",
    "longitude": "57.704600",
    "power_capacity_kw": "2000",
    "energy_source": "solar",
    "energy_price_per_kwh": "0.034000",
    "energy_currency": "USD",
}


@pytest.mark.django_db
def test_site_create_flow(partner_client, partner_org):
    response = partner_client.post(reverse("capacity:site_create"), SITE_POST)
    site = Site.objects.get(organization=partner_org)
    assert response.status_code == 302
    assert response.url == reverse("capacity:site_detail", args=[site.pk])
    assert (site.country, site.region, str(site.latitude)) == ("OM", "middle-east", "19.661900")
    page = partner_client.get(response.url)
    assert page.status_code == 200
    assert b"Duqm Solar" in page.content


@pytest.mark.django_db
def test_site_create_refusal_shows_the_message(partner_client, partner_org):
    response = partner_client.post(reverse("capacity:site_create"), {**SITE_POST, "country": "XX"})
    assert response.status_code == 200
    assert "&#x27;XX&#x27; is not an ISO 3166 alpha-2 country code" in response.content.decode()
    assert Site.objects.count() == 0


@pytest.mark.django_db
def test_node_create_shows_code_once_with_the_enroll_command(partner_client, site, settings):
    settings.SITE_URL = "https://hashgrid.example"
    response = partner_client.post(
        reverse("capacity:node_create"),
        {
            "site": site.pk,
            "name": "dq-01",
            "gpu_model": catalog_gpu().pk,
            "gpu_count": 8,
            "cpu_cores": 64,
            "ram_gib": 1024,
        },
    )
    assert response.status_code == 201
    node = Node.objects.get(name="dq-01")
    code = response.context["enrollment_code"]
    assert EnrollmentCode.objects.get(node=node).code_hash == hash_enrollment_code(code)
    html = response.content.decode()
    assert (
        f"python -m capacity.agent enroll --platform https://hashgrid.example --code {code} "
        "--url http://&lt;node-host&gt;:9100"
    ) in html
    # The complete steps for a real node, with this code, and the shipped systemd unit.
    assert (
        "sudo -u hashgrid-agent /opt/hashgrid-agent/bin/python -m capacity.agent enroll "
        "--journal /var/lib/hashgrid-agent/hashgrid-agent.sqlite3 --platform "
        f"https://hashgrid.example --code {code} --url http://&lt;node-host&gt;:9100"
    ) in html
    assert "systemctl enable --now hashgrid-agent.service" in html
    assert "ExecStart=/opt/hashgrid-agent/bin/python -m capacity.agent run --host 0.0.0.0" in html
    assert html.count("<h3>") >= 4 and "<h3>Run it as a service</h3>" in html
    assert cache_headers(response) == NO_STORE
    again = partner_client.get(reverse("capacity:node_detail", args=[node.pk]))
    assert code not in again.content.decode()
    assert cache_headers(again) == (None, None)  # only the page with the code is marked


@pytest.mark.django_db
def test_regenerate_code_confirm_then_post(partner_client, node):
    url = reverse("capacity:enrollment_code_regenerate", args=[node.pk])
    assert partner_client.get(url).status_code == 200
    assert EnrollmentCode.objects.filter(node=node).count() == 0
    response = partner_client.post(url)
    assert response.status_code == 200
    assert cache_headers(response) == NO_STORE
    code = response.context["enrollment_code"]
    assert EnrollmentCode.objects.get(
        node=node, revoked_at__isnull=True
    ).code_hash == hash_enrollment_code(code)


@pytest.mark.django_db
def test_window_create_refusal_and_success(partner_client, node):
    url = reverse("capacity:window_create", args=[node.pk])
    start = timezone.now() + timedelta(days=3)
    fmt = "%Y-%m-%dT%H:%M"
    bad = partner_client.post(
        url,
        {
            "kind": "maintenance",
            "start": start.strftime(fmt),
            "end": (start - timedelta(hours=1)).strftime(fmt),
        },
    )
    assert bad.status_code == 200
    assert "The window must end after it starts." in bad.content.decode()
    assert NodeWindow.objects.count() == 0
    good = partner_client.post(
        url,
        {
            "kind": "curtailment",
            "start": start.strftime(fmt),
            "end": (start + timedelta(hours=2)).strftime(fmt),
            "reason": "grid peak",
        },
    )
    assert good.status_code == 302
    assert NodeWindow.objects.get().kind == "curtailment"


@pytest.mark.django_db
def test_retire_and_cancel_and_deactivate_via_confirm_pages(partner_client, node):
    window = NodeWindowFactory(node=node)
    cancelled_at = timezone.now()
    with time_machine.travel(cancelled_at, tick=False):
        response = partner_client.post(reverse("capacity:window_cancel", args=[window.pk]))
    assert response.status_code == 302
    assert NodeWindow.objects.get(pk=window.pk).cancelled_at == cancelled_at
    assert partner_client.get(reverse("capacity:node_retire", args=[node.pk])).status_code == 200
    partner_client.post(reverse("capacity:node_retire", args=[node.pk]))
    assert Node.objects.get(pk=node.pk).status == NodeStatus.RETIRED
    offer = OfferFactory(site=NodeFactory(site=node.site, gpu_count=8).site)
    partner_client.post(reverse("capacity:offer_deactivate", args=[offer.pk]))
    assert Offer.objects.get(pk=offer.pk).is_active is False


@pytest.mark.django_db
def test_offer_create_refusal_message(partner_client, node):
    data = {
        "site": node.site.pk,
        "gpu_model": catalog_gpu().pk,
        "gpu_count": 2,
        "on_demand_price_per_gpu_hour": "2.0",
        "reserved_price_1m_per_gpu_hour": "2.5",
        "reserved_price_3m_per_gpu_hour": "1.9",
        "reserved_price_6m_per_gpu_hour": "1.8",
        "reserved_price_12m_per_gpu_hour": "1.7",
        "currency": "USD",
    }
    response = partner_client.post(reverse("capacity:offer_create"), data)
    assert response.status_code == 200
    assert (
        "The 1-month reserved price (2.5) is above the on-demand price (2.0)"
        in response.content.decode()
    )
    assert Offer.objects.count() == 0
    too_high = {**data, "on_demand_price_per_gpu_hour": "999999.9999"}
    response = partner_client.post(reverse("capacity:offer_create"), too_high)
    assert response.status_code == 200
    assert response.context["form"].errors["on_demand_price_per_gpu_hour"] == [
        "A price per GPU-hour is at most 1000.0000; check the decimal point."
    ]
    assert Offer.objects.count() == 0
    data["reserved_price_1m_per_gpu_hour"] = "1.95"
    assert partner_client.post(reverse("capacity:offer_create"), data).status_code == 302
    assert Offer.objects.get().reserved_price_1m_per_gpu_hour == Decimal("1.9500")


@pytest.mark.django_db
def test_viewer_reads_but_cannot_write(partner_org, site):
    viewer = client_for(MembershipFactory(organization=partner_org, role=Role.VIEWER).user)
    assert viewer.get(reverse("capacity:sites")).status_code == 200
    assert viewer.get(reverse("capacity:site_create")).status_code == 403
    assert (
        viewer.post(reverse("capacity:site_update", args=[site.pk]), SITE_POST).status_code == 403
    )


@pytest.mark.django_db
def test_buyer_organization_has_no_partner_pages(buyer_client):
    assert buyer_client.get(reverse("capacity:sites")).status_code == 404
    assert buyer_client.get(reverse("capacity:nodes")).status_code == 404


@pytest.mark.django_db
def test_every_object_page_is_hidden_from_other_tenants(other_client, node):
    window = NodeWindowFactory(node=node)
    NodeFactory(site=node.site, gpu_count=8)
    offer = OfferFactory(site=node.site)
    site = node.site
    for name, pk in [("site_detail", site.pk), ("node_detail", node.pk)]:
        assert_hidden_from(other_client, reverse(f"capacity:{name}", args=[pk]))
    for name, pk in [
        ("site_update", site.pk),
        ("enrollment_code_regenerate", node.pk),
        ("window_create", node.pk),
        ("node_retire", node.pk),
        ("window_cancel", window.pk),
        ("offer_update", offer.pk),
        ("offer_deactivate", offer.pk),
    ]:
        url = reverse(f"capacity:{name}", args=[pk])
        assert_hidden_from(other_client, url)
        assert_hidden_from(other_client, url, method="post")
    assert Node.objects.get(pk=node.pk).status == NodeStatus.PENDING
    assert NodeWindow.objects.get(pk=window.pk).cancelled_at is None
    assert Offer.objects.get(pk=offer.pk).is_active is True
    assert EnrollmentCode.objects.filter(node=node).count() == 0


@pytest.mark.django_db
def test_lists_show_only_own_objects(other_client, node):
    OfferFactory(site=node.site, gpu_count=2)
    for name in ("sites", "nodes", "offers"):
        response = other_client.get(reverse(f"capacity:{name}"))
        assert response.status_code == 200
        assert response.context["page_obj"].paginator.count == 0


@pytest.mark.django_db
def test_other_tenants_site_cannot_be_chosen_for_a_node(partner_client, other_site):
    response = partner_client.post(
        reverse("capacity:node_create"),
        {
            "site": other_site.pk,
            "name": "x",
            "gpu_model": catalog_gpu().pk,
            "gpu_count": 1,
            "cpu_cores": 1,
            "ram_gib": 1,
        },
    )
    assert response.status_code == 200
    assert Node.objects.count() == 0


@pytest.mark.django_db
def test_list_pages_paginate_without_n_plus_one(
    partner_client, partner_org, django_assert_max_num_queries
):
    sites = SiteFactory.create_batch(3, organization=partner_org)
    for index in range(30):
        node = NodeFactory(site=sites[index % 3], gpu_count=1, status=NodeStatus.ONLINE)
        OfferFactory(site=node.site, gpu_count=1)
    SiteFactory.create_batch(27, organization=partner_org)
    for name, total in (("sites", 30), ("nodes", 30), ("offers", 30)):
        with django_assert_max_num_queries(12):
            response = partner_client.get(reverse(f"capacity:{name}"))
        page = response.context["page_obj"]
        assert (page.paginator.count, len(page.object_list), page.paginator.num_pages) == (
            total,
            25,
            2,
        )
        second = partner_client.get(reverse(f"capacity:{name}"), {"page": 2})
        assert len(second.context["page_obj"].object_list) == 5


@pytest.mark.django_db
def test_node_list_filters(partner_client, site):
    NodeFactory(site=site, status=NodeStatus.ONLINE)
    NodeFactory(site=site, status=NodeStatus.PENDING)
    response = partner_client.get(reverse("capacity:nodes"), {"status": "online", "site": site.pk})
    assert [node.status for node in response.context["page_obj"]] == ["online"]
