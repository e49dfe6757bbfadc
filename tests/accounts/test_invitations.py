"""Invitations by email: sending, accepting, declining, expiry, revocation, duplicates."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import time_machine
from allauth.account.models import EmailAddress
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from accounts.models import AuditEvent, Invitation, Membership, Role
from accounts.tenancy import SESSION_KEY
from tests.factories import InvitationFactory, MembershipFactory, UserFactory
from tests.fixtures import client_for

pytestmark = pytest.mark.django_db


def invite(client, email: str, role: str = "member", *, capture):
    with capture(execute=True):
        return client.post(reverse("invitation_create"), {"email": email, "role": role})


def token_from(message) -> str:
    match = re.search(r"http://127\.0\.0\.1:8000/invitations/([A-Za-z0-9_-]+)/", message.body)
    assert match, message.body
    return match.group(1)


def test_invite_sends_an_email_with_a_link_and_stores_only_the_hash(
    buyer_org, buyer_client, buyer_owner, django_capture_on_commit_callbacks
):
    response = invite(
        buyer_client, "Nina@Example.com ", "finance", capture=django_capture_on_commit_callbacks
    )

    assert response.status_code == 302
    assert response.url == reverse("organization_members")
    invitation = Invitation.objects.get()
    assert (invitation.organization, invitation.email, invitation.role, invitation.status) == (
        buyer_org,
        "nina@example.com",
        "finance",
        "pending",
    )
    assert invitation.invited_by == buyer_owner
    assert invitation.expires_at - invitation.created_at == timedelta(days=7)
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["nina@example.com"]
    assert message.subject == "[Hashgrid] You're invited to join Acme Vision on Hashgrid"
    token = token_from(message)
    assert invitation.token_hash == Invitation.hash_token(token)
    assert token not in {invitation.token_hash, invitation.email}
    event = AuditEvent.objects.get(action="invitation.created")
    assert (event.actor, event.organization, event.data) == (
        buyer_owner,
        buyer_org,
        {"email": "nina@example.com", "role": "finance"},
    )
    members_page = buyer_client.get(reverse("organization_members"))
    assert [i.email for i in members_page.context["invitations"]] == ["nina@example.com"]


def test_duplicate_pending_invitation_is_refused(
    buyer_org, buyer_client, django_capture_on_commit_callbacks
):
    invite(buyer_client, "nina@example.com", capture=django_capture_on_commit_callbacks)

    response = invite(
        buyer_client, "NINA@example.com", "admin", capture=django_capture_on_commit_callbacks
    )

    assert response.status_code == 200
    assert response.context["invite_form"].errors == {
        "email": ["nina@example.com already has a pending invitation: revoke it to send a new one."]
    }
    assert list(Invitation.objects.values_list("email", "role")) == [("nina@example.com", "member")]
    assert len(mail.outbox) == 1
    assert AuditEvent.objects.filter(action="invitation.created").count() == 1


def test_an_expired_pending_invitation_does_not_block_a_new_one(
    buyer_org, buyer_client, django_capture_on_commit_callbacks
):
    old = InvitationFactory(
        organization=buyer_org,
        email="nina@example.com",
        expires_at=timezone.now() - timedelta(minutes=1),
    )

    response = invite(buyer_client, "nina@example.com", capture=django_capture_on_commit_callbacks)

    assert response.status_code == 302
    old.refresh_from_db()
    assert old.status == "revoked"
    assert Invitation.objects.filter(status="pending").count() == 1


def test_inviting_an_existing_member_is_refused(
    buyer_org, buyer_client, buyer_owner, django_capture_on_commit_callbacks
):
    response = invite(
        buyer_client, buyer_owner.email.upper(), capture=django_capture_on_commit_callbacks
    )

    assert response.context["invite_form"].errors == {
        "email": [f"{buyer_owner.email} is already a member of Acme Vision."]
    }
    assert not Invitation.objects.exists()
    assert mail.outbox == []


@pytest.mark.parametrize("role", [Role.MEMBER, Role.FINANCE, Role.VIEWER])
def test_non_managers_cannot_invite(buyer_org, role, django_capture_on_commit_callbacks):
    client = client_for(MembershipFactory(organization=buyer_org, role=role).user)

    response = invite(client, "nina@example.com", capture=django_capture_on_commit_callbacks)

    assert response.status_code == 403
    assert not Invitation.objects.exists()
    assert mail.outbox == []
    assert not AuditEvent.objects.exists()


def test_admin_cannot_invite_an_owner(buyer_org, django_capture_on_commit_callbacks):
    client = client_for(MembershipFactory(organization=buyer_org, role=Role.ADMIN).user)

    response = invite(
        client, "nina@example.com", "owner", capture=django_capture_on_commit_callbacks
    )

    assert response.status_code == 200
    assert list(response.context["invite_form"].errors) == ["role"]
    assert not Invitation.objects.exists()


def test_accepting_creates_the_membership_with_the_invited_role_and_switches(
    buyer_org, buyer_client, other_org, other_owner, django_capture_on_commit_callbacks
):
    invite(buyer_client, other_owner.email, "finance", capture=django_capture_on_commit_callbacks)
    token = token_from(mail.outbox[0])
    client = client_for(other_owner)
    client.get(reverse("dashboard"))
    assert client.session[SESSION_KEY] == other_org.pk

    page = client.get(reverse("invitation_respond", args=[token]))
    response = client.post(reverse("invitation_respond", args=[token]), {"action": "accept"})

    assert page.status_code == 200
    assert page.context["problem"] is None
    assert response.status_code == 302
    assert response.url == reverse("dashboard")
    membership = Membership.objects.get(organization=buyer_org, user=other_owner)
    assert membership.role == "finance"
    assert client.session[SESSION_KEY] == buyer_org.pk
    invitation = Invitation.objects.get()
    assert invitation.status == "accepted"
    assert invitation.responded_at is not None
    assert list(
        AuditEvent.objects.filter(actor=other_owner)
        .order_by("pk")
        .values_list("action", "organization")
    ) == [("invitation.accepted", buyer_org.pk), ("membership.created", buyer_org.pk)]


def test_a_new_user_without_organization_can_accept(buyer_org):
    user = UserFactory(email="nina@example.com")
    invitation = InvitationFactory(
        organization=buyer_org, email="nina@example.com", role=Role.VIEWER
    )
    client = client_for(user)

    response = client.post(
        reverse("invitation_respond", args=[invitation.token]), {"action": "accept"}
    )

    assert response.status_code == 302
    assert list(user.memberships.values_list("organization", "role")) == [(buyer_org.pk, "viewer")]
    assert client.get(reverse("dashboard")).status_code == 200


def test_declining(buyer_org):
    user = UserFactory(email="nina@example.com")
    invitation = InvitationFactory(organization=buyer_org, email="nina@example.com")
    client = client_for(user)

    response = client.post(
        reverse("invitation_respond", args=[invitation.token]), {"action": "decline"}
    )

    assert response.status_code == 302
    invitation.refresh_from_db()
    assert invitation.status == "declined"
    assert not Membership.objects.filter(user=user).exists()
    assert AuditEvent.objects.get().action == "invitation.declined"
    again = client.post(
        reverse("invitation_respond", args=[invitation.token]), {"action": "accept"}
    )
    assert again.status_code == 400
    assert again.context["problem"] == "This invitation has already been declined."
    assert not Membership.objects.filter(user=user).exists()


def test_expired_invitation_is_refused(buyer_org):
    user = UserFactory(email="nina@example.com")
    invitation = InvitationFactory(organization=buyer_org, email="nina@example.com")
    client = client_for(user)

    with time_machine.travel(timezone.now() + timedelta(days=7, seconds=1)):
        page = client.get(reverse("invitation_respond", args=[invitation.token]))
        response = client.post(
            reverse("invitation_respond", args=[invitation.token]), {"action": "accept"}
        )

    assert page.status_code == 410
    assert (
        page.context["problem"]
        == "This invitation has expired. Ask the organization to send you a new one."
    )
    assert response.status_code == 400
    assert not Membership.objects.filter(user=user).exists()
    invitation.refresh_from_db()
    assert invitation.status == "pending"


@pytest.mark.parametrize("status", ["accepted", "revoked"])
def test_used_or_revoked_invitation_is_refused(buyer_org, status):
    user = UserFactory(email="nina@example.com")
    invitation = InvitationFactory(organization=buyer_org, email="nina@example.com", status=status)
    client = client_for(user)

    page = client.get(reverse("invitation_respond", args=[invitation.token]))
    response = client.post(
        reverse("invitation_respond", args=[invitation.token]), {"action": "accept"}
    )

    assert page.status_code == 410
    assert page.context["problem"] == f"This invitation has already been {status}."
    assert response.status_code == 400
    assert not Membership.objects.filter(user=user).exists()


def test_wrong_email_is_refused(buyer_org):
    intruder = UserFactory(email="someone-else@example.com")
    invitation = InvitationFactory(organization=buyer_org, email="nina@example.com")
    client = client_for(intruder)

    page = client.get(reverse("invitation_respond", args=[invitation.token]))
    response = client.post(
        reverse("invitation_respond", args=[invitation.token]), {"action": "accept"}
    )

    assert page.status_code == 403
    assert page.context["problem"] == (
        "This invitation was sent to nina@example.com. Sign in with that address (and verify it) to answer it."
    )
    assert response.status_code == 400
    assert not Membership.objects.filter(user=intruder).exists()
    invitation.refresh_from_db()
    assert invitation.status == "pending"


def test_unverified_matching_email_is_refused(buyer_org):
    user = UserFactory(email="nina@example.com", verified_email=False)
    EmailAddress.objects.create(user=user, email="nina@example.com", verified=False, primary=True)
    invitation = InvitationFactory(organization=buyer_org, email="nina@example.com")

    response = client_for(user).post(
        reverse("invitation_respond", args=[invitation.token]), {"action": "accept"}
    )

    assert response.status_code == 400
    assert not Membership.objects.filter(user=user).exists()


def test_unknown_token_is_404_and_anonymous_must_sign_in(buyer_org, client):
    invitation = InvitationFactory(organization=buyer_org)
    user_client = client_for(UserFactory())

    assert user_client.get(reverse("invitation_respond", args=["not-a-token"])).status_code == 404
    response = client.get(reverse("invitation_respond", args=[invitation.token]))
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))


def test_revoke_confirms_then_revokes(buyer_org, buyer_client, buyer_owner):
    invitation = InvitationFactory(organization=buyer_org, email="nina@example.com")
    url = reverse("invitation_revoke", args=[invitation.pk])

    confirm = buyer_client.get(url)
    assert confirm.status_code == 200
    assert confirm.context["title"] == "Revoke the invitation to nina@example.com?"
    invitation.refresh_from_db()
    assert invitation.status == "pending"

    response = buyer_client.post(url)

    assert response.status_code == 302
    invitation.refresh_from_db()
    assert invitation.status == "revoked"
    event = AuditEvent.objects.get(action="invitation.revoked")
    assert (event.actor, event.data) == (buyer_owner, {"email": "nina@example.com"})
    user = UserFactory(email="nina@example.com")
    refused = client_for(user).post(
        reverse("invitation_respond", args=[invitation.token]), {"action": "accept"}
    )
    assert refused.status_code == 400
    assert not Membership.objects.filter(user=user).exists()


def test_revoking_twice_is_refused_clearly(buyer_org, buyer_client):
    invitation = InvitationFactory(organization=buyer_org, status="accepted")

    response = buyer_client.post(reverse("invitation_revoke", args=[invitation.pk]), follow=True)

    assert [str(m) for m in response.context["messages"]] == [
        "This invitation is no longer pending."
    ]
    invitation.refresh_from_db()
    assert invitation.status == "accepted"
    assert not AuditEvent.objects.exists()


def test_viewer_cannot_revoke(buyer_org):
    invitation = InvitationFactory(organization=buyer_org)
    client = client_for(MembershipFactory(organization=buyer_org, role=Role.VIEWER).user)

    response = client.post(reverse("invitation_revoke", args=[invitation.pk]))

    assert response.status_code == 403
    invitation.refresh_from_db()
    assert invitation.status == "pending"


def test_an_address_longer_than_the_column_is_refused_with_a_message(buyer_client):
    email = "a" * 290 + "@example.com"

    response = buyer_client.post(reverse("invitation_create"), {"email": email, "role": "member"})

    assert response.status_code == 200
    assert response.context["invite_form"].errors == {
        "email": ["Ensure this value has at most 254 characters (it has 302)."]
    }
    assert Invitation.objects.count() == 0
