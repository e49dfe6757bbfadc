"""State changes of organizations, memberships, invitations and API keys.

Every write goes through one of these keyword-only functions: it validates, writes in one
transaction, records an audit event and schedules side effects (email) on commit. Refusals
are ``ValidationError`` (a rule of the domain: last owner, duplicate invitation) or
``PermissionDenied`` (the actor's role does not allow it).
"""

from __future__ import annotations

import secrets

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.text import slugify

from accounts import emails, selectors
from accounts.audit import audit
from accounts.models import (
    INVITATION_LIFETIME,
    MANAGER_ROLES,
    ApiKey,
    Invitation,
    Membership,
    Organization,
    Role,
    User,
)

_SLUG_MAX_LENGTH = Organization._meta.get_field("slug").max_length or 140
_SLUG_ATTEMPTS = 5


# -- helpers ---------------------------------------------------------------------------


def _require_manager(*, organization: Organization, actor: User) -> Membership:
    """The actor's membership, if it may manage ``organization``; else PermissionDenied."""
    membership = Membership.objects.filter(organization=organization, user=actor).first()
    if membership is None or membership.role not in MANAGER_ROLES:
        raise PermissionDenied("Only owners and admins can manage this organization.")
    return membership


def _require_kind(*, is_buyer: bool, is_partner: bool) -> None:
    if not (is_buyer or is_partner):
        raise ValidationError("An organization must be a buyer, a partner or both.", code="no_kind")


def _slug_candidates(name: str) -> tuple[str, set[str]]:
    base = slugify(name)[: _SLUG_MAX_LENGTH - 8].strip("-") or "organization"
    taken = set(Organization.objects.filter(slug__startswith=base).values_list("slug", flat=True))
    return base, taken


def _next_free_slug(base: str, taken: set[str]) -> str:
    if base not in taken:
        return base
    number = 2
    while f"{base}-{number}" in taken:
        number += 1
    return f"{base}-{number}"


# -- organizations ---------------------------------------------------------------------


@transaction.atomic
def organization_create(
    *, name: str, is_buyer: bool, is_partner: bool, creator: User
) -> Organization:
    """Create an organization with ``creator`` as its owner, under a unique slug.

    The slug's uniqueness is the database's: a concurrent create that takes the same slug
    makes the insert fail, and we try the next free one.
    """
    name = name.strip()
    _require_kind(is_buyer=is_buyer, is_partner=is_partner)
    base, taken = _slug_candidates(name)
    organization = None
    for _attempt in range(_SLUG_ATTEMPTS):
        slug = _next_free_slug(base, taken)
        try:
            with transaction.atomic():
                organization = Organization.objects.create(
                    name=name, slug=slug, is_buyer=is_buyer, is_partner=is_partner
                )
            break
        except IntegrityError:
            taken.add(slug)
    if organization is None:
        organization = Organization.objects.create(
            name=name,
            slug=f"{base}-{secrets.token_hex(3)}",
            is_buyer=is_buyer,
            is_partner=is_partner,
        )
    membership = Membership.objects.create(user=creator, organization=organization, role=Role.OWNER)
    audit(
        action="organization.created",
        actor=creator,
        organization=organization,
        target=organization,
        name=organization.name,
        is_buyer=is_buyer,
        is_partner=is_partner,
    )
    audit(
        action="membership.created",
        actor=creator,
        organization=organization,
        target=membership,
        user=creator.email,
        role=Role.OWNER.value,
    )
    return organization


@transaction.atomic
def organization_update(
    *, organization: Organization, name: str, is_buyer: bool, is_partner: bool, actor: User
) -> Organization:
    _require_manager(organization=organization, actor=actor)
    _require_kind(is_buyer=is_buyer, is_partner=is_partner)
    organization = Organization.objects.select_for_update().get(pk=organization.pk)
    before = {
        "name": organization.name,
        "is_buyer": organization.is_buyer,
        "is_partner": organization.is_partner,
    }
    organization.name = name.strip()
    organization.is_buyer = is_buyer
    organization.is_partner = is_partner
    after = {"name": organization.name, "is_buyer": is_buyer, "is_partner": is_partner}
    if after == before:
        return organization
    organization.save(update_fields=["name", "is_buyer", "is_partner"])
    changes = {
        field: [before[field], after[field]] for field in after if before[field] != after[field]
    }
    audit(
        action="organization.updated",
        actor=actor,
        organization=organization,
        target=organization,
        changes=changes,
    )
    return organization


# -- memberships -----------------------------------------------------------------------


def _lock_owners_and(membership: Membership) -> tuple[Membership, int]:
    """Lock the organization's owner rows and ``membership`` (in pk order).

    Returns ``membership`` fresh from the database and the number of owners.

    Two concurrent demotions of the last two owners serialize on these locks, so the
    second one sees a single owner left and is refused.
    """
    rows = list(
        Membership.objects.select_for_update()
        .filter(organization_id=membership.organization_id)
        .filter(Q(role=Role.OWNER) | Q(pk=membership.pk))
        .order_by("pk")
    )
    locked = next((row for row in rows if row.pk == membership.pk), None)
    if locked is None:
        raise ValidationError("This member has already left the organization.", code="gone")
    return locked, sum(1 for row in rows if row.role == Role.OWNER)


