"""Members: role changes and removals, the last-owner rule, role-based refusals."""

from __future__ import annotations

import threading
import time

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts import services
from accounts.models import AuditEvent, Membership, Role
from tests.factories import InvitationFactory, MembershipFactory
from tests.fixtures import client_for

pytestmark = pytest.mark.django_db

LAST_OWNER_DEMOTE = "An organization needs at least one owner: make someone else an owner first."
LAST_OWNER_REMOVE = "The last owner cannot be removed: make someone else an owner first."


def test_members_page_lists_members_with_roles(buyer_org, buyer_client, buyer_owner, other_org):
    viewer = MembershipFactory(
        organization=buyer_org, role=Role.VIEWER, user__email="vera@acme.example"
    )
    MembershipFactory(organization=other_org, user__email="stranger@other.example")

    response = buyer_client.get(reverse("organization_members"))

    assert response.status_code == 200
    assert [(m.user.email, m.role) for m in response.context["page_obj"]] == sorted(
        [(buyer_owner.email, "owner"), (viewer.user.email, "viewer")]
    )
    assert b"stranger@other.example" not in response.content
    assert b"No pending invitations" in response.content


def test_owner_changes_a_role(buyer_org, buyer_client, buyer_owner):
    member = MembershipFactory(organization=buyer_org, role=Role.MEMBER)

    response = buyer_client.post(reverse("membership_update", args=[member.pk]), {"role": "admin"})

    assert response.status_code == 302
    assert response.url == reverse("organization_members")
    member.refresh_from_db()
    assert member.role == "admin"
    event = AuditEvent.objects.get(action="membership.role_changed")
    assert (event.actor, event.organization, event.target_id) == (
        buyer_owner,
        buyer_org,
        str(member.pk),
    )
    assert event.data == {"user": member.user.email, "previous_role": "member", "role": "admin"}


def test_role_page_renders(buyer_org, buyer_client):
    member = MembershipFactory(organization=buyer_org, role=Role.MEMBER)

    response = buyer_client.get(reverse("membership_update", args=[member.pk]))

    assert response.status_code == 200
    assert response.context["form"].initial == {"role": "member"}


def test_last_owner_cannot_be_demoted(buyer_org, buyer_client, owner_membership):
    response = buyer_client.post(
        reverse("membership_update", args=[owner_membership.pk]), {"role": "admin"}
    )

    assert response.status_code == 200
    assert response.context["form"].non_field_errors() == [LAST_OWNER_DEMOTE]
    owner_membership.refresh_from_db()
    assert owner_membership.role == "owner"
    assert not AuditEvent.objects.exists()


def test_last_owner_cannot_be_removed(buyer_org, buyer_client, owner_membership):
    response = buyer_client.post(
        reverse("membership_remove", args=[owner_membership.pk]), follow=True
    )

    assert [str(m) for m in response.context["messages"]] == [LAST_OWNER_REMOVE]
    assert Membership.objects.filter(pk=owner_membership.pk).exists()
    assert not AuditEvent.objects.exists()


def test_an_owner_can_step_down_when_another_owner_remains(
    buyer_org, buyer_owner, owner_membership
):
    second = MembershipFactory(organization=buyer_org, role=Role.OWNER)

    services.membership_change_role(membership=owner_membership, role=Role.ADMIN, actor=buyer_owner)

    owner_membership.refresh_from_db()
    assert owner_membership.role == "admin"
    with pytest.raises(ValidationError) as refused:
        services.membership_remove(membership=second, actor=second.user)
    assert refused.value.messages == [LAST_OWNER_REMOVE]


def test_remove_confirms_then_removes(buyer_org, buyer_client, buyer_owner):
    member = MembershipFactory(
        organization=buyer_org, role=Role.FINANCE, user__email="fin@acme.example"
    )
    url = reverse("membership_remove", args=[member.pk])

    confirm = buyer_client.get(url)
    assert confirm.status_code == 200
    assert confirm.context["title"] == "Remove fin@acme.example?"
    assert confirm.context["action_label"] == "Remove member"
    assert confirm.context["danger"] is True
    assert Membership.objects.filter(pk=member.pk).exists()

    response = buyer_client.post(url)

    assert response.status_code == 302
    assert not Membership.objects.filter(pk=member.pk).exists()
    event = AuditEvent.objects.get(action="membership.removed")
    assert (event.actor, event.data) == (
        buyer_owner,
        {"user": "fin@acme.example", "role": "finance"},
    )


