"""Reads of organizations, memberships, invitations and API keys, and the seam for keys.

Querysets come out ready for their pages (related rows joined, ordered), so list pages
run a fixed number of queries whatever their length.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from allauth.account.models import EmailAddress
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import ApiKey, Invitation, Membership, Organization, User


def organization_members(*, organization: Organization) -> QuerySet[Membership]:
    return (
        Membership.objects.for_organization(organization)
        .select_related("user")
        .order_by("user__email")
    )


def pending_invitations(*, organization: Organization) -> QuerySet[Invitation]:
    return (
        Invitation.objects.for_organization(organization)
        .filter(status=Invitation.Status.PENDING)
        .select_related("invited_by")
        .order_by("-created_at")
    )


def api_keys(*, organization: Organization) -> QuerySet[ApiKey]:
    """Every key of the organization, active ones first, newest first, each with the
    role it acts with (``ApiKey.acting_role``)."""
    return (
        ApiKey.objects.for_organization(organization)
        .select_related("created_by")
        .with_creator_role()
        .order_by("revoked_at", "-created_at")
    )


def api_keys_created_by(*, organization: Organization, user: User) -> QuerySet[ApiKey]:
    """The active keys ``user`` created in ``organization``: those that stop when they leave."""
    return (
        ApiKey.objects.active()
        .for_organization(organization)
        .filter(created_by=user)
        .order_by("name", "pk")
    )


def user_memberships(
    *, user: User, organization: Organization | None = None
) -> QuerySet[Membership]:
    """A user's memberships, optionally only the one in ``organization``."""
    memberships = Membership.objects.filter(user=user).select_related("organization")
    if organization is not None:
        memberships = memberships.filter(organization=organization)
    return memberships.order_by("organization__name")


def invitation_for_token(*, token: str) -> Invitation | None:
    """The invitation a link's token belongs to (looked up by hash), whatever its tenant."""
    return (
        Invitation.objects.select_related("organization", "invited_by")
        .filter(token_hash=Invitation.hash_token(token))
        .first()
    )


def user_has_verified_email(*, user: User, email: str) -> bool:
    return EmailAddress.objects.filter(user=user, email__iexact=email, verified=True).exists()


def pending_invitations_for_user(*, user: User) -> QuerySet[Invitation]:
    """Open invitations sent to one of the user's verified addresses (for the no-org page)."""
    addresses = EmailAddress.objects.filter(user=user, verified=True).values_list(
        "email", flat=True
    )
    return (
        Invitation.objects.filter(
            email__in=[address.lower() for address in addresses],
            status=Invitation.Status.PENDING,
            expires_at__gt=timezone.now(),
        )
        .select_related("organization")
        .order_by("-created_at")
    )


@dataclass(frozen=True)
class OrganizationSummary:
    member_count: int
    pending_invitation_count: int
    active_api_key_count: int


def organization_summary(*, organization: Organization) -> OrganizationSummary:
    return OrganizationSummary(
        member_count=Membership.objects.for_organization(organization).count(),
        pending_invitation_count=pending_invitations(organization=organization).count(),
        active_api_key_count=ApiKey.objects.active().for_organization(organization).count(),
    )


# Reasons to refuse a valid key, registered by apps above accounts (contracts registers
# "its contract is suspended" in ``ContractsConfig.ready``), so authentication asks
# without importing them.
_api_key_refusals: list[Callable[[ApiKey], str | None]] = []


def register_api_key_refusal(refusal: Callable[[ApiKey], str | None]) -> None:
    """Called once by an app that can stop a key (contracts), at start-up."""
    if refusal not in _api_key_refusals:
        _api_key_refusals.append(refusal)


def api_key_refusal(api_key: ApiKey) -> str | None:
    """Why an active key must not authenticate now (the first registered reason), or
    None when nothing stops it."""
    for refusal in _api_key_refusals:
        reason = refusal(api_key)
        if reason is not None:
            return reason
    return None


# What each key is for (contracts registers "the line and product it bills to" in
# ``ContractsConfig.ready``), so the keys page says it without importing contracts.
_api_key_uses: list[Callable[[list[int]], dict[int, str]]] = []


def register_api_key_uses(describe: Callable[[list[int]], dict[int, str]]) -> None:
    """Called once by an app that gives keys a purpose (contracts), at start-up."""
    if describe not in _api_key_uses:
        _api_key_uses.append(describe)


def api_key_uses(*, api_key_ids: list[int]) -> dict[int, str]:
    """{key id: what it serves, in words} for the keys some app gave a purpose."""
    uses: dict[int, str] = {}
    for describe in _api_key_uses:
        uses.update(describe(api_key_ids))
    return uses
