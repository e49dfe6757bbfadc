"""REST API: me, organizations, API keys — with session and with organization API keys."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
import time_machine
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import API_KEY_PREFIX, ApiKey, AuditEvent, Role
from tests.factories import ApiKeyFactory, MembershipFactory
from tests.http_headers import NO_STORE, cache_headers

pytestmark = pytest.mark.django_db


def session_client(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def key_client(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


@pytest.mark.parametrize(
    ("name", "method", "args"),
    [
        ("api_me", "get", []),
        ("api_organizations", "get", []),
        ("api_api_keys", "get", []),
        ("api_api_keys", "post", []),
        ("api_api_key_revoke", "post", [1]),
    ],
)
def test_anonymous_is_401(name, method, args):
    response = getattr(APIClient(), method)(reverse(name, args=args))

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"


def test_me_with_session(buyer_org, buyer_owner):
    response = session_client(buyer_owner).get(reverse("api_me"))

    assert response.status_code == 200
    assert response.json() == {
        "user": {
            "id": buyer_owner.pk,
            "email": buyer_owner.email,
            "first_name": "",
            "last_name": "",
        },
        "organization": {
            "id": buyer_org.pk,
            "name": "Acme Vision",
            "slug": buyer_org.slug,
            "is_buyer": True,
            "is_partner": False,
        },
        "role": "owner",
        "authentication": "session",
    }


def test_me_without_organization(user_factory):
    user = user_factory()

    response = session_client(user).get(reverse("api_me"))

    assert response.json()["organization"] is None
    assert response.json()["role"] is None
    assert session_client(user).get(reverse("api_api_keys")).status_code == 403


def test_api_key_works_and_sets_last_used_at(buyer_org, buyer_owner):
    api_key = ApiKeyFactory(organization=buyer_org, created_by=buyer_owner)
    now = timezone.now().replace(microsecond=0)

    with time_machine.travel(now, tick=False):
        response = key_client(api_key.key).get(reverse("api_me"))

    assert response.status_code == 200
    assert response.json()["organization"]["id"] == buyer_org.pk
    assert response.json()["role"] == "member"
    assert response.json()["authentication"] == "api_key"
    api_key.refresh_from_db()
    assert api_key.last_used_at == now


def test_revoked_key_is_401(buyer_org, buyer_owner):
    api_key = ApiKeyFactory(
        organization=buyer_org, created_by=buyer_owner, revoked_at=timezone.now()
    )

    response = key_client(api_key.key).get(reverse("api_me"))

    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid or revoked API key."}


def test_unknown_key_is_401():
    response = key_client(API_KEY_PREFIX + "x" * 43).get(reverse("api_organizations"))

    assert response.status_code == 401


def test_organizations_lists_the_callers_memberships_paginated(
    buyer_org, buyer_owner, other_org, partner_org
):
    MembershipFactory(organization=other_org, user=buyer_owner, role=Role.VIEWER)
    MembershipFactory(organization=partner_org)  # someone else's

    response = session_client(buyer_owner).get(reverse("api_organizations"))

    assert response.status_code == 200
    body = response.json()
    assert (body["count"], body["next"], body["previous"]) == (2, None, None)
    assert [(item["organization"]["name"], item["role"]) for item in body["results"]] == [
        ("Acme Vision", "owner"),
        ("Other Tenant", "viewer"),
    ]
    limited = session_client(buyer_owner).get(reverse("api_organizations"), {"limit": 1})
    assert limited.json()["count"] == 2
    assert len(limited.json()["results"]) == 1


def test_an_api_key_sees_only_its_own_organization(buyer_org, buyer_owner, other_org):
    MembershipFactory(organization=other_org, user=buyer_owner, role=Role.OWNER)
    ApiKeyFactory(organization=other_org, name="other key", created_by=buyer_owner)
    api_key = ApiKeyFactory(organization=buyer_org, name="acme key", created_by=buyer_owner)
    client = key_client(api_key.key)

    organizations = client.get(reverse("api_organizations")).json()
    keys = client.get(reverse("api_api_keys")).json()
    foreign = ApiKey.objects.get(name="other key")
    revoke = client.post(reverse("api_api_key_revoke", args=[foreign.pk]))

    assert [item["organization"]["id"] for item in organizations["results"]] == [buyer_org.pk]
    assert [item["name"] for item in keys["results"]] == ["acme key"]
    assert revoke.status_code == 403  # a key cannot manage keys at all
    foreign.refresh_from_db()
    assert foreign.revoked_at is None


def test_create_key_returns_it_once(buyer_org, buyer_owner):
    client = session_client(buyer_owner)

    response = client.post(reverse("api_api_keys"), {"name": "deploy"}, format="json")

    assert response.status_code == 201
    assert cache_headers(response) == NO_STORE
    body = response.json()
    key = body["key"]
    api_key = ApiKey.objects.get()
    assert body == {
        "id": api_key.pk,
        "name": "deploy",
        "prefix": key[:10],
        "created_by": buyer_owner.email,
        "created_at": body["created_at"],
        "last_used_at": None,
        "revoked_at": None,
        "is_active": True,
        "key": key,
    }
    assert api_key.key_hash == hashlib.sha256(key.encode()).hexdigest()
    listing = client.get(reverse("api_api_keys")).json()
    assert listing["count"] == 1
    assert "key" not in listing["results"][0]
    assert key not in str(listing)
    assert AuditEvent.objects.get().action == "api_key.created"
    assert key_client(key).get(reverse("api_me")).status_code == 200


def test_create_key_refusals(buyer_org, buyer_owner):
    ApiKeyFactory(organization=buyer_org, name="deploy", created_by=buyer_owner)
    viewer = MembershipFactory(organization=buyer_org, role=Role.VIEWER).user
    api_key = ApiKeyFactory(organization=buyer_org, name="robot", created_by=buyer_owner)

    duplicate = session_client(buyer_owner).post(
        reverse("api_api_keys"), {"name": "deploy"}, format="json"
    )
    blank = session_client(buyer_owner).post(reverse("api_api_keys"), {"name": ""}, format="json")
    by_viewer = session_client(viewer).post(reverse("api_api_keys"), {"name": "x"}, format="json")
    by_key = key_client(api_key.key).post(reverse("api_api_keys"), {"name": "x"}, format="json")

    assert duplicate.status_code == 400
    assert duplicate.json() == {"name": ["An active key named “deploy” already exists."]}
    assert blank.status_code == 400
    assert (by_viewer.status_code, by_key.status_code) == (403, 403)
    assert sorted(ApiKey.objects.values_list("name", flat=True)) == ["deploy", "robot"]
    assert not AuditEvent.objects.exists()


def test_revoke_via_api_then_key_is_refused(buyer_org, buyer_owner):
    api_key = ApiKeyFactory(organization=buyer_org, name="deploy", created_by=buyer_owner)
    assert key_client(api_key.key).get(reverse("api_me")).status_code == 200
    client = session_client(buyer_owner)

    response = client.post(reverse("api_api_key_revoke", args=[api_key.pk]))
    again = client.post(reverse("api_api_key_revoke", args=[api_key.pk]))

    assert response.status_code == 200
    assert response.json()["is_active"] is False
    assert again.status_code == 409
    assert again.json() == {"detail": "This API key is already revoked."}
    assert AuditEvent.objects.filter(action="api_key.revoked").count() == 1
    assert key_client(api_key.key).get(reverse("api_me")).status_code == 401


def test_last_used_is_written_at_most_once_a_minute(buyer_org, buyer_owner):
    api_key = ApiKeyFactory(organization=buyer_org, created_by=buyer_owner)
    start = timezone.now().replace(microsecond=0)
    client = key_client(api_key.key)

    with time_machine.travel(start, tick=False):
        client.get(reverse("api_me"))
    with time_machine.travel(start + timedelta(seconds=30), tick=False):
        client.get(reverse("api_me"))
    api_key.refresh_from_db()
    assert api_key.last_used_at == start
