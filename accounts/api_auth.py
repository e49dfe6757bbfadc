"""Authentication of REST API calls with organization API keys.

``Authorization: Bearer hg_…``. Only the key's sha256 is stored, so a lookup is one
indexed query (with the creator's current role joined in); a revoked key is refused like
an unknown one, a key whose creator has left the organization is refused with that reason,
and a key that a higher layer has stopped (contracts: its contract is suspended) with the
reason that layer gives through ``selectors.api_key_refusal``. A key acts with
``ApiKey.acting_role``: a member at most, never above its creator's current role, read
again on every request so a demotion takes effect at once.
"""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from accounts import selectors
from accounts.models import API_KEY_PREFIX, ApiKey

# last_used_at is written at most this often per key, to keep reads read-only.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[object, ApiKey] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        scheme, _, credential = header.partition(" ")
        if scheme != self.keyword or not credential.startswith(API_KEY_PREFIX):
            return None
        key = (
            ApiKey.objects.select_related("organization", "created_by")
            .with_creator_role()
            .filter(key_hash=ApiKey.hash_key(credential.strip()), revoked_at__isnull=True)
            .first()
        )
        if key is None or key.created_by is None or not key.created_by.is_active:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        if key.acting_role is None:
            raise exceptions.AuthenticationFailed(
                "This API key stopped working: the member who created it has left "
                f"{key.organization.name}. An owner or admin can create a new key."
            )
        refusal = selectors.api_key_refusal(key)
        if refusal is not None:
            raise exceptions.AuthenticationFailed(refusal)
        now = timezone.now()
        if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
            key.last_used_at = now
        return key.created_by, key

    def authenticate_header(self, request: Request) -> str:
        return self.keyword