def test_admin_cannot_touch_owners_nor_grant_ownership(buyer_org, owner_membership):
    admin = MembershipFactory(organization=buyer_org, role=Role.ADMIN)
    member = MembershipFactory(organization=buyer_org, role=Role.MEMBER)
    client = client_for(admin.user)

    demote = client.post(
        reverse("membership_update", args=[owner_membership.pk]), {"role": "viewer"}
    )
    remove = client.post(reverse("membership_remove", args=[owner_membership.pk]))
    promote = client.post(reverse("membership_update", args=[member.pk]), {"role": "owner"})
    with pytest.raises(PermissionDenied):
        services.membership_change_role(membership=member, role=Role.OWNER, actor=admin.user)

    assert (demote.status_code, remove.status_code) == (403, 403)
    assert promote.status_code == 200  # owner is not among an admin's choices
    assert list(promote.context["form"].errors) == ["role"]
    assert dict(Membership.objects.values_list("pk", "role")) == {
        owner_membership.pk: "owner",
        admin.pk: "admin",
        member.pk: "member",
    }
    assert not AuditEvent.objects.exists()


def test_admin_changes_and_removes_non_owners(buyer_org):
    admin = MembershipFactory(organization=buyer_org, role=Role.ADMIN)
    member = MembershipFactory(organization=buyer_org, role=Role.MEMBER)
    client = client_for(admin.user)

    client.post(reverse("membership_update", args=[member.pk]), {"role": "finance"})
    member.refresh_from_db()
    assert member.role == "finance"
    client.post(reverse("membership_remove", args=[member.pk]))
    assert not Membership.objects.filter(pk=member.pk).exists()


@pytest.mark.parametrize("role", [Role.MEMBER, Role.FINANCE, Role.VIEWER])
def test_other_roles_cannot_change_or_remove_members(buyer_org, owner_membership, role):
    actor = MembershipFactory(organization=buyer_org, role=role)
    client = client_for(actor.user)

    page = client.get(reverse("organization_members"))
    change = client.post(
        reverse("membership_update", args=[owner_membership.pk]), {"role": "viewer"}
    )
    remove = client.post(reverse("membership_remove", args=[owner_membership.pk]))

    assert page.status_code == 200
    assert page.context["invite_form"] is None
    assert (change.status_code, remove.status_code) == (403, 403)
    assert dict(Membership.objects.values_list("pk", "role")) == {
        owner_membership.pk: "owner",
        actor.pk: role,
    }
    assert not AuditEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_demotions_cannot_remove_the_last_owner(buyer_org, owner_membership):
    """The second demotion waits on the owner rows' lock, then sees one owner left."""
    second = MembershipFactory(organization=buyer_org, role=Role.OWNER)
    first_demoted = threading.Event()
    outcome: dict[str, object] = {}

    def demote_first() -> None:
        try:
            with transaction.atomic():
                services.membership_change_role(
                    membership=owner_membership, role=Role.ADMIN, actor=owner_membership.user
                )
                first_demoted.set()
                time.sleep(0.3)  # hold the locks while the other demotion starts
        finally:
            connection.close()

    def demote_second() -> None:
        first_demoted.wait(5)
        try:
            services.membership_change_role(membership=second, role=Role.ADMIN, actor=second.user)
            outcome["second"] = "demoted"
        except (ValidationError, PermissionDenied) as error:
            outcome["second"] = error.messages if isinstance(error, ValidationError) else "denied"
        finally:
            connection.close()

    threads = [threading.Thread(target=demote_first), threading.Thread(target=demote_second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert outcome == {"second": [LAST_OWNER_DEMOTE]}
    assert dict(Membership.objects.values_list("pk", "role")) == {
        owner_membership.pk: "admin",
        second.pk: "owner",
    }


def test_members_page_queries_do_not_grow_with_members(buyer_org, buyer_client):
    def count_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert buyer_client.get(reverse("organization_members")).status_code == 200
        return len(queries)

    MembershipFactory(organization=buyer_org)
    count_queries()  # the first request also picks the current organization
    few = count_queries()
    for role in (Role.ADMIN, Role.MEMBER, Role.FINANCE, Role.VIEWER):
        MembershipFactory(organization=buyer_org, role=role)
    InvitationFactory.create_batch(
        3, organization=buyer_org, invited_by=MembershipFactory(organization=buyer_org).user
    )

    assert count_queries() == few
