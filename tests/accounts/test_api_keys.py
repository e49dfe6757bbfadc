"""API keys in the UI: shown once, stored hashed, revocable with a confirmation."""

from __future__ import annotations

import hashlib

import pytest
from django.urls import reverse

from accounts import services
from accounts.models import API_KEY_PREFIX, ApiKey, AuditEvent, Role
from tests.factories import ApiKeyFactory, MembershipFactory
from tests.fixtures import client_for

pytestmark = pytest.mark.django_db


def test_created_key_is_shown_once_and_stored_hashed(buyer_org, buyer_client, buyer_owner):
    response = buyer_client.post(reverse("api_keys"), {"name": "inference gateway"})

    assert response.status_code == 200
    key = response.context["new_key"]
    assert key.startswith(API_KEY_PREFIX)
    assert key.encode() in response.content
    assert "no-store" in response["Cache-Control"]
    api_key = ApiKey.objects.get()
    assert (api_key.organization, api_key.name, api_key.created_by) == (
        buyer_org,
        "inference gateway",
        buyer_owner,
    )
    assert api_key.prefix == key[:10]
    assert api_key.key_hash == hashlib.sha256(key.encode()).hexdigest()
    stored = [getattr(api_key, field.attname) for field in ApiKey._meta.concrete_fields]
    assert key not in stored
    event = AuditEvent.objects.get(action="api_key.created")
    assert (event.actor, event.organization, event.data) == (
        buyer_owner,
        buyer_org,
        {"name": "inference gateway", "prefix": key[:10]},
    )

    later = buyer_client.get(reverse("api_keys"))

    assert later.status_code == 200
    assert key.encode() not in later.content
    assert later.context["new_key"] is None
    assert f"{key[:10]}…".encode() in later.content
    assert b"inference gateway" in later.content


def test_list_has_an_empty_state(buyer_client):
    response = buyer_client.get(reverse("api_keys"))

    assert b"No API keys yet" in response.content


def test_duplicate_active_name_is_refused(buyer_org, buyer_client, buyer_owner):
    ApiKeyFactory(organization=buyer_org, name="ci", created_by=buyer_owner)

    response = buyer_client.post(reverse("api_keys"), {"name": "ci"})

    assert response.status_code == 200
    assert response.context["new_key"] is None
    assert response.context["form"].errors == {"name": ["An active key named “ci” already exists."]}
    assert ApiKey.objects.count() == 1


def test_revoke_confirms_then_revokes(buyer_org, buyer_client, buyer_owner):
    api_key = ApiKeyFactory(organization=buyer_org, name="ci", created_by=buyer_owner)
    url = reverse("api_key_revoke", args=[api_key.pk])

    confirm = buyer_client.get(url)
    assert confirm.status_code == 200
    assert confirm.context["title"] == "Revoke the API key “ci”?"
    assert confirm.context["danger"] is True
    api_key.refresh_from_db()
    assert api_key.revoked_at is None

    response = buyer_client.post(url)

    assert response.status_code == 302
    assert response.url == reverse("api_keys")
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None
    event = AuditEvent.objects.get(action="api_key.revoked")
    assert (event.actor, event.target_id, event.data) == (
        buyer_owner,
        str(api_key.pk),
        {"name": "ci", "prefix": api_key.prefix},
    )
    assert b"Revoked" in buyer_client.get(reverse("api_keys")).content


def test_revoking_a_revoked_key_changes_nothing(buyer_org, buyer_client, buyer_owner):
    api_key = ApiKeyFactory(organization=buyer_org, created_by=buyer_owner)
    services.api_key_revoke(api_key=api_key, actor=buyer_owner)
    api_key.refresh_from_db()
    revoked_at = api_key.revoked_at

    response = buyer_client.post(reverse("api_key_revoke", args=[api_key.pk]), follow=True)

    assert [str(m) for m in response.context["messages"]] == ["This API key is already revoked."]
    api_key.refresh_from_db()
    assert api_key.revoked_at == revoked_at
    assert AuditEvent.objects.filter(action="api_key.revoked").count() == 1


@pytest.mark.parametrize("role", [Role.MEMBER, Role.FINANCE, Role.VIEWER])
def test_other_roles_see_keys_read_only(buyer_org, buyer_owner, role):
    api_key = ApiKeyFactory(organization=buyer_org, name="ci", created_by=buyer_owner)
    client = client_for(MembershipFactory(organization=buyer_org, role=role).user)

    page = client.get(reverse("api_keys"))
    create = client.post(reverse("api_keys"), {"name": "mine"})
    confirm = client.get(reverse("api_key_revoke", args=[api_key.pk]))
    revoke = client.post(reverse("api_key_revoke", args=[api_key.pk]))

    assert page.status_code == 200
    assert page.context["form"] is None
    assert [k.name for k in page.context["page_obj"]] == ["ci"]
    assert (create.status_code, confirm.status_code, revoke.status_code) == (403, 403, 403)
    assert list(ApiKey.objects.values_list("name", "revoked_at")) == [("ci", None)]
    assert not AuditEvent.objects.exists()


def test_admin_manages_keys(buyer_org):
    client = client_for(MembershipFactory(organization=buyer_org, role=Role.ADMIN).user)

    response = client.post(reverse("api_keys"), {"name": "by admin"})

    assert response.context["new_key"] is not None
    assert ApiKey.objects.get().name == "by admin"
