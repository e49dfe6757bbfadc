"""The one way to write the audit trail."""

from __future__ import annotations

from typing import Any

from django.db import models

from accounts.models import AuditEvent, Organization, User


def audit_event(
    *,
    action: str,
    actor: User | None,
    organization: Organization | None = None,
    target: models.Model | None = None,
    **data: Any,
) -> AuditEvent:
    """The unsaved record that ``actor`` did ``action`` (e.g. ``"api_key.revoked"``) on
    ``target``: for ``record``, when one transaction writes several at once."""
    return AuditEvent(
        action=action,
        actor=actor if actor is not None and actor.is_authenticated else None,
        organization=organization,
        target_type=target._meta.label_lower if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        data=data,
    )


def record(*events: AuditEvent) -> None:
    """Write ``events`` (from ``audit_event``) in one statement."""
    AuditEvent.objects.bulk_create(events)


def audit(
    *,
    action: str,
    actor: User | None,
    organization: Organization | None = None,
    target: models.Model | None = None,
    **data: Any,
) -> AuditEvent:
    """Record that ``actor`` did ``action`` (e.g. ``"api_key.revoked"``) on ``target``."""
    event = audit_event(
        action=action, actor=actor, organization=organization, target=target, **data
    )
    event.save(force_insert=True)
    return event