def _require_may_touch(
    *, actor_membership: Membership, target: Membership, new_role: str | None
) -> None:
    """Only owners may change owners or make someone an owner."""
    if actor_membership.role == Role.OWNER:
        return
    if target.role == Role.OWNER or new_role == Role.OWNER:
        raise PermissionDenied("Only an owner can change an owner or grant the owner role.")


@transaction.atomic
def membership_change_role(*, membership: Membership, role: str, actor: User) -> Membership:
    """Give ``membership`` a new role. The last owner can never be demoted."""
    if role not in Role.values:
        raise ValidationError("Unknown role.", code="invalid_role")
    actor_membership = _require_manager(organization=membership.organization, actor=actor)
    locked, owner_count = _lock_owners_and(membership)
    _require_may_touch(actor_membership=actor_membership, target=locked, new_role=role)
    if locked.role == role:
        return locked
    if locked.role == Role.OWNER and owner_count <= 1:
        raise ValidationError(
            "An organization needs at least one owner: make someone else an owner first.",
            code="last_owner",
        )
    previous_role = locked.role
    locked.role = role
    locked.save(update_fields=["role"])
    audit(
        action="membership.role_changed",
        actor=actor,
        organization=membership.organization,
        target=locked,
        user=locked.user.email,
        previous_role=previous_role,
        role=role,
    )
    return locked


@transaction.atomic
def membership_remove(*, membership: Membership, actor: User) -> list[ApiKey]:
    """Remove a member from the organization. The last owner can never be removed.

    The API keys they created in it are revoked in the same transaction and returned: a
    key never outlives its creator's access (authentication refuses it too, should a
    membership disappear another way), and a later re-invitation does not revive it.
    """
    actor_membership = _require_manager(organization=membership.organization, actor=actor)
    locked, owner_count = _lock_owners_and(membership)
    _require_may_touch(actor_membership=actor_membership, target=locked, new_role=None)
    if locked.role == Role.OWNER and owner_count <= 1:
        raise ValidationError(
            "The last owner cannot be removed: make someone else an owner first.",
            code="last_owner",
        )
    audit(
        action="membership.removed",
        actor=actor,
        organization=membership.organization,
        target=locked,
        user=locked.user.email,
        role=locked.role,
    )
    keys = selectors.api_keys_created_by(organization=membership.organization, user=locked.user)
    revoked = []
    for api_key in keys.select_for_update():
        api_key.organization = membership.organization
        revoked.append(_revoke_key(api_key=api_key, actor=actor, reason="creator_removed"))
    locked.delete()
    return revoked


# -- invitations -----------------------------------------------------------------------


def normalize_email(email: str) -> str:
    return email.strip().lower()


@transaction.atomic
def invitation_create(
    *, organization: Organization, email: str, role: str, invited_by: User
) -> tuple[Invitation, str]:
    """Invite ``email`` to join with ``role``; email the link on commit.

    Returns the invitation and the token of its link (only the hash is stored). A second
    pending invitation for the same address is refused by a partial unique constraint;
    an expired pending one is revoked first, so the address can be invited again.
    """
    if role not in Role.values:
        raise ValidationError({"role": "Unknown role."}, code="invalid_role")
    actor_membership = _require_manager(organization=organization, actor=invited_by)
    if role == Role.OWNER and actor_membership.role != Role.OWNER:
        raise PermissionDenied("Only an owner can invite another owner.")
    email = normalize_email(email)
    if Membership.objects.filter(organization=organization, user__email__iexact=email).exists():
        raise ValidationError(
            {"email": f"{email} is already a member of {organization.name}."}, code="already_member"
        )
    now = timezone.now()
    Invitation.objects.filter(
        organization=organization,
        email=email,
        status=Invitation.Status.PENDING,
        expires_at__lte=now,
    ).update(status=Invitation.Status.REVOKED, responded_at=now)
    token, token_hash = Invitation.new_token()
    try:
        with transaction.atomic():
            invitation = Invitation.objects.create(
                organization=organization,
                email=email,
                role=role,
                token_hash=token_hash,
                invited_by=invited_by,
                created_at=now,
                expires_at=now + INVITATION_LIFETIME,
            )
    except IntegrityError:
        raise ValidationError(
            {"email": f"{email} already has a pending invitation: revoke it to send a new one."},
            code="duplicate_invitation",
        ) from None
    audit(
        action="invitation.created",
        actor=invited_by,
        organization=organization,
        target=invitation,
        email=email,
        role=role,
    )
    invitation_pk = invitation.pk
    transaction.on_commit(
        lambda: emails.send_invitation(
            invitation=Invitation.objects.get(pk=invitation_pk), token=token
        )
    )
    return invitation, token


