"""The admin shows people, organizations and the audit trail, never a secret."""

from __future__ import annotations

import pytest
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
from django.urls import reverse

from accounts import services
from accounts.models import AuditEvent
from tests.factories import ApiKeyFactory, InvitationFactory, UserFactory
from tests.fixtures import client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client():
    staff = UserFactory(is_staff=True, is_superuser=True)
    TOTP.activate(staff, generate_totp_secret())
    return client_for(staff)


@pytest.mark.parametrize(
    "model", ["user", "organization", "membership", "invitation", "apikey", "auditevent"]
)
def test_changelists_render(staff_client, buyer_owner, model):
    response = staff_client.get(reverse(f"admin:accounts_{model}_changelist"), {"q": "acme"})

    assert response.status_code == 200


def test_no_hashes_in_the_admin(staff_client, buyer_org, buyer_owner):
    api_key = ApiKeyFactory(organization=buyer_org, created_by=buyer_owner)
    invitation = InvitationFactory(organization=buyer_org)

    key_page = staff_client.get(reverse("admin:accounts_apikey_change", args=[api_key.pk]))
    invitation_page = staff_client.get(
        reverse("admin:accounts_invitation_change", args=[invitation.pk])
    )

    assert key_page.status_code == 200
    assert api_key.key_hash.encode() not in key_page.content
    assert api_key.key.encode() not in key_page.content
    assert invitation_page.status_code == 200
    assert invitation.token_hash.encode() not in invitation_page.content
    assert staff_client.get(reverse("admin:accounts_apikey_add")).status_code == 403


def test_audit_trail_is_read_only(staff_client, buyer_org, buyer_owner):
    services.api_key_create(organization=buyer_org, name="ci", created_by=buyer_owner)
    event = AuditEvent.objects.get()

    view = staff_client.get(reverse("admin:accounts_auditevent_change", args=[event.pk]))
    add = staff_client.get(reverse("admin:accounts_auditevent_add"))
    delete = staff_client.post(
        reverse("admin:accounts_auditevent_delete", args=[event.pk]), {"post": "yes"}
    )

    assert view.status_code == 200
    assert b'name="action"' not in view.content
    assert (add.status_code, delete.status_code) == (403, 403)
    assert AuditEvent.objects.count() == 1


def test_staff_revoke_action_is_audited(staff_client, buyer_org, buyer_owner):
    api_key = ApiKeyFactory(organization=buyer_org, created_by=buyer_owner)

    response = staff_client.post(
        reverse("admin:accounts_apikey_changelist"),
        {"action": "revoke_keys", "_selected_action": [api_key.pk]},
    )

    assert response.status_code == 302
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None
    event = AuditEvent.objects.get()
    assert (event.action, event.data["by_staff"]) == ("api_key.revoked", True)
