"""Partner REST API: flows, refusals as JSON, tenant isolation, roles."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone

from capacity.models import (
    EnrollmentCode,
    Node,
    NodeStatus,
    NodeWindow,
    Offer,
    Site,
    hash_enrollment_code,
)
from tests.factories import ApiKeyFactory, NodeFactory, NodeWindowFactory, OfferFactory
from tests.http_headers import NO_STORE, cache_headers

SITE_BODY = {
    "name": "Hernandarias Hydro",
    "country": "PY",
    "region": "south-america",
    "latitude": "-25.405600",
    "longitude": "-54.638100",
    "power_capacity_kw": 5000,
    "energy_source": "hydro",
    "energy_price_per_kwh": "0.029000",
}


@pytest.mark.django_db
def test_site_create_list_get_patch(partner_api, partner_org):
    created = partner_api.post("/api/v1/sites", SITE_BODY, format="json")
    assert created.status_code == 201, created.content
    site_id = created.json()["id"]
    assert created.json()["energy_currency"] == "USD"
    listing = partner_api.get("/api/v1/sites").json()
    assert listing["count"] == 1
    assert listing["results"][0]["name"] == "Hernandarias Hydro"
    patched = partner_api.patch(
        f"/api/v1/sites/{site_id}", {"power_capacity_kw": 5500}, format="json"
    )
    assert patched.status_code == 200
    assert Site.objects.get(pk=site_id).power_capacity_kw == 5500
    refused = partner_api.patch(f"/api/v1/sites/{site_id}", {"latitude": "91"}, format="json")
    assert refused.status_code == 400
    assert refused.json() == {"latitude": ["Latitude must be between -90 and 90 degrees."]}


@pytest.mark.django_db
def test_node_create_returns_code_once(partner_api, site):
    response = partner_api.post(
        "/api/v1/nodes",
        {
            "site": site.pk,
            "name": "hh-01",
            "gpu_model": "A100 80GB",
            "gpu_count": 4,
            "cpu_cores": 32,
            "ram_gib": 512,
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    assert cache_headers(response) == NO_STORE  # the body carries the code
    data = response.json()
    node = Node.objects.get(pk=data["id"])
    code_row = EnrollmentCode.objects.get(node=node)
    assert code_row.code_hash == hash_enrollment_code(data["enrollment_code"])
    assert data["status"] == "pending"
    assert data["gpu_model"] == "A100 80GB"
    detail = partner_api.get(f"/api/v1/nodes/{node.pk}").json()
    assert "enrollment_code" not in detail
    assert detail["gpus"] == []
    regenerated = partner_api.post(f"/api/v1/nodes/{node.pk}/enrollment-code")
    assert regenerated.status_code == 201
    assert cache_headers(regenerated) == NO_STORE
    assert EnrollmentCode.objects.get(
        node=node, revoked_at__isnull=True
    ).code_hash == hash_enrollment_code(regenerated.json()["enrollment_code"])


@pytest.mark.django_db
def test_node_list_filters(partner_api, site):
    NodeFactory(site=site, status=NodeStatus.ONLINE)
    NodeFactory(site=site, status=NodeStatus.PENDING)
    data = partner_api.get("/api/v1/nodes", {"status": "online", "site": site.pk}).json()
    assert [row["status"] for row in data["results"]] == ["online"]
    assert partner_api.get("/api/v1/nodes", {"status": "bogus"}).status_code == 400


@pytest.mark.django_db
def test_windows_create_list_cancel(partner_api, node):
    start = timezone.now() + timedelta(days=2)
    body = {
        "kind": "maintenance",
        "start": start.isoformat(),
        "end": (start + timedelta(hours=3)).isoformat(),
    }
    created = partner_api.post(f"/api/v1/nodes/{node.pk}/windows", body, format="json")
    assert created.status_code == 201, created.content
    overlap = partner_api.post(f"/api/v1/nodes/{node.pk}/windows", body, format="json")
    assert overlap.status_code == 400
    assert list(overlap.json()) == ["start"]
    assert partner_api.get(f"/api/v1/nodes/{node.pk}/windows").json()["count"] == 1
    cancelled_at = timezone.now()
    with time_machine.travel(cancelled_at, tick=False):
        deleted = partner_api.delete(f"/api/v1/windows/{created.json()['id']}")
    assert deleted.status_code == 204
    assert NodeWindow.objects.get().cancelled_at == cancelled_at


@pytest.mark.django_db
def test_offers_create_patch_deactivate(partner_api, node):
    body = {
        "site": node.site.pk,
        "gpu_model": "H100 SXM 80GB",
        "gpu_count": 2,
        "on_demand_price_per_gpu_hour": "2.5000",
        "reserved_price_1m_per_gpu_hour": "2.6000",
        "reserved_price_3m_per_gpu_hour": "2.0000",
        "reserved_price_6m_per_gpu_hour": "1.9000",
        "reserved_price_12m_per_gpu_hour": "1.7000",
    }
    refused = partner_api.post("/api/v1/offers", body, format="json")
    assert refused.status_code == 400
    assert refused.json() == {
        "reserved_price_1m_per_gpu_hour": [
            "The 1-month reserved price (2.6000) is above the on-demand price (2.5000); "
            "a reservation must not cost more than on demand."
        ]
    }
    assert Offer.objects.count() == 0
    body["reserved_price_1m_per_gpu_hour"] = "2.2000"
    created = partner_api.post("/api/v1/offers", body, format="json")
    assert created.status_code == 201
    offer_id = created.json()["id"]
    patched = partner_api.patch(
        f"/api/v1/offers/{offer_id}", {"gpu_count": 1, "is_active": False}, format="json"
    )
    assert patched.status_code == 200
    assert (patched.json()["gpu_count"], patched.json()["is_active"]) == (1, False)
    # Deactivating again is refused, and the size change sent with it is not kept either.
    again = partner_api.patch(
        f"/api/v1/offers/{offer_id}", {"gpu_count": 2, "is_active": False}, format="json"
    )
    assert again.status_code == 400
    assert Offer.objects.get(pk=offer_id).gpu_count == 1
    absurd = partner_api.patch(
        f"/api/v1/offers/{offer_id}",
        {"on_demand_price_per_gpu_hour": "999999.9999"},
        format="json",
    )
    assert absurd.status_code == 400
    assert absurd.json() == {
        "on_demand_price_per_gpu_hour": [
            "A price per GPU-hour is at most 1000.0000; check the decimal point."
        ]
    }
    assert Offer.objects.get(pk=offer_id).on_demand_price_per_gpu_hour == Decimal("2.5000")


@pytest.mark.django_db
def test_api_key_of_another_org_sees_nothing(node, other_org, other_owner):
    from rest_framework.test import APIClient

    key = ApiKeyFactory(organization=other_org, created_by=other_owner)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.key}")
    assert client.get(f"/api/v1/nodes/{node.pk}").status_code == 404
    assert client.get("/api/v1/nodes").json()["count"] == 0


@pytest.mark.django_db
def test_every_endpoint_is_hidden_from_other_tenants(other_api, node):
    window = NodeWindowFactory(node=node)
    NodeFactory(site=node.site, gpu_count=8)
    offer = OfferFactory(site=node.site)
    site = node.site
    for method, url, body in [
        ("get", f"/api/v1/sites/{site.pk}", None),
        ("patch", f"/api/v1/sites/{site.pk}", {"name": "stolen"}),
        ("get", f"/api/v1/nodes/{node.pk}", None),
        ("post", f"/api/v1/nodes/{node.pk}/enrollment-code", None),
        ("get", f"/api/v1/nodes/{node.pk}/windows", None),
        ("post", f"/api/v1/nodes/{node.pk}/windows", {"kind": "maintenance"}),
        ("delete", f"/api/v1/windows/{window.pk}", None),
        ("get", f"/api/v1/offers/{offer.pk}", None),
        ("patch", f"/api/v1/offers/{offer.pk}", {"is_active": False}),
    ]:
        response = getattr(other_api, method)(url, body, format="json")
        assert response.status_code == 404, (
            f"{method.upper()} {url} answered {response.status_code}"
        )
    for url in ("/api/v1/sites", "/api/v1/nodes", "/api/v1/offers"):
        assert other_api.get(url).json()["count"] == 0
    node_site = other_api.post(
        "/api/v1/nodes",
        {
            "site": site.pk,
            "name": "x",
            "gpu_model": "H100 SXM 80GB",
            "gpu_count": 1,
            "cpu_cores": 1,
            "ram_gib": 1,
        },
        format="json",
    )
    assert node_site.status_code == 400
    assert Site.objects.get(pk=site.pk).name == site.name
    assert NodeWindow.objects.get(pk=window.pk).cancelled_at is None
    assert Offer.objects.get(pk=offer.pk).is_active is True
    assert EnrollmentCode.objects.filter(node=node).count() == 0


@pytest.mark.django_db
def test_buyer_gets_404_and_anonymous_gets_403(buyer_client, plain_client):
    assert buyer_client.get("/api/v1/sites").status_code == 404
    assert plain_client.get("/api/v1/sites").status_code in (401, 403)


@pytest.mark.django_db
@pytest.mark.parametrize("content_type", ["multipart", "urlencoded"])
def test_a_form_encoded_patch_without_is_active_keeps_the_offer_active(
    partner_api, node, content_type
):
    """A form body without ``is_active`` changes what it sends and nothing else: DRF reads
    a missing checkbox as false unless the serializer is partial."""
    offer = OfferFactory(site=node.site, gpu_count=2)
    if content_type == "multipart":
        response = partner_api.patch(
            f"/api/v1/offers/{offer.pk}", {"gpu_count": 1}, format="multipart"
        )
    else:
        response = partner_api.patch(
            f"/api/v1/offers/{offer.pk}",
            "gpu_count=1",
            content_type="application/x-www-form-urlencoded",
        )
    assert response.status_code == 200
    assert (response.json()["gpu_count"], response.json()["is_active"]) == (1, True)
    stored = Offer.objects.get(pk=offer.pk)
    assert (stored.gpu_count, stored.is_active) == (1, True)
