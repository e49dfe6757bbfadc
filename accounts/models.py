"""People, organizations and their members, invitations, API keys and the audit trail.

The ground floor of Hashgrid: organizations are the tenants, every object a customer owns
hangs off one, and every view reaches it through ``accounts.tenancy``. Nothing here
imports another app of the project.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Self

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models
from django.db.models import OuterRef, Q, Subquery
from django.utils import timezone


class User(AbstractUser):
    """A person. Signs in with their email address (django-allauth)."""

    email = models.EmailField("email address", unique=True)

    def __str__(self) -> str:
        return self.email or self.username


class TenantQuerySet(models.QuerySet):
    """Base queryset for everything a tenant owns.

    ``tenant_path`` is the lookup from the model to its ``Organization``; subclasses of
    nested models override it (``"site__organization"`` for a node).
    """

    tenant_path = "organization"

    def for_organization(self, organization: Organization | None) -> Self:
        if organization is None:
            return self.none()
        return self.filter(**{self.tenant_path: organization})


class Organization(models.Model):
    """A company on the marketplace: a buyer of GPU capacity, a partner selling it, or both."""

    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=140, unique=True)
    is_buyer = models.BooleanField(default=True, help_text="Reserves GPUs and buys inference.")
    is_partner = models.BooleanField(
        default=False, help_text="Operates mining sites and lists their GPU capacity."
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(is_buyer=True) | Q(is_partner=True),
                name="organization_is_buyer_or_partner",
            )
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def kind_label(self) -> str:
        if self.is_buyer and self.is_partner:
            return "Buyer & partner"
        return "Partner" if self.is_partner else "Buyer"


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"
    FINANCE = "finance", "Finance"
    VIEWER = "viewer", "Viewer"


# Roles allowed to manage the organization itself (members, invitations, API keys).
MANAGER_ROLES = frozenset({Role.OWNER, Role.ADMIN})
# Roles allowed to change operational objects (sites, nodes, offers, reservations).
OPERATOR_ROLES = frozenset({Role.OWNER, Role.ADMIN, Role.MEMBER})
# Roles allowed to see and pay invoices and statements.
FINANCE_ROLES = frozenset({Role.OWNER, Role.ADMIN, Role.FINANCE})


class Membership(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["organization__name", "user__email"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "organization"], name="membership_unique_user_org"
            )
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"

    @property
    def can_manage(self) -> bool:
        return self.role in MANAGER_ROLES

    @property
    def can_operate(self) -> bool:
        return self.role in OPERATOR_ROLES

    @property
    def can_see_finance(self) -> bool:
        return self.role in FINANCE_ROLES


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


INVITATION_LIFETIME = timedelta(days=7)


class Invitation(models.Model):
    """An email invitation to join an organization with a role. The token is stored hashed."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        ACCEPTED = "accepted", "Accepted"
        DECLINED = "declined", "Declined"
        REVOKED = "revoked", "Revoked"

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="invitations"
    )
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    # sha256 hex of the token in the emailed link; the token itself is never stored.
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField()
    responded_at = models.DateTimeField(null=True, blank=True)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "email"],
                condition=Q(status="pending"),
                name="invitation_one_pending_per_email",
            )
        ]

    def __str__(self) -> str:
        return f"{self.email} → {self.organization}"

    @staticmethod
    def new_token() -> tuple[str, str]:
        """Return (token for the link, hash to store)."""
        token = secrets.token_urlsafe(32)
        return token, _hash_token(token)

    @staticmethod
    def hash_token(token: str) -> str:
        return _hash_token(token)

    @property
    def is_expired(self) -> bool:
        return timezone.now() >= self.expires_at


API_KEY_PREFIX = "hg_"
# The most an API key can do: operate (sites, nodes, offers, reservations), never manage
# the organization (members, keys) nor see its finances.
API_KEY_ROLE = Role.MEMBER


class ApiKeyQuerySet(TenantQuerySet):
    def active(self) -> Self:
        return self.filter(revoked_at__isnull=True)

    def with_creator_role(self) -> Self:
        """Annotate ``creator_role``: the creator's current role in the key's organization,
        None when they are no longer a member (``ApiKey.acting_role`` reads it)."""
        return self.annotate(
            creator_role=Subquery(
                Membership.objects.filter(
                    organization_id=OuterRef("organization_id"), user_id=OuterRef("created_by_id")
                ).values("role")[:1]
            )
        )


class ApiKey(models.Model):
    """An organization's API key. Shown once at creation; only its sha256 is stored.

    Keys are 256-bit random secrets, so a plain sha256 (not a slow password hash) is the
    right tool: it cannot be brute-forced and keeps authentication to one indexed lookup.
    """

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=80)
    # First characters of the key, shown in lists so people can tell keys apart.
    prefix = models.CharField(max_length=16, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "name"],
                condition=Q(revoked_at__isnull=True),
                name="api_key_unique_active_name",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def generate() -> tuple[str, str, str]:
        """Return (full key, display prefix, hash to store)."""
        key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        return key, key[:10], _hash_token(key)

    @staticmethod
    def hash_key(key: str) -> str:
        return _hash_token(key)

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    @property
    def acting_role(self) -> str | None:
        """The role the key acts with; needs ``ApiKeyQuerySet.with_creator_role``.

        A key acts as a member at most and never above its creator's current role: when
        the creator can no longer operate (finance, viewer), the key only reads. None when
        the creator has left the organization: the key is refused.
        """
        creator_role = getattr(self, "creator_role", None)
        if creator_role is None:
            return None
        return API_KEY_ROLE if creator_role in OPERATOR_ROLES else Role.VIEWER


class AuditEvent(models.Model):
    """Who did what, when: written by services whenever money or access changes."""

    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    action = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False, db_index=True)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.action}"
