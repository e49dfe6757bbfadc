"""API keys act with a role that cannot exceed their creator's current role, and stop
when the creator leaves the organization (issue 13, item 7)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from accounts import services
from accounts.models import ApiKey, AuditEvent, Membership, Role
from capacity.models import Offer, Site
from tests.capacity.test_api import SITE_BODY
from tests.factories import MembershipFactory, NodeFactory, OfferFactory, SiteFactory
from tests.fixtures import client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin(partner_org) -> Membership:
    return MembershipFactory(organization=partner_org, role=Role.ADMIN)


@pytest.fixture
def offer(partner_org) -> Offer:
    site = SiteFactory(organization=partner_org)
    NodeFactory(site=site, gpu_count=8)
    return OfferFactory(site=site, gpu_count=8)


def _key_client(admin: Membership) -> APIClient:
    _api_key, secret = services.api_key_create(
        organization=admin.organization, name="automation", created_by=admin.user
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def _change_price(client: APIClient, offer: Offer):
    return client.patch(
        f"/api/v1/offers/{offer.pk}", {"on_demand_price_per_gpu_hour": "9.0000"}, format="json"
    )


def test_removed_admins_key_can_neither_change_prices_nor_create_sites(admin, offer, partner_owner):
    client = _key_client(admin)
    assert client.get("/api/v1/me").json()["role"] == "member"

    revoked = services.membership_remove(membership=admin, actor=partner_owner)

    assert [key.name for key in revoked] == ["automation"]
    assert ApiKey.objects.get().revoked_at is not None
    event = AuditEvent.objects.get(action="api_key.revoked")
    assert (event.actor, event.data["reason"]) == (partner_owner, "creator_removed")
    price = _change_price(client, offer)
    site = client.post("/api/v1/sites", SITE_BODY, format="json")
    assert (price.status_code, site.status_code) == (401, 401)
    offer.refresh_from_db()
    assert offer.on_demand_price_per_gpu_hour == Decimal("2.4000")
    assert list(Site.objects.values_list("name", flat=True)) == [offer.site.name]


def test_key_stops_when_its_creators_membership_is_gone_however_it_went(admin, offer):
    """Authentication checks the creator's membership on every request, so a membership
    deleted outside ``membership_remove`` (admin, a script) stops the key too."""
    client = _key_client(admin)
    Membership.objects.filter(pk=admin.pk).delete()

    price = _change_price(client, offer)

    assert price.status_code == 401
    assert price.json() == {
        "detail": "This API key stopped working: the member who created it has left "
        "Andes Hash. An owner or admin can create a new key."
    }
    offer.refresh_from_db()
    assert offer.on_demand_price_per_gpu_hour == Decimal("2.4000")


def test_key_of_an_admin_demoted_to_viewer_only_reads(admin, offer, partner_owner):
    client = _key_client(admin)
    services.membership_change_role(membership=admin, role=Role.VIEWER, actor=partner_owner)

    price = _change_price(client, offer)
    site = client.post("/api/v1/sites", SITE_BODY, format="json")

    assert (price.status_code, site.status_code) == (403, 403)
    assert client.get("/api/v1/me").json()["role"] == "viewer"
    assert client.get(f"/api/v1/offers/{offer.pk}").status_code == 200
    offer.refresh_from_db()
    assert offer.on_demand_price_per_gpu_hour == Decimal("2.4000")
    assert Site.objects.count() == 1


def test_key_of_an_admin_demoted_to_finance_only_reads(admin, offer, partner_owner):
    client = _key_client(admin)
    services.membership_change_role(membership=admin, role=Role.FINANCE, actor=partner_owner)

    assert _change_price(client, offer).status_code == 403
    assert client.get("/api/v1/me").json()["role"] == "viewer"


def test_key_of_an_admin_demoted_to_member_acts_as_a_member(admin, offer, partner_owner):
    client = _key_client(admin)
    services.membership_change_role(membership=admin, role=Role.MEMBER, actor=partner_owner)

    price = _change_price(client, offer)

    assert price.status_code == 200
    assert client.get("/api/v1/me").json()["role"] == "member"
    offer.refresh_from_db()
    assert offer.on_demand_price_per_gpu_hour == Decimal("9.0000")


def test_a_key_never_manages_the_organization(admin):
    client = _key_client(admin)

    created = client.post("/api/v1/api-keys", {"name": "another"}, format="json")

    assert created.status_code == 403
    assert ApiKey.objects.count() == 1


def test_removal_page_names_the_keys_that_stop(admin, partner_owner):
    services.api_key_create(
        organization=admin.organization, name="automation", created_by=admin.user
    )
    client = client_for(partner_owner)
    url = reverse("membership_remove", args=[admin.pk])

    page = client.get(url)
    removed = client.post(url, follow=True)

    assert page.status_code == 200
    prefix = ApiKey.objects.get().prefix
    assert (
        f"The API keys they created are revoked with them and refused from now on: "
        f"“automation” ({prefix}…)."
    ) in page.content.decode()
    assert f"Their API keys were revoked: “automation” ({prefix}…)." in removed.content.decode()


def test_key_page_says_what_a_key_acts_as(admin, partner_owner):
    services.api_key_create(
        organization=admin.organization, name="automation", created_by=admin.user
    )
    services.membership_change_role(membership=admin, role=Role.VIEWER, actor=partner_owner)

    page = client_for(partner_owner).get(reverse("api_keys"))

    assert [key.acting_role for key in page.context["page_obj"]] == [Role.VIEWER]
    assert b"if they become finance or viewer, their keys only read" in page.content
    assert b"When they leave Andes Hash, their keys are revoked." in page.content
