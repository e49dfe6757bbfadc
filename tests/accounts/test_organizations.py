"""Creating an organization, its settings, and switching between organizations."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts import services
from accounts.models import AuditEvent, Membership, Organization, Role
from accounts.tenancy import SESSION_KEY
from tests.factories import MembershipFactory, OrganizationFactory, UserFactory
from tests.fixtures import client_for

pytestmark = pytest.mark.django_db


def test_a_user_without_organization_is_sent_to_create_one():
    client = client_for(UserFactory())

    response = client.get(reverse("dashboard"))

    assert response.status_code == 302
    assert response.url == reverse("organization_create")
    assert client.get(reverse("organization_create")).status_code == 200


def test_creating_an_organization_makes_the_creator_owner_and_switches_to_it():
    user = UserFactory(email="giulia@acme.example")
    client = client_for(user)

    response = client.post(
        reverse("organization_create"),
        {"name": "Acme Vision", "is_buyer": "on", "is_partner": "on"},
    )

    assert response.status_code == 302
    assert response.url == reverse("dashboard")
    organization = Organization.objects.get()
    assert (organization.name, organization.slug) == ("Acme Vision", "acme-vision")
    assert (organization.is_buyer, organization.is_partner) == (True, True)
    membership = Membership.objects.get()
    assert (membership.user, membership.organization, membership.role) == (
        user,
        organization,
        "owner",
    )
    assert client.session[SESSION_KEY] == organization.pk
    assert list(
        AuditEvent.objects.order_by("pk").values_list("action", "actor", "organization")
    ) == [
        ("organization.created", user.pk, organization.pk),
        ("membership.created", user.pk, organization.pk),
    ]
    dashboard = client.get(reverse("dashboard"))
    assert dashboard.status_code == 200
    assert dashboard.context["membership"] == membership


def test_creating_an_organization_with_no_kind_is_refused():
    client = client_for(UserFactory())

    response = client.post(reverse("organization_create"), {"name": "Nowhere"})

    assert response.status_code == 200
    assert response.context["form"].non_field_errors() == [
        "Choose at least one: buyer, partner, or both."
    ]
    assert Organization.objects.count() == 0


def test_slugs_are_unique():
    user = UserFactory()
    OrganizationFactory(name="Acme", slug="acme")
    OrganizationFactory(name="Acme 2", slug="acme-2")

    organization = services.organization_create(
        name="Acme", is_buyer=True, is_partner=False, creator=user
    )

    assert organization.slug == "acme-3"


def test_slug_of_a_name_without_letters():
    organization = services.organization_create(
        name="!!!", is_buyer=False, is_partner=True, creator=UserFactory()
    )

    assert organization.slug == "organization"


def test_owner_edits_name_and_kind(buyer_org, buyer_client, buyer_owner):
    response = buyer_client.post(
        reverse("organization_settings"), {"name": "Acme Vision AI", "is_partner": "on"}
    )

    assert response.status_code == 302
    buyer_org.refresh_from_db()
    assert (buyer_org.name, buyer_org.is_buyer, buyer_org.is_partner) == (
        "Acme Vision AI",
        False,
        True,
    )
    event = AuditEvent.objects.get(action="organization.updated")
    assert event.actor == buyer_owner
    assert event.data == {
        "changes": {
            "name": ["Acme Vision", "Acme Vision AI"],
            "is_buyer": [True, False],
            "is_partner": [False, True],
        }
    }


def test_removing_both_kinds_is_a_form_error(buyer_org, buyer_client):
    response = buyer_client.post(reverse("organization_settings"), {"name": "Acme Vision"})

    assert response.status_code == 200
    assert response.context["form"].non_field_errors() == [
        "Choose at least one: buyer, partner, or both."
    ]
    buyer_org.refresh_from_db()
    assert (buyer_org.is_buyer, buyer_org.is_partner) == (True, False)
    assert not AuditEvent.objects.exists()


@pytest.mark.parametrize("role", [Role.MEMBER, Role.FINANCE, Role.VIEWER])
def test_other_roles_see_settings_read_only_and_cannot_change_them(buyer_org, role):
    client = client_for(MembershipFactory(organization=buyer_org, role=role).user)

    page = client.get(reverse("organization_settings"))
    response = client.post(reverse("organization_settings"), {"name": "Hijacked", "is_buyer": "on"})

    assert page.status_code == 200
    assert b"Only owners and admins can change these settings." in page.content
    assert response.status_code == 403
    buyer_org.refresh_from_db()
    assert buyer_org.name == "Acme Vision"


def test_switch_to_an_organization_of_the_user(buyer_org, buyer_owner, other_org):
    MembershipFactory(organization=other_org, user=buyer_owner, role=Role.VIEWER)
    client = client_for(buyer_owner)
    client.get(reverse("dashboard"))
    assert client.session[SESSION_KEY] == buyer_org.pk

    response = client.post(
        reverse("organization_switch"),
        {"organization": other_org.pk, "next": reverse("organization_members")},
    )

    assert response.status_code == 302
    assert response.url == reverse("organization_members")
    assert client.session[SESSION_KEY] == other_org.pk
    assert client.get(reverse("dashboard")).context["membership"].organization == other_org


def test_switch_without_next_goes_to_the_dashboard(buyer_owner, other_org):
    MembershipFactory(organization=other_org, user=buyer_owner)
    client = client_for(buyer_owner)

    response = client.post(reverse("organization_switch"), {"organization": other_org.pk})

    assert response.url == reverse("dashboard")


def test_switch_to_a_foreign_organization_is_404(buyer_org, buyer_client, other_org):
    buyer_client.get(reverse("dashboard"))

    response = buyer_client.post(reverse("organization_switch"), {"organization": other_org.pk})
    garbage = buyer_client.post(reverse("organization_switch"), {"organization": "abc"})

    assert (response.status_code, garbage.status_code) == (404, 404)
    assert buyer_client.session[SESSION_KEY] == buyer_org.pk


@pytest.mark.parametrize(
    "unsafe_next",
    [
        "https://evil.example/phish",
        "//evil.example/",
        "http://testserver.evil.example/",
        "javascript:alert(1)",
    ],
)
def test_switch_refuses_unsafe_next(buyer_org, buyer_client, unsafe_next):
    response = buyer_client.post(
        reverse("organization_switch"), {"organization": buyer_org.pk, "next": unsafe_next}
    )

    assert response.status_code == 302
    assert response.url == reverse("dashboard")


def test_switch_needs_post_and_sign_in(buyer_org, buyer_client, client):
    assert buyer_client.get(reverse("organization_switch")).status_code == 405
    anonymous = client.post(reverse("organization_switch"), {"organization": buyer_org.pk})
    assert anonymous.status_code == 302
    assert anonymous.url.startswith(reverse("account_login"))