@transaction.atomic
def invitation_revoke(*, invitation: Invitation, actor: User) -> Invitation:
    _require_manager(organization=invitation.organization, actor=actor)
    now = timezone.now()
    revoked = Invitation.objects.filter(pk=invitation.pk, status=Invitation.Status.PENDING).update(
        status=Invitation.Status.REVOKED, responded_at=now
    )
    if not revoked:
        raise ValidationError("This invitation is no longer pending.", code="not_pending")
    invitation.refresh_from_db()
    audit(
        action="invitation.revoked",
        actor=actor,
        organization=invitation.organization,
        target=invitation,
        email=invitation.email,
    )
    return invitation


def invitation_problem(*, invitation: Invitation, user: User) -> str | None:
    """Why ``user`` cannot answer ``invitation`` (None when they can)."""
    if invitation.status != Invitation.Status.PENDING:
        return f"This invitation has already been {invitation.get_status_display().lower()}."
    if invitation.is_expired:
        return "This invitation has expired. Ask the organization to send you a new one."
    if not selectors.user_has_verified_email(user=user, email=invitation.email):
        return (
            f"This invitation was sent to {invitation.email}. Sign in with that address "
            "(and verify it) to answer it."
        )
    return None


def _lock_answerable(*, invitation: Invitation, user: User) -> Invitation:
    locked = (
        Invitation.objects.select_for_update().select_related("organization").get(pk=invitation.pk)
    )
    problem = invitation_problem(invitation=locked, user=user)
    if problem is not None:
        raise ValidationError(problem, code="not_answerable")
    return locked


@transaction.atomic
def invitation_accept(*, invitation: Invitation, user: User) -> Membership:
    """Join the organization with the invited role."""
    locked = _lock_answerable(invitation=invitation, user=user)
    try:
        with transaction.atomic():
            membership = Membership.objects.create(
                user=user, organization=locked.organization, role=locked.role
            )
    except IntegrityError:
        raise ValidationError(
            f"You are already a member of {locked.organization.name}.", code="already_member"
        ) from None
    _mark_answered(locked, Invitation.Status.ACCEPTED)
    audit(
        action="invitation.accepted",
        actor=user,
        organization=locked.organization,
        target=locked,
        email=locked.email,
        role=locked.role,
    )
    audit(
        action="membership.created",
        actor=user,
        organization=locked.organization,
        target=membership,
        user=user.email,
        role=locked.role,
    )
    return membership


@transaction.atomic
def invitation_decline(*, invitation: Invitation, user: User) -> Invitation:
    locked = _lock_answerable(invitation=invitation, user=user)
    _mark_answered(locked, Invitation.Status.DECLINED)
    audit(
        action="invitation.declined",
        actor=user,
        organization=locked.organization,
        target=locked,
        email=locked.email,
    )
    return locked


def _mark_answered(invitation: Invitation, status: str) -> None:
    invitation.status = status
    invitation.responded_at = timezone.now()
    invitation.save(update_fields=["status", "responded_at"])


# -- API keys --------------------------------------------------------------------------


@transaction.atomic
def api_key_create(
    *, organization: Organization, name: str, created_by: User
) -> tuple[ApiKey, str]:
    """Create a key; return it with the full secret, which is never stored nor shown again."""
    _require_manager(organization=organization, actor=created_by)
    name = name.strip()
    key, prefix, key_hash = ApiKey.generate()
    try:
        with transaction.atomic():
            api_key = ApiKey.objects.create(
                organization=organization,
                name=name,
                prefix=prefix,
                key_hash=key_hash,
                created_by=created_by,
            )
    except IntegrityError:
        raise ValidationError(
            {"name": f"An active key named “{name}” already exists."}, code="duplicate_name"
        ) from None
    audit(
        action="api_key.created",
        actor=created_by,
        organization=organization,
        target=api_key,
        name=name,
        prefix=prefix,
    )
    return api_key, key


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey, actor: User) -> ApiKey:
    """Revoke a key: the API refuses it from the next request on."""
    _require_manager(organization=api_key.organization, actor=actor)
    return _revoke_key(api_key=api_key, actor=actor)


@transaction.atomic
def api_key_revoke_by_staff(*, api_key: ApiKey, actor: User) -> ApiKey:
    """Platform staff revoke a key (from the admin, e.g. a leaked one)."""
    if not actor.is_staff:
        raise PermissionDenied("Only staff can revoke another organization's keys.")
    return _revoke_key(api_key=api_key, actor=actor, by_staff=True)


def _revoke_key(*, api_key: ApiKey, actor: User, **audit_data: object) -> ApiKey:
    now = timezone.now()
    revoked = ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=now)
    if not revoked:
        raise ValidationError("This API key is already revoked.", code="already_revoked")
    api_key.revoked_at = now
    audit(
        action="api_key.revoked",
        actor=actor,
        organization=api_key.organization,
        target=api_key,
        name=api_key.name,
        prefix=api_key.prefix,
        **audit_data,
    )
    return api_key
