"""Every object URL of the marketplace answers 404 to a member of another organization."""

from __future__ import annotations

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import ApiKey, AuditEvent, Invitation, Membership, Role
from tests.factories import ApiKeyFactory, InvitationFactory, MembershipFactory
from tests.tenancy import assert_hidden_from

pytestmark = pytest.mark.django_db


@pytest.fixture
def foreign_objects(buyer_org, buyer_owner):
    return {
        "membership": MembershipFactory(organization=buyer_org, role=Role.MEMBER),
        "invitation": InvitationFactory(organization=buyer_org),
        "api_key": ApiKeyFactory(organization=buyer_org, created_by=buyer_owner),
    }


@pytest.mark.parametrize(
    ("url_name", "object_name", "method", "data"),
    [
        ("membership_update", "membership", "get", None),
        ("membership_update", "membership", "post", {"role": "viewer"}),
        ("membership_remove", "membership", "get", None),
        ("membership_remove", "membership", "post", None),
        ("invitation_revoke", "invitation", "get", None),
        ("invitation_revoke", "invitation", "post", None),
        ("api_key_revoke", "api_key", "get", None),
        ("api_key_revoke", "api_key", "post", None),
    ],
)
def test_pages_hide_other_tenants_objects(
    other_client, foreign_objects, url_name, object_name, method, data
):
    target = foreign_objects[object_name]

    assert_hidden_from(other_client, reverse(url_name, args=[target.pk]), method=method, data=data)

    membership = foreign_objects["membership"]
    membership.refresh_from_db()
    assert membership.role == "member"
    assert Invitation.objects.get().status == "pending"
    assert ApiKey.objects.get().revoked_at is None
    assert not AuditEvent.objects.exists()


def test_api_revoke_hides_other_tenants_keys(other_owner, foreign_objects):
    client = APIClient()
    client.force_login(other_owner)

    assert_hidden_from(
        client, reverse("api_api_key_revoke", args=[foreign_objects["api_key"].pk]), method="post"
    )

    assert ApiKey.objects.get().revoked_at is None


def test_lists_show_only_the_current_organization(other_client, foreign_objects):
    members = other_client.get(reverse("organization_members"))
    keys = other_client.get(reverse("api_keys"))
    api_keys = APIClient()
    api_keys.force_login(members.wsgi_request.user)

    assert foreign_objects["membership"].pk not in [m.pk for m in members.context["page_obj"]]
    assert list(members.context["invitations"]) == []
    assert list(keys.context["page_obj"]) == []
    assert api_keys.get(reverse("api_api_keys")).json()["count"] == 0
    assert Membership.objects.count() == 3
